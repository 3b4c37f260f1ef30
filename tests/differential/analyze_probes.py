"""Probes for the analyzer comparison: the sample's Blue_50 stage with one deliberate fault each.

Each probe edits the rendered objects in place; tests/differential/test_analyze.py runs Istio's
analyzers and ``abtest validate`` on every probe beside the real stages. The stage's
VirtualService has three HTTP routes: ``blue-header``, ``green-header`` (header matches) and
``weighted`` (green 50 / blue 50, no match).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]


def _kind(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    return next(o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"]))


def _http(objects: list[Obj]) -> list[Obj]:
    routes: list[Obj] = _kind(objects, "VirtualService")["spec"]["http"]
    return routes


def _dest(objects: list[Obj], i: int) -> Obj:
    """The i-th destination of the weighted route (0: green, 1: blue)."""
    destination: Obj = _http(objects)[2]["route"][i]["destination"]
    return destination


def missing_gateway(o: list[Obj]) -> None:
    _kind(o, "VirtualService")["spec"]["gateways"] = ["no-such-gateway"]


def missing_host(o: list[Obj]) -> None:
    _dest(o, 1)["host"] = "model-svc-nosuch.abtesting.svc.cluster.local"


def short_host(o: list[Obj]) -> None:
    _dest(o, 1)["host"] = "model-svc-blue"


def dotted_host(o: list[Obj]) -> None:
    _dest(o, 1)["host"] = "model-svc-blue.abtesting"


def missing_subset(o: list[Obj]) -> None:
    _dest(o, 0)["subset"] = "v9"


def missing_port(o: list[Obj]) -> None:
    _dest(o, 0)["port"]["number"] = 5002


def unreachable(o: list[Obj]) -> None:
    http = _http(o)
    http.insert(0, http.pop())


def duplicate_match(o: list[Obj]) -> None:
    http = _http(o)
    http[1]["match"] = [dict(m) for m in http[0]["match"]]


def bad_regex(o: list[Obj]) -> None:
    _http(o)[0]["match"][0]["headers"]["x-api-version"] = {"regex": "a(("}


def weights_3_1(o: list[Obj]) -> None:
    route = _http(o)[2]["route"]
    route[0]["weight"], route[1]["weight"] = 3, 1


def weight_left_out(o: list[Obj]) -> None:
    del _http(o)[2]["route"][1]["weight"]


def port_name(o: list[Obj]) -> None:
    _kind(o, "Service", "model-svc-blue")["spec"]["ports"][0]["name"] = "web"


def upper_header(o: list[Obj]) -> None:
    headers = _http(o)[0]["match"][0]["headers"]
    headers["X-Api-Version"] = headers.pop("x-api-version")


def unknown_field(o: list[Obj]) -> None:
    route = _http(o)[0]
    route["mtach"] = route.pop("match")


def gateway_host(o: list[Obj]) -> None:
    _kind(o, "VirtualService")["spec"]["hosts"] = ["model.example.com"]
    _kind(o, "Gateway")["spec"]["servers"][0]["hosts"] = ["other.example.com"]


def dr_subsets(o: list[Obj]) -> None:
    o.append({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "model-blue", "namespace": "abtesting"},
        "spec": {"host": "model-svc-blue.abtesting.svc.cluster.local",
                 "subsets": [{"name": "v1", "labels": {"model_version": "purple"}}]},
    })
    _dest(o, 1)["subset"] = "v1"


def dr_missing_host(o: list[Obj]) -> None:
    o.append({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "model-nosuch", "namespace": "abtesting"},
        "spec": {"host": "model-svc-nosuch.abtesting.svc.cluster.local"},
    })


def gateway_selector(o: list[Obj]) -> None:
    _kind(o, "Gateway")["spec"]["selector"] = {"istio": "no-such-gateway"}


def injection_enabled(o: list[Obj]) -> None:
    _kind(o, "Namespace")["metadata"]["labels"]["istio-injection"] = "enabled"


def fault(o: list[Obj]) -> None:
    _http(o)[2]["fault"] = {"abort": {"httpStatus": 503, "percentage": {"value": 10}}}


PROBES: dict[str, Callable[[list[Obj]], None]] = {
    f.__name__.replace("_", "-"): f
    for f in (
        missing_gateway, missing_host, short_host, dotted_host, missing_subset, missing_port, unreachable,
        duplicate_match, bad_regex, weights_3_1, weight_left_out, port_name, upper_header, unknown_field,
        gateway_host, dr_subsets, dr_missing_host, gateway_selector, injection_enabled, fault,
    )
}
