"""KindIstioMesh: the rollout on a real kind cluster with Istio's ingress gateway.

The steps of :meth:`KindIstioMesh.up`, each named in any error it raises:

``cluster``
    ``kind create cluster`` from ``manifests/kind/cluster.yaml`` (node image pinned by digest,
    the gateway's NodePort published on 127.0.0.1), or reuse of an existing cluster of the same
    name (``kind get clusters``). The kubeconfig is the harness's own file under the cache
    directory: ``--kubeconfig`` for kind and kubectl, ``KUBECONFIG`` for istioctl. The user's
    ``~/.kube/config`` is never read or written.
``istio``
    ``istioctl install -y -f manifests/istio/operator.yaml`` (minimal profile plus the ingress
    gateway as NodePort 30080), istioctl from PATH or downloaded and checked
    (:mod:`harness.istioctl`); then a wait on the istiod and gateway Deployments' status.
``images``
    the scorer images built with the docker SDK (:func:`harness.images.build_scorer_images`,
    content-derived tags) and side-loaded with ``kind load docker-image``.

Then :meth:`apply` server-side-applies a stage (field manager ``abtest-harness``), waits for
the Deployments' status, and prunes what the stage dropped; :meth:`converge` reads the
gateway Envoy's ``config_dump`` and compares its route table with the manifests'.

Run id: every object applied carries ``app.kubernetes.io/managed-by=abtest-harness`` and
``abtest-harness/run-id=<run id>`` (a fresh id per KindIstioMesh, see :func:`new_run_id`),
and prune selects both labels, so it removes exactly what this run applied and never
another run's objects sharing the namespace. In a reused cluster, an object an earlier run
left that this run applies again is taken over (server-side apply with ``force``) and gets
this run's id; one this run never applies keeps the earlier id and is left alone.

A failure in any step writes diagnostics (``kind export logs``, pod logs, events, the
gateway's config_dump) under the artifacts directory, tears down as :meth:`KindIstioMesh.down`
does, and raises :class:`KindStepError` naming the step.

Teardown deletes only a cluster this run created (``kind create cluster`` ran, even if it
failed half-way), and not even that with ``keep_cluster``. A reused cluster (one that
existed before ``up()``) is never deleted: someone else made it, perhaps to keep it.

>>> mesh = KindIstioMesh(cluster_name="abtest-demo", keep_cluster=True)
>>> mesh.gateway_url
'http://127.0.0.1:30080'
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from pytest_kubernetes.options import ClusterOptions
from pytest_kubernetes.providers.kind import KindManagerBase

from harness import istioctl as istioctl_mod
from harness import proc
from harness.errors import CommandError, ConfigError, HarnessError, WaitTimeout
from harness.plan import repository_of
from harness.wait import wait_until

log = logging.getLogger(__name__)

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
KIND_CONFIG = REPO_ROOT / "manifests" / "kind" / "cluster.yaml"
ISTIO_OPERATOR = REPO_ROOT / "manifests" / "istio" / "operator.yaml"
DEFAULT_CLUSTER_NAME = "abtest"  # the same default as the --cluster-name option
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
# The least time a converge probe's exec gets near the deadline, so it is never given <= 0 s.
_MIN_EXEC_TIMEOUT = 0.5

# kind -> REST collection name. A static table rather than API discovery: these are the only
# kinds a stage renders, and an unknown kind should be an error, not a guess.
_PLURALS = {
    "Namespace": "namespaces",
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


class KindStepError(HarnessError):
    """A step of the kind backend failed; `step` names it, the cause is chained.

    `artifacts` is where diagnostics were written (None if nothing could be).
    """

    def __init__(self, step: str, cause: BaseException, artifacts: Path | None) -> None:
        self.step = step
        self.cause = cause
        self.artifacts = artifacts
        where = f"; diagnostics in {artifacts}" if artifacts else ""
        super().__init__(f"kind backend: step {step!r} failed: {cause}{where}")


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
    def from_kubeconfig(cls, path: Path, *, timeout: float = 30.0) -> KubeAPI:
        """A client for the current context of the kubeconfig file at `path`."""
        from kubernetes import config as k8s_config

        client = k8s_config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
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


# ----------------------------------------------------------------------------- cluster lifecycle


class KindCluster(KindManagerBase):  # type: ignore[misc]  # pytest-kubernetes ships no type hints
    """pytest-kubernetes' kind manager (0.9.0), with the parts that do not hold up replaced.

    Kept: the ``kind create cluster`` argv it builds from the config file and kubeconfig
    path, ``kind load docker-image ... --name``, and its record of whether this run created
    the cluster (``create()`` reuses an existing one). Replaced, and why:

    * ``_exec``: it joins argv into one string for a shell (a path with a space
      breaks) and passes ``env=os.environ.update(...)``, which is None; here argv goes through
      :func:`harness.proc.run` (logged, timeout, CommandError with stderr).
    * ``_set_cluster_name``: it prefixes names with ``pytest-`` and, given a config file,
      tracks the file's ``name`` while kind would create ``kind`` when there is none; here the
      name given is the name used, and ``--name`` is always passed.
    * ``ready``: it polls ``kubectl get --raw='/readyz?verbose'`` with ``sleep(1)`` and greps
      the text; here it asks ``kind get clusters`` whether the cluster exists, and the backend
      then waits for Node status through the API.
    * ``_on_delete``/``delete``: it runs ``kind delete cluster`` without ``--kubeconfig``
      (kind then edits the default kubeconfig, the user's ``~/.kube/config``) and sleeps 1 s.
      Its rule is kept, though: only a cluster this run set out to create is deleted
      (:attr:`create_attempted`); the backend adds ``keep_cluster`` on top.

    Disabled (they raise NotImplementedError, so no shell path is reachable through this
    class): ``apply(dict)`` (pipes YAML through ``echo '...'`` in a shell, which breaks on the
    ``'*'`` hosts of our Gateway: :meth:`KindIstioMesh.apply` applies through the API),
    ``kubectl()``, ``wait()``, ``logs()`` and ``version()`` (the same shell layer),
    ``port_forwarding()`` (test traffic goes through kind's port mapping) and ``reset()``
    (its ``create()`` has no config, so it would build a default v1.25 cluster). Not used
    either: the pytest plugin's ``k8s`` fixture
    (``--k8s-provider-config`` is refused while ``--k8s-cluster-name`` has its default,
    and its default node image, ``kindest/node:v1.25.3``, is older than any Kubernetes
    Istio 1.30 supports).
    """

    _USE_INSTEAD = (
        "KindIstioMesh.apply() (server-side apply through the API), KubeAPI for reads, "
        "KindIstioMesh.dump() for logs"
    )

    def __init__(self, name: str, kind_binary: str, kubeconfig: Path, *, command_timeout: float) -> None:
        self._kind = kind_binary
        self._command_timeout = command_timeout
        #: True once ``kind create cluster`` was started: from then on the cluster is this
        #: run's to delete, also when the create failed half-way (kind may leave nodes behind).
        #: pytest-kubernetes' own ``_created`` cannot say this: it is True by default, so a
        #: failed ``kind get clusters`` would look like "created".
        self.create_attempted = False
        super().__init__(cluster_name=name, kubeconfig=kubeconfig)

    @property
    def _exec_path(self) -> Path:
        return Path(self._kind)

    def _set_cluster_name(self, cluster_name: str | None, provider_config: Any) -> str:
        if cluster_name:
            self._cluster_options.cluster_name = cluster_name
        if provider_config:
            self._cluster_options.provider_config = Path(provider_config)
        return str(self._cluster_options.cluster_name)

    def _exec(
        self, arguments: list[str], additional_env: dict[str, str] | None = None, timeout: float | None = None
    ) -> Any:
        # Without an explicit timeout, the cluster timeout (pytest-kubernetes' own rule): its
        # create() calls _on_create() -> _exec() without one, and a first `kind create cluster`
        # pulls the node image, which takes minutes, not the seconds a query takes.
        return proc.run(
            [self._kind, *arguments],
            timeout=timeout or self._cluster_options.cluster_timeout or self._command_timeout,
            env=additional_env or None,
        )

    def exists(self) -> bool:
        """Whether ``kind get clusters`` lists this cluster's name."""
        done = self._exec(["get", "clusters"], timeout=self._command_timeout)
        return self.cluster_name in str(done.stdout).split()

    def ready(self, timeout: int = 20) -> bool:
        return self.exists()

    def _disabled(self, method: str) -> NotImplementedError:
        return NotImplementedError(
            f"KindCluster.{method}() is disabled: pytest-kubernetes runs it through a shell "
            f"(one command string, YAML via echo '...'); use {self._USE_INSTEAD}"
        )

    def apply(self, input: Any) -> None:  # noqa: A002 - the base class's signature
        """Disabled: see the class docstring; apply with :meth:`KindIstioMesh.apply`."""
        raise self._disabled("apply")

    def kubectl(self, args: Any, as_dict: bool = True, timeout: int = 60) -> Any:
        """Disabled: see the class docstring."""
        raise self._disabled("kubectl")

    def wait(self, name: str, waitfor: str, timeout: int = 90, namespace: str = "default") -> None:
        """Disabled: see the class docstring; the backend waits on status fields through the API."""
        raise self._disabled("wait")

    def logs(self, pod: str, container: str | None = None, namespace: str | None = None) -> str:
        """Disabled: see the class docstring; pod logs are written by :meth:`KindIstioMesh.dump`."""
        raise self._disabled("logs")

    def version(self) -> tuple[int, int]:
        """Disabled: see the class docstring."""
        raise self._disabled("version")

    def port_forwarding(self, *args: Any, **kwargs: Any) -> Any:
        """Disabled: test traffic goes through kind's port mapping on 127.0.0.1."""
        raise self._disabled("port_forwarding")

    def reset(self) -> None:
        """Disabled: a create without our config would make a default cluster."""
        raise self._disabled("reset")

    def _on_create(self, cluster_options: ClusterOptions, **kwargs: Any) -> None:
        # pytest-kubernetes calls this only when ready() said the cluster does not exist.
        self.create_attempted = True
        super()._on_create(cluster_options, **kwargs)

    def create_or_reuse(self, config: Path, *, timeout: float, wait: str = "120s") -> bool:
        """Create the cluster from `config`, or reuse one of this name; True if created now.

        A reused cluster is recorded as not created, so :meth:`delete_if_created` leaves it.
        """
        self._cluster_options.cluster_timeout = int(timeout)
        self.create(
            ClusterOptions(
                provider_config=config, kubeconfig_path=self.kubeconfig, cluster_timeout=int(timeout)
            ),
            options=["--name", self.cluster_name, "--wait", wait],
        )
        return bool(self._created)

    def export_kubeconfig(self) -> None:
        """Write this cluster's kubeconfig to our own file (reuse: kind made the first one)."""
        self._exec(
            ["export", "kubeconfig", "--name", self.cluster_name, "--kubeconfig", str(self.kubeconfig)],
            timeout=self._command_timeout,
        )

    def load_image(self, image: str, timeout: float | None = None) -> None:
        self._exec(["load", "docker-image", image, "--name", self.cluster_name], timeout=timeout)

    def export_logs(self, directory: Path) -> None:
        """``kind export logs``: node journals, container logs, kubelet and containerd state."""
        # Node journals and container logs: more than a query, less than a cluster creation.
        self._exec(
            ["export", "logs", str(directory), "--name", self.cluster_name], timeout=4 * self._command_timeout
        )

    def _on_delete(self) -> None:
        self._exec(
            ["delete", "cluster", "--name", self.cluster_name, "--kubeconfig", str(self.kubeconfig)],
            timeout=4 * self._command_timeout,
        )

    def delete(self) -> None:
        """Delete the cluster if this run created it (see :attr:`create_attempted`), with our kubeconfig.

        A reused cluster is left as it is: deleting what another run made (or kept on
        purpose) is not this run's call. kind treats a missing cluster as deleted.
        """
        if not self.create_attempted:
            return
        self._on_delete()
        self.create_attempted = False
        if self.kubeconfig:
            self.kubeconfig.unlink(missing_ok=True)


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


# ----------------------------------------------------------------------------- the mesh


@dataclass(frozen=True)
class KindTimeouts:
    """Deadlines of the long steps, in seconds; generous because first runs pull images."""

    create_cluster: float = 600.0
    nodes_ready: float = 180.0
    istio_install: float = 600.0
    istio_ready: float = 300.0
    load_image: float = 300.0
    rollout: float = 180.0
    prune: float = 120.0
    command: float = 60.0


def _stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _kind_config_ports(config: Path) -> tuple[int, int]:
    """(node port, host port) of the 127.0.0.1 mapping in the kind config."""
    data = yaml.safe_load(config.read_text())
    for node in data.get("nodes", []) or []:
        for mapping in node.get("extraPortMappings", []) or []:
            if mapping.get("listenAddress") == "127.0.0.1":
                return int(mapping["containerPort"]), int(mapping["hostPort"])
    raise ConfigError(str(config), "nodes[].extraPortMappings", "no mapping with listenAddress 127.0.0.1")


def new_run_id() -> str:
    """A run id that sorts by time and is unique on a machine: ``20261126-100501-3fa2c1``.

    The docker backend's format, and a valid label value (63 characters at most, alphanumeric
    at both ends).
    """
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class KindIstioMesh:
    """The `kind` backend of the Mesh protocol: kind cluster, Istio ingress gateway, real images.

    Parameters are the CLI/pytest options of the same names. The collaborators (tool
    lookup, docker client, image builder, API client factory, clock) are injectable so the
    contract tests can put fakes at each process and API boundary.

    Cluster ownership: an existing cluster named `cluster_name` is reused and never deleted;
    a cluster this run creates is deleted by :meth:`down` (also after a failed :meth:`up`)
    unless `keep_cluster`, which leaves it for the next run to reuse.
    """

    name = "kind"

    def __init__(
        self,
        plan: Any = None,
        *,
        cluster_name: str = DEFAULT_CLUSTER_NAME,
        keep_cluster: bool = False,
        artifacts_dir: Path | str = Path("artifacts") / "kind",
        cache_dir: Path | str | None = None,
        kind_config: Path = KIND_CONFIG,
        istio_operator: Path = ISTIO_OPERATOR,
        istio_version: str = istioctl_mod.ISTIO_VERSION,
        istio_base_url: str | None = None,
        base_image: str | None = None,
        run_id: str | None = None,
        docker_client: Any = None,
        build_images: Callable[..., Mapping[str, str]] | None = None,
        resolve_tool: Callable[[str], str] = proc.tool,
        api_factory: Callable[[Path], KubeAPI] = KubeAPI.from_kubeconfig,
        timeouts: KindTimeouts = KindTimeouts(),
        progress: Callable[[str], None] | None = _stderr_progress,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._plan = plan
        self.cluster_name = cluster_name
        self.keep_cluster = keep_cluster
        self.artifacts_dir = Path(artifacts_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else istioctl_mod.default_cache_dir()
        self.kind_config = Path(kind_config)
        self.istio_operator = Path(istio_operator)
        self.istio_version = istio_version
        self.istio_base_url = istio_base_url
        self.base_image = base_image
        #: Labels every object this run applies; prune and teardown select it (module docstring).
        self.run_id = run_id or new_run_id()
        self.docker_client = docker_client
        self._build_images = build_images
        self._resolve_tool = resolve_tool
        self._api_factory = api_factory
        self.timeouts = timeouts
        self._progress = progress
        self._clock = clock
        self._sleep = sleep
        self.node_port, self.host_port = _kind_config_ports(self.kind_config)
        #: Our own kubeconfig: kind writes it, kubectl and istioctl read it; ~/.kube/config is left alone.
        self.kubeconfig = self.cache_dir / "kind" / f"{cluster_name}.kubeconfig"
        self.image_refs: dict[str, str] = {}
        self.created_cluster = False
        self._cluster: KindCluster | None = None
        self._api: KubeAPI | None = None
        self._started_at: float | None = None
        self._up = False
        self._cluster_touched = False
        self._last_seen: dict[str, str] = {}
        self._sigterm_installed = False
        self._tearing_down = False

    # ------------------------------------------------------------------ Mesh protocol surface

    @property
    def gateway_url(self) -> str:
        """The ingress gateway through kind's port mapping on loopback."""
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def admin_url(self) -> str:
        """Where the gateway's admin endpoint is: inside the pod only (read via kubectl exec)."""
        return f"kubectl-exec://{ISTIO_NAMESPACE}/{GATEWAY}:{GATEWAY_ADMIN_PORT}"

    def __enter__(self) -> KindIstioMesh:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    @property
    def plan(self) -> Any:
        """The rollout plan (loaded from manifests/stages.yaml unless one was given)."""
        if self._plan is None:
            from harness.plan import load_plan

            self._plan = load_plan()
        return self._plan

    # ------------------------------------------------------------------ up / down

    def up(self) -> None:
        """Create or reuse the cluster, install Istio, build and side-load the images.

        On a failure: diagnostics into ``<artifacts>/failure-<step>``, then :meth:`down`
        (which deletes the cluster only if this run created it and ``keep_cluster`` is off),
        and KindStepError naming the step. Ctrl-C and SIGTERM also tear down (see
        :meth:`_handle_sigterm`).
        """
        if self._up:
            return
        self._handle_sigterm()
        self._started_at = self._clock()
        try:
            self._step("cluster", self._up_cluster)
            self._step("istio", self._up_istio)
            self._step("images", self._up_images)
        except BaseException:
            self.down()
            raise
        self._up = True
        self._say(f"ready: gateway {self.gateway_url} (cluster {self.cluster_name})")

    def down(self) -> None:
        """Delete the cluster if this run created it and ``keep_cluster`` is off.

        A reused cluster is never deleted, nor its kubeconfig (it still describes a cluster
        that exists). Safe to call twice or before up(); up() calls it on its own failures.
        """
        self._tearing_down = True
        try:
            self._down()
        finally:
            self._tearing_down = False
            self._restore_sigterm()

    def _handle_sigterm(self) -> None:
        """Turn SIGTERM into SystemExit(143) while this mesh is up, as Ctrl-C is KeyboardInterrupt.

        A cancelled CI job gets SIGTERM, whose default kills the process at once: no
        ``with``/``finally`` runs and the cluster is left behind. As the docker backend
        does (:func:`harness.mesh.containers.register_cleanup`), the handler is installed only
        when none is set (a program's or test runner's own handler is left to decide) and only
        from the main thread (the only one allowed to). A SIGTERM during :meth:`down` is noted
        and does not interrupt the teardown it would otherwise cut short.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._sigterm_installed = True

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._tearing_down:
            log.warning("SIGTERM during teardown of kind cluster %s: finishing the teardown", self.cluster_name)
            return
        raise SystemExit(128 + signum)

    def _restore_sigterm(self) -> None:
        if not self._sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        self._sigterm_installed = False
        if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _down(self) -> None:
        self._up = False
        if self._api is not None:
            self._api.close()
            self._api = None
        cluster, self._cluster = self._cluster, None
        if cluster is None or not self._cluster_touched:
            return
        self._cluster_touched = False
        if not cluster.create_attempted:
            self._say(
                f"cluster: leaving {self.cluster_name} as it was found (reused, not created by this run); "
                f"delete it with: kind delete cluster --name {self.cluster_name}"
            )
            return
        if self.keep_cluster:
            self._say(
                f"keeping cluster {self.cluster_name}: kubectl --kubeconfig {self.kubeconfig} get pods -A; "
                f"delete it with: kind delete cluster --name {self.cluster_name}"
            )
            return
        self._say(f"cluster: deleting {self.cluster_name}")
        try:
            cluster.delete()
        except (CommandError, OSError) as exc:
            # Teardown must not hide the error that caused it; say what is left and how to remove it.
            log.error("could not delete kind cluster %s: %s", self.cluster_name, exc)
            self._say(
                f"cluster: delete failed ({exc}); "
                f"remove it with: kind delete cluster --name {self.cluster_name}"
            )

    # ------------------------------------------------------------------ steps of up()

    def _step(self, step: str, action: Callable[[], None]) -> None:
        started = self._clock()
        self._say(f"{step}: start")
        try:
            action()
        except Exception as exc:
            where = self._dump_failure(step)
            raise KindStepError(step, exc, where) from exc
        self._say(f"{step}: done in {self._clock() - started:.1f}s")

    def _up_cluster(self) -> None:
        kind = self._resolve_tool("kind")
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        cluster = KindCluster(self.cluster_name, kind, self.kubeconfig, command_timeout=self.timeouts.command)
        self._cluster = cluster
        # From here on down() has to look at the cluster: delete it if the create below ran
        # (cluster.create_attempted), leave it if it was reused; dump() may export its logs.
        self._cluster_touched = True
        self._say(f"cluster: creating or reusing {self.cluster_name} from {self.kind_config}")
        self.created_cluster = cluster.create_or_reuse(self.kind_config, timeout=self.timeouts.create_cluster)
        if self.created_cluster:
            self._say(f"cluster: created {self.cluster_name}")
        else:
            self._say(f"cluster: reusing existing {self.cluster_name}")
            cluster.export_kubeconfig()
        self._api = self._api_factory(self.kubeconfig)
        wait_until(
            self._nodes_ready,
            what=f"every node of kind cluster {self.cluster_name} to be Ready",
            timeout=self.timeouts.nodes_ready,
            interval=0.5,
            max_interval=5.0,
            transient=(TransientKubeAPIError,),
            describe=lambda _: self._last_seen.get("nodes", "no node listed yet"),
            progress=self._say,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _up_istio(self) -> None:
        api = self._require_api()
        if not self.created_cluster and self._istio_installed():
            self._say(
                f"istio: {self.istio_version} already installed in {self.cluster_name}, install skipped"
            )
        else:
            istioctl = istioctl_mod.ensure_istioctl(
                self.istio_version,
                cache_dir=self.cache_dir,
                base_url=self.istio_base_url,
                progress=self._say,
            )
            self._say(f"istio: istioctl install {self.istio_version} from {self.istio_operator}")
            proc.run(
                [istioctl, "install", "-y", "-f", str(self.istio_operator)],
                timeout=self.timeouts.istio_install,
                env={"KUBECONFIG": str(self.kubeconfig)},
            )
        for name in (ISTIOD, GATEWAY):
            self._wait_deployment(ISTIO_NAMESPACE, name, self.timeouts.istio_ready)
        service = api.get(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/services/{GATEWAY}") or {}
        node_ports = [
            p.get("nodePort") for p in service.get("spec", {}).get("ports", []) or [] if p.get("port") == 80
        ]
        if node_ports != [self.node_port]:
            raise ConfigError(
                f"Service {ISTIO_NAMESPACE}/{GATEWAY}",
                "spec.ports[port=80].nodePort",
                f"is {node_ports or 'missing'}, but {self.kind_config.name} maps node port {self.node_port} "
                f"to 127.0.0.1:{self.host_port}; fix {self.istio_operator.name} or delete the cluster",
            )

    def _up_images(self) -> None:
        build = self._build_images
        if build is None:
            from harness.images import build_scorer_images

            build = build_scorer_images
        self._say("images: building the scorer images")
        refs = dict(
            build(self.plan, base_image=self.base_image, client=self.docker_client, progress=self._say)
        )
        cluster = self._require_cluster()
        for key in sorted(refs):
            started = self._clock()
            self._say(f"images: kind load docker-image {refs[key]}")
            cluster.load_image(refs[key], timeout=self.timeouts.load_image)
            self._say(f"images: {key} loaded in {self._clock() - started:.1f}s")
        self.image_refs = refs

    # ------------------------------------------------------------------ apply / converge / dump

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Server-side apply `objects` in two phases, then prune what they dropped.

        Make-before-break, in three steps, so a request never meets a route to pods that are
        not ready yet (a 503 for pinned requests) nor to pods already gone:

        1. workloads: the Namespace first, then Services, ConfigMaps and Deployments; then a
           wait until every Deployment's rollout is complete;
        2. routing: DestinationRules (so any subset exists before a route names it), then
           Gateways and VirtualServices;
        3. prune: this run's objects the stage no longer has (routing first, see _PRUNABLE).

        Container images of the plan's repositories are pointed at the refs built in up(),
        so a stage rendered with the default ``:dev`` refs runs the side-loaded images.
        """
        self._require_up()
        try:
            prepared = [self._with_run_id(self._with_image_refs(obj)) for obj in objects]
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
            self._prune(ordered)
        except Exception as exc:
            where = self._dump_failure("apply")
            raise KindStepError("apply", exc, where) from exc

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
        from harness.mesh.base import diff_route_tables, expected_route_table, route_table_from_config_dump

        expected = expected_route_table(objects)
        diff = {"last": "no config_dump read yet"}
        deadline = self._clock() + timeout

        def probe() -> object | None:
            # Each exec gets the time left at most, so converge(timeout=30) ends near 30 s,
            # not up to a whole command timeout later.
            left = max(deadline - self._clock(), _MIN_EXEC_TIMEOUT)
            dump = self.gateway_config_dump(include_eds=True, timeout=min(self.timeouts.command, left))
            live = route_table_from_config_dump(dump)
            if live != expected:
                diff["last"] = diff_route_tables(expected, live)
                return None
            lagging = self._endpoint_mismatches(objects, expected.clusters, endpoints_from_config_dump(dump))
            if lagging:
                diff["last"] = "routes match, endpoints do not yet: " + "; ".join(lagging)
                return None
            return live

        started = self._clock()
        try:
            wait_until(
                probe,
                what=f"the ingress gateway of {self.cluster_name} to serve the manifests' routes",
                timeout=timeout,
                interval=0.2,
                max_interval=2.0,
                # Named transients only: a failed or timed-out exec, output cut short (not JSON),
                # no Running gateway pod (a restart), an unreachable API. Any other error,
                # e.g. a ValueError from a config_dump we cannot read, is a bug: raised at once.
                transient=(CommandError, json.JSONDecodeError, GatewayPodNotReady, TransientKubeAPIError),
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
        self._say(f"converge: gateway routes and endpoints match after {self._clock() - started:.1f}s")

    def _endpoint_mismatches(
        self,
        objects: Sequence[Mapping[str, Any]],
        clusters: Iterable[str],
        live: Mapping[str, frozenset[str]],
    ) -> list[str]:
        """Clusters whose gateway endpoints differ from the Ready pods behind them, one line each."""
        from harness.mesh.envoy import upstreams

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
        kubectl = self._resolve_tool("kubectl")
        path = "config_dump?include_eds" if include_eds else "config_dump"
        done = proc.run(
            [
                kubectl,
                "--kubeconfig",
                str(self.kubeconfig),
                "-n",
                ISTIO_NAMESPACE,
                "exec",
                pod,
                "-c",
                "istio-proxy",
                "--",
                "pilot-agent",
                "request",
                "GET",
                path,
            ],
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

        cluster = self._cluster
        if cluster is not None and self._cluster_touched:
            attempt("kind export logs", lambda: cluster.export_logs(directory / "kind-logs"))
        if self._api is not None:
            attempt("pod logs", lambda: self._dump_pod_logs(directory / "pods", errors))
            for ns in (self.plan_namespace(), ISTIO_NAMESPACE):
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

    def plan_namespace(self) -> str:
        """The namespace the stages deploy to."""
        return str(getattr(self._plan, "namespace", None) or "abtesting")

    def endpoint_labels(self) -> dict[str, dict[str, str]]:
        """``"podIP:port"`` -> pod labels of every Ready pod in the stages' namespace."""
        from harness.mesh.workloads import endpoint_labels_of_pods

        return endpoint_labels_of_pods(self._require_api().list(f"/api/v1/namespaces/{self.plan_namespace()}/pods"))

    # ------------------------------------------------------------------ helpers

    def _say(self, message: str) -> None:
        started = self._started_at if self._started_at is not None else self._clock()
        line = f"[kind +{self._clock() - started:6.1f}s] {message}"
        log.info("%s", line)
        if self._progress is not None:
            self._progress(line)

    def _require_cluster(self) -> KindCluster:
        if self._cluster is None:
            raise HarnessError("the kind backend is not up: call up() (or use it as a context manager) first")
        return self._cluster

    def _require_api(self) -> KubeAPI:
        if self._api is None:
            raise HarnessError("the kind backend is not up: call up() (or use it as a context manager) first")
        return self._api

    def _require_up(self) -> None:
        if not self._up:
            raise HarnessError("the kind backend is not up: call up() (or use it as a context manager) first")

    def _dump_failure(self, step: str) -> Path | None:
        where = self.artifacts_dir / f"failure-{step}"
        try:
            self.dump(where)
        except OSError as exc:
            log.error("could not write diagnostics to %s: %s", where, exc)
            return None
        self._say(f"{step}: failed; diagnostics written to {where}")
        return where

    def _nodes_ready(self) -> bool:
        nodes = self._require_api().list("/api/v1/nodes")
        states = []
        for node in nodes:
            ready = next(
                (
                    c.get("status")
                    for c in node.get("status", {}).get("conditions", []) or []
                    if c.get("type") == "Ready"
                ),
                "Unknown",
            )
            states.append(f"{node.get('metadata', {}).get('name')} Ready={ready}")
        self._last_seen = {**self._last_seen, "nodes": ", ".join(states) or "no nodes"}
        return bool(nodes) and all(s.endswith("Ready=True") for s in states)

    def _istio_installed(self) -> bool:
        """istiod of the pinned version and the gateway Deployment exist (reused cluster)."""
        api = self._require_api()
        istiod = api.get(f"/apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments/{ISTIOD}")
        gateway = api.get(f"/apis/apps/v1/namespaces/{ISTIO_NAMESPACE}/deployments/{GATEWAY}")
        if not istiod or not gateway:
            return False
        images = [
            c.get("image", "")
            for c in istiod.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        ]
        return any(str(image).endswith(f":{self.istio_version}") for image in images)

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

    def _prune(self, applied: Iterable[Mapping[str, Any]]) -> None:
        """Delete the harness's objects in the stage's namespaces that `applied` no longer contains.

        Selected by the managed-by label alone, not by run id: the stage's objects have fixed
        names in namespaces the harness owns, so two runs can never share them, and what an
        earlier run left in a kept cluster (its model-blue when this run starts at baseline)
        must go, or it would answer requests this stage routes to a 503. Objects without the
        label, and namespaces the stage does not use, are never touched. The run-id label
        says which run applied an object last.
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

        def gone(path: str) -> bool:
            return api.get(path) is None

        for path in deleted:
            wait_until(
                partial(gone, path),
                what=f"{path} to be deleted (with its pods)",
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
        """The label selector of what prune may delete (in the stage's namespaces): managed by us."""
        return f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"

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
        pods = self._require_api().list(f"/api/v1/namespaces/{ISTIO_NAMESPACE}/pods", GATEWAY_SELECTOR)
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
                f"no Running pod with label {GATEWAY_SELECTOR} in {ISTIO_NAMESPACE} (pods: {states or 'none'})"
            )
        return str(sorted(p["metadata"]["name"] for p in running)[0])

    def _dump_pod_logs(self, directory: Path, errors: list[str]) -> None:
        api = self._require_api()
        for namespace in (self.plan_namespace(), ISTIO_NAMESPACE):
            for pod in api.list(f"/api/v1/namespaces/{namespace}/pods"):
                name = pod.get("metadata", {}).get("name")
                for container in pod.get("spec", {}).get("containers", []) or []:
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
