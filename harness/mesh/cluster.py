"""ClusterMesh: the rollout on a cluster you already run, with its Istio ingress gateway.

``--mesh cluster`` for users who have a cluster with Istio (the reference guide assumes one).
The harness installs nothing cluster-wide and creates no namespace:

* the cluster is the `context` of the `kubeconfig` file the user names (both required; the
  default context is never guessed);
* each stage is applied into the `namespace` the user names (it must exist): every object is
  moved there (``metadata.namespace``, and the ``<svc>.<ns>.svc.cluster.local`` hosts and
  ``<ns>/<gateway>`` references of the routing objects), and the stage's Namespace object is
  dropped;
* requests go to the gateway at the `gateway_url` the user gives. This is the only mode whose
  traffic leaves the machine, and only to that URL;
* the one object outside that namespace is the attribution EnvoyFilter in the gateway's
  namespace (it makes the gateway name the endpoint it chose; see
  :func:`abtest_harness.mesh.kube.attribution_filter`), named after this run and removed at teardown;
* teardown removes exactly what this run applied: objects carrying this run's id. Before it
  applies an object, the backend checks that no object of that name exists there unless this
  run applied it, so a user's own Service or Deployment is never taken over (server-side apply
  would otherwise make it ours, and teardown would delete it).

With ``judge_live`` nothing at all is applied (not even the EnvoyFilter): :meth:`apply` only
records the stage, and :meth:`converge` checks that the gateway already serves it, so the
stage that is live is judged as it is. The attribution headers must then already be on the
gateway (apply :func:`~abtest_harness.mesh.kube.attribution_filter`'s object yourself).

Convergence, statistics and reports are the same as with kind (:class:`~abtest_harness.mesh.kube.KubeMesh`).
Images are not built or loaded: the stage's images must be pullable by the cluster (point the
plan's images at your registry).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from abtest_harness import proc
from abtest_harness.errors import ConfigError, HarnessError
from abtest_harness.http1 import load_target
from abtest_harness.mesh.kube import (
    _CLUSTER_SCOPED,
    _PRUNABLE,
    DEFAULT_TIMEOUTS,
    GATEWAY_SELECTOR,
    ISTIO_NAMESPACE,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RUN_ID_LABEL,
    GatewayPodNotReady,
    KubeAPI,
    KubeMesh,
    KubeTimeouts,
    MeshStepError,
    TransientKubeAPIError,
    _stderr_progress,
    collection_path,
    object_path,
)
from abtest_harness.wait import wait_until

log = logging.getLogger(__name__)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ROUTING_HOST_KINDS = {"VirtualService", "DestinationRule"}


class ClusterStepError(MeshStepError):
    """A step of the existing-cluster backend failed; `step` names it, the cause is chained."""

    backend = "cluster"


def retarget(objects: Sequence[Mapping[str, Any]], source: str, target: str) -> list[dict[str, Any]]:
    """Copies of `objects` moved from namespace `source` to `target`; Namespace objects dropped.

    Rewritten: ``metadata.namespace``; in VirtualServices and DestinationRules every host
    ``<name>.<source>.svc.cluster.local`` (or ``<name>.<source>.svc``) and every gateway
    reference ``<source>/<gateway>``. Short names (``model-svc-blue``) resolve in the object's
    own namespace and need no change.
    """
    import copy

    suffixes = (f".{source}.svc.cluster.local", f".{source}.svc")

    def host(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        for suffix in suffixes:
            if value.endswith(suffix):
                return value[: -len(suffix)] + suffix.replace(f".{source}.", f".{target}.", 1)
        return value

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                if key == "host":
                    out[key] = host(value)
                elif key == "hosts" and isinstance(value, list):
                    out[key] = [host(v) for v in value]
                elif key == "gateways" and isinstance(value, list):
                    out[key] = [
                        f"{target}/{v.split('/', 1)[1]}" if isinstance(v, str) and v.startswith(f"{source}/") else v
                        for v in value
                    ]
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: list[dict[str, Any]] = []
    for obj in objects:
        if obj.get("kind") in _CLUSTER_SCOPED:
            continue
        moved = copy.deepcopy(dict(obj))
        moved.setdefault("metadata", {})["namespace"] = target
        if moved.get("kind") in _ROUTING_HOST_KINDS and isinstance(moved.get("spec"), dict):
            moved["spec"] = walk(moved["spec"])
        result.append(moved)
    return result


def check_gateway_url(url: str) -> str:
    """`url` if it is an http URL with a host and no path beyond ``/``; ConfigError otherwise.

    Plain http only: the load generator speaks HTTP/1.1 without TLS (point it at the
    gateway's http port, as the reference Gateway's port-80 server is).
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            "--gateway-url",
            url,
            "must be http://HOST[:PORT] (the load generator speaks plain HTTP, no TLS; "
            "for a gateway reachable only over TLS, port-forward its HTTP port to 127.0.0.1)",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("--gateway-url", url, "must name the gateway only (no path, query or fragment)")
    return url.rstrip("/")


class ClusterMesh(KubeMesh):
    """The `cluster` backend of the Mesh protocol: an existing cluster, its Istio gateway, a namespace.

    See the module docstring for what it touches. `kubeconfig`, `context`, `namespace` and
    `gateway_url` are required and checked at construction (ConfigError naming the option).
    """

    name = "cluster"
    step_error = ClusterStepError

    def __init__(
        self,
        plan: Any = None,
        *,
        kubeconfig: Path | str,
        context: str,
        namespace: str,
        gateway_url: str,
        judge_live: bool = False,
        gateway_namespace: str = ISTIO_NAMESPACE,
        gateway_selector: str = GATEWAY_SELECTOR,
        artifacts_dir: Path | str = Path("artifacts") / "cluster",
        run_id: str | None = None,
        resolve_tool: Callable[[str], str] = proc.tool,
        api_factory: Callable[..., KubeAPI] | None = None,
        timeouts: KubeTimeouts = DEFAULT_TIMEOUTS,
        progress: Callable[[str], None] | None = _stderr_progress,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        path = Path(kubeconfig).expanduser()
        if not path.is_file():
            raise ConfigError("--kubeconfig", str(kubeconfig), "no such file")
        if not context:
            raise ConfigError("--context", "", "name the kubeconfig context to use (the default one is never guessed)")
        if not namespace or not _DNS_LABEL.match(namespace):
            raise ConfigError("--namespace", namespace, "must be an existing namespace's name (a DNS label)")
        super().__init__(
            plan,
            kubeconfig=path,
            context=context,
            gateway_namespace=gateway_namespace,
            gateway_selector=gateway_selector,
            artifacts_dir=artifacts_dir,
            run_id=run_id,
            resolve_tool=resolve_tool,
            api_factory=api_factory,
            timeouts=timeouts,
            progress=progress,
            clock=clock,
            sleep=sleep,
        )
        self.namespace = namespace
        self.judge_live = judge_live
        self._gateway_url = check_gateway_url(gateway_url)

    # ------------------------------------------------------------------ Mesh protocol surface

    @property
    def gateway_url(self) -> str:
        """The gateway URL the user gave (the only place this backend's traffic goes)."""
        return self._gateway_url

    @property
    def allowed_gateway_url(self) -> str:
        """The one non-loopback URL the load run may send to (`abtest_harness.traffic.allowed_url_of`)."""
        return self._gateway_url

    @property
    def where(self) -> str:
        return f"context {self.context}"

    def plan_namespace(self) -> str:
        """The namespace the user named: every stage is applied there."""
        return self.namespace

    def up(self) -> None:
        """Connect, check the namespace and the gateway, apply the attribution EnvoyFilter.

        Nothing is created but the EnvoyFilter (and not that with ``judge_live``). Any
        failure: diagnostics, teardown of what this run applied, ClusterStepError naming the step.
        """
        if self._up:
            return
        steps = [("connect", self._up_connect)]
        if not self.judge_live:
            steps.append(("attribution", self._apply_attribution_filter))
        self._bring_up(steps)
        mode = "judging the live stage, applying nothing" if self.judge_live else f"applying into {self.namespace}"
        self._say(f"ready: gateway {self.gateway_url} ({self.where}, {mode}, run {self.run_id})")

    def down(self) -> None:
        """Delete what this run applied (its objects, then its EnvoyFilter); safe to call twice.

        A SIGTERM during it does not cut it short (see :meth:`KubeMesh._teardown`).
        """
        self._up = False
        self._pending_prune = None
        self._teardown([self._delete_applied, self._remove_attribution_filter, self._close_api])

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Apply the stage into the namespace (make-before-break, as kind); with ``judge_live``, nothing."""
        self._require_up()
        if self.judge_live:
            self._say("judge-live: nothing applied; converge checks the gateway already serves the stage")
            return
        try:
            self._refuse_foreign(self._prepare(objects))
        except Exception as exc:
            where = self._dump_failure("apply")
            raise self.step_error("apply", exc, where) from exc
        super().apply(objects)

    def _prepare(self, objects: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        source = str(getattr(self._plan, "namespace", None) or _stage_namespace(objects) or self.namespace)
        return retarget(objects, source, self.namespace)

    # ------------------------------------------------------------------ steps

    def _up_connect(self) -> None:
        # The gateway's name must resolve before anything is applied (the load resolves it again).
        load_target(self.gateway_url, allowed=self.allowed_gateway_url)
        self._api = self._connect()
        api = self._api
        if api.get(f"/api/v1/namespaces/{self.namespace}") is None:
            raise ConfigError(
                "--namespace",
                self.namespace,
                f"does not exist in {self.where}: the harness creates nothing cluster-wide; "
                f"create it (kubectl create namespace {self.namespace}) or name another",
            )
        wait_until(
            lambda: self._gateway_pod(),
            what=f"a Running gateway pod ({self.gateway_selector}) in {self.gateway_namespace}",
            timeout=self.timeouts.command,
            interval=0.5,
            max_interval=3.0,
            transient=(TransientKubeAPIError, GatewayPodNotReady),
            progress=self._say,
            clock=self._clock,
            sleep=self._sleep,
        )

    def _refuse_foreign(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """ConfigError for an object that exists but was not applied by this run (never taken over)."""
        api = self._require_api()
        for obj in objects:
            path = object_path(obj)
            live = api.get(path)
            if live is None:
                continue
            labels = (live.get("metadata") or {}).get("labels") or {}
            if labels.get(RUN_ID_LABEL) == self.run_id:
                continue
            meta = obj.get("metadata") or {}
            owner = (
                f"an earlier abtest run ({labels.get(RUN_ID_LABEL)})"
                if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
                else "someone else"
            )
            raise ConfigError(
                f"{obj.get('kind')} {self.namespace}/{meta.get('name')}",
                "metadata.name",
                f"already exists, made by {owner}; the harness does not take over objects it did not apply: "
                f"use an empty namespace, remove it, or judge the live stage (--judge-live)",
            )

    def _delete_applied(self) -> None:
        """Delete this run's objects in the namespace (by run id) and wait until they are gone."""
        if self._api is None or self.judge_live:
            return
        api = self._api
        selector = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{RUN_ID_LABEL}={self.run_id}"
        doomed: list[str] = []
        for api_version, kind in _PRUNABLE:
            collection = collection_path(api_version, kind, self.namespace)
            try:
                items = api.list(collection, selector)
            except HarnessError as exc:
                log.error("teardown: could not list %s: %s", collection, exc)
                self._say(f"teardown: could not list {kind} in {self.namespace} ({exc}); "
                          f"check with: kubectl get all -n {self.namespace} -l {selector}")
                continue
            for item in items:
                path = f"{collection}/{(item.get('metadata') or {}).get('name')}"
                try:
                    if api.delete(path):
                        self._say(f"teardown: deleting {kind} {self.namespace}/{item['metadata']['name']}")
                        doomed.append(path)
                except HarnessError as exc:
                    log.error("teardown: could not delete %s: %s", path, exc)
        for path in doomed:
            try:
                self._wait_deleted(api, path, f"{path} to be deleted")
            except HarnessError as exc:
                log.error("teardown: %s", exc)


def _stage_namespace(objects: Sequence[Mapping[str, Any]]) -> str | None:
    """The namespace the rendered stage uses (its objects' common metadata.namespace)."""
    found = {
        str((o.get("metadata") or {}).get("namespace"))
        for o in objects
        if o.get("kind") not in _CLUSTER_SCOPED and (o.get("metadata") or {}).get("namespace")
    }
    return found.pop() if len(found) == 1 else None


def cluster_mesh(plan: Any, options: Any, *, progress: Callable[[str], None] | None = None) -> ClusterMesh:
    """The ClusterMesh `options` (:class:`abtest_harness.rollout.MeshOptions`) ask for.

    A missing option is a ConfigError naming it.
    """
    missing = [
        flag
        for flag, value in (
            ("--kubeconfig", options.kubeconfig),
            ("--context", options.context),
            ("--namespace", options.namespace),
            ("--gateway-url", options.gateway_url),
        )
        if not value
    ]
    if missing:
        raise ConfigError("--mesh cluster", missing[0], f"required with --mesh cluster (missing: {', '.join(missing)})")
    return ClusterMesh(
        plan,
        kubeconfig=options.kubeconfig,
        context=options.context,
        namespace=options.namespace,
        gateway_url=options.gateway_url,
        judge_live=options.judge_live,
        artifacts_dir=Path(options.artifacts_dir) / "cluster",
        progress=progress if progress is not None else _stderr_progress,
    )
