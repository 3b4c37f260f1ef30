"""Deployments -> replica specs, as the kubelet reads the container; endpoints from port maps."""

from __future__ import annotations

from typing import Any

import pytest

from abtest_harness.errors import ConfigError, UnsupportedField
from abtest_harness.mesh import envoy
from abtest_harness.mesh.local import endpoints_for
from abtest_harness.mesh.workloads import (
    Probe,
    ProcessRunner,
    ReplicaNotReady,
    RunningWorkload,
    endpoint_labels_of_pods,
    specs_from_objects,
)
from tests.unit.objects import deployment, fqdn, service

BLUE = fqdn("model-svc-blue")


def _blue(**container: Any) -> dict[str, Any]:
    dep = deployment("blue", "abtest/scorer-b:dev")
    target = dep["spec"]["template"]["spec"]["containers"][0]
    for key, value in container.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return dep


def test_the_probe_ports_env_command_and_args_are_read_as_written() -> None:
    dep = _blue(
        ports=[
            {"name": "metrics", "containerPort": 9090},
            {"name": "http", "containerPort": 5001},
            {"containerPort": 7000},
        ],
        readinessProbe={
            "httpGet": {"path": "ready", "port": "http", "httpHeaders": [{"name": "x-probe", "value": "1"}]}
        },
        command=["python3"],
        args=["serve.py", "--port", 5001],
        env=[{"name": "PORT", "value": "5001"}, {"name": "SCORER_ANSWER", "value": "New Model X"}],
    )
    (spec,) = specs_from_objects([dep])
    assert spec.probe == Probe("httpGet", "http", "/ready", (("x-probe", "1"),))
    assert spec.declared_ports == (9090, 5001, 7000)
    assert spec.published_ports() == (5001, 7000, 9090)
    assert (spec.command, spec.args) == (("python3",), ("serve.py", "--port", "5001"))
    assert dict(spec.env) == {"PORT": "5001", "SCORER_ANSWER": "New Model X"}
    assert spec.port_number("http") == 5001 and spec.port_number("9090") == 9090 and spec.port_number("grpc") is None
    assert spec.probe.describe(spec) == "readinessProbe httpGet /ready on port http (5001)"


def test_a_probe_port_that_is_not_declared_is_still_published() -> None:
    (spec,) = specs_from_objects([_blue(readinessProbe={"tcpSocket": {"port": 8080}})])
    assert spec.probe == Probe("tcpSocket", 8080)
    assert spec.published_ports() == (5001, 8080)
    (plain,) = specs_from_objects([_blue(readinessProbe=None)])
    assert plain.probe is None


@pytest.mark.parametrize(
    ("probe", "field", "kind"),
    [
        ({"exec": {"command": ["true"]}}, "readinessProbe.exec", UnsupportedField),
        ({"grpc": {"port": 5001}}, "readinessProbe.grpc", UnsupportedField),
        (
            {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTPS"}},
            "readinessProbe.httpGet.scheme",
            UnsupportedField,
        ),
        ({"httpGet": {"path": "/healthz"}}, "readinessProbe.httpGet.port", ConfigError),
        ({"periodSeconds": 2}, "readinessProbe", ConfigError),
    ],
)
def test_a_probe_the_runners_cannot_check_is_refused_naming_the_field(
    probe: dict[str, Any], field: str, kind: type[Exception]
) -> None:
    with pytest.raises(kind) as caught:
        specs_from_objects([_blue(readinessProbe=probe)])
    assert str(caught.value).startswith(f"Deployment abtesting/model-blue: spec.template.spec.containers[0].{field}")


def test_endpoints_follow_the_port_map_not_the_declaration() -> None:
    (spec,) = specs_from_objects([_blue()])
    svc = service("blue")

    def endpoints(target_port: int | str, ports: dict[int, int]) -> list[tuple[str, int]]:
        svc["spec"]["ports"][0]["targetPort"] = target_port
        running = [RunningWorkload(spec, ("127.0.0.1", 42000), ports=ports)]
        return endpoints_for(envoy.upstreams([svc]), running)[(BLUE, 5001, None)]

    assert endpoints("http", {5001: 42000}) == [("127.0.0.1", 42000)]
    assert endpoints("http", {5002: 42000}) == [], "declared 5001, listening on 5002: nothing answers on 5001"
    assert endpoints(5002, {5002: 42000}) == [("127.0.0.1", 42000)], "a number reaches an undeclared port"
    assert endpoints("grpc", {5001: 42000}) == [], "a name nobody declares reaches nothing"


def test_the_process_runner_refuses_what_it_cannot_run_before_starting_anything(tmp_path: Any) -> None:
    runner = ProcessRunner({"abtest/scorer-b": "New Model B"}, log_dir=tmp_path)
    (custom,) = specs_from_objects([_blue(image="registry.example.com/fraud-model:1.4")])
    with pytest.raises(ConfigError) as caught:
        runner.check(custom)
    assert str(caught.value) == (
        "Deployment abtesting/model-blue: spec.template.spec.containers[0].image: image "
        "'registry.example.com/fraud-model:1.4' cannot be run as a local process: the process runner runs only "
        "the sample scorer's images (abtest/scorer-b); use --workloads=docker to run this image"
    )
    (bad_port,) = specs_from_objects([_blue(env=[{"name": "PORT", "value": "http"}])])
    with pytest.raises(ConfigError, match=r"env\[PORT\]: must be a port number, got 'http'"):
        runner.check(bad_port)
    runner.close()


def test_not_ready_names_deployment_replica_probe_and_what_was_seen() -> None:
    (spec,) = specs_from_objects([_blue()])
    error = ReplicaNotReady(
        spec, "readinessProbe httpGet /healthz on port http (5001)", "HTTP 500", final=False, waited=30.0, timeout=30.0
    )
    assert str(error).startswith(
        "Deployment abtesting/model-blue replica 0 is not ready: readinessProbe httpGet /healthz on port http (5001) "
        "did not pass within 30s (after 30.0s); last seen: HTTP 500."
    )
    assert (error.deployment, error.replica, error.workload) == ("model-blue", 0, "abtesting/model-blue-0")


def _pod(ip: str | None, ready: str, labels: dict[str, str], *ports: int, deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "labels": labels}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-30T13:00:00Z"
    return {
        "metadata": metadata,
        "spec": {"containers": [{"name": "model", "ports": [{"containerPort": p} for p in ports]}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
    }


def test_endpoint_labels_of_pods_lists_ready_pods_by_ip_and_port_only() -> None:
    green, blue = {"app": "model", "version": "v1"}, {"app": "model", "version": "v2"}
    pods = [
        _pod("10.244.0.7", "True", green, 5001, 9090),
        _pod("10.244.0.8", "True", blue, 5001),
        _pod("10.244.0.9", "False", blue, 5001),  # not Ready: no endpoints
        _pod(None, "True", blue, 5001),  # no IP yet
        _pod("10.244.0.10", "True", blue, 5001, deleting=True),  # terminating
    ]
    assert endpoint_labels_of_pods(pods) == {
        "10.244.0.7:5001": green,
        "10.244.0.7:9090": green,
        "10.244.0.8:5001": blue,
    }


def test_a_replica_without_ports_has_no_address() -> None:
    (spec,) = specs_from_objects([_blue(ports=None, readinessProbe=None)])
    portless = RunningWorkload(spec, ("127.0.0.1", 0))
    assert portless.addresses() == [] and portless.address(0) is None and portless.address(5001) is None
    mapped = RunningWorkload(spec, ("127.0.0.1", 42000), ports={5001: 42000, 9090: 42001})
    assert mapped.addresses() == [("127.0.0.1", 42000), ("127.0.0.1", 42001)]
    assert mapped.address(9090) == ("127.0.0.1", 42001) and mapped.address(7000) is None
