"""Istio's own translation: the gateway xDS that istiod's code computes, fed to the local Envoy.

The Go program in ``istio-xds/`` (built by ``make istio-xds`` into ``.cache/bin/istio-xds``)
runs Istio's control-plane code (``istio.io/istio/pilot/test/xds``) over a stage's objects
and prints the ingress gateway's listeners, routes, clusters and endpoint assignments as
Envoy v3 JSON. This module

- turns rendered objects into what Istio reads (:func:`istio_inputs`): Istio objects as
  they are, Services with a cluster IP, and, instead of Deployments (which Istio never
  reads), the Pods and EndpointSlices a cluster would have, one Pod per replica with a
  synthetic pod IP;
- runs the program (:func:`generate`, :func:`generate_batch`) through :func:`abtest_harness.proc.run`;
- turns its output into the local Envoy's files (:func:`local_resources`): the listener on
  the loopback port, routes and endpoints read from files instead of istiod's ADS stream,
  each synthetic pod address replaced by the address of the local replica behind it;
- gives :class:`IstioTranslator`, the ``translator`` of :class:`abtest_harness.mesh.local.LocalMesh`.

What upstream Envoy lacks is switched off at the source: the program sets Istio's feature
flags ``PILOT_ENABLE_METADATA_EXCHANGE=false``, ``PILOT_ENABLE_ALPN_FILTER=false`` and
``PILOT_DISABLE_MX_ALPN=true`` and runs with ``enableAutoMtls: false`` (no SDS); the default
mesh config configures no telemetry provider, so Istio adds no ``istio.stats``. Every other
edit is one of :data:`RULES`, applied by name and tested; an Istio-only extension no rule
covers is an error naming it, never dropped.

Attribution (``x-abtest-upstream-host``/``-cluster`` response headers) is an EnvoyFilter
(:func:`attribution_envoy_filter`) given to Istio with the stage's objects: the same object
a real cluster's ingress gateway can be given.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from abtest_harness import proc
from abtest_harness.attribution import gateway_envoy_filter
from abtest_harness.errors import ConfigError, HarnessError
from abtest_harness.mesh import envoy
from abtest_harness.mesh.base import RouteTable, route_table_from_route_configs
from abtest_harness.mesh.workloads import RunningWorkload, WorkloadSpec, specs_from_objects

__all__ = [
    "RULES",
    "IstioOutput",
    "IstioTranslator",
    "IstioXdsUnavailable",
    "LocalConfig",
    "Replica",
    "Rule",
    "attribution_envoy_filter",
    "binary",
    "generate",
    "generate_batch",
    "istio_inputs",
    "local_resources",
    "replicas_from_objects",
    "replicas_from_workloads",
    "route_table",
    "run_program",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where ``make istio-xds`` puts the program; ``ABTEST_ISTIO_XDS`` names another.
DEFAULT_BINARY = REPO_ROOT / ".cache" / "bin" / "istio-xds"
#: Pod IPs are drawn from here, Service cluster IPs from SERVICE_NET; both only ever reach Istio.
POD_NET = ipaddress.ip_network("10.64.0.0/16")
SERVICE_NET = ipaddress.ip_network("10.96.0.0/16")
GATEWAY_NAMESPACE = "istio-system"
_TIMEOUT_S = 120.0
_ISTIO_GROUPS = ("istio.io",)


class IstioXdsUnavailable(HarnessError):
    """The istio-xds program is not built (or Go is missing): say how to get it."""


def binary() -> str:
    """Path of the istio-xds program, or IstioXdsUnavailable saying how to build it."""
    configured = os.environ.get("ABTEST_ISTIO_XDS")
    path = Path(configured) if configured else DEFAULT_BINARY
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    how = (
        "run `make istio-xds` (needs Go >= 1.25 and the Go module proxy; a cold build takes "
        "several minutes)"
    )
    where = f"ABTEST_ISTIO_XDS={configured}" if configured else str(path)
    raise IstioXdsUnavailable(f"the istio-xds program is not built ({where} missing): {how}")


# --------------------------------------------------------------------------- what Istio reads


@dataclass(frozen=True)
class Replica:
    """One pod as Istio sees it, and where the local mesh runs it (None: nowhere)."""

    spec: WorkloadSpec
    pod_ip: str
    pod_name: str
    local: tuple[str, int] | None = None


def _assign_ips(specs: Sequence[WorkloadSpec], locals_: Sequence[tuple[str, int] | None]) -> list[Replica]:
    """Replicas with pod IPs in order; during a rollout two replicas may share a name, so names are made unique."""
    ordered = sorted(
        zip(specs, locals_, strict=True),
        key=lambda p: (p[0].namespace, p[0].deployment, p[0].replica, p[1] or ("", 0)),
    )
    hosts = POD_NET.hosts()
    out: list[Replica] = []
    seen: set[tuple[str, str]] = set()
    for spec, local in ordered:
        name = base = f"{spec.deployment}-{spec.replica}"
        n = 1
        while (spec.namespace, name) in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add((spec.namespace, name))
        out.append(Replica(spec, str(next(hosts)), name, local))
    return out


def replicas_from_objects(objects: Sequence[Mapping[str, Any]]) -> list[Replica]:
    """One Replica per Deployment replica of `objects`, running nowhere (for offline comparison)."""
    specs = specs_from_objects(objects)
    return _assign_ips(specs, [None] * len(specs))


def replicas_from_workloads(workloads: Sequence[RunningWorkload]) -> list[Replica]:
    """One Replica per running workload, its pod IP standing for the workload's loopback address."""
    return _assign_ips([w.spec for w in workloads], [w.endpoint for w in workloads])


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _resolve_target_port(target: Any, spec: WorkloadSpec) -> int | None:
    """The pod port a Service targetPort reaches on this replica (Kubernetes' endpoints rule)."""
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    if spec.port_name == target:
        return spec.container_port
    port = spec.ports.get(str(target))
    return int(port) if port is not None else None


def _pod(replica: Replica) -> dict[str, Any]:
    spec = replica.spec
    ports = dict(spec.ports)
    if spec.port_name and spec.port_name not in ports:
        ports[spec.port_name] = spec.container_port
    container_ports = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in sorted(ports.items())]
    if not any(p["containerPort"] == spec.container_port for p in container_ports):
        container_ports.append({"containerPort": spec.container_port, "protocol": "TCP"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": replica.pod_name, "namespace": spec.namespace, "labels": dict(spec.labels)},
        "spec": {"containers": [{"name": "model", "image": spec.image, "ports": container_ports}]},
        "status": {
            "phase": "Running",
            "podIP": replica.pod_ip,
            "podIPs": [{"ip": replica.pod_ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _endpoint_slices(service: Mapping[str, Any], replicas: Sequence[Replica]) -> list[dict[str, Any]]:
    """The EndpointSlices Kubernetes would make for `service`: selected pods, ports resolved per pod."""
    namespace, name = _meta(service)
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector:
        return []  # no selector: Kubernetes manages no endpoints for it
    groups: dict[tuple[tuple[str, int], ...], list[Replica]] = {}
    for replica in replicas:
        if replica.spec.namespace != namespace:
            continue
        if not all(replica.spec.labels.get(k) == str(v) for k, v in selector.items()):
            continue
        resolved = []
        for port in spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            number = _resolve_target_port(target, replica.spec)
            if number is not None:
                resolved.append((str(port.get("name") or ""), number))
        if resolved:
            groups.setdefault(tuple(resolved), []).append(replica)
    slices = []
    for i, (ports, members) in enumerate(sorted(groups.items())):
        slices.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{name}-{i}",
                    "namespace": namespace,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
                "endpoints": [
                    {
                        "addresses": [r.pod_ip],
                        "conditions": {"ready": True},
                        "targetRef": {"kind": "Pod", "name": r.pod_name, "namespace": r.spec.namespace},
                    }
                    for r in members
                ],
            }
        )
    return slices


def attribution_envoy_filter(namespace: str = GATEWAY_NAMESPACE) -> dict[str, Any]:
    """The attribution EnvoyFilter (:func:`abtest_harness.attribution.gateway_envoy_filter`) on the
    ingress gateway, the same object a cluster's gateway gets."""
    return gateway_envoy_filter("abtest-upstream-attribution", namespace, {"istio": "ingressgateway"})


def istio_inputs(
    objects: Sequence[Mapping[str, Any]], replicas: Sequence[Replica], *, attribution: bool = True
) -> list[dict[str, Any]]:
    """The objects Istio is given for `objects` running as `replicas`.

    Istio objects pass unchanged; Services get a cluster IP when they have none (a Service
    without one is a different kind of service to Istio); Deployments are replaced by a Pod
    per replica and an EndpointSlice per Service, as the cluster's controllers would make
    them; Namespaces and anything else pass unchanged.
    """
    out: list[dict[str, Any]] = []
    services = []
    service_ips = SERVICE_NET.hosts()
    for obj in objects:
        api = str(obj.get("apiVersion") or "")
        kind = obj.get("kind")
        if kind == "Deployment":
            continue
        copied = copy.deepcopy(dict(obj))
        if kind == "Service" and "/" not in api:
            spec = copied.setdefault("spec", {})
            if not spec.get("clusterIP"):
                spec["clusterIP"] = str(next(service_ips))
            services.append(copied)
        out.append(copied)
    out += [_pod(r) for r in replicas]
    for service in services:
        out += _endpoint_slices(service, replicas)
    if attribution:
        out.append(attribution_envoy_filter())
    return out


class _NoAliases(yaml.SafeDumper):
    """Plain YAML: a dict used twice is written twice, not as an anchor and an alias."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    return "\n---\n".join(yaml.dump(dict(o), Dumper=_NoAliases, sort_keys=False) for o in objects)


# --------------------------------------------------------------------------- running the program


@dataclass(frozen=True)
class IstioOutput:
    """What Istio generated for the gateway (Envoy v3 JSON, protobuf field names)."""

    listeners: tuple[dict[str, Any], ...]
    routes: tuple[dict[str, Any], ...]
    clusters: tuple[dict[str, Any], ...]
    endpoints: tuple[dict[str, Any], ...]
    #: Istio's validation of each Istio object: {"object", "error"} or {"object", "warning"}.
    validation: tuple[dict[str, str], ...] = ()
    seconds: float = 0.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any], seconds: float = 0.0) -> IstioOutput:
        return cls(
            tuple(data.get("listeners") or ()),
            tuple(data.get("routes") or ()),
            tuple(data.get("clusters") or ()),
            tuple(data.get("endpoints") or ()),
            tuple(data.get("validation") or ()),
            seconds,
        )

    def route_config(self, name: str | None = None) -> dict[str, Any]:
        """The gateway's HTTP route configuration (``http.<port>``); `name` picks one of several."""
        if name is not None:
            for rc in self.routes:
                if rc.get("name") == name:
                    return rc
            raise HarnessError(f"Istio generated no route configuration {name!r}")
        http = [rc for rc in self.routes if str(rc.get("name", "")).startswith("http.")]
        if len(http) != 1:
            names = ", ".join(str(rc.get("name")) for rc in self.routes) or "none"
            raise HarnessError(f"expected one http.<port> route configuration from Istio, got: {names}")
        return http[0]


def run_program(args: Sequence[str], stdin: str, timeout: float, *, what: str = "Istio's translation") -> str:
    """istio-xds with `args`, `stdin` fed in; its output, or a HarnessError with its last error line."""
    done = proc.run([binary(), *args], timeout=timeout, input=stdin, check=False)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise HarnessError(f"{what} failed: {reason}")
    return done.stdout


def generate(
    objects: Sequence[Mapping[str, Any]],
    replicas: Sequence[Replica] | None = None,
    *,
    attribution: bool = True,
    timeout: float = _TIMEOUT_S,
) -> IstioOutput:
    """Istio's gateway xDS for `objects` (replicas: from the Deployments when not given)."""
    if replicas is None:
        replicas = replicas_from_objects(objects)
    started = time.perf_counter()
    out = run_program(["-compact"], _yaml(istio_inputs(objects, replicas, attribution=attribution)), timeout)
    return IstioOutput.from_json(json.loads(out), time.perf_counter() - started)


def generate_batch(
    cases: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    attribution: bool = False,
    timeout: float = 1800.0,
) -> dict[str, IstioOutput | str]:
    """Istio's gateway xDS for many cases in one run of the program: id -> output or error text."""
    lines = []
    for case_id, objects in cases.items():
        inputs = istio_inputs(objects, replicas_from_objects(objects), attribution=attribution)
        lines.append(json.dumps({"id": case_id, "yaml": _yaml(inputs)}))
    out = run_program(["-batch"], "\n".join(lines) + "\n", timeout)
    results: dict[str, IstioOutput | str] = {}
    for line in out.splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        results[str(data.get("id"))] = str(data["error"]) if data.get("error") else IstioOutput.from_json(data)
    missing = set(cases) - set(results)
    if missing:
        raise HarnessError(f"istio-xds returned no result for {len(missing)} case(s), e.g. {sorted(missing)[0]}")
    return results


def route_table(output: IstioOutput) -> RouteTable:
    """The canonical route table (abtest_harness.mesh.base) of Istio's gateway route configuration."""
    return route_table_from_route_configs([output.route_config()])


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """One listed edit of Istio's output for the local Envoy: what it changes and why."""

    name: str
    what: str
    why: str


RULES: tuple[Rule, ...] = (
    Rule(
        "listener-loopback",
        "the gateway listener binds 127.0.0.1:<local port> and is named like the local mesh's",
        "Istio binds 0.0.0.0:<server port> on a pod; locally the gateway is one process on loopback",
    ),
    Rule(
        "rds-from-file",
        "the HTTP connection manager reads its route configuration from a file (path_config_source)",
        "istiod sends routes over its ADS stream; the local Envoy has files instead",
    ),
    Rule(
        "eds-from-file",
        "EDS clusters read their endpoints from one file each",
        "istiod sends endpoints over ADS",
    ),
    Rule(
        "endpoint-addresses",
        "each endpoint's synthetic pod address becomes the loopback address of the replica behind it; "
        "an endpoint on a port the replica does not serve is left out and listed in the notes",
        "Istio computes endpoints from Pods and EndpointSlices; locally replicas are processes on loopback",
    ),
    Rule(
        "access-log",
        "the local mesh's access log is added to the HTTP connection manager",
        "debugging aid; it does not change routing",
    ),
    Rule(
        "only-http-gateway-listener",
        "of Istio's listeners only the one of the gateway's HTTP port is served",
        "the local mesh has one gateway port; other listeners are listed in the notes",
    ),
)

#: Type URL prefixes of extensions only Istio's Envoy build has; the feature flags keep them
#: out of the output, and one that still appears is an error (no rule removes any).
_ISTIO_ONLY_PREFIXES = ("type.googleapis.com/istio.", "type.googleapis.com/io.istio.", "type.googleapis.com/stats.")


def _find_istio_only(value: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, Mapping):
        kind = value.get("@type")
        if isinstance(kind, str) and kind.startswith(_ISTIO_ONLY_PREFIXES):
            found.append(f"{path or '<root>'}: {kind}")
        for key, item in value.items():
            found += _find_istio_only(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _find_istio_only(item, f"{path}[{i}]")
    return found


def _file_source(path: str) -> dict[str, Any]:
    return {"path_config_source": {"path": path}, "resource_api_version": "V3"}


def _hcm(listener: Mapping[str, Any]) -> dict[str, Any]:
    for chain in listener.get("filter_chains") or []:
        for flt in chain.get("filters") or []:
            if flt.get("name") == "envoy.filters.network.http_connection_manager":
                typed: dict[str, Any] = flt["typed_config"]
                return typed
    raise HarnessError(f"Istio's listener {listener.get('name')!r} has no HTTP connection manager")


@dataclass
class LocalConfig:
    """The local Envoy's resources from Istio's output, with what the rules changed."""

    resources: envoy.XdsResources
    endpoints: dict[str, tuple[tuple[str, int], ...]]
    notes: list[str] = field(default_factory=list)


def local_resources(
    output: IstioOutput,
    replicas: Sequence[Replica],
    *,
    listener_port: int,
    rds_path: str,
    eds_path: Callable[[str], str],
    access_log: str | None = None,
    gateway_port: int | None = None,
) -> LocalConfig:
    """Istio's output made into the local Envoy's listener, routes, clusters and endpoint files.

    Applies :data:`RULES` and nothing else; raises HarnessError when Istio's output holds an
    Istio-only extension (none is expected with the program's feature flags).
    """
    notes: list[str] = []
    leftovers = _find_istio_only([*output.listeners, *output.routes, *output.clusters])
    if leftovers:
        raise HarnessError(
            "Istio's output holds extensions upstream Envoy lacks, and no rule removes them: "
            + "; ".join(leftovers)
        )
    route_config = output.route_config(None if gateway_port is None else f"http.{gateway_port}")
    route_name = str(route_config["name"])
    chosen = None
    for lst in output.listeners:
        try:
            hcm = _hcm(lst)
        except HarnessError:
            notes.append(f"only-http-gateway-listener: listener {lst.get('name')} not served")
            continue
        if (hcm.get("rds") or {}).get("route_config_name") == route_name and chosen is None:
            chosen = lst
        else:
            notes.append(f"only-http-gateway-listener: listener {lst.get('name')} not served")
    if chosen is None:
        raise HarnessError(f"Istio generated no listener for route configuration {route_name!r}")
    listener = copy.deepcopy(chosen)
    listener["@type"] = envoy.LISTENER_TYPE
    listener["name"] = f"gateway_{listener_port}"
    listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}}
    listener.pop("additional_addresses", None)
    hcm = _hcm(listener)
    hcm["rds"]["config_source"] = _file_source(rds_path)
    if access_log:
        hcm["access_log"] = [
            *(hcm.get("access_log") or []),
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": access_log,
                },
            },
        ]
    by_address = {}
    for replica in replicas:
        for port in {replica.spec.container_port, *replica.spec.ports.values()}:
            by_address[(replica.pod_ip, int(port))] = replica
    clusters = []
    assignments: dict[str, dict[str, Any]] = {}
    endpoints: dict[str, tuple[tuple[str, int], ...]] = {}
    cla_by_name = {str(c.get("cluster_name")): c for c in output.endpoints}
    for raw in output.clusters:
        cluster = copy.deepcopy(raw)
        cluster["@type"] = envoy.CLUSTER_TYPE
        if cluster.get("type") == "EDS":
            name = str(cluster["name"])
            service_name = (cluster.get("eds_cluster_config") or {}).get("service_name") or name
            cluster["eds_cluster_config"] = {"service_name": service_name, "eds_config": _file_source(eds_path(name))}
            cla = copy.deepcopy(cla_by_name.get(service_name) or {"cluster_name": service_name, "endpoints": []})
            cla["@type"] = envoy.ENDPOINT_TYPE
            addresses: list[tuple[str, int]] = []
            for locality in cla.get("endpoints") or []:
                kept = []
                for lb in locality.get("lb_endpoints") or []:
                    sock = ((lb.get("endpoint") or {}).get("address") or {}).get("socket_address") or {}
                    key = (str(sock.get("address")), int(sock.get("port_value", 0)))
                    behind = by_address.get(key)
                    if behind is None:
                        if any(r.pod_ip == key[0] for r in replicas):
                            # Kubernetes lists a pod on a numeric targetPort it does not serve;
                            # every connection to it would be refused.
                            notes.append(f"endpoint-addresses: {name}: {key[0]}:{key[1]} is served by no replica")
                            continue
                        raise HarnessError(f"cluster {name}: endpoint {key[0]}:{key[1]} is no known pod")
                    if behind.local is None:
                        notes.append(f"endpoint-addresses: {name}: {behind.pod_name} does not run locally")
                        continue
                    lb = copy.deepcopy(lb)
                    lb["endpoint"]["address"]["socket_address"] = {
                        "address": behind.local[0],
                        "port_value": behind.local[1],
                    }
                    kept.append(lb)
                    addresses.append(behind.local)
                locality["lb_endpoints"] = kept
            assignments[name] = cla
            endpoints[name] = tuple(sorted(addresses))
        clusters.append(cluster)
    route_config = copy.deepcopy(route_config)
    route_config["@type"] = envoy.ROUTE_TYPE
    resources = envoy.XdsResources(listener, route_config, tuple(clusters), assignments)
    return LocalConfig(resources, endpoints, notes)


# --------------------------------------------------------------------------- the local mesh's translator


@dataclass
class IstioTranslator:
    """The ``translator`` of :class:`~abtest_harness.mesh.local.LocalMesh`: Istio computes what Envoy serves.

    Results are cached by objects and replicas, since the mesh asks for the same state more
    than once per apply. `seconds` keeps the duration of each run of the program.
    """

    timeout: float = _TIMEOUT_S
    seconds: list[float] = field(default_factory=list)
    _cache: dict[str, tuple[IstioOutput, list[Replica]]] = field(default_factory=dict)

    def check(self, objects: Sequence[Mapping[str, Any]]) -> None:
        """Refuse `objects` as Istio would: its validation errors, or a failed translation.

        Raises IstioXdsUnavailable when the program is not built, ConfigError naming the
        object when Istio's validation rejects one.
        """
        output = generate(objects, timeout=self.timeout)
        for finding in output.validation:
            if finding.get("error"):
                raise ConfigError(str(finding["object"]), "spec", f"Istio rejects it: {finding['error']}")

    def _output(
        self, objects: Sequence[Mapping[str, Any]], workloads: Sequence[RunningWorkload]
    ) -> tuple[IstioOutput, list[Replica]]:
        replicas = replicas_from_workloads(workloads)
        text = _yaml(istio_inputs(objects, replicas))
        where = json.dumps([(r.pod_ip, r.local) for r in replicas])
        key = hashlib.sha256((text + where).encode()).hexdigest()
        if key not in self._cache:
            started = time.perf_counter()
            out = run_program(["-compact"], text, self.timeout)
            self.seconds.append(time.perf_counter() - started)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = (IstioOutput.from_json(json.loads(out)), replicas)
        return self._cache[key]

    def cluster_names(
        self, objects: Sequence[Mapping[str, Any]], workloads: Sequence[RunningWorkload]
    ) -> set[str]:
        """The names of the clusters Istio generates for `objects`."""
        output, _ = self._output(objects, workloads)
        return {str(c["name"]) for c in output.clusters}

    def translate(
        self,
        objects: Sequence[Mapping[str, Any]],
        workloads: Sequence[RunningWorkload],
        *,
        listener_port: int,
        rds_path: str,
        eds_path: Callable[[str], str],
        access_log: str | None = None,
    ) -> envoy.XdsResources:
        """The local Envoy's resources for `objects` served by `workloads`."""
        output, replicas = self._output(objects, workloads)
        return local_resources(
            output,
            replicas,
            listener_port=listener_port,
            rds_path=rds_path,
            eds_path=eds_path,
            access_log=access_log,
        ).resources

    def expected(
        self, objects: Sequence[Mapping[str, Any]], workloads: Sequence[RunningWorkload]
    ) -> tuple[RouteTable, dict[str, tuple[tuple[str, int], ...]]]:
        """The route table and per-cluster endpoints Envoy must serve for `objects` and `workloads`."""
        output, replicas = self._output(objects, workloads)
        local = local_resources(output, replicas, listener_port=0, rds_path="", eds_path=lambda n: n)
        return route_table_from_route_configs([local.resources.route_configuration]), local.endpoints


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m abtest_harness.mesh.istio_xds --stage Blue_50``: print Istio's gateway xDS for a stage."""
    import argparse
    import sys

    from abtest_harness.plan import load_plan
    from abtest_harness.render import render_stage

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--plan", type=Path, default=None)
    parser.add_argument("--inputs", action="store_true", help="print the objects Istio is given instead")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
        objects = render_stage(plan, args.stage)
        if args.inputs:
            sys.stdout.write(_yaml(istio_inputs(objects, replicas_from_objects(objects))) + "\n")
            return 0
        output = generate(objects)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json.dump(
        {
            "listeners": output.listeners,
            "routes": output.routes,
            "clusters": output.clusters,
            "endpoints": output.endpoints,
            "validation": output.validation,
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
