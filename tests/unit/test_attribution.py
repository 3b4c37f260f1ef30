"""Attribution by destination: the gateway's upstream host -> pod labels -> the spec's version."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from abtest_harness.attribution import Attribution, for_mesh, version_of
from abtest_harness.routing import Request
from abtest_harness.traffic import run_load

VERSIONS = {"v1": {"app": "reviews", "version": "v1"}, "v2": {"app": "reviews", "version": "v2"}}
ENDPOINTS = {
    "127.0.0.1:4001": {"app": "reviews", "version": "v1", "pod-template-hash": "abc"},
    "127.0.0.1:4002": {"app": "reviews", "version": "v2"},
    "127.0.0.1:4003": {"app": "ratings", "version": "v1"},  # selected by no version: app differs
}


def test_the_endpoint_chosen_names_the_version_not_the_image() -> None:
    attribution = Attribution(VERSIONS, ENDPOINTS)
    # The image claims v2 in its header; the gateway routed to a v1 pod: v1 it is.
    assert attribution.outcome("127.0.0.1:4001", "v2") == "v1"
    assert attribution.outcome("127.0.0.1:4002", None) == "v2"


def test_an_unknown_endpoint_or_unselected_pod_is_an_error_outcome_never_a_version() -> None:
    attribution = Attribution(VERSIONS, ENDPOINTS)
    assert attribution.outcome("10.9.9.9:80", "v1") == "error:unattributed:10.9.9.9:80"
    assert attribution.outcome("127.0.0.1:4003", "v1") == "error:unattributed:127.0.0.1:4003"


def test_endpoints_are_read_again_when_an_unknown_host_appears() -> None:
    calls: list[int] = []
    current = {"127.0.0.1:4001": {"app": "reviews", "version": "v1"}}

    def endpoint_labels() -> dict[str, dict[str, str]]:
        calls.append(1)
        return dict(current)

    attribution = Attribution(VERSIONS, endpoint_labels)
    assert attribution.outcome("127.0.0.1:4001", None) == "v1"
    current["127.0.0.1:5005"] = {"app": "reviews", "version": "v2"}  # a stage change started a pod
    assert attribution.outcome("127.0.0.1:5005", None) == "v2"
    assert attribution.outcome("127.0.0.1:4001", None) == "v1"
    assert len(calls) == 2


def test_without_an_upstream_header_the_fallback_decides() -> None:
    assert Attribution(VERSIONS, ENDPOINTS, fallback=True).outcome(None, "v2") == "v2"
    assert Attribution(VERSIONS, ENDPOINTS, fallback=True).outcome("-", "v2") == "v2"
    assert Attribution(VERSIONS, ENDPOINTS, fallback=False).outcome(None, "v2") == "error:unattributed:-"


def test_a_mesh_that_cannot_list_endpoints_keeps_the_version_header() -> None:
    class OldMesh:
        pass

    class NewMesh:
        def endpoint_labels(self) -> dict[str, dict[str, str]]:
            return dict(ENDPOINTS)

    assert for_mesh(OldMesh(), VERSIONS).outcome("127.0.0.1:4001", "v2") == "v2"
    assert for_mesh(NewMesh(), VERSIONS).outcome("127.0.0.1:4001", "v2") == "v1"


def test_without_spec_versions_the_model_version_label_names_the_version() -> None:
    attribution = Attribution(None, {"127.0.0.1:1": {"model_version": "blue"}, "127.0.0.1:2": {}})
    assert attribution.outcome("127.0.0.1:1", None) == "blue"
    assert attribution.outcome("127.0.0.1:2", None) == "error:unattributed:127.0.0.1:2"


def test_version_of_needs_every_selector_label() -> None:
    assert version_of({"app": "reviews"}, VERSIONS) is None
    assert version_of({"app": "reviews", "version": "v2", "extra": "x"}, VERSIONS) == "v2"


# --- through the load generator --------------------------------------------------------------


class _Gateway(ThreadingHTTPServer):
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Alternate endpoints; the image header always lies ("v2"), the upstream host tells the truth.
    upstreams = ["127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"]
    count = 0
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:  # noqa: N802
        with self.lock:
            upstream = self.upstreams[type(self).count % 3]
            type(self).count += 1
        body = b'"an answer"'
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-model-version", "v2")
        self.send_header("x-abtest-upstream-host", upstream)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def gateway() -> Iterator[str]:
    server = _Gateway(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


def test_run_load_counts_by_upstream_host_and_unattributed_answers_as_errors(gateway: str) -> None:
    _Handler.count = 0
    result = run_load(
        gateway, [Request("all", path="/score")], max_requests=30, deadline_s=20.0, concurrency=1,
        attribute=Attribution(VERSIONS, ENDPOINTS),
    )
    assert result.counts["all"] == {"v1": 10, "v2": 10, "error:unattributed:127.0.0.1:4003": 10}
    assert result.errors == {"error:unattributed:127.0.0.1:4003": 10}
    assert result.answers == {"v1": {"an answer": 10}, "v2": {"an answer": 10}}


def test_run_load_without_attribution_keeps_the_version_header(gateway: str) -> None:
    result = run_load(gateway, [Request("all", path="/score")], max_requests=9, deadline_s=20.0, concurrency=1)
    assert result.counts["all"] == {"v2": 9}


def test_the_module_switch_decides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from abtest_harness import attribution

    monkeypatch.setattr(attribution, "VERSION_HEADER_FALLBACK", False)
    assert Attribution(VERSIONS, ENDPOINTS).outcome(None, "v2") == "error:unattributed:-"
    monkeypatch.setattr(attribution, "VERSION_HEADER_FALLBACK", True)
    assert Attribution(VERSIONS, ENDPOINTS).outcome(None, "v2") == "v2"
