"""Which version answered a request: by the endpoint the gateway chose, not by what the image says.

The harness's gateway adds the response header ``x-abtest-upstream-host`` (Envoy's
``%UPSTREAM_HOST%``: the ``ip:port`` of the endpoint it picked). The mesh knows the pod labels
behind each endpoint (``mesh.endpoint_labels()``: ``"ip:port" -> labels``) and the rollout
spec defines each version as a pod label selector, so::

    upstream host -> pod labels -> the one version whose selector they satisfy

An answer whose endpoint is unknown to the mesh, or whose pod no version selects, is the
outcome ``error:unattributed:<host>``: counted as an error, never as a version. Errors the
gateway produced itself (404, 503) stay ``status:NNN`` outcomes.

While a gateway or a mesh cannot report endpoints, :data:`VERSION_HEADER_FALLBACK` decides
whether the ``x-model-version`` header the sample scorer sends is used instead; that is the
one switch between the two ways of attributing.

>>> a = Attribution({"v1": {"app": "reviews", "version": "v1"}}, {"10.0.0.5:9080": {"app": "reviews", "version": "v1"}})
>>> a.outcome("10.0.0.5:9080", None), a.outcome("10.0.0.9:9080", None)
('v1', 'error:unattributed:10.0.0.9:9080')
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "GATEWAY_HEADERS",
    "UNATTRIBUTED",
    "UPSTREAM_CLUSTER_HEADER",
    "UPSTREAM_HOST_HEADER",
    "VERSION_HEADER_FALLBACK",
    "Attribution",
    "for_mesh",
    "gateway_envoy_filter",
    "version_of",
]

UPSTREAM_HOST_HEADER = "x-abtest-upstream-host"
UPSTREAM_CLUSTER_HEADER = "x-abtest-upstream-cluster"
#: What an Istio ingress gateway puts in each header (Envoy substitution operators). Istio gives
#: every cluster an ``alt_stat_name`` (its name and ";"), which ``%UPSTREAM_CLUSTER%`` reports;
#: ``%UPSTREAM_CLUSTER_RAW%`` (Envoy >= 1.32) is the cluster's own name.
GATEWAY_HEADERS = {UPSTREAM_HOST_HEADER: "%UPSTREAM_HOST%", UPSTREAM_CLUSTER_HEADER: "%UPSTREAM_CLUSTER_RAW%"}


def gateway_envoy_filter(
    name: str, namespace: str, selector: Mapping[str, str], labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The EnvoyFilter that makes an Istio ingress gateway name, per response, the endpoint it chose.

    It merges the :data:`GATEWAY_HEADERS` into every route configuration of the gateway's Envoy
    (``context: GATEWAY``). An EnvoyFilter with a ``workloadSelector`` acts on the selected
    workloads of its own namespace (one in the root namespace reaches every namespace), so it
    goes in the gateway's namespace and selects the gateway's pod labels. EnvoyFilter is served
    as v1alpha3 only. The same object serves a cluster (kind, an existing one) and Istio's own
    translation on the local mesh.
    """
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    headers = [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in GATEWAY_HEADERS.items()
    ]
    return {
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": metadata,
        "spec": {
            "workloadSelector": {"labels": dict(selector)},
            "configPatches": [
                {
                    "applyTo": "ROUTE_CONFIGURATION",
                    "match": {"context": "GATEWAY"},
                    "patch": {"operation": "MERGE", "value": {"response_headers_to_add": headers}},
                }
            ],
        },
    }
#: Prefix of the outcome of an answer no version can be credited with (an error outcome).
UNATTRIBUTED = "error:unattributed"
#: Use the image's ``x-model-version`` header when the gateway names no upstream host.
#: True while some gateway (or mesh) cannot report the endpoint it chose; with every
#: gateway reporting it, False makes an answer without the header an error.
VERSION_HEADER_FALLBACK = True

Labels = Mapping[str, str]
EndpointLabels = Mapping[str, Labels]


def version_of(labels: Labels, versions: Mapping[str, Labels]) -> str | None:
    """The version whose selector `labels` satisfy (all its labels present and equal), or None.

    The spec loader refuses selectors that could select one pod twice, so at most one matches.

    >>> version_of({"app": "m", "v": "2", "pod-template-hash": "x"}, {"v1": {"v": "1"}, "v2": {"v": "2"}})
    'v2'
    """
    for name, selector in versions.items():
        if all(labels.get(k) == v for k, v in selector.items()):
            return name
    return None


class Attribution:
    """Maps one answer (upstream host, version header) to an outcome.

    `endpoints` is ``"ip:port" -> pod labels``, or a callable returning it (``mesh.endpoint_labels``),
    called again when an unknown host shows up: endpoints change when a stage is applied.
    With `endpoints` None (a mesh that cannot list them) the upstream host is not used.
    With `versions` None (no spec), the pod label ``model_version`` names the version.
    """

    def __init__(
        self,
        versions: Mapping[str, Labels] | None,
        endpoints: EndpointLabels | Callable[[], EndpointLabels] | None,
        *,
        fallback: bool | None = None,
    ) -> None:
        self.versions = versions
        self._source = endpoints
        self._endpoints: dict[str, str | None] = {}
        self._loaded = False
        self._lock = threading.Lock()
        self._fallback = fallback

    @property
    def fallback(self) -> bool:
        """Whether the version header decides when the gateway names no upstream host."""
        return VERSION_HEADER_FALLBACK if self._fallback is None else self._fallback

    def _load(self) -> None:
        source = self._source
        raw: EndpointLabels = (source() if callable(source) else source) or {}
        self._endpoints = {str(host): self._version(labels) for host, labels in raw.items()}
        self._loaded = True

    def _version(self, labels: Labels) -> str | None:
        if self.versions is None:
            value = labels.get("model_version")
            return str(value) if value else None
        return version_of(labels, self.versions)

    def version_for_host(self, host: str) -> str | None:
        """The version of the pod behind `host` (``ip:port``), or None when it is unknown."""
        with self._lock:
            if not self._loaded or (host not in self._endpoints and callable(self._source)):
                self._load()
            return self._endpoints.get(host)

    def outcome(self, upstream_host: str | None, version_header: str | None) -> str | None:
        """A version name, ``error:unattributed:<host>``, or None (no answer to credit)."""
        host = (upstream_host or "").strip()
        if host and host != "-" and self._source is not None:
            found = self.version_for_host(host)
            return found if found is not None else f"{UNATTRIBUTED}:{host}"
        if self.fallback:
            return version_header
        return f"{UNATTRIBUTED}:-"

    __call__ = outcome


def for_mesh(mesh: Any, versions: Mapping[str, Labels] | None) -> Attribution:
    """The attribution for a mesh: by endpoint when it can list them, else by the fallback."""
    endpoints = getattr(mesh, "endpoint_labels", None)
    return Attribution(versions, endpoints if callable(endpoints) else None)
