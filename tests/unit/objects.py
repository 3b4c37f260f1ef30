"""Builders for the Kubernetes and Istio objects the unit tests feed the harness.

Each returns a fresh dict shaped like the reference charts' objects in the abtesting
namespace; keyword arguments cover what the tests vary on purpose (an image, replicas, a
field some tests leave out), so a test names only what matters to it.
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

NS = "abtesting"
PORT = 5001  # the scorer's container port, which every Service exposes under the name "http"
ISTIO_API = "networking.istio.io/v1"


def _istio(kind: str, name: str, spec: Obj, namespace: str = NS) -> Obj:
    """A networking.istio.io object of ``kind`` named ``name`` in ``namespace``."""
    return {"apiVersion": ISTIO_API, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def fqdn(name: str, namespace: str = NS) -> str:
    """The cluster-local DNS name of Service ``name``."""
    return f"{name}.{namespace}.svc.cluster.local"


def version_labels(version: str) -> dict[str, str]:
    """The pod labels of one model version, as its Deployment sets and its Service selects."""
    return {"app": "model", "model_version": version}


def namespace(labels: dict[str, str] | None = None) -> Obj:
    """The abtesting Namespace, with ``labels`` when given (the charts add istio-injection)."""
    metadata: Obj = {"name": NS}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def service(version: str | None = None, *, name: str | None = None, selector: dict[str, str] | None = None) -> Obj:
    """Service ``model-svc-<version>`` selecting that version's pods on port 5001.

    ``name`` and ``selector`` replace the defaults for Services that front something else
    (all versions, or a version with no pods).
    """
    if name is None:
        assert version is not None, "a Service needs a version or a name"
        name = f"model-svc-{version}"
    if selector is None:
        assert version is not None, "a Service needs a version or a selector"
        selector = version_labels(version)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
            "selector": selector,
        },
    }


def deployment(
    version: str,
    image: str = "abtest/scorer-a:dev",
    *,
    replicas: int | None = 1,
    namespace: str = NS,
    labelled: bool = False,
    readiness: bool = True,
    pull_policy: str | None = None,
    memory_limit: str | None = None,
) -> Obj:
    """Deployment ``model-<version>`` running ``image`` with MODEL_VERSION set to ``version``.

    ``replicas=None`` leaves the field out (Kubernetes then defaults it to 1); ``labelled``
    also puts the pod labels on the Deployment itself; ``readiness=False`` drops the
    /healthz probe; ``pull_policy`` and ``memory_limit`` add those fields as the charts do.
    """
    labels = version_labels(version)
    container: Obj = {"name": "model", "image": image}
    if pull_policy is not None:
        container["imagePullPolicy"] = pull_policy
    container["ports"] = [{"name": "http", "containerPort": PORT}]
    container["env"] = [{"name": "MODEL_VERSION", "value": version}]
    if readiness:
        container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": "http"}}
    if memory_limit is not None:
        container["resources"] = {"limits": {"memory": memory_limit}}
    spec: Obj = {} if replicas is None else {"replicas": replicas}
    spec["selector"] = {"matchLabels": labels}
    spec["template"] = {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}}
    metadata: Obj = {"name": f"model-{version}", "namespace": namespace}
    if labelled:
        metadata["labels"] = dict(labels)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def gateway(**spec: Any) -> Obj:
    """Gateway ``mlmodel-gateway``: the ingress gateway, HTTP on port 80 for any host; ``spec`` overrides."""
    body: Obj = {
        "selector": {"istio": "ingressgateway"},
        "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
    }
    body.update(spec)
    return _istio("Gateway", "mlmodel-gateway", body)


def destination(version: str, weight: int | None = None) -> Obj:
    """A route destination: ``model-svc-<version>`` by its full name and port, with ``weight`` when given."""
    out: Obj = {"destination": {"host": fqdn(f"model-svc-{version}"), "port": {"number": PORT}}}
    if weight is not None:
        out["weight"] = weight
    return out


def header_route(version: str) -> Obj:
    """The charts' ``<version>-header`` route: /score with ``x-api-version: <version>`` goes to that version."""
    return {
        "name": f"{version}-header",
        "match": [{"uri": {"prefix": "/score"}, "headers": {"x-api-version": {"exact": version}}}],
        "route": [destination(version)],
    }


def weighted_route(green: int, blue: int) -> Obj:
    """The charts' catch-all ``weighted`` route splitting green:blue."""
    return {"name": "weighted", "route": [destination("green", green), destination("blue", blue)]}


def virtual_service(
    http: list[Obj], *, name: str = "mlmodel-virtualservice", namespace: str = NS, **spec: Any
) -> Obj:
    """VirtualService ``name`` bound to mlmodel-gateway for any host, with these ``http`` routes; ``spec`` overrides."""
    body: Obj = {"hosts": ["*"], "gateways": ["mlmodel-gateway"], "http": http}
    body.update(spec)
    return _istio("VirtualService", name, body, namespace)


def destination_rule(host: str, subsets: dict[str, str], *, name: str = "model") -> Obj:
    """DestinationRule ``name`` on ``host`` with one subset per entry of ``subsets`` (subset name: version)."""
    return _istio(
        "DestinationRule",
        name,
        {"host": host, "subsets": [{"name": subset, "labels": {"model_version": v}} for subset, v in subsets.items()]},
    )
