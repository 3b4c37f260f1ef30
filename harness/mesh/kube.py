"""The Kubernetes part every cluster backend shares: REST client, apply, prune, waits, dump.

:class:`KubeAPI` makes the few REST calls the backends need through the kubernetes client's
``ApiClient`` (TLS, client certificates, tokens and exec credential plugins from the
kubeconfig). :class:`KubeMesh` drives a stage on a cluster whose Istio ingress gateway
already runs: server-side apply in two phases (workloads, wait for their rollout, then
routing), convergence read from the gateway Envoy's ``config_dump``, and only then the
prune of what the stage dropped (make-before-break). It also applies the attribution
EnvoyFilter (the ``x-abtest-upstream-*`` response headers), maps endpoints to pod labels
and writes failure diagnostics. The backends add how the cluster comes to exist:
:mod:`abtest_harness.mesh.kind` (a kind cluster the harness creates) and
:mod:`abtest_harness.mesh.cluster` (a cluster the user already runs).

Run id: every object applied carries ``app.kubernetes.io/managed-by=abtest-harness`` and
``abtest-harness/run-id=<run id>`` (a fresh id per mesh, see :func:`new_run_id`).
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from abtest_harness import proc
from abtest_harness.errors import CommandError, ConfigError, HarnessError, WaitTimeout
from abtest_harness.plan import repository_of
from abtest_harness.signals import Terminated, teardown_on_sigterm
from abtest_harness.wait import wait_until

log = logging.getLogger(__name__)

FIELD_MANAGER = "abtest-harness"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "abtest-harness"
# The same label as the docker backend's containers: one run id names what one run made.
RUN_ID_LABEL = "abtest-harness/run-id"
ISTIO_NAMESPACE = "istio-system"
ISTIOD = "istiod"
GATEWAY = "istio-ingressgateway"
GATEWAY_SELECTOR = "istio=ingressgateway"
# The gateway Envoy's admin port; Istio binds it to localhost inside the pod, so the API
# server's pod proxy (which dials the pod IP) cannot reach it. See converge().
GATEWAY_ADMIN_PORT = 15000
#: The response headers the attribution EnvoyFilter makes the gateway add (Envoy's formatter
#: fills them with the endpoint and cluster it chose for the request).
UPSTREAM_HOST_HEADER = "x-abtest-upstream-host"
UPSTREAM_CLUSTER_HEADER = "x-abtest-upstream-cluster"
ATTRIBUTION_FILTER_PREFIX = "abtest-upstream-headers"
#: kubernetes (the Python client) release that first has ApiClient.param_serialize and the
#: call_api(method, url, ...) signature KubeAPI.request uses (36.0.3 has neither).
MIN_KUBERNETES_CLIENT = (37, 0, 0)
# The least time a converge probe's exec gets near the deadline, so it is never given <= 0 s.
_MIN_EXEC_TIMEOUT = 0.5

# kind -> REST collection name. A static table rather than API discovery: these are the only
# kinds a stage renders, and an unknown kind should be an error, not a guess.
_PLURALS = {
    "Namespace": "namespaces",
    "EnvoyFilter": "envoyfilters",
    "Service": "services",
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "Gateway": "gateways",
    "VirtualService": "virtualservices",
    "DestinationRule": "destinationrules",
}
_CLUSTER_SCOPED = {"Namespace"}
# Applied in apply()'s second phase, once the workloads they route to are ready.
_ROUTING_KINDS = {"Gateway", "VirtualService", "DestinationRule"}
# The order of apply within each phase: what others refer to goes first.
_APPLY_ORDER = ("Namespace", "ConfigMap", "Service", "Deployment", "DestinationRule", "Gateway", "VirtualService")


def _apply_rank(obj: Mapping[str, Any]) -> int:
    kind = str(obj.get("kind"))
    return _APPLY_ORDER.index(kind) if kind in _APPLY_ORDER else len(_APPLY_ORDER)


# What prune looks for, in this order: routing first, so traffic leaves a version before it goes.
_PRUNABLE = (
    ("networking.istio.io/v1", "VirtualService"),
    ("networking.istio.io/v1", "DestinationRule"),
    ("networking.istio.io/v1", "Gateway"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
)




class MeshStepError(HarnessError):
    """A step of a cluster backend failed; `step` names it, the cause is chained.

    `artifacts` is where diagnostics were written (None if nothing could be).
    """

    backend = "cluster"

    def __init__(self, step: str, cause: BaseException, artifacts: Path | None) -> None:
        self.step = step
        self.cause = cause
        self.artifacts = artifacts
        where = f"; diagnostics in {artifacts}" if artifacts else ""
        super().__init__(f"{self.backend} backend: step {step!r} failed: {cause}{where}")


class KubeAPIError(HarnessError):
    """The Kubernetes API answered with an error (status 0: it could not be reached)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        detail = body.strip().replace("\n", " ")[:300]
        super().__init__(
            f"{method} {path}: HTTP {status}: {detail}" if status else f"{method} {path}: {detail}"
        )

    @property
    def transient(self) -> bool:
        """Worth retrying within a deadline: unreachable, throttled, or a server-side error."""
        return self.status == 0 or self.status == 429 or self.status >= 500


class TransientKubeAPIError(KubeAPIError):
    """A KubeAPIError that a wait may retry (see :attr:`KubeAPIError.transient`)."""


class GatewayPodNotReady(HarnessError):
    """No Running ingress gateway pod right now (e.g. during a gateway restart): worth retrying."""


# ----------------------------------------------------------------------------- API access


def _version_tuple(text: str) -> tuple[int, ...]:
    """``37.0.0b1`` -> (37, 0, 0): the leading digits of the first three dot-separated parts."""
    parts = []
    for piece in text.split(".")[:3]:
        match = re.match(r"\d+", piece)
        parts.append(int(match.group()) if match else 0)
    return tuple(parts)


def check_client_version(version: str | None = None) -> None:
    """Refuse a kubernetes client older than :data:`MIN_KUBERNETES_CLIENT`, naming the fix.

    pip keeps an installed package that meets the floor it was installed with, so a venv made
    before the floor was raised may still hold an older client; without this check the first
    API call would fail with an AttributeError deep inside the cluster step.
    """
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        try:
            version = dist_version("kubernetes")
        except PackageNotFoundError as exc:
            raise HarnessError("the kubernetes Python client is not installed: run `make venv`") from exc
    floor = ".".join(map(str, MIN_KUBERNETES_CLIENT))
    if _version_tuple(version) < MIN_KUBERNETES_CLIENT:
        raise HarnessError(
            f"kubernetes (Python client) {version} is installed, the cluster backends need >= {floor} "
            f"(ApiClient.param_serialize): run `.venv/bin/pip install 'kubernetes>={floor}'` or `make venv`"
        )


def attribution_filter(namespace: str, selector: Mapping[str, str], run_id: str) -> dict[str, Any]:
    """This run's attribution EnvoyFilter (:func:`abtest_harness.attribution.gateway_envoy_filter`).

    The name and labels carry the run id, so two runs never share (or delete) one filter.
    """
    from abtest_harness.attribution import gateway_envoy_filter

    return gateway_envoy_filter(
        f"{ATTRIBUTION_FILTER_PREFIX}-{run_id}",
        namespace,
        selector,
        {MANAGED_BY_LABEL: MANAGED_BY_VALUE, RUN_ID_LABEL: run_id},
    )


def selector_labels(selector: str) -> dict[str, str]:
    """``a=b,c=d`` as a mapping (equality terms only, as the gateway selectors here are)."""
    labels: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key or "!" in key:
            raise ConfigError("gateway selector", selector, f"term {term!r} is not key=value")
        labels[key] = value
    return labels


def attribution_headers_live(config_dump: Mapping[str, Any]) -> bool:
    """Whether the gateway's HTTP route configurations carry both attribution headers."""
    from abtest_harness.mesh.base import route_configs_from_config_dump

    configs = [c for name, c in route_configs_from_config_dump(config_dump).items() if name.startswith("http.")]
    if not configs:
        return False
    for config in configs:
        keys = {
            str((h.get("header") or {}).get("key", "")).lower() for h in config.get("response_headers_to_add", []) or []
        }
        if not {UPSTREAM_HOST_HEADER, UPSTREAM_CLUSTER_HEADER} <= keys:
            return False
    return True



class KubeAPI:
    """The few REST calls the backend makes, through the kubernetes client's ApiClient.

    Raw paths instead of the generated typed APIs because server-side apply needs the
    ``application/apply-patch+yaml`` content type with the object's own YAML, and the Istio
    kinds have no typed API at all; the ApiClient still does TLS, client certificates and
    tokens from the kubeconfig.
    """

    def __init__(self, api_client: Any, *, timeout: float = 30.0) -> None:
        self.client = api_client
        self.timeout = timeout

    @classmethod
    def from_kubeconfig(cls, path: Path, *, context: str | None = None, timeout: float = 30.0) -> KubeAPI:
        """A client for `context` (default: the current context) of the kubeconfig file at `path`."""
        from kubernetes import config as k8s_config

        check_client_version()
        client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(path), context=context
        )
        return cls(client, timeout=timeout)

    def close(self) -> None:
        """Release the client's connection pool (and its thread pool, if one was made)."""
        close = getattr(self.client, "close", None)
        if callable(close):
            close()

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: str | Mapping[str, Any] | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        """Send one request; return (status, body) for 2xx and 404, raise KubeAPIError otherwise.

        A str `body` is sent as it is (the YAML of an apply); a mapping is sent as JSON.
        """
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            m, url, hdrs, payload, _ = self.client.param_serialize(
                method,
                path,
                query_params=list(query),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.client.call_api(
                m, url, header_params=hdrs, body=payload, _request_timeout=self.timeout
            )
            data = response.read() or b""
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientKubeAPIError(method, path, 0, f"API server not reachable: {exc}") from exc
        except ApiException as exc:  # the client wraps some transport failures as status 0
            status = int(getattr(exc, "status", 0) or 0)
            error_type = TransientKubeAPIError if status == 0 else KubeAPIError
            raise error_type(method, path, status, str(exc)) from exc
        status = int(response.status)
        if 200 <= status < 300 or status == 404:
            return status, data
        text = data.decode("utf-8", errors="replace")
        error = KubeAPIError(method, path, status, text)
        raise TransientKubeAPIError(method, path, status, text) if error.transient else error

    def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> dict[str, Any] | None:
        """The object at `path`, or None if it does not exist."""
        status, data = self.request("GET", path, query=query)
        return None if status == 404 else _json_object(data, path)

    def get_text(self, path: str, query: Sequence[tuple[str, str]] = ()) -> str | None:
        """A plain-text subresource (pod logs), or None if it does not exist."""
        status, data = self.request("GET", path, query=query, accept="*/*")
        return None if status == 404 else data.decode("utf-8", errors="replace")

    def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """The items of a collection (empty if the collection's kind is not served)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        found = self.get(path, query)
        return list(found.get("items", []) or []) if found else []

    def apply(self, obj: Mapping[str, Any], *, force: bool = True) -> dict[str, Any]:
        """Server-side apply of one object with field manager ``abtest-harness``.

        ``force`` takes over fields another manager set (e.g. a ``kubectl edit`` during a
        debugging session), so the cluster ends up exactly as the manifests say.
        """
        path = object_path(obj)
        query = [("fieldManager", FIELD_MANAGER)]
        if force:
            query.append(("force", "true"))
        status, data = self.request(
            "PATCH",
            path,
            query=query,
            body=yaml.safe_dump(dict(obj), sort_keys=False),
            content_type="application/apply-patch+yaml",
        )
        if status == 404:
            # The collection itself is missing: a CRD (Istio's) is not installed.
            raise KubeAPIError("PATCH", path, 404, f"{_ref(obj)}: the API server does not serve this kind")
        return _json_object(data, path)

    def delete(self, path: str, *, propagation: str = "Foreground") -> bool:
        """Delete the object at `path`; False if it was already gone.

        Foreground propagation keeps the object until its dependents (a Deployment's
        ReplicaSets and Pods) are gone, so "deleted" means no pod of it still serves.
        """
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        status, _ = self.request("DELETE", path, body=options, content_type="application/json")
        return status != 404


def _json_object(data: bytes, path: str) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError as exc:
        raise KubeAPIError("GET", path, 200, f"not JSON: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise KubeAPIError("GET", path, 200, f"not a JSON object: {data[:200]!r}")
    return value


def _ref(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {}) or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    """REST path of a kind's collection, e.g. ``/apis/apps/v1/namespaces/abtesting/deployments``."""
    plural = _PLURALS.get(kind)
    if plural is None:
        raise ConfigError(
            kind, "kind", f"the kind backend cannot apply {kind!r} (known: {', '.join(sorted(_PLURALS))})"
        )
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if kind in _CLUSTER_SCOPED:
        return f"{root}/{plural}"
    if not namespace:
        raise ConfigError(kind, "metadata.namespace", "a namespaced object needs a namespace")
    return f"{root}/namespaces/{namespace}/{plural}"


def object_path(obj: Mapping[str, Any]) -> str:
    """REST path of one object from its apiVersion, kind, namespace and name."""
    meta = obj.get("metadata", {}) or {}
    name = meta.get("name")
    if not name:
        raise ConfigError(str(obj.get("kind")), "metadata.name", "missing")
    return (
        f"{collection_path(str(obj.get('apiVersion')), str(obj.get('kind')), meta.get('namespace'))}/{name}"
    )



def endpoints_from_config_dump(config_dump: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Healthy endpoint addresses per cluster in an admin ``config_dump?include_eds``.

    Istio sends only ready endpoints by default; an explicit UNHEALTHY/DRAINING/TIMEOUT status
    is left out as Envoy would not pick it.
    """
    found: dict[str, set[str]] = {}
    for section in config_dump.get("configs", []) or []:
        if not str(section.get("@type", "")).endswith("EndpointsConfigDump"):
            continue
        entries = [*section.get("static_endpoint_configs", []), *section.get("dynamic_endpoint_configs", [])]
        for entry in entries:
            config = entry.get("endpoint_config") or {}
            name = str(config.get("cluster_name", ""))
            addresses = found.setdefault(name, set())
            for locality in config.get("endpoints", []) or []:
                for lb in locality.get("lb_endpoints", []) or []:
                    if lb.get("health_status", "HEALTHY") not in ("HEALTHY", "UNKNOWN"):
                        continue
                    socket = ((lb.get("endpoint") or {}).get("address") or {}).get("socket_address") or {}
                    if socket.get("address"):
                        addresses.add(str(socket["address"]))
    return {name: frozenset(addresses) for name, addresses in found.items()}


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready condition True, not being deleted, and an IP: what makes it an endpoint."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []) or []
    )
    return ready and bool(status.get("podIP"))


@dataclass(frozen=True)
class KubeTimeouts:
    """Deadlines of the long steps, in seconds; generous because first runs pull images."""

    create_cluster: float = 600.0
    nodes_ready: float = 180.0
    istio_install: float = 600.0
    istio_ready: float = 300.0
    load_image: float = 300.0
    rollout: float = 180.0
    prune: float = 120.0
    command: float = 60.0


#: The default deadlines (a frozen dataclass: one shared instance is safe).
DEFAULT_TIMEOUTS = KubeTimeouts()


def _stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def new_run_id() -> str:
    """A run id that sorts by time and is unique on a machine: ``20261126-100501-3fa2c1``.

    The docker backend's format, and a valid label value (63 characters at most, alphanumeric
    at both ends).
    """
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)




class KubeMesh:
    """A stage on a Kubernetes cluster with Istio's ingress gateway: the Mesh protocol's apply,
    converge, dump and endpoint_labels, shared by the kind and existing-cluster backends.

    A backend sets up :attr:`_api` (and with it the cluster) in its ``up()``, and may
    override :meth:`_prepare` (rewrite objects before they are applied and compared),
    :attr:`prune_selector`, :meth:`_dump_backend` and :attr:`step_error`.
    """

    name = "kube"
    #: The error type a failed step raises (a backend's own subclass names the backend).
    step_error: type[MeshStepError] = MeshStepError

    def __init__(
        self,
        plan: Any = None,
        *,
        kubeconfig: Path,
        context: str | None = None,
        gateway_namespace: str = ISTIO_NAMESPACE,
        gateway_selector: str = GATEWAY_SELECTOR,
        artifacts_dir: Path | str = Path("artifacts") / "kube",
        run_id: str | None = None,
        resolve_tool: Callable[[str], str] = proc.tool,
        api_factory: Callable[..., KubeAPI] | None = None,
        timeouts: KubeTimeouts = DEFAULT_TIMEOUTS,
        progress: Callable[[str], None] | None = _stderr_progress,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._plan = plan
        self.kubeconfig = Path(kubeconfig)
        self.context = context
        self.gateway_namespace = gateway_namespace
        self.gateway_selector = gateway_selector
        self.artifacts_dir = Path(artifacts_dir)
        #: Labels every object this run applies; prune and teardown select it (module docstring).
        self.run_id = run_id or new_run_id()
        self._resolve_tool = resolve_tool
        self._api_factory = api_factory
        self.timeouts = timeouts
        self._progress = progress
        self._clock = clock
        self._sleep = sleep
        self.image_refs: dict[str, str] = {}
        self._api: KubeAPI | None = None
        self._started_at: float | None = None
        self._up = False
        self._last_seen: dict[str, str] = {}
        #: The objects of the stage last applied; pruned against once converge() has passed.
        self._pending_prune: list[dict[str, Any]] | None = None
        #: Whether the attribution EnvoyFilter is in the cluster because this run applied it.
        self._filter_applied = False
        #: Held from up() to the end of down(): SIGTERM unwinds as SystemExit(143) into down().
        self._sigterm = teardown_on_sigterm()

    def _teardown(self, steps: Sequence[Callable[[], None]]) -> None:
        """Run every teardown step, then release the SIGTERM hold.

        A first SIGTERM that arrives during a step raises :class:`abtest_harness.signals.Terminated`
        there; the step is run once more (later SIGTERMs are ignored while the hold lasts), the
        remaining steps still run, and Terminated is raised at the end so the process exits 143.
        """
        interrupted: Terminated | None = None
        try:
            for step in steps:
                try:
                    step()
                except Terminated as exc:
                    log.warning("SIGTERM during teardown: finishing the teardown first")
                    interrupted = exc
                    step()
        finally:
            self._sigterm.deactivate()
        if interrupted is not None:
            raise interrupted

    def _bring_up(self, steps: Sequence[tuple[str, Callable[[], None]]]) -> None:
        """Hold SIGTERM until down() ends, run up()'s `steps` in order, then mark the backend up.

        Each step goes through :meth:`_step`; any failure (or Ctrl-C, or SIGTERM) calls down()
        and re-raises, so up() never leaves half a setup behind.
        """
        self._sigterm.activate()
        self._started_at = self._clock()
        try:
            for step, action in steps:
                self._step(step, action)
        except BaseException:
            self.down()
            raise
        self._up = True

    def _step(self, step: str, action: Callable[[], None]) -> None:
        """Run one step of up(), timed; a failure dumps diagnostics and raises :attr:`step_error` naming it."""
        started = self._clock()
        self._say(f"{step}: start")
        try:
            action()
        except Exception as exc:
            where = self._dump_failure(step)
            raise self.step_error(step, exc, where) from exc
        self._say(f"{step}: done in {self._clock() - started:.1f}s")

    def _close_api(self) -> None:
        """Close the API client, if any; safe to call twice."""
        if self._api is not None:
            self._api.close()
            self._api = None

    def _connect(self) -> KubeAPI:
        """A client for our kubeconfig (and context)."""
        if self._api_factory is not None:
            return self._api_factory(self.kubeconfig) if self.context is None else self._api_factory(
                self.kubeconfig, self.context
            )
        return KubeAPI.from_kubeconfig(self.kubeconfig, context=self.context)

    def _kubectl(self, *args: str) -> list[str]:
        """kubectl argv with our kubeconfig and context: never the user's default kubeconfig."""
        argv = [self._resolve_tool("kubectl"), "--kubeconfig", str(self.kubeconfig)]
        if self.context:
            argv += ["--context", self.context]
        return [*argv, *args]

    def _prepare(self, objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The objects as this backend applies and compares them (here: copies, unchanged)."""
        return [copy.deepcopy(dict(o)) for o in objects]

    @property
    def plan(self) -> Any:
        """The rollout plan (loaded from manifests/stages.yaml unless one was given)."""
        if self._plan is None:
            from abtest_harness.plan import load_plan

            self._plan = load_plan()
        return self._plan

    # ------------------------------------------------------------------ up / down

    @property
    def gateway_url(self) -> str:  # pragma: no cover - every backend defines its own
        """Where requests go."""
        raise NotImplementedError

    @property
    def admin_url(self) -> str:
        """Where the gateway's admin endpoint is: inside the pod only (read via kubectl exec)."""
        return f"kubectl-exec://{self.gateway_namespace}/{self.gateway_selector}:{GATEWAY_ADMIN_PORT}"

    def up(self) -> None:  # pragma: no cover - every backend defines its own
        raise NotImplementedError

    def down(self) -> None:  # pragma: no cover - every backend defines its own
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Server-side apply `objects` in two phases; what they dropped is pruned by converge().

        Make-before-break, so a request never meets a route to pods that are not ready yet
        (a 503 for pinned requests) nor to pods already gone:

        1. workloads: the Namespace first, then Services, ConfigMaps and Deployments; then a
           wait until every Deployment's rollout is complete;
        2. routing: DestinationRules (so any subset exists before a route names it), then
           Gateways and VirtualServices;
        3. (in :meth:`converge`, once the gateway serves the new routes and endpoints) prune:
           the objects the stage no longer has (routing first, see _PRUNABLE). Pruning here,
           before the gateway has the new routes, would delete pods the gateway still sends
           weighted traffic to (Blue_Green -> Green_100 deletes model-blue).

        Container images of the plan's repositories are pointed at the refs built in up(),
        so a stage rendered with the default ``:dev`` refs runs the side-loaded images.
        """
        self._require_up()
        try:
            prepared = [self._with_run_id(self._with_image_refs(obj)) for obj in self._prepare(objects)]
            for obj in prepared:
                labels = (obj.get("metadata", {}) or {}).get("labels", {}) or {}
                if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE:
                    raise ConfigError(
                        _ref(obj),
                        f"metadata.labels.{MANAGED_BY_LABEL}",
                        f"must be {MANAGED_BY_VALUE!r} (prune relies on it)",
                    )
            # sorted() is stable: within a rank the stage's own order is kept.
            ordered = sorted(prepared, key=_apply_rank)
            workloads = [o for o in ordered if o.get("kind") not in _ROUTING_KINDS]
            routing = [o for o in ordered if o.get("kind") in _ROUTING_KINDS]
            api = self._require_api()
            for obj in workloads:
                api.apply(obj)
            self._say(
                f"apply: {len(workloads)} workload objects applied (server-side, field manager {FIELD_MANAGER})"
            )
            for obj in workloads:
                if obj.get("kind") == "Deployment":
                    meta = obj["metadata"]
                    self._wait_deployment(str(meta["namespace"]), str(meta["name"]), self.timeouts.rollout)
            for obj in routing:
                api.apply(obj)
            self._say(f"apply: {len(routing)} routing objects applied, after the workloads were ready")
            self._pending_prune = ordered
        except Exception as exc:
            where = self._dump_failure("apply")
            raise self.step_error("apply", exc, where) from exc

    def converge(self, objects: list[dict[str, Any]], timeout: float = 30.0) -> None:
        """Wait until the gateway routes as the manifests say, to the pods that are ready now.

        Two checks on one ``config_dump?include_eds`` of the gateway's Envoy: its route table
        equals the one expected from `objects` (the comparison the local mesh makes), and for
        every cluster a route can pick, the healthy endpoints Envoy holds are exactly the pod
        IPs of the Ready pods behind it. The second catches the window after a rollout in
        which the routes are new but istiod has not yet pushed the new pods, where a request
        would get a 503 that says nothing about the routing under test.

        The admin port listens on localhost inside the gateway pod, so neither the API
        server's pod proxy nor a Service reaches it; ``kubectl exec ... pilot-agent request GET``
        runs Istio's own admin client inside the pod (the python client's exec and
        port-forward need a websocket upgrade, which kubectl already does).
        """
        self._require_up()
        from abtest_harness.mesh.base import diff_route_tables, expected_route_table, route_table_from_config_dump

        objects = self._prepare(objects)
        expected = expected_route_table(objects)
        diff = {"last": "no config_dump read yet"}
        deadline = self._clock() + timeout

        seen: dict[str, str | None] = {"mismatch": None}
        failures: dict[str, str] = {}
        transient = (CommandError, json.JSONDecodeError, GatewayPodNotReady, TransientKubeAPIError)

        def compare() -> object | None:
            # Each exec gets the time left at most, so converge(timeout=30) ends near 30 s,
            # not up to a whole command timeout later.
            left = max(deadline - self._clock(), _MIN_EXEC_TIMEOUT)
            dump = self.gateway_config_dump(include_eds=True, timeout=min(self.timeouts.command, left))
            live = route_table_from_config_dump(dump)
            if live != expected:
                seen["mismatch"] = diff_route_tables(expected, live)
                return None
            if self._filter_applied and not attribution_headers_live(dump):
                seen["mismatch"] = "routes match, the attribution headers are not on the gateway's routes yet"
                return None
            lagging = self._endpoint_mismatches(objects, expected.clusters, endpoints_from_config_dump(dump))
            if lagging:
                seen["mismatch"] = "routes match, endpoints do not yet: " + "; ".join(lagging)
                return None
            return live

        def probe() -> object | None:
            # Named transients only: a failed or timed-out exec, output cut short (not JSON),
            # no Running gateway pod (a restart), an unreachable API. Any other error, e.g. a
            # ValueError from a config_dump we cannot read, is a bug: raised at once. A
            # transient read keeps the last mismatch seen in the message: a timeout then says
            # how the gateway differed, not only that its last read failed.
            try:
                found = compare()
            except transient as exc:
                # The last three distinct failures: a read timed out near the deadline does
                # not hide that the reads before it were cut short, say.
                text = f"{type(exc).__name__}: {exc}"
                failures.pop(text, None)
                failures[text] = text
                while len(failures) > 3:
                    failures.pop(next(iter(failures)))
                reads = "; ".join(failures)
                mismatch = seen["mismatch"]
                diff["last"] = reads if mismatch is None else f"{mismatch}\n(reads that failed: {reads})"
                return None
            diff["last"] = str(seen["mismatch"])
            return found

        def wait(what: str, limit: float) -> None:
            try:
                wait_until(
                    probe,
                    what=what,
                    timeout=limit,
                    interval=0.2,
                    max_interval=2.0,
                    describe=lambda _: diff["last"],
                    progress=self._say,
                    clock=self._clock,
                    sleep=self._sleep,
                )
            except WaitTimeout as exc:
                where = self._dump_failure("converge")
                if where:
                    exc.add_note(f"step 'converge' failed; diagnostics in {where}")
                raise

        started = self._clock()
        wait(f"the ingress gateway of {self.where} to serve the manifests' routes", timeout)
        self._say(f"converge: gateway routes and endpoints match after {self._clock() - started:.1f}s")
        if self._prune_pending():
            # The pruned pods must leave the gateway's endpoints too, before any request is
            # sampled: a header route to a pruned version must give the manifests' 503, not
            # an answer from a pod that is going away.
            seen["mismatch"] = None
            failures.clear()
            started = self._clock()
            wait(f"the ingress gateway of {self.where} to drop the pruned endpoints", timeout)
            self._say(f"converge: the gateway dropped the pruned endpoints after {self._clock() - started:.1f}s")

    def _prune_pending(self) -> list[str]:
        """Prune what the last applied stage dropped, now that the gateway no longer routes to it.

        Returns the REST paths deleted (empty when there was nothing to prune).
        """
        pending, self._pending_prune = self._pending_prune, None
        if pending is None:
            return []
        try:
            return self._prune(pending)
        except Exception as exc:
            where = self._dump_failure("prune")
            raise self.step_error("prune", exc, where) from exc

    @property
    def where(self) -> str:
        """What the progress lines and errors call this cluster."""
        return self.context or str(self.kubeconfig)

    def _endpoint_mismatches(
        self,
        objects: Sequence[Mapping[str, Any]],
        clusters: Iterable[str],
        live: Mapping[str, frozenset[str]],
    ) -> list[str]:
        """Clusters whose gateway endpoints differ from the Ready pods behind them, one line each."""
        from abtest_harness.mesh.envoy import upstreams

        by_name = {u.name: u for u in upstreams(objects)}
        api = self._require_api()
        out: list[str] = []
        for cluster in sorted(clusters):
            upstream = by_name.get(cluster)
            if upstream is None or not upstream.selector:
                continue  # not a Service of these objects, or one without a selector: nothing to compare
            namespace = upstream.fqdn.split(".")[1]
            selector = ",".join(f"{k}={v}" for k, v in sorted(upstream.selector.items()))
            want = frozenset(
                str(pod["status"]["podIP"])
                for pod in api.list(f"/api/v1/namespaces/{namespace}/pods", selector)
                if _pod_ready(pod)
            )
            have = live.get(cluster, frozenset())
            if have != want:
                out.append(
                    f"{cluster}: gateway has {sorted(have) or 'none'}, ready pods {sorted(want) or 'none'}"
                )
        return out

    def gateway_config_dump(self, *, include_eds: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """The ingress gateway Envoy's admin ``/config_dump`` (with endpoints: ``?include_eds``).

        `timeout` bounds the ``kubectl exec`` (default: the command timeout). Raises
        GatewayPodNotReady when no gateway pod is Running, json.JSONDecodeError when the output
        is not JSON (an exec cut short), HarnessError when it is JSON but not an object.
        """
        pod = self._gateway_pod()
        path = "config_dump?include_eds" if include_eds else "config_dump"
        done = proc.run(
            self._kubectl(
                "-n", self.gateway_namespace, "exec", pod, "-c", "istio-proxy",
                "--", "pilot-agent", "request", "GET", path,
            ),
            timeout=self.timeouts.command if timeout is None else timeout,
        )
        value = json.loads(done.stdout)
        if not isinstance(value, dict):
            raise HarnessError(f"config_dump of {pod} is not a JSON object: {done.stdout[:200]!r}")
        return value

    def dump(self, directory: Path) -> None:
        """Write kind's logs, pod logs, events, our objects and the gateway config_dump.

        Best effort: each part that fails is listed in ``dump-errors.txt`` and the rest is
        still written; never raises for a failed part (it runs while handling a failure).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        errors: list[str] = []

        def attempt(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - collected and written, see docstring
                errors.append(f"{what}: {type(exc).__name__}: {exc}")

        self._dump_backend(directory, attempt)
        if self._api is not None:
            attempt("pod logs", lambda: self._dump_pod_logs(directory / "pods", errors))
            for ns in self._dump_namespaces():
                attempt(f"events in {ns}", partial(self._dump_events, ns, directory))
            attempt("objects", lambda: self._dump_objects(directory / "objects.yaml"))
            attempt(
                "gateway config_dump",
                lambda: (directory / "gateway-config_dump.json").write_text(
                    json.dumps(self.gateway_config_dump(), indent=1)
                ),
            )
        if errors:
            (directory / "dump-errors.txt").write_text("\n".join(errors) + "\n")

    def _dump_backend(self, directory: Path, attempt: Callable[[str, Callable[[], object]], None]) -> None:
        """A backend's own diagnostics (kind: ``kind export logs``); nothing here."""

    def _dump_namespaces(self) -> list[str]:
        return list(dict.fromkeys((self.plan_namespace(), self.gateway_namespace)))

    def plan_namespace(self) -> str:
        """The namespace the stages deploy to."""
        return str(getattr(self._plan, "namespace", None) or "abtesting")

    # ------------------------------------------------------------------ helpers

    def _say(self, message: str) -> None:
        started = self._started_at if self._started_at is not None else self._clock()
        line = f"[kind +{self._clock() - started:6.1f}s] {message}"
        log.info("%s", line)
        if self._progress is not None:
            self._progress(line)

    def _require_api(self) -> KubeAPI:
        if self._api is None:
            raise HarnessError(
                f"the {self.name} backend is not up: call up() (or use it as a context manager) first"
            )
        return self._api

    def _require_up(self) -> None:
        if not self._up:
            raise HarnessError(
                f"the {self.name} backend is not up: call up() (or use it as a context manager) first"
            )

    def _dump_failure(self, step: str) -> Path | None:
        where = self.artifacts_dir / f"failure-{step}"
        try:
            self.dump(where)
        except OSError as exc:
            log.error("could not write diagnostics to %s: %s", where, exc)
            return None
        self._say(f"{step}: failed; diagnostics written to {where}")
        return where

    def _wait_deployment(self, namespace: str, name: str, timeout: float) -> dict[str, Any]:
        """Wait until a Deployment's rollout is complete, from its status fields.

        Complete: the controller has seen the latest spec (observedGeneration), every
        replica runs it (updatedReplicas), is available, and no old replica is left (replicas).
        """
        api = self._require_api()
        path = f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"
        seen = {"last": "not found"}

        def probe() -> dict[str, Any] | None:
            deployment = api.get(path)
            if deployment is None:
                seen["last"] = "not found"
                return None
            want = int(deployment.get("spec", {}).get("replicas", 1))
            status = deployment.get("status", {}) or {}
            generation = int(deployment.get("metadata", {}).get("generation", 0))
            observed = int(status.get("observedGeneration", 0))
            updated = int(status.get("updatedReplicas", 0))
            available = int(status.get("availableReplicas", 0))
            total = int(status.get("replicas", 0))
            seen["last"] = (
                f"generation {generation} observed {observed}, replicas {total}/{want}, "
                f"updated {updated}, available {available}"
            )
            done = observed >= generation and updated == want and available == want and total == want
            return deployment if done else None

        started = self._clock()
        result = wait_until(
            probe,
            what=f"Deployment {namespace}/{name} to finish its rollout",
            timeout=timeout,
            interval=0.2,
            max_interval=3.0,
            transient=(TransientKubeAPIError,),
            describe=lambda _: seen["last"],
            progress=self._say,
            clock=self._clock,
            sleep=self._sleep,
        )
        self._say(f"rollout: Deployment {namespace}/{name} available after {self._clock() - started:.1f}s")
        return result

    def endpoint_labels(self) -> dict[str, dict[str, str]]:
        """``"ip:port"`` -> pod labels, for every pod with an IP in the stage's namespace.

        One entry per port any of the pod's containers declares (init containers included),
        which is what the gateway's ``%UPSTREAM_HOST%`` names when a Service targets it.
        """
        api = self._require_api()
        out: dict[str, dict[str, str]] = {}
        for pod in api.list(f"/api/v1/namespaces/{self.plan_namespace()}/pods"):
            ip = (pod.get("status") or {}).get("podIP")
            if not ip:
                continue
            labels = {str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items()}
            spec = pod.get("spec") or {}
            for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                for port in container.get("ports") or []:
                    if port.get("containerPort") and str(port.get("protocol", "TCP")) == "TCP":
                        out[f"{ip}:{int(port['containerPort'])}"] = dict(labels)
        return out

    @property
    def attribution_filter(self) -> dict[str, Any]:
        """This run's attribution EnvoyFilter (see :func:`attribution_filter`)."""
        return attribution_filter(self.gateway_namespace, selector_labels(self.gateway_selector), self.run_id)

    def _apply_attribution_filter(self) -> None:
        api = self._require_api()
        api.apply(self.attribution_filter)
        self._filter_applied = True
        self._say(
            f"attribution: EnvoyFilter {self.gateway_namespace}/{self.attribution_filter['metadata']['name']} "
            f"adds {UPSTREAM_HOST_HEADER} and {UPSTREAM_CLUSTER_HEADER} on the gateway"
        )

    def _remove_attribution_filter(self) -> None:
        """Delete this run's EnvoyFilter if this run applied it; a failure is logged, not raised."""
        if not self._filter_applied or self._api is None:
            return
        self._filter_applied = False
        path = object_path(self.attribution_filter)
        try:
            self._api.delete(path, propagation="Background")
        except HarnessError as exc:
            log.error("could not delete %s: %s", path, exc)
            self._say(f"attribution: delete failed ({exc}); remove it with: kubectl delete envoyfilter "
                      f"-n {self.gateway_namespace} {self.attribution_filter['metadata']['name']}")

    def _prune(self, applied: Iterable[Mapping[str, Any]]) -> list[str]:
        """Delete the objects :attr:`prune_selector` selects in the stage's namespaces that
        `applied` no longer contains, and wait until they (and their pods) are gone.

        Objects the selector does not match, and namespaces the stage does not use, are never
        touched. Kinds are visited routing first (_PRUNABLE).
        """
        api = self._require_api()
        applied = list(applied)
        keep = {
            (
                str(o.get("kind")),
                (o.get("metadata", {}) or {}).get("namespace"),
                (o.get("metadata", {}) or {}).get("name"),
            )
            for o in applied
        }
        namespaces = sorted(
            {
                str(o["metadata"]["namespace"])
                for o in applied
                if o.get("kind") not in _CLUSTER_SCOPED and o.get("metadata", {}).get("namespace")
            }
        )
        selector = self.prune_selector
        deleted: list[str] = []
        for namespace in namespaces:
            for api_version, kind in _PRUNABLE:
                for item in api.list(collection_path(api_version, kind, namespace), selector):
                    name = (item.get("metadata", {}) or {}).get("name")
                    if (kind, namespace, name) in keep:
                        continue
                    path = f"{collection_path(api_version, kind, namespace)}/{name}"
                    if api.delete(path):
                        self._say(f"prune: deleting {kind} {namespace}/{name} (not in this stage)")
                        deleted.append(path)
        for path in deleted:
            self._wait_deleted(api, path, f"{path} to be deleted (with its pods)")
        return deleted

    def _wait_deleted(self, api: KubeAPI, path: str, what: str) -> None:
        """Wait up to ``timeouts.prune`` until `path` is gone from the API; WaitTimeout naming `what` if not."""

        def gone() -> bool:
            return api.get(path) is None

        wait_until(
            gone,
            what=what,
            timeout=self.timeouts.prune,
            interval=0.2,
            max_interval=3.0,
            transient=(TransientKubeAPIError,),
            progress=self._say,
            clock=self._clock,
            sleep=self._sleep,
        )

    @property
    def prune_selector(self) -> str:
        """The label selector of what prune may delete (in the stage's namespaces): this run's objects."""
        return f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{RUN_ID_LABEL}={self.run_id}"

    def _with_run_id(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` (already a copy) labelled with this run's id.

        Only ``metadata.labels``: a pod template label would change the template, and so
        roll every Deployment of a reused cluster for nothing but a new id.
        """
        meta = obj.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), RUN_ID_LABEL: self.run_id}
        return obj

    def _with_image_refs(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of `obj` whose containers of the plan's image repositories use the built refs."""
        result = copy.deepcopy(dict(obj))
        if result.get("kind") != "Deployment" or not self.image_refs:
            return result
        by_repository = {
            spec.repository: self.image_refs[key]
            for key, spec in self.plan.images.items()
            if key in self.image_refs
        }
        containers = result.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []) or []
        for container in containers:
            ref = by_repository.get(repository_of(str(container.get("image", ""))))
            if ref is not None:
                container["image"] = ref
        return result

    def _gateway_pod(self) -> str:
        pods = self._require_api().list(f"/api/v1/namespaces/{self.gateway_namespace}/pods", self.gateway_selector)
        running = [
            p
            for p in pods
            if p.get("status", {}).get("phase") == "Running"
            and not p.get("metadata", {}).get("deletionTimestamp")
        ]
        if not running:
            states = ", ".join(
                f"{p.get('metadata', {}).get('name')} {p.get('status', {}).get('phase', '?')}" for p in pods
            )
            raise GatewayPodNotReady(
                f"no Running pod with label {self.gateway_selector} in {self.gateway_namespace} "
                f"(pods: {states or 'none'})"
            )
        return str(sorted(p["metadata"]["name"] for p in running)[0])

    def _dump_pod_logs(self, directory: Path, errors: list[str]) -> None:
        api = self._require_api()
        for namespace in self._dump_namespaces():
            for pod in api.list(f"/api/v1/namespaces/{namespace}/pods"):
                name = pod.get("metadata", {}).get("name")
                spec = pod.get("spec", {}) or {}
                # Init containers too: a native sidecar (istio-proxy with restartPolicy Always)
                # is one, and so is a failing istio-init.
                for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
                    cname = container.get("name")
                    try:
                        text = api.get_text(
                            f"/api/v1/namespaces/{namespace}/pods/{name}/log", [("container", str(cname))]
                        )
                    except KubeAPIError as exc:
                        errors.append(f"logs of {namespace}/{name}/{cname}: {exc}")
                        continue
                    target = directory / namespace / f"{name}.{cname}.log"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text or "")

    def _dump_events(self, namespace: str, directory: Path) -> None:
        events = self._require_api().list(f"/api/v1/namespaces/{namespace}/events")
        events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        lines = []
        for e in events:
            about = e.get("involvedObject") or {}
            lines.append(
                f"{e.get('lastTimestamp') or e.get('eventTime') or '-'} {e.get('type', '')} "
                f"{about.get('kind', '')}/{about.get('name', '')} "
                f"{e.get('reason', '')}: {e.get('message', '')}"
            )
        (directory / f"events-{namespace}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))

    def _dump_objects(self, target: Path) -> None:
        api = self._require_api()
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
        found: list[dict[str, Any]] = []
        for api_version, kind in _PRUNABLE:
            found.extend(api.list(collection_path(api_version, kind, self.plan_namespace()), selector))
        target.write_text(yaml.safe_dump_all(found, sort_keys=False))
