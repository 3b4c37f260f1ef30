"""Contract tests of the shared Kubernetes part (abtest_harness.mesh.kube) that need no cluster.

The kubernetes client floor is checked against the installed client's own API (not against a
version table copied from the code); the attribution EnvoyFilter against Istio's documented
rules. What needs the fake tools and the stub API is in test_kind_mesh.py.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest

from abtest_harness.errors import ConfigError, HarnessError
from abtest_harness.mesh import kube

ROOT = Path(__file__).resolve().parents[2]


def _floor(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    assert match, f"no >= floor in {requirement!r}"
    return tuple(int(p) for p in match.group(1).split("."))


def test_the_declared_kubernetes_floor_has_the_api_kubeapi_calls() -> None:
    """pyproject's floor is the first client with param_serialize and the new call_api (37.0.0).

    Checked independently of the code's constant: the installed client (which satisfies the
    floor) must have both, with the parameters KubeAPI.request passes.
    """
    from kubernetes.client import ApiClient

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [d for d in deps if re.match(r"kubernetes\s*[>=<~]", d)]
    assert _floor(requirement) >= (37, 0, 0), f"{requirement}: 36.x and older lack ApiClient.param_serialize"
    assert _floor(requirement) == kube.MIN_KUBERNETES_CLIENT, "the runtime check and pyproject must agree"
    serialize = inspect.signature(ApiClient.param_serialize).parameters
    assert {"method", "resource_path", "query_params", "header_params", "body", "auth_settings"} <= set(serialize)
    call = inspect.signature(ApiClient.call_api).parameters
    assert list(call)[1:3] == ["method", "url"] and "_request_timeout" in call


@pytest.mark.parametrize("old", ["29.0.0", "36.0.3", "36.0.0b1"])
def test_an_older_client_is_refused_with_the_fix(old: str) -> None:
    with pytest.raises(HarnessError, match=r"kubernetes \(Python client\) .* >= 37\.0\.0.*make venv"):
        kube.check_client_version(old)


@pytest.mark.parametrize("new", ["37.0.0", "37.0.2", "38.0.0a1"])
def test_the_floor_and_newer_clients_pass(new: str) -> None:
    kube.check_client_version(new)


def test_the_attribution_filter_targets_the_gateway_in_its_own_namespace() -> None:
    f = kube.attribution_filter("istio-system", {"istio": "ingressgateway"}, "20261130-000000-abcdef")
    assert f["apiVersion"] == "networking.istio.io/v1alpha3", "EnvoyFilter is served as v1alpha3 only"
    assert f["metadata"]["namespace"] == "istio-system"
    assert f["metadata"]["name"].endswith("20261130-000000-abcdef"), "one filter per run"
    assert f["metadata"]["labels"]["abtest-harness/run-id"] == "20261130-000000-abcdef"
    assert f["spec"]["workloadSelector"] == {"labels": {"istio": "ingressgateway"}}
    (patch,) = f["spec"]["configPatches"]
    assert patch["applyTo"] == "ROUTE_CONFIGURATION" and patch["match"] == {"context": "GATEWAY"}
    assert patch["patch"]["operation"] == "MERGE"
    headers = {h["header"]["key"]: h["header"]["value"] for h in patch["patch"]["value"]["response_headers_to_add"]}
    # Istio gives each cluster an alt_stat_name (its name and ";"), which %UPSTREAM_CLUSTER%
    # would report; %UPSTREAM_CLUSTER_RAW% is the cluster's own name.
    assert headers == {
        "x-abtest-upstream-host": "%UPSTREAM_HOST%",
        "x-abtest-upstream-cluster": "%UPSTREAM_CLUSTER_RAW%",
    }


def test_selector_labels_refuses_what_a_workload_selector_cannot_say() -> None:
    assert kube.selector_labels("istio=ingressgateway,app=gw") == {"istio": "ingressgateway", "app": "gw"}
    for bad in ("istio", "istio!=x", "=x"):
        with pytest.raises(ConfigError):
            kube.selector_labels(bad)
