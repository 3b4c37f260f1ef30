"""KindIstioMesh: the rollout on a kind cluster the harness creates, with Istio's ingress gateway.

The steps of :meth:`KindIstioMesh.up`, each named in any error it raises:

``cluster``
    ``kind create cluster`` from ``manifests/kind/cluster.yaml`` (node image pinned by digest,
    the gateway's NodePort published on 127.0.0.1), or reuse of an existing cluster of the same
    name (``kind get clusters``) whose control-plane container publishes that same mapping
    (``docker inspect``). The kubeconfig is the harness's own file under the cache directory:
    ``--kubeconfig`` for kind and kubectl, ``KUBECONFIG`` for istioctl. The user's
    ``~/.kube/config`` is never read or written.
``istio``
    ``istioctl install -y -f manifests/istio/operator.yaml`` (minimal profile plus the ingress
    gateway as NodePort 30080), istioctl from PATH or downloaded and checked
    (:mod:`abtest_harness.istioctl`); then a wait on the istiod and gateway Deployments' status, and
    the attribution EnvoyFilter (:func:`abtest_harness.mesh.kube.attribution_filter`).
``images``
    the scorer images built with the docker SDK (:func:`abtest_harness.images.build_scorer_images`,
    content-derived tags) and side-loaded with ``kind load docker-image``.

Applying a stage, convergence, the prune after it and the diagnostics are the shared
Kubernetes part (:class:`abtest_harness.mesh.kube.KubeMesh`).

Prune selects the managed-by label alone in the stage's namespaces (not the run id): the
stage's objects have fixed names in a namespace the harness owns, so what an earlier run
left in a kept cluster must go. In a reused cluster, an object an earlier run left that this
run applies again is taken over (server-side apply with ``force``) and gets this run's id.

A failure in any step writes diagnostics (``kind export logs``, pod logs, events, the
gateway's config_dump) under the artifacts directory, tears down as :meth:`KindIstioMesh.down`
does, and raises :class:`KindStepError` naming the step.

Teardown deletes only a cluster this run created (``kind create cluster`` ran, even if it
failed half-way), and not even that with ``keep_cluster``. A reused cluster (one that
existed before ``up()``) is never deleted: someone else made it, perhaps to keep it; only
this run's EnvoyFilter is removed from it.

>>> mesh = KindIstioMesh(cluster_name="abtest-demo", keep_cluster=True)
>>> mesh.gateway_url
'http://127.0.0.1:30080'
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pytest_kubernetes.options import ClusterOptions
from pytest_kubernetes.providers.kind import KindManagerBase

from abtest_harness import istioctl as istioctl_mod
from abtest_harness import proc
from abtest_harness.errors import CommandError, ConfigError, HarnessError
from abtest_harness.mesh.kube import (
    DEFAULT_TIMEOUTS,
    GATEWAY,
    GATEWAY_ADMIN_PORT,
    ISTIO_NAMESPACE,
    ISTIOD,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    KubeAPI,
    KubeAPIError,
    KubeMesh,
    KubeTimeouts,
    MeshStepError,
    TransientKubeAPIError,
    _stderr_progress,
    endpoints_from_config_dump,
    new_run_id,
)
from abtest_harness.wait import wait_until

__all__ = [
    "KindCluster",
    "KindIstioMesh",
    "KindStepError",
    "KindTimeouts",
    "KubeAPI",
    "KubeAPIError",
    "endpoints_from_config_dump",
    "new_run_id",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
KIND_CONFIG = REPO_ROOT / "manifests" / "kind" / "cluster.yaml"
ISTIO_OPERATOR = REPO_ROOT / "manifests" / "istio" / "operator.yaml"
DEFAULT_CLUSTER_NAME = "abtest"  # the same default as the --cluster-name option
#: kind names a cluster's control-plane node container ``<cluster>-control-plane``.
CONTROL_PLANE_SUFFIX = "-control-plane"

#: The deadlines of the kind backend (the shared set: cluster creation, Istio, images, ...).
KindTimeouts = KubeTimeouts


class KindStepError(MeshStepError):
    """A step of the kind backend failed; `step` names it, the cause is chained."""

    backend = "kind"


# ----------------------------------------------------------------------------- cluster lifecycle


class KindCluster(KindManagerBase):  # type: ignore[misc]  # pytest-kubernetes ships no type hints
    """pytest-kubernetes' kind manager (0.9.0), with the parts that do not hold up replaced.

    Kept: the ``kind create cluster`` argv it builds from the config file and kubeconfig
    path, ``kind load docker-image ... --name``, and its record of whether this run created
    the cluster (``create()`` reuses an existing one). Replaced, and why:

    * ``_exec``: it joins argv into one string for a shell (a path with a space
      breaks) and passes ``env=os.environ.update(...)``, which is None; here argv goes through
      :func:`abtest_harness.proc.run` (logged, timeout, CommandError with stderr).
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


def _kind_config_ports(config: Path) -> tuple[int, int]:
    """(node port, host port) of the 127.0.0.1 mapping in the kind config."""
    data = yaml.safe_load(config.read_text())
    for node in data.get("nodes", []) or []:
        for mapping in node.get("extraPortMappings", []) or []:
            if mapping.get("listenAddress") == "127.0.0.1":
                return int(mapping["containerPort"]), int(mapping["hostPort"])
    raise ConfigError(str(config), "nodes[].extraPortMappings", "no mapping with listenAddress 127.0.0.1")




class KindIstioMesh(KubeMesh):
    """The `kind` backend of the Mesh protocol: kind cluster, Istio ingress gateway, real images.

    Parameters are the CLI/pytest options of the same names. The collaborators (tool
    lookup, docker client, image builder, API client factory, clock) are injectable so the
    contract tests can put fakes at each process and API boundary.

    Cluster ownership: an existing cluster named `cluster_name` is reused and never deleted;
    a cluster this run creates is deleted by :meth:`down` (also after a failed :meth:`up`)
    unless `keep_cluster`, which leaves it for the next run to reuse.
    """

    name = "kind"
    step_error = KindStepError

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
        api_factory: Callable[..., KubeAPI] | None = None,
        inspect_ports: Callable[[str], Mapping[str, Any]] | None = None,
        timeouts: KubeTimeouts = DEFAULT_TIMEOUTS,
        progress: Callable[[str], None] | None = _stderr_progress,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else istioctl_mod.default_cache_dir()
        super().__init__(
            plan,
            #: Our own kubeconfig: kind writes it, kubectl and istioctl read it; ~/.kube/config is left alone.
            kubeconfig=self.cache_dir / "kind" / f"{cluster_name}.kubeconfig",
            artifacts_dir=artifacts_dir,
            run_id=run_id,
            resolve_tool=resolve_tool,
            api_factory=api_factory,
            timeouts=timeouts,
            progress=progress,
            clock=clock,
            sleep=sleep,
        )
        self.cluster_name = cluster_name
        self.keep_cluster = keep_cluster
        self.kind_config = Path(kind_config)
        self.istio_operator = Path(istio_operator)
        self.istio_version = istio_version
        self.istio_base_url = istio_base_url
        self.base_image = base_image
        self.docker_client = docker_client
        self._build_images = build_images
        self._inspect_ports = inspect_ports
        self.node_port, self.host_port = _kind_config_ports(self.kind_config)
        self.created_cluster = False
        self._cluster: KindCluster | None = None
        self._cluster_touched = False
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

    def up(self) -> None:
        """Create or reuse the cluster, install Istio, build and side-load the images.

        On a failure: diagnostics into ``<artifacts>/failure-<step>``, then :meth:`down`
        (which deletes the cluster only if this run created it and ``keep_cluster`` is off),
        and KindStepError naming the step. Ctrl-C and SIGTERM also tear down: from up() to the
        end of down() a :func:`abtest_harness.signals.teardown_on_sigterm` hold turns SIGTERM into
        SystemExit(143), so a cancelled CI job unwinds into down() instead of leaving the
        cluster behind.
        """
        if self._up:
            return
        self._bring_up([("cluster", self._up_cluster), ("istio", self._up_istio), ("images", self._up_images)])
        self._say(f"ready: gateway {self.gateway_url} (cluster {self.cluster_name})")

    def down(self) -> None:
        """Delete the cluster if this run created it and ``keep_cluster`` is off.

        A reused cluster is never deleted, nor its kubeconfig (it still describes a cluster
        that exists); only this run's EnvoyFilter is removed from it. Safe to call twice or
        before up(); up() calls it on its own failures. A SIGTERM during it does not cut it
        short (see :meth:`KubeMesh._teardown`).
        """
        self._teardown([self._down])

    def _down(self) -> None:
        self._up = False
        self._pending_prune = None
        cluster = self._cluster
        deleting = (
            cluster is not None and self._cluster_touched and cluster.create_attempted and not self.keep_cluster
        )
        if not deleting:
            self._remove_attribution_filter()  # a kept or reused cluster keeps nothing of this run's filter
        self._filter_applied = False
        self._close_api()
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
            self._check_host_mapping()
            cluster.export_kubeconfig()
        self._api = self._connect()
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
        self._apply_attribution_filter()
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
            from abtest_harness.images import build_scorer_images

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

    def _check_host_mapping(self) -> None:
        """A reused cluster must publish the gateway's node port on 127.0.0.1:<host port>.

        kind publishes ``extraPortMappings`` only when it creates the node container
        (``--publish=127.0.0.1:30080:30080/TCP`` on ``docker run``); a same-named cluster made
        from another config lacks it, and every request would later fail with "connection
        refused". The control-plane container's ``HostConfig.PortBindings`` says.
        """
        container = f"{self.cluster_name}{CONTROL_PLANE_SUFFIX}"
        bindings = (self._inspect_ports or self._docker_port_bindings)(container)
        key = next((k for k in bindings if str(k).lower() == f"{self.node_port}/tcp"), None)
        found = bindings.get(key, []) if key else []
        published = {(str(b.get("HostIp", "")), str(b.get("HostPort", ""))) for b in found or []}
        if ("127.0.0.1", str(self.host_port)) not in published:
            have = ", ".join(f"{ip or '0.0.0.0'}:{port}" for ip, port in sorted(published)) or "nothing"
            raise ConfigError(
                f"kind cluster {self.cluster_name}",
                f"container {container} port {self.node_port}/tcp",
                f"publishes {have}, but {self.kind_config.name} needs 127.0.0.1:{self.host_port}; "
                f"the cluster was made from another config: delete it with "
                f"`kind delete cluster --name {self.cluster_name}` or pick another --cluster-name",
            )

    def _docker_port_bindings(self, container: str) -> Mapping[str, Any]:
        done = proc.run(
            [self._resolve_tool("docker"), "inspect", "--format", "{{json .HostConfig.PortBindings}}", container],
            timeout=self.timeouts.command,
        )
        value = json.loads(done.stdout or "null") or {}
        if not isinstance(value, dict):
            raise HarnessError(f"docker inspect {container}: PortBindings is not an object: {done.stdout[:200]!r}")
        return value

    def _dump_backend(self, directory: Path, attempt: Callable[[str, Callable[[], object]], None]) -> None:
        cluster = self._cluster
        if cluster is not None and self._cluster_touched:
            attempt("kind export logs", lambda: cluster.export_logs(directory / "kind-logs"))

    @property
    def where(self) -> str:
        return self.cluster_name

    @property
    def prune_selector(self) -> str:
        """Managed by us, whatever run applied it: the kind cluster's namespace is the harness's own."""
        return f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"

    def _require_cluster(self) -> KindCluster:
        if self._cluster is None:
            raise HarnessError("the kind backend is not up: call up() (or use it as a context manager) first")
        return self._cluster

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
