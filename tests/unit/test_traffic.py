"""The load generator against a loopback HTTP server that each test starts and controls.

The server answers like the scorer (``x-model-version`` header, JSON string body) and can
split by a seeded RNG, fail, stall (timeouts), speak odd but valid HTTP (chunked,
close-delimited, 100 Continue), close idle connections, or send garbage. It counts what it
served, so the generator's counts are checked against the truth, not against themselves.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from abtest_harness import http1
from abtest_harness.loadcmd import load_command
from abtest_harness.routing import STANDARD_CLASSES, Request
from abtest_harness.traffic import (
    NotLoopback,
    Observation,
    UnresolvedTarget,
    allowed_url_of,
    by_version_header,
    load_target,
    loopback_target,
    run_load,
)

ANSWERS = {"green": "New Model A", "blue": "New Model B"}


# Broken answers, each written raw and followed by a close.
_BROKEN = {
    "/garbage": b"SPDY/9 what\r\n\r\n",
    "/bad-status": b"HTTP/1.1 OK fine\r\n\r\n",
    "/bad-length": b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n",
    "/huge-length": b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    "/truncated-head": b"HTTP/1.1 200 OK\r\nx-model-ver",
    "/truncated-body": b"HTTP/1.1 200 OK\r\nx-model-version: green\r\ncontent-length: 50\r\n\r\nshort",
    "/truncated-chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nabc",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # 64 workers connect at once; a backlog of 5 drops SYNs for 1 s

    def __init__(self, share_blue: float, seed: int, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.share_blue = share_blue
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.served: dict[str, int] = {}  # what the server answered: outcome -> count
        self.received = 0
        self.seen_headers: list[dict[str, str]] = []
        self.seen_methods: list[str] = []
        self.release = threading.Event()  # stalled answers wait on this, never on a clock

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]!s}:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that timed out has closed its end, so the late answer's write fails: expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    def record(self, outcome: str) -> None:
        with self.lock:
            self.served[outcome] = self.served.get(outcome, 0) + 1


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_POST(self) -> None:  # noqa: N802
        self.do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        # The length of the body a GET would get, and no body: a client that reads one hangs.
        self.send_response(200)
        self.send_header("content-length", "13")
        self.send_header("x-model-version", "green")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        with server.lock:
            server.received += 1
            server.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
            server.seen_methods.append(self.command)
        path = self.path.split("?", 1)[0]
        if path == "/score":
            with server.lock:
                version = "blue" if server.rng.random() < server.share_blue else "green"
            pinned = self.headers.get("x-api-version")
            version = pinned or version
            server.record(version)
            self._send(200, json.dumps(ANSWERS[version]).encode(), version)
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            server.record(f"status:{status}")
            self._send(status, b"upstream connect error", None)
        elif path == "/versioned-error":
            server.record("status:500")
            self._send(500, json.dumps("injected failure").encode(), "blue")
        elif path == "/plain":
            self._send(200, b"not json at all", "green")
        elif path == "/json-object":
            self._send(200, b'{"score": 0.5}', "green")
        elif path.startswith("/upstream/"):
            # As the gateway reports it: the endpoint it chose, and no version header at all.
            self.send_response(200)
            self.send_header("content-length", "13")
            self.send_header("x-abtest-upstream-host", path.rsplit("/", 1)[1])
            self.end_headers()
            self.wfile.write(b'"New Model B"')
        elif path == "/no-version":
            self._send(200, b'"who am I"', None)
        elif path == "/stall":
            server.release.wait(10.0)
            self._send(200, b'"late"', "green")
        elif path == "/stall-briefly":
            server.release.wait(0.25)  # answers after the client gave up, on the same connection
            self._send(200, b'"late"', "green")
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("x-model-version", "blue")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for part in (b'"New ', b"Model ", b'B"'):
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nx-trailer: yes\r\n\r\n")
        elif path == "/close-delimited":
            self.wfile.write(b'HTTP/1.0 200 OK\r\nx-model-version: green\r\n\r\n"New Model A"')
            self.close_connection = True
        elif path == "/continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._send(200, b'"New Model A"', "green")
        elif path == "/drop-idle":
            # Answer, then close without saying so: the next request on this connection meets
            # a closed socket, as with a server whose keep-alive idle timeout just expired.
            self._send(200, b'"New Model A"', "green")
            self.close_connection = True
        elif path == "/connection-close":
            self.send_response(200)
            self.send_header("x-model-version", "blue")
            self.send_header("content-length", "13")
            self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(b'"New Model B"')
            self.close_connection = True
        elif path in _BROKEN:
            self.wfile.write(_BROKEN[path])
            self.close_connection = True
        else:
            self._send(404, b"no route", None)

    def _send(self, status: int, body: bytes, version: str | None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if version is not None:
            self.send_header("x-model-version", version)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[_Server]:
    """A scorer-like server on a random loopback port; split 30% blue from seed 7."""
    srv = _Server(share_blue=0.3, seed=7)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5.0)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cls(label: str, path: str, **headers: str) -> Request:
    return Request(label, path=path, headers={k.replace("_", "-"): v for k, v in headers.items()})


# --- classification -----------------------------------------------------------------------


def test_split_counts_match_what_the_server_served(server: _Server) -> None:
    result = run_load(server.url, [_cls("weighted", "/score")], max_requests=300, deadline_s=20,
                      concurrency=4)
    assert result.requests == 300, result
    assert result.counts["weighted"] == server.served, (result.counts, server.served)
    assert 40 < server.served["blue"] < 140, f"seeded 30% split looks wrong: {server.served}"
    assert result.answers == {
        v: {ANSWERS[v]: n} for v, n in server.served.items()
    }, "answers must be the JSON-decoded body per version"
    assert result.errors == {}
    assert result.stopped_by == "max_requests"


def test_statuses_are_counted_apart_even_with_a_version_header(server: _Server) -> None:
    classes = [_cls("e503", "/status/503"), _cls("e500v", "/versioned-error"), _cls("missing", "/nope"),
               _cls("headerless", "/no-version")]
    seen: list[Observation] = []
    result = run_load(server.url, classes, max_requests=40, deadline_s=20, concurrency=2,
                      on_response=seen.append)
    assert result.counts == {"e503": {"status:503": 10}, "e500v": {"status:500": 10},
                             "missing": {"status:404": 10}, "headerless": {"status:200": 10}}
    assert result.errors == {"status:503": 10, "status:500": 10, "status:404": 10, "status:200": 10}
    assert result.answers == {}, "error answers must never count as a version's answer"
    versioned = [o for o in seen if o.label == "e500v"]
    assert all(o.version == "blue" and o.status == 500 and o.body == "injected failure" for o in versioned), \
        "a 500 keeps the version header and body on its observation"
    assert any("status:503" in d for d in result.error_details), result.error_details


def test_a_classifier_decides_the_outcome_from_status_and_headers(server: _Server) -> None:
    """The run knows nothing of versions: `classify` maps (status, headers) to the outcome."""
    endpoints = {"10.0.0.7:5001": "blue"}
    seen: list[tuple[int, str | None]] = []

    def by_endpoint(status: int, headers: Mapping[str, str]) -> str:
        seen.append((status, headers.get("x-abtest-upstream-host")))
        if status >= 400:
            return f"status:{status}"
        host = headers.get("x-abtest-upstream-host", "")
        return endpoints.get(host, f"error:unattributed:{host}")

    classes = [_cls("known", "/upstream/10.0.0.7:5001"), _cls("unknown", "/upstream/10.0.0.9:5001"),
               _cls("down", "/status/503")]
    result = run_load(server.url, classes, max_requests=9, deadline_s=10, concurrency=1, classify=by_endpoint)
    unattributed = "error:unattributed:10.0.0.9:5001"
    assert result.counts == {"known": {"blue": 3}, "unknown": {unattributed: 3}, "down": {"status:503": 3}}
    assert result.answers == {"blue": {"New Model B": 3}}, "only a version's answers are kept as answers"
    assert result.errors == {unattributed: 3, "status:503": 3}
    assert sorted(seen) == sorted([(200, "10.0.0.7:5001")] * 3 + [(200, "10.0.0.9:5001")] * 3
                                  + [(503, None)] * 3), "the classifier sees every answer's status and headers"


def test_the_default_classifier_reads_the_version_header() -> None:
    assert by_version_header(200, {"x-model-version": "green"}) == "green"
    assert by_version_header(302, {"x-model-version": "green"}) == "green"
    assert by_version_header(404, {"x-model-version": "green"}) == "status:404"
    assert by_version_header(200, {}) == "status:200"


def test_repeated_header_fields_are_joined() -> None:
    wire = b"HTTP/1.1 200 OK\r\nVia: a\r\nvia: b\r\nContent-Length: 0\r\n\r\n"
    parsed = http1.parse_answer(wire, False, eof=False)
    assert parsed is not None and parsed[0].headers["via"] == "a, b"


def test_stalled_answers_are_timeouts(server: _Server) -> None:
    result = run_load(server.url, [_cls("slow", "/stall")], max_requests=3, deadline_s=10, concurrency=1,
                      timeout_s=0.1)
    assert result.counts == {"slow": {"error:timeout": 3}}, result
    assert result.abandoned == 0, "timeouts within the deadline are the target's, and counted"
    assert result.elapsed_s < 2.0, f"three 0.1 s timeouts took {result.elapsed_s:.2f}s"


def test_a_late_answer_is_never_taken_for_the_next_one(server: _Server) -> None:
    classes = [_cls("slow", "/stall-briefly"), _cls("fast", "/score")]
    result = run_load(server.url, classes, max_requests=6, deadline_s=10, concurrency=1, timeout_s=0.1)
    assert result.counts["slow"] == {"error:timeout": 3}, result.counts
    assert "late" not in str(result.answers), f"a timed-out connection was reused: {result.answers}"
    assert sum(result.counts["fast"].values()) == 3


def test_refused_connections_are_connection_errors(closed_port: int) -> None:
    result = run_load(f"http://127.0.0.1:{closed_port}", [_cls("weighted", "/score")], max_requests=5,
                      deadline_s=10, concurrency=2)
    assert result.counts == {"weighted": {"error:connection": 5}}, result
    assert result.errors == {"error:connection": 5}
    assert result.error_details and all("error:connection" in d for d in result.error_details)


@pytest.mark.parametrize(
    ("path", "outcome"),
    [
        ("/garbage", "error:other"),
        ("/bad-status", "error:other"),
        ("/bad-length", "error:other"),
        ("/huge-length", "error:other"),
        ("/bad-chunk", "error:other"),
        ("/truncated-head", "error:connection"),
        ("/truncated-body", "error:connection"),
        ("/truncated-chunk", "error:connection"),
    ],
)
def test_broken_answers_are_errors_not_versions(server: _Server, path: str, outcome: str) -> None:
    result = run_load(server.url, [_cls("bad", path), _cls("good", "/score")], max_requests=6, deadline_s=10,
                      concurrency=1)
    assert result.counts["bad"] == {outcome: 3}, (path, result.counts, result.error_details)
    assert sum(result.counts["good"].values()) == 3 and not any(
        k.startswith("error:") for k in result.counts["good"]
    ), f"{path}: a broken answer must not spoil the next request on a new connection"


@pytest.mark.parametrize(
    ("path", "version", "answer"),
    [
        ("/plain", "green", "not json at all"),
        ("/json-object", "green", '{"score": 0.5}'),
        ("/chunked", "blue", "New Model B"),
        ("/close-delimited", "green", "New Model A"),
        ("/continue", "green", "New Model A"),
        ("/drop-idle", "green", "New Model A"),
        ("/connection-close", "blue", "New Model B"),
    ],
)
def test_http_framings_and_bodies(server: _Server, path: str, version: str, answer: str) -> None:
    """Bodies are kept as text; only a JSON *string* is decoded; every HTTP/1.1 framing works."""
    result = run_load(server.url, [_cls("c", path)], max_requests=6, deadline_s=10, concurrency=1)
    assert result.counts == {"c": {version: 6}}, (path, result.counts, result.error_details)
    assert result.answers == {version: {answer: 6}}
    assert server.received == 6, f"{path}: every request must reach the server exactly once"


def test_head_requests_expect_no_body(server: _Server) -> None:
    head = Request("head", path="/score", method="HEAD")
    result = run_load(server.url, [head, _cls("after", "/score")], max_requests=10, deadline_s=10,
                      concurrency=1)
    assert result.errors == {}, result.error_details
    assert sum(result.counts["head"].values()) == 5
    assert sum(result.counts["after"].values()) == 5, "keep-alive framing must survive a HEAD"


def test_headers_method_and_host_are_sent(server: _Server) -> None:
    pinned = Request("header-blue", path="/score", method="POST", headers={"x-api-version": "blue"},
                     authority="mlmodel.example")
    result = run_load(server.url, [pinned], max_requests=4, deadline_s=10, concurrency=1)
    assert result.counts == {"header-blue": {"blue": 4}}
    assert server.seen_methods == ["POST"] * 4
    sent = server.seen_headers
    assert all(h["x-api-version"] == "blue" and h["host"] == "mlmodel.example" for h in sent), sent
    assert all(h.get("content-length") == "0" for h in server.seen_headers), "a POST must say its length"


def test_round_robin_over_classes(server: _Server) -> None:
    result = run_load(server.url, STANDARD_CLASSES, max_requests=90, deadline_s=10, concurrency=3)
    assert {label: sum(c.values()) for label, c in result.counts.items()} == \
        {"weighted": 30, "header-blue": 30, "header-green": 30}
    assert result.counts["header-blue"] == {"blue": 30}
    assert result.counts["header-green"] == {"green": 30}


def test_on_response_sees_one_answer_at_a_time(server: _Server) -> None:
    inside = 0
    overlaps = 0
    calls = 0

    def callback(observation: Observation) -> None:
        nonlocal inside, overlaps, calls
        inside += 1
        overlaps += inside != 1
        calls += 1
        for _ in range(200):  # widen the window a concurrent call would need
            pass
        inside -= 1

    result = run_load(server.url, [_cls("w", "/score")], max_requests=200, deadline_s=10, concurrency=8,
                      on_response=callback)
    assert calls == result.requests == 200
    assert overlaps == 0, "on_response must be called one answer at a time"


@pytest.mark.parametrize(
    ("wire", "bodyless", "status", "body", "close"),
    [
        (b"HTTP/1.1 200 OK\r\nx-model-version: blue\r\ncontent-length: 13\r\n\r\n\"New Model B\"",
         False, 200, b'"New Model B"', False),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n"
         b"Connection: close\r\n\r\nno", False, 503, b"no", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\n",
         False, 200, b"abcde", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n", True, 200, b"", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, 204, b"", False),
    ],
)
def test_answers_parse_only_once_complete(wire: bytes, bodyless: bool, status: int, body: bytes,
                                          close: bool) -> None:
    """Fed every prefix of an answer, the parser waits; fed all of it, it parses exactly it."""
    for cut in range(len(wire)):
        assert http1.parse_answer(wire[:cut], bodyless, eof=False) is None, f"parsed early at byte {cut}"
    parsed = http1.parse_answer(wire + b"HTTP/1.1 next", bodyless, eof=False)
    assert parsed is not None
    answer, used, closes = parsed
    assert (answer.status, answer.body, used, closes) == (status, body, len(wire), close)


def test_a_close_delimited_body_ends_at_eof() -> None:
    wire = b"HTTP/1.0 200 OK\r\nx-model-version: green\r\n\r\nsome body"
    assert http1.parse_answer(wire, False, eof=False) is None
    parsed = http1.parse_answer(wire, False, eof=True)
    assert parsed is not None and parsed[2], "a close-delimited answer closes the connection"
    assert parsed[0].body == b"some body" and parsed[0].headers["x-model-version"] == "green"


def _client_sockets(*ports: int) -> int:
    """Sockets this process holds whose peer is one of `ports` (the client ends, not the server's)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) in ports:
                    held += 1
    return held


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs Linux /proc")
def test_no_connection_outlives_the_run(server: _Server, closed_port: int) -> None:
    port = int(server.server_address[1])

    def open_fds() -> int:
        return _client_sockets(port, closed_port)

    before = open_fds()
    assert before == 0
    run_load(server.url, STANDARD_CLASSES, max_requests=200, deadline_s=10, concurrency=8)
    run_load(f"http://127.0.0.1:{closed_port}", STANDARD_CLASSES, max_requests=20, deadline_s=10, concurrency=4)
    run_load(server.url, [_cls("slow", "/stall")], max_requests=50, deadline_s=0.2, concurrency=4)

    def explode(observation: Observation) -> None:
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError) as caught:
        run_load(server.url, STANDARD_CLASSES, max_requests=200, deadline_s=10, concurrency=8, on_response=explode)
    # Checked while the traceback (and so every frame of the run) is alive: garbage collection
    # must not be what closes them.
    assert caught.traceback
    assert open_fds() == before, "every socket a run opens must be closed when it returns or raises"


# --- bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 5, 64])
def test_max_requests_is_never_exceeded(server: _Server, concurrency: int) -> None:
    result = run_load(server.url, STANDARD_CLASSES, max_requests=37, deadline_s=10, concurrency=concurrency)
    assert result.requests == 37
    assert server.received == 37, f"the server got {server.received} requests, the bound is 37"


class _SmallBacklogServer(_Server):
    request_queue_size = 5  # socketserver's default, as in a plain Python server


def test_connections_ramp_up_within_a_small_listen_backlog() -> None:
    """32 workers, a backlog of 5: connecting all at once would drop handshakes (a 1 s SYN retry)."""
    small = _SmallBacklogServer(share_blue=0.3, seed=7)
    thread = threading.Thread(target=small.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    slowest = 0.0

    def record(observation: Observation) -> None:
        nonlocal slowest
        slowest = max(slowest, observation.elapsed_s)

    try:
        result = run_load(small.url, [_cls("w", "/score")], max_requests=320, deadline_s=10, concurrency=32,
                          on_response=record)
    finally:
        small.shutdown()
        small.server_close()
        thread.join(5.0)
    assert result.requests == 320, result
    assert slowest < 0.9, f"the slowest answer took {slowest:.2f}s: a dropped handshake's SYN retransmit"


def test_deadline_cuts_stalled_requests_and_drops_them(server: _Server) -> None:
    started = time.monotonic()
    result = run_load(server.url, [_cls("slow", "/stall")], max_requests=1000, deadline_s=0.3,
                      concurrency=3, timeout_s=5.0)
    took = time.monotonic() - started
    assert took < 1.3, f"deadline 0.3 s but the run took {took:.2f}s"
    assert result.stopped_by == "deadline"
    assert result.abandoned == 3, "each worker's request was cut by the deadline"
    assert result.requests == 0 and result.errors == {}, "a cut request is not the target's timeout"


def test_deadline_stops_a_fast_run(server: _Server) -> None:
    result = run_load(server.url, [_cls("w", "/score")], max_requests=10**9, deadline_s=0.2, concurrency=2)
    assert result.stopped_by == "deadline"
    assert 0 < result.requests < 10**9
    assert result.elapsed_s < 1.2, f"deadline 0.2 s but the run took {result.elapsed_s:.2f}s"


def test_zero_requests_sends_nothing(server: _Server) -> None:
    result = run_load(server.url, [_cls("w", "/score")], max_requests=0, deadline_s=1)
    assert result.requests == 0 and server.received == 0


# --- live sequential tests ----------------------------------------------------------------


class _Decision(enum.Enum):
    CONTINUE = "continue"
    PASS = "pass"


@dataclass
class _DecidesAfter:
    """A tiny sequential test: decides after `n` observations; later ones count as late, as in stats."""

    n: int
    seen: list[str] = field(default_factory=list)
    late: int = 0
    decision: _Decision = _Decision.CONTINUE

    def observe(self, outcome: str) -> _Decision:
        if self.decision is not _Decision.CONTINUE:
            self.late += 1
            return self.decision
        self.seen.append(outcome)
        if len(self.seen) >= self.n:
            self.decision = _Decision.PASS
        return self.decision

    def verdict(self) -> tuple[str, int]:
        return (self.decision.name, len(self.seen))


def test_stops_when_every_class_has_decided(server: _Server) -> None:
    fast, slow = _DecidesAfter(5), _DecidesAfter(40)
    classes = [_cls("fast", "/score"), _cls("slow", "/score", x_api_version="blue")]
    result = run_load(server.url, classes, {"fast": fast, "slow": slow}, max_requests=10_000, deadline_s=10,
                      concurrency=1)
    assert result.stopped_by == "decided"
    assert result.verdicts == {"fast": ("PASS", 5), "slow": ("PASS", 40)}
    assert sum(result.counts["fast"].values()) == 5, "a decided class must get no more requests"
    assert sum(result.counts["slow"].values()) == 40
    assert server.received == 45
    assert fast.late == slow.late == 0, "one worker: nothing can be in flight when a class decides"


def test_decided_classes_get_no_more_requests_under_concurrency(server: _Server) -> None:
    concurrency = 6
    fast, slow = _DecidesAfter(10), _DecidesAfter(300)
    classes = [_cls("fast", "/score"), _cls("slow", "/score")]
    result = run_load(server.url, classes, {"fast": fast, "slow": slow}, max_requests=10_000, deadline_s=10,
                      concurrency=concurrency)
    fast_sent = sum(result.counts["fast"].values())
    assert 10 <= fast_sent <= 10 + concurrency - 1, \
        f"after deciding at 10, only requests already in flight may come back; got {fast_sent}"
    assert len(fast.seen) == 10 and fast.late == fast_sent - 10, "answers in flight reach the test as late"
    assert result.requests == server.received <= 310 + 2 * (concurrency - 1), "in flight: c-1 per class"


def test_already_decided_tests_get_nothing(server: _Server) -> None:
    done = _DecidesAfter(0, decision=_Decision.PASS)
    result = run_load(server.url, [_cls("w", "/score")], {"w": done}, max_requests=100, deadline_s=5)
    assert result.requests == 0 and server.received == 0 and result.stopped_by == "decided"


def test_with_the_real_sequential_test(server: _Server) -> None:
    from abtest_harness import stats
    tests = {
        "header-blue": stats.SequentialTest({"blue": 1.0}, label="header-blue"),
        "header-green": stats.SequentialTest({"blue": 1.0}, label="header-green"),  # a misroute
    }
    classes = [c for c in STANDARD_CLASSES if c.label in tests]
    result = run_load(server.url, classes, tests, max_requests=5000, deadline_s=20, concurrency=2)
    assert result.stopped_by == "decided"
    blue, green = result.verdicts["header-blue"], result.verdicts["header-green"]
    assert blue.passed and green.decision is stats.Decision.FAIL, (blue.message, green.message)
    assert green.n == 1, "one request to the wrong version fails a share of 1 at once"
    assert result.counts["header-green"]["green"] <= 2, "the failed class must stop getting requests"


def test_a_split_judged_live_by_the_real_sequential_test(server: _Server) -> None:
    """The server splits 30% blue: a 70/30 expectation passes, a 50/50 one fails, both early."""
    from abtest_harness import stats
    tests = {
        "right": stats.SequentialTest({"green": 0.7, "blue": 0.3}, label="right"),
        "wrong": stats.SequentialTest({"green": 0.5, "blue": 0.5}, label="wrong"),
    }
    cap = sum(t.max_n for t in tests.values())
    result = run_load(server.url, [_cls("right", "/score"), _cls("wrong", "/score")], tests,
                      max_requests=cap, deadline_s=30, concurrency=4)
    right, wrong = result.verdicts["right"], result.verdicts["wrong"]
    assert result.stopped_by == "decided", result
    assert right.passed, right.message
    assert wrong.decision is stats.Decision.FAIL, wrong.message
    assert result.requests < cap, "the sequential test must stop before the cap here"
    for label, verdict in result.verdicts.items():
        sent = sum(result.counts[label].values())
        assert sent == verdict.n + verdict.late, (label, sent, verdict.n, verdict.late)
        assert verdict.late <= 3, f"{label}: only answers in flight may arrive after the decision"


def test_tests_must_match_the_classes(server: _Server) -> None:
    with pytest.raises(ValueError, match="cover exactly"):
        run_load(server.url, [_cls("a", "/score")], {"b": _DecidesAfter(1)}, max_requests=1, deadline_s=1)
    with pytest.raises(ValueError, match="unique"):
        run_load(server.url, [_cls("a", "/score"), _cls("a", "/x")], max_requests=1, deadline_s=1)


def test_a_failing_callback_stops_the_run_and_surfaces(server: _Server) -> None:
    def explode(observation: Observation) -> None:
        raise RuntimeError("callback broke")

    with pytest.raises(RuntimeError, match="callback broke"):
        run_load(server.url, [_cls("w", "/score")], max_requests=1000, deadline_s=10, concurrency=3,
                 on_response=explode)
    assert server.received <= 3 + 3, "workers must stop soon after a callback fails"


# --- loopback only ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1:80", "http://192.168.1.10/score", "http://172.17.0.2:8080", "http://example.com/",
     "http://0.0.0.0:80", "https://127.0.0.1:8443", "http://[::ffff:10.0.0.1]:80", "http://127.0.0.1.nip.io/"],
)
def test_non_loopback_targets_are_refused(url: str) -> None:
    with pytest.raises(NotLoopback, match="loopback|http://"):
        loopback_target(url)
    with pytest.raises(ValueError):  # NotLoopback is a ValueError too
        run_load(url, [_cls("w", "/score")], max_requests=1, deadline_s=1)


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [("http://127.0.0.1:8080/score", "127.0.0.1", 8080), ("http://127.3.2.1", "127.3.2.1", 80),
     ("http://[::1]:9000/", "::1", 9000), ("http://localhost:1234", "localhost", 1234)],
)
def test_loopback_targets_are_accepted(url: str, host: str, port: int) -> None:
    target = loopback_target(url)
    assert (target.host, target.port) == (host, port)
    assert all(http1.is_loopback_ip(a) for a in target.addresses)


# --- the one allowed gateway URL (--mesh cluster) -----------------------------------------


def _no_dns(host: str, port: int) -> tuple[str, ...]:
    raise AssertionError(f"nothing may be resolved here, asked for {host}:{port}")


def test_a_non_loopback_url_is_refused_without_an_allowed_gateway_url() -> None:
    # Every mode but --mesh cluster: no allowed URL, so loopback only.
    for url in ("http://10.1.2.3:8080", "http://gw.example.com", "http://192.0.2.7/"):
        with pytest.raises(NotLoopback, match="not loopback"):
            load_target(url, resolve=_no_dns)


def test_a_non_loopback_url_is_accepted_only_when_it_is_exactly_the_allowed_one() -> None:
    allowed = "http://10.1.2.3:8080"
    target = load_target(allowed, allowed=allowed, resolve=_no_dns)
    assert (target.host, target.port, target.addresses, target.allowed) == ("10.1.2.3", 8080, ("10.1.2.3",), True)
    # The same URL written otherwise is the same target.
    assert load_target("HTTP://10.1.2.3:8080/", allowed=allowed, resolve=_no_dns).addresses == ("10.1.2.3",)
    assert load_target("http://10.9.9.9", allowed="http://10.9.9.9:80", resolve=_no_dns).port == 80
    # Anything else is refused, a loopback URL included: with an allowed URL the load goes there only.
    for other in ("http://10.1.2.4:8080", "http://10.1.2.3:8081", "http://10.1.2.3", "http://10.1.2.3:8080/other",
                  "http://10.1.2.3:8080/?x=1", "http://127.0.0.1:8080", "http://gw.example.com:8080"):
        with pytest.raises(NotLoopback, match="only to the gateway URL given"):
            load_target(other, allowed=allowed, resolve=_no_dns)


def test_an_allowed_gateway_name_is_resolved_and_https_is_refused() -> None:
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> tuple[str, ...]:
        asked.append((host, port))
        return {"gw.example.com": ("192.0.2.10", "2001:db8::10")}.get(host, ())

    target = load_target("http://gw.example.com:8080", allowed="http://GW.example.com:8080", resolve=resolve)
    assert target.addresses == ("192.0.2.10", "2001:db8::10") and target.netloc == "gw.example.com:8080"
    assert asked == [("gw.example.com", 8080)]
    with pytest.raises(UnresolvedTarget, match="resolves to no address"):
        load_target("http://nowhere.example", allowed="http://nowhere.example", resolve=resolve)
    for url in ("https://gw.example.com", "https://127.0.0.1:8443"):
        with pytest.raises(NotLoopback, match="plain http:// .*no TLS.*port-forward"):
            load_target(url, allowed=url, resolve=_no_dns)
    assert asked == [("gw.example.com", 8080), ("nowhere.example", 80)]


def test_run_load_refuses_a_url_other_than_the_allowed_one_before_sending(server: _Server) -> None:
    with pytest.raises(NotLoopback):
        run_load(server.url, [_cls("w", "/score")], max_requests=5, deadline_s=5, allowed_url="http://10.1.2.3:80")
    with pytest.raises(NotLoopback):
        run_load("http://10.1.2.3:80", [_cls("w", "/score")], max_requests=5, deadline_s=5)
    assert server.received == 0


def test_only_a_mesh_that_names_an_allowed_gateway_url_widens_the_target() -> None:
    class Local:
        gateway_url = "http://127.0.0.1:8080"

    class Cluster:
        gateway_url = "http://10.1.2.3:8080"
        allowed_gateway_url = "http://10.1.2.3:8080"

    assert allowed_url_of(Local()) is None
    assert allowed_url_of(Cluster()) == "http://10.1.2.3:8080"


@pytest.fixture
def stand_in_gateway() -> Iterator[tuple[_Server, _Server]]:
    """A scorer-like server on 127.0.0.2 (standing in for a remote gateway) and a decoy on
    127.0.0.1 at the same port, which must never be reached."""
    servers: list[_Server] = []
    threads: list[threading.Thread] = []
    try:
        remote = _Server(share_blue=0.3, seed=11, host="127.0.0.2")
        servers.append(remote)
        servers.append(_Server(share_blue=0.3, seed=11, host="127.0.0.1", port=remote.server_address[1]))
        for srv in servers:
            threads.append(threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True))
            threads[-1].start()
        yield servers[0], servers[1]
    finally:
        for srv in servers:
            srv.release.set()
            srv.shutdown()
            srv.server_close()
        for thread in threads:
            thread.join(5.0)


def test_the_load_goes_to_the_allowed_url_and_nowhere_else(stand_in_gateway: tuple[_Server, _Server]) -> None:
    remote, decoy = stand_in_gateway
    url = remote.url
    assert url.startswith("http://127.0.0.2:")
    classes = [Request("weighted", path="/score", authority="shop.example.com"),
               Request("pinned", path="/score", headers={"x-api-version": "blue"}, authority="shop.example.com")]
    result = run_load(url, classes, max_requests=60, deadline_s=20, concurrency=3, allowed_url=url)
    assert result.requests == 60 and not result.errors
    assert remote.received == 60 and decoy.received == 0
    assert result.counts["pinned"] == {"blue": 30}
    assert sum(result.counts["weighted"].values()) == 30
    merged: dict[str, int] = {}
    for per in result.counts.values():
        for outcome, n in per.items():
            merged[outcome] = merged.get(outcome, 0) + n
    assert merged == remote.served
    # The Host header is the class's authority (the spec's gateway host), not the URL's host.
    assert {h["host"] for h in remote.seen_headers} == {"shop.example.com"}


# --- the CLI's load command ---------------------------------------------------------------


def test_load_command_prints_each_answer_then_counts(server: _Server) -> None:
    out = io.StringIO()
    code = load_command(f"{server.url}/score", 10, None, 2, out)
    lines = out.getvalue().splitlines()
    answers = [line for line in lines if line.startswith('"New Model')]
    assert code == 0, out.getvalue()
    assert len(answers) == 10, out.getvalue()
    assert f"10 of 10 requests to {server.url}/score" in out.getvalue()
    for version, n in server.served.items():
        assert any(line.strip().startswith(f"{version}: {n} ") for line in lines), (version, out.getvalue())
    assert "errors: none" in out.getvalue()


def test_load_command_pins_the_version(server: _Server) -> None:
    out = io.StringIO()
    assert load_command(f"{server.url}/score", 5, "blue", 1, out) == 0
    assert server.served == {"blue": 5}
    assert all(h["x-api-version"] == "blue" for h in server.seen_headers)
    assert out.getvalue().count('"New Model B"  (blue)') == 5, out.getvalue()


def test_load_command_reports_errors_and_fails(server: _Server, closed_port: int) -> None:
    out = io.StringIO()
    assert load_command(f"{server.url}/status/503", 3, None, 1, out) == 1
    assert "status:503: 3 (100.0%)" in out.getvalue(), out.getvalue()
    out = io.StringIO()
    assert load_command(f"http://127.0.0.1:{closed_port}/score", 2, None, 1, out) == 1
    assert "[error:connection]" in out.getvalue()


def test_load_command_refuses_remote_targets() -> None:
    out = io.StringIO()
    assert load_command("http://10.1.2.3/score", 10, None, 1, out) == 2
    assert "not loopback" in out.getvalue()
