"""The mock scorer, served in-process on a loopback port: answers, headers, probes, faults."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator

import pytest

from abtest_harness.scorer import ScorerConfig, _ScorerServer


@pytest.fixture
def start_scorer() -> Iterator[object]:
    servers: list[_ScorerServer] = []

    def start(**env: str) -> int:
        server = _ScorerServer(ScorerConfig({"SCORER_HOST": "127.0.0.1", "PORT": "0", **env}))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_score_answers_the_configured_json_string_and_version(start_scorer) -> None:  # type: ignore[no-untyped-def]
    port = start_scorer(SCORER_ANSWER="New Model B", MODEL_VERSION="blue")
    for method, body in (("GET", None), ("POST", b'{"data": [[1, 2]]}')):
        status, headers, payload = _get(port, "/score", method, body)
        assert status == 200, method
        assert json.loads(payload) == "New Model B"
        assert headers["x-model-version"] == "blue"
        assert headers["content-type"] == "application/json"


def test_healthz_and_unknown_path(start_scorer) -> None:  # type: ignore[no-untyped-def]
    port = start_scorer(MODEL_VERSION="green")
    assert _get(port, "/healthz")[0] == 200
    status, headers, _ = _get(port, "/nothing")
    assert status == 404
    assert headers["x-model-version"] == "green"


def test_error_rate_knob_gives_that_share_of_500s(start_scorer) -> None:  # type: ignore[no-untyped-def]
    port = start_scorer(SCORER_ERROR_RATE="0.3", SCORER_SEED="7")
    statuses = [_get(port, "/score")[0] for _ in range(400)]
    failures = statuses.count(500)
    # 400 draws at p = 0.3: mean 120, sd 9.2; 80..160 is more than 4 sd either side.
    assert 80 <= failures <= 160, failures
    assert set(statuses) == {200, 500}
    assert _get(port, "/healthz")[0] == 200, "probes must not be subject to injected failures"


def test_all_or_nothing_error_rates(start_scorer) -> None:  # type: ignore[no-untyped-def]
    always = start_scorer(SCORER_ERROR_RATE="1")
    never = start_scorer(SCORER_ERROR_RATE="0")
    assert {_get(always, "/score")[0] for _ in range(20)} == {500}
    assert {_get(never, "/score")[0] for _ in range(20)} == {200}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SCORER_ERROR_RATE": "1.5"}, "SCORER_ERROR_RATE must be within 0..1"),
        ({"SCORER_ERROR_RATE": "lots"}, "SCORER_ERROR_RATE must be a number"),
        ({"SCORER_LATENCY_MS": "-3"}, "SCORER_LATENCY_MS must not be negative"),
        ({"PORT": "http"}, "PORT must be a number"),
    ],
)
def test_bad_knobs_are_rejected(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScorerConfig(env)
