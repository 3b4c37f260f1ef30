"""Load generator: sends request classes to a loopback gateway and classifies every answer.

`run_load` keeps `concurrency` requests in flight, each on its own HTTP/1.1 keep-alive
connection, round-robin over the request classes that have not been decided yet. Every answer
is classified:

==============================================  =====================================
what came back                                  outcome
==============================================  =====================================
status < 400 with header ``x-model-version: v``  ``v`` (the body is kept as the answer)
any other status                                ``status:NNN``
no answer within the timeout                    ``error:timeout``
refused, reset or closed connection             ``error:connection``
anything else (malformed HTTP, huge body, ...)  ``error:other``
==============================================  =====================================

A 4xx/5xx answer counts as ``status:NNN`` even when it carries ``x-model-version``: errors are
counted apart and never silently as a version (the version is still on the `Observation`).
Each outcome is fed live to the class's sequential test (`harness.stats.SequentialTest`) and
the run stops as soon as every class has decided; a decided class gets no more requests (the
answers still in flight when it decided reach its test, which counts them as late). Every
run is also bounded by `max_requests` and `deadline_s`, and only loopback targets are accepted.

Transport, decided by measurement (``python -m bench.bench_traffic``: 2 cores shared with other
work, loopback, the server in its own process; requests/s, median of 3 runs; ``hey`` is the Go
load generator run with the same -n and -c against the same server; figures vary by about
+-20% from run to run on this machine):

=====================  ===  ======  =================  ===================
server                 c    hey     socket (ratio)     requests (ratio)
=====================  ===  ======  =================  ===================
``harness.scorer``     1    8,500   11,100 (1.34)      2,800 (0.31)
``harness.scorer``     8    19,000  11,100 (0.53)      2,300 (0.22)
``harness.scorer``     64   18,500  12,300 (0.63)      2,200 (0.20)
minimal asyncio        1    14,800  17,800 (1.19)      3,400 (0.23)
minimal asyncio        8    61,300  105,000 (1.71)     2,700 (0.05)
minimal asyncio        64   59,300  101,000 (1.70)     2,500 (0.05)
=====================  ===  ======  =================  ===================

Against the scorer the server is the bottleneck (it answers 11,000-14,000 requests/s to
either Python client; ``hey`` varied from 8,000 to 22,000 there). The fast server shows the
generator's own cost.

- ``transport="socket"`` (the default): one event loop (`selectors`, in the calling thread)
  multiplexes every connection over non-blocking sockets, with a small pure parser for
  HTTP/1.1 answers (Content-Length, chunked, close-delimited, 1xx, HEAD/204/304). No locks,
  no thread switches; about 10 us per request all told (95,000 requests/s at c=8).
- ``transport="requests"``: one `requests.Session` per worker thread, as first planned. It
  costs about 300-400 us of Python per request, so the generator, not the gateway, is the
  bottleneck (0.05-0.3x of ``hey``). Kept for comparison and for what `requests` adds.
- Measured and dropped: one blocking socket per worker thread was as fast at c=4 (70,000
  against hey's 61,000 on the asyncio server) but fell to 0.66x at c=8 and 0.30x at c=64
  (18,800 against 64,600), the threads fighting for the GIL; a prototype with
  `http.client.HTTPConnection` per thread made 0.3x at c=8 (its header parsing through the
  email package is most of its cost).

New connections ramp up: each waits for the previous one's first answer (at most 10 ms).
Opening them all at once overflows a small listen backlog (5 in Python's socketserver, the
scorer's) and every dropped handshake costs a 1 s SYN retransmit.

Counting is lock-free: tickets come from an `itertools.count` (one atomic `next` under the
GIL) and counts are kept per worker and merged at the end. A lock is taken only to feed the
sequential tests and `on_response` (uncontended in the event loop), which therefore see one
answer at a time.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TextIO
from urllib.parse import urlsplit

from harness.errors import HarnessError
from harness.routing import Request

VERSION_HEADER = "x-model-version"
"""Response header that names the version that answered (the Deployment's MODEL_VERSION)."""

CLASS_HEADER = "x-api-version"
"""Request header that pins a request to one version (the VirtualService's header routes)."""

OUTCOME_TIMEOUT = "error:timeout"
OUTCOME_CONNECTION = "error:connection"
OUTCOME_OTHER = "error:other"

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024
_MAX_DETAILS = 20
_RAMP_S = 0.01  # the longest a new connection waits for the previous one's first answer (ramp-up)
_ANSWER_CACHE = 256
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class NotLoopback(HarnessError, ValueError):
    """The target is not a loopback address: the harness only sends load to this machine."""


class RequestClass(Protocol):
    """What the generator needs of a request class; `harness.routing.Request` has this shape."""

    @property
    def label(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str] | Iterable[tuple[str, str]]: ...


class LiveTest(Protocol):
    """What the generator needs of a sequential test; `harness.stats.SequentialTest` has it."""

    def observe(self, outcome: str) -> Any: ...

    @property
    def decision(self) -> Any: ...

    def verdict(self) -> Any: ...


@dataclass(frozen=True)
class Observation:
    """One classified answer, as `on_response` receives it.

    `outcome` is a version, ``status:NNN`` or ``error:KIND``; `version` is the
    ``x-model-version`` header whatever the status; `body` is the answer (a JSON string body
    decoded to its text, other bodies as text); `detail` says what went wrong for errors.
    """

    label: str
    outcome: str
    status: int | None
    body: str | None
    elapsed_s: float
    version: str | None = None
    detail: str = ""


@dataclass
class LoadResult:
    """Everything a run saw.

    `counts`: label -> outcome -> answers; `answers`: version -> answer body -> count;
    `errors`: non-version outcome -> count over all classes; `verdicts`: label -> the test's
    verdict (only when tests were given); `requests`: answers classified (including errors);
    `abandoned`: requests cut off by the deadline, which are not counted anywhere since their
    timeout was the run's, not the target's; `stopped_by`: ``decided``, ``max_requests``,
    ``deadline`` or ``interrupted``; `error_details`: the first few error messages.
    """

    counts: dict[str, dict[str, int]]
    answers: dict[str, dict[str, int]]
    errors: dict[str, int]
    verdicts: dict[str, Any]
    requests: int
    elapsed_s: float
    stopped_by: str
    abandoned: int = 0
    error_details: list[str] = field(default_factory=list)

    @property
    def requests_per_s(self) -> float:
        """Answers per second over the whole run."""
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def outcomes(self) -> dict[str, int]:
        """Outcome -> count, summed over all classes."""
        total: dict[str, int] = {}
        for per_label in self.counts.values():
            for outcome, n in per_label.items():
                total[outcome] = total.get(outcome, 0) + n
        return total


@dataclass(frozen=True)
class Target:
    """A checked loopback target: where to connect and what to put before each class's path."""

    scheme: str
    host: str
    port: int
    netloc: str
    base_path: str
    addresses: tuple[str, ...]


def loopback_target(url: str) -> Target:
    """Parse `url` and refuse it unless its host is loopback (127.0.0.0/8, ::1 or localhost).

    A name such as ``localhost`` must also resolve to loopback addresses only, so an odd
    /etc/hosts cannot send load elsewhere.

    >>> loopback_target("http://127.0.0.1:8080/score").port
    8080
    """
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise NotLoopback(f"{url!r}: only http:// targets on loopback are supported, not {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise NotLoopback(f"{url!r}: no host")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise NotLoopback(f"{url!r}: bad port ({exc})") from None
    if _is_loopback_ip(host):
        addresses: tuple[str, ...] = (host,)
    elif host.lower() in _LOOPBACK_NAMES:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NotLoopback(f"{url!r}: {host} does not resolve ({exc})") from None
        resolved = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        strays = [a for a in resolved if not _is_loopback_ip(a)]
        if strays or not resolved:
            raise NotLoopback(f"{url!r}: {host} resolves to non-loopback {', '.join(strays) or 'nothing'}")
        addresses = resolved
    else:
        raise NotLoopback(
            f"{url!r}: host {host!r} is not loopback; load goes only to 127.0.0.0/8, ::1 or localhost"
        )
    return Target(parts.scheme, host, port, parts.netloc, parts.path.rstrip("/"), addresses)


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# --- transports -------------------------------------------------------------------------------


class _Failure(Exception):
    """A request failed; `kind` is the outcome (``error:timeout`` ...), the message the detail."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True)
class _Prepared:
    """A request class turned into what a transport sends, computed once per run."""

    label: str
    method: str
    path: str
    url: str
    headers: Mapping[str, str]
    wire: bytes
    bodyless: bool  # HEAD: the answer has headers only


@dataclass(frozen=True)
class _Answer:
    status: int
    version: str | None
    body: bytes
    upstream: str | None = None  # x-abtest-upstream-host: the endpoint the gateway chose


def _prepare(target: Target, request: RequestClass) -> _Prepared:
    method = request.method.upper()
    path = target.base_path + (request.path if request.path.startswith("/") else "/" + request.path)
    raw_headers = request.headers
    pairs = list(raw_headers.items()) if isinstance(raw_headers, Mapping) else list(raw_headers)
    authority = getattr(request, "authority", None)
    headers: dict[str, str] = {"Host": str(authority) if authority else target.netloc}
    headers["User-Agent"] = "abtest-harness"
    headers["Accept"] = "*/*"
    if method in ("POST", "PUT", "PATCH"):
        headers["Content-Length"] = "0"
    lowered = {k.lower(): k for k in headers}
    for name, value in pairs:
        if any(c in f"{name}{value}" for c in "\r\n"):
            raise ValueError(f"request class {request.label!r}: header {name!r} contains a line break")
        headers.pop(lowered.get(name.lower(), name), None)
        headers[name] = value
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    url = f"{target.scheme}://{target.netloc}{path}"
    return _Prepared(request.label, method, path, url, headers, (head + "\r\n").encode("latin-1"),
                     method == "HEAD")


def _parse_answer(buf: bytes, bodyless: bool, eof: bool) -> tuple[_Answer, int, bool] | None:
    """Parse the answer at the start of `buf`: (answer, bytes used, close after) or None for more.

    Pure, so it can be fed whatever has arrived so far: Content-Length, chunked and
    close-delimited bodies (complete only once `eof`), interim 1xx answers skipped, no body
    for HEAD, 204 and 304. Malformed or oversized answers raise `_Failure` (error:other).
    """
    start = 0
    while True:  # one pass per interim (1xx) answer; the final answer returns
        i = buf.find(b"\r\n\r\n", start)
        if i < 0:
            if len(buf) - start > _MAX_HEAD:
                raise _Failure(OUTCOME_OTHER, f"response head larger than {_MAX_HEAD} bytes")
            return None
        lines = buf[start:i].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise _Failure(OUTCOME_OTHER, f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise _Failure(OUTCOME_OTHER, f"bad status code: {lines[0][:80]!r}") from None
        length: int | None = None
        chunked = False
        close = status_line[0] == b"HTTP/1.0"
        version: str | None = None
        upstream: str | None = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise _Failure(OUTCOME_OTHER, f"bad content-length {value[:40]!r}") from None
            elif key == b"x-model-version":
                version = value.strip().decode("latin-1")
            elif key == b"x-abtest-upstream-host":
                upstream = value.strip().decode("latin-1")
            elif key == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif key == b"connection":
                tokens = value.strip().lower()
                if b"close" in tokens:
                    close = True
                elif b"keep-alive" in tokens:
                    close = False
        pos = i + 4
        if 100 <= status < 200 and status != 101:
            start = pos  # interim answer (100 Continue, 103 Early Hints): the real one follows
            continue
        if status == 101:  # switching protocols: nothing more this parser can read
            return _Answer(status, version, b"", upstream), pos, True
        if bodyless or status in (204, 304):
            return _Answer(status, version, b"", upstream), pos, close
        if chunked:
            found = _parse_chunked(buf, pos)
            if found is None:
                return None
            body, end = found
            return _Answer(status, version, body, upstream), end, close
        if length is not None:
            if length > _MAX_BODY:
                raise _Failure(OUTCOME_OTHER, f"body of {length} bytes is over {_MAX_BODY}")
            if len(buf) < pos + length:
                return None
            return _Answer(status, version, buf[pos:pos + length], upstream), pos + length, close
        # No framing: the body runs to the end of the connection.
        if len(buf) - pos > _MAX_BODY:
            raise _Failure(OUTCOME_OTHER, f"body over {_MAX_BODY} bytes")
        if not eof:
            return None
        return _Answer(status, version, buf[pos:], upstream), len(buf), True


def _parse_chunked(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at `pos`: (body, end) once complete (trailers read), else None."""
    parts: list[bytes] = []
    total = 0
    while True:
        j = buf.find(b"\r\n", pos)
        if j < 0:
            if len(buf) - pos > _MAX_HEAD:
                raise _Failure(OUTCOME_OTHER, "chunk size line too long")
            return None
        size_text = buf[pos:j].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Failure(OUTCOME_OTHER, f"bad chunk size {size_text[:20]!r}") from None
        pos = j + 2
        if size == 0:
            while True:  # trailer fields, then the empty line that ends the message
                j = buf.find(b"\r\n", pos)
                if j < 0:
                    return None
                line, pos = buf[pos:j], j + 2
                if not line:
                    return b"".join(parts), pos
        total += size
        if total > _MAX_BODY:
            raise _Failure(OUTCOME_OTHER, f"chunked body over {_MAX_BODY} bytes")
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos:pos + size])
        pos += size + 2


class _Timeout(_Failure):
    def __init__(self, detail: str) -> None:
        super().__init__(OUTCOME_TIMEOUT, detail)


class _RequestsTransport:
    """One `requests.Session` (its own keep-alive pool) per worker thread."""

    def __init__(self, target: Target) -> None:
        import requests  # only this transport needs it; the socket one is stdlib

        self._requests = requests
        self._session = requests.Session()
        self._session.trust_env = False  # a proxy from the environment must never see this load

    def close(self) -> None:
        self._session.close()

    def exchange(self, request: _Prepared, budget: float) -> _Answer:
        requests = self._requests
        try:
            response = self._session.request(
                request.method, request.url, headers=dict(request.headers), timeout=budget,
                allow_redirects=False,
            )
            body = response.content
        except requests.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
            raise _Timeout(str(exc)) from None
        except requests.ConnectionError as exc:
            raise _Failure(OUTCOME_CONNECTION, str(exc)) from None
        except requests.RequestException as exc:
            raise _Failure(OUTCOME_OTHER, f"{type(exc).__name__}: {exc}") from None
        return _Answer(response.status_code, response.headers.get(VERSION_HEADER), body,
                       response.headers.get("x-abtest-upstream-host"))


TRANSPORTS = ("socket", "requests")


# --- the run ----------------------------------------------------------------------------------


def _is_open(test: LiveTest) -> bool:
    decision = test.decision
    return bool(getattr(decision, "name", decision) == "CONTINUE")


class _Tally:
    """One worker's counts, merged after the run: no lock while counting."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.answers: dict[str, dict[str, int]] = {}
        self.abandoned = 0
        self.details: list[str] = []
        self.decoded: dict[bytes, str] = {}

    def answer_text(self, body: bytes) -> str:
        """The answer as text: a JSON string body decoded to its value, else the raw text."""
        text = self.decoded.get(body)
        if text is None:
            raw = body.decode("utf-8", "replace")
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            text = value if isinstance(value, str) else raw
            if len(self.decoded) < _ANSWER_CACHE:
                self.decoded[body] = text
        return text


class _Run:
    """The state the workers share; every field is read or replaced atomically under the GIL."""

    def __init__(
        self,
        prepared: Mapping[str, _Prepared],
        tests: Mapping[str, LiveTest] | None,
        max_requests: int,
        deadline: float,
        timeout_s: float,
        on_response: Callable[[Observation], None] | None,
        attribute: Callable[[str | None, str | None], str | None] | None = None,
    ) -> None:
        self.prepared = prepared
        self.attribute = attribute
        self.tests = tests
        self.max_requests = max_requests
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.on_response = on_response
        self.feeding = tests is not None or on_response is not None
        self.tickets = itertools.count()
        self.lock = threading.Lock()
        self._stop_lock = threading.Lock()  # apart from `lock`: feed() stops while holding it
        self.stopped_by = ""
        self.failure: BaseException | None = None
        open_labels = [
            label for label in prepared if tests is None or _is_open(tests[label])
        ]
        self.active: tuple[_Prepared, ...] = tuple(prepared[label] for label in open_labels)
        if not self.active:
            self.stopped_by = "decided"

    def stop(self, reason: str) -> None:
        """Stop every worker; the first reason given is the one reported."""
        with self._stop_lock:
            if not self.stopped_by:
                self.stopped_by = reason

    def feed(self, observation: Observation) -> None:
        """Give one answer to its test and the callback, one answer at a time."""
        with self.lock:
            if self.tests is not None:
                test = self.tests[observation.label]
                was_open = _is_open(test)
                # An answer that was in flight when its class decided is still given to the
                # test: SequentialTest counts it as late and leaves the final decision alone.
                test.observe(observation.outcome)
                if was_open and not _is_open(test):
                    self.active = tuple(p for p in self.active if p.label != observation.label)
                    if not self.active:
                        self.stop("decided")
            if self.on_response is not None:
                self.on_response(observation)


def _take(run: _Run) -> tuple[_Prepared, float, float] | None:
    """The next request to send: (request, start time, time budget), or None: the run is over.

    The ticket is one atomic `next` on an `itertools.count` (under the GIL), so the count
    bound holds across threads without a lock.
    """
    if run.stopped_by:
        return None
    active = run.active
    if not active:
        run.stop("decided")
        return None
    ticket = next(run.tickets)
    if ticket >= run.max_requests:
        run.stop("max_requests")
        return None
    started = time.monotonic()
    remaining = run.deadline - started
    if remaining <= 0:
        run.stop("deadline")
        return None
    budget = run.timeout_s if run.timeout_s <= remaining else remaining
    return active[ticket % len(active)], started, budget


def _record(run: _Run, tally: _Tally, request: _Prepared, started: float, budget: float,
            answer: _Answer | None, failure: _Failure | None) -> bool:
    """Classify, count and feed one exchange; False if the deadline cut it (dropped, not counted)."""
    status: int | None = None
    version: str | None = None
    text: str | None = None
    detail = ""
    if failure is not None:
        if failure.kind == OUTCOME_TIMEOUT and budget < run.timeout_s:
            tally.abandoned += 1  # the run's deadline timed it out, not the target
            run.stop("deadline")
            return False
        outcome = failure.kind
        detail = str(failure)
        if len(tally.details) < _MAX_DETAILS:
            tally.details.append(f"{request.label}: {outcome}: {detail}")
    else:
        assert answer is not None
        status = answer.status
        version = answer.version
        if run.attribute is not None and status < 400:
            version = run.attribute(answer.upstream, answer.version)
        text = tally.answer_text(answer.body)
        if version is not None and status < 400 and version.startswith("error:"):
            outcome = version  # an answer no version can be credited with is an error
            if len(tally.details) < _MAX_DETAILS:
                tally.details.append(f"{request.label}: {outcome}: {text[:200]}")
        elif version is not None and status < 400:
            outcome = version
            per_version = tally.answers.get(version)
            if per_version is None:
                per_version = tally.answers[version] = {}
            per_version[text] = per_version.get(text, 0) + 1
        else:
            outcome = f"status:{status}"
            if len(tally.details) < _MAX_DETAILS:
                tally.details.append(f"{request.label}: {outcome}: {text[:200]}")
    per_label = tally.counts.get(request.label)
    if per_label is None:
        per_label = tally.counts[request.label] = {}
    per_label[outcome] = per_label.get(outcome, 0) + 1
    if run.feeding:
        run.feed(Observation(request.label, outcome, status, text, time.monotonic() - started,
                             version, detail))
    return True


# --- transport "socket": one event loop multiplexing every connection ------------------------


class _Conn:
    """One keep-alive connection of the event loop and the request it carries."""

    __slots__ = ("sock", "buf", "out", "request", "started", "budget", "expires", "connecting",
                 "reused", "retried", "address")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = b""
        self.out = b""
        self.request: _Prepared | None = None
        self.started = 0.0
        self.budget = 0.0
        self.expires = 0.0
        self.connecting = False
        self.reused = False  # the socket answered before: a close before any byte may be stale
        self.retried = False
        self.address = 0  # index into the target's addresses


class _EventLoop:
    """All connections in the calling thread: no locks, no thread switches, one `select` per batch.

    Each connection carries one request at a time (HTTP/1.1 keep-alive, no pipelining), so
    `concurrency` connections keep `concurrency` requests in flight, as `hey -c` does.
    """

    def __init__(self, run: _Run, target: Target, tally: _Tally) -> None:
        self.run = run
        self.tally = tally
        self.port = target.port
        # IPv4 first: a server that binds 127.0.0.1 is the common case behind "localhost".
        self.addresses = sorted(target.addresses, key=lambda a: ":" in a)
        self.selector = selectors.DefaultSelector()
        self.busy: set[_Conn] = set()  # connections with a request in flight
        self.conns: list[_Conn] = []  # every connection, for the cleanup
        # Connects refused on the spot, handled by the loop: failing them at once would recurse
        # (fail, next request, connect, fail, ...) as deep as the request budget.
        self.refused: list[tuple[_Conn, socket.socket, int]] = []

    def run_until_done(self, concurrency: int) -> None:
        run = self.run
        opened = 0
        newest: _Conn | None = None  # the newest connection, until its first answer
        next_open = 0.0
        try:
            while True:
                now = time.monotonic()
                # Ramp up: open the next connection once the newest one has answered, or after
                # _RAMP_S. Opening every connection at once overflows a small listen backlog
                # (5 in Python's socketserver) and the dropped handshakes cost a 1 s SYN retry.
                if opened < concurrency and not run.stopped_by and (newest is None or now >= next_open):
                    opened += 1
                    conn = _Conn()
                    self.conns.append(conn)
                    if self._begin(conn):
                        newest, next_open = conn, now + _RAMP_S
                    continue
                while self.refused:
                    conn, sock, err = self.refused.pop()
                    if conn.sock is sock:  # not timed out and moved on meanwhile
                        self._connect_failed(conn, err)
                if not self.busy:
                    return
                wake = min(c.expires for c in self.busy)
                if opened < concurrency and newest is not None and not run.stopped_by:
                    wake = min(wake, next_open)
                for key, _ in self.selector.select(max(wake - now, 0.0)):
                    conn = key.data
                    if conn.request is not None and self._ready(conn) and conn is newest:
                        newest = None
                now = time.monotonic()
                for conn in [c for c in self.busy if c.expires <= now]:
                    self._fail(conn, _Timeout("no answer within the timeout"))
        finally:
            for conn in self.conns:
                self._close(conn)
            self.selector.close()

    # ---------------------------------------------------------------- one request

    def _begin(self, conn: _Conn) -> bool:
        """Start the next request on `conn`; False (and the connection closed) when the run is over."""
        taken = _take(self.run)
        if taken is None:
            self._close(conn)
            self.busy.discard(conn)
            return False
        conn.request, conn.started, conn.budget = taken
        conn.expires = conn.started + conn.budget
        conn.retried = False
        conn.reused = conn.sock is not None
        self.busy.add(conn)
        self._send_or_connect(conn)
        return True

    def _send_or_connect(self, conn: _Conn) -> None:
        assert conn.request is not None
        conn.out = conn.request.wire
        if conn.sock is None:
            self._connect(conn)
        else:
            self._send(conn)

    def _connect(self, conn: _Conn) -> None:
        address = self.addresses[conn.address % len(self.addresses)]
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        # Small requests must leave at once: Nagle would hold them for the previous ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock, conn.buf, conn.connecting = sock, b"", True
        err = sock.connect_ex((address, self.port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.refused.append((conn, sock, err))
            return
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def _connect_failed(self, conn: _Conn, err: int) -> None:
        self._close(conn)
        if conn.address + 1 < len(self.addresses):  # localhost: try its other address
            conn.address += 1
            self._connect(conn)
            return
        conn.address = 0
        self._fail(conn, _Failure(OUTCOME_CONNECTION, f"connect to port {self.port}: {os.strerror(err)}"))

    def _send(self, conn: _Conn) -> None:
        sock = conn.sock
        assert sock is not None
        try:
            sent = sock.send(conn.out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._broken(conn, exc)
            return
        conn.out = conn.out[sent:]
        events = selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ
        try:
            self.selector.modify(sock, events, conn)
        except KeyError:
            self.selector.register(sock, events, conn)

    def _ready(self, conn: _Conn) -> bool:
        """Handle one readiness event; True when it completed an answer."""
        sock = conn.sock
        assert sock is not None
        if conn.connecting:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.selector.unregister(sock)
                self._connect_failed(conn, err)
                return False
            conn.connecting = False
            self._send(conn)
            return False
        if conn.out:
            self._send(conn)
            return False
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._broken(conn, exc)
            return False
        if data:
            conn.buf += data
        elif not conn.buf:
            self._stale(conn)
            return False
        assert conn.request is not None
        try:
            parsed = _parse_answer(conn.buf, conn.request.bodyless, eof=not data)
        except _Failure as failure:
            self._fail(conn, failure)
            return False
        if parsed is None:
            if not data:
                self._fail(conn, _Failure(OUTCOME_CONNECTION, "connection closed in the middle of the answer"))
            return False
        answer, used, close = parsed
        request, started, budget = conn.request, conn.started, conn.budget
        if close:
            self._close(conn)
        else:
            conn.buf = conn.buf[used:]
        conn.request = None
        self.busy.discard(conn)
        _record(self.run, self.tally, request, started, budget, answer, None)
        self._begin(conn)
        return True

    def _broken(self, conn: _Conn, exc: OSError) -> None:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) and not conn.buf:
            self._stale(conn)
        else:
            self._fail(conn, _Failure(OUTCOME_CONNECTION, f"connection broken: {exc}"))

    def _stale(self, conn: _Conn) -> None:
        """The connection ended before any byte of the answer."""
        self._close(conn)
        if conn.reused and not conn.retried:
            # The server closed an idle keep-alive connection just as it was reused: the request
            # never reached it, so one retry on a fresh connection is safe, as urllib3 does.
            conn.retried = True
            conn.reused = False
            self._send_or_connect(conn)
            return
        self._fail(conn, _Failure(OUTCOME_CONNECTION, "connection closed before any answer"))

    def _fail(self, conn: _Conn, failure: _Failure) -> None:
        """Count a failed request, drop its connection (a late answer must never be read as the
        next one's), and go on with the next request on a fresh connection."""
        self._close(conn)
        request, started, budget = conn.request, conn.started, conn.budget
        conn.request = None
        self.busy.discard(conn)
        assert request is not None
        if _record(self.run, self.tally, request, started, budget, None, failure):
            self._begin(conn)

    def _close(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock, conn.buf, conn.out, conn.connecting = None, b"", b"", False
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()


# --- transport "requests": one requests.Session per worker thread ----------------------------


def _work(run: _Run, transport: _RequestsTransport, tally: _Tally, first_answer: threading.Event) -> None:
    try:
        while True:
            taken = _take(run)
            if taken is None:
                break
            request, started, budget = taken
            answer: _Answer | None = None
            failure: _Failure | None = None
            try:
                answer = transport.exchange(request, budget)
            except _Failure as exc:
                failure = exc
            if not _record(run, tally, request, started, budget, answer, failure):
                break
            first_answer.set()
    except BaseException as exc:  # a bug or a failing callback: stop everyone and re-raise
        if run.failure is None:
            run.failure = exc
        run.stop("interrupted")
    finally:
        first_answer.set()
        transport.close()


def _run_threads(run: _Run, target: Target, concurrency: int) -> list[_Tally]:
    tallies = [_Tally() for _ in range(concurrency)]
    first_answers = [threading.Event() for _ in tallies]
    workers = [
        threading.Thread(target=_work, args=(run, _RequestsTransport(target), tally, first),
                         name=f"load-{i}", daemon=True)
        for i, (tally, first) in enumerate(zip(tallies, first_answers, strict=True))
    ]
    try:
        for worker, first in zip(workers, first_answers, strict=True):
            worker.start()
            if not run.stopped_by:
                first.wait(_RAMP_S)  # ramp up, as the event loop does
        for worker in workers:
            # requests bounds each socket operation, not a whole exchange, so a server that
            # trickles bytes can hold a worker past the deadline: give it a margin, then report
            # the stuck workers (daemon threads, so they never keep the process alive).
            worker.join(max(run.deadline - time.monotonic(), 0.0) + 5.0)
    except BaseException:
        run.stop("interrupted")
        for worker in workers:
            worker.join(run.timeout_s + 1.0)
        raise
    if run.failure is not None:
        raise run.failure
    stuck = [w.name for w in workers if w.is_alive()]
    if stuck:
        raise HarnessError(
            f"load workers still running 5 s after the deadline (a target trickling its answers?): "
            f"{', '.join(stuck)}"
        )
    return tallies


def run_load(
    base_url: str,
    classes: Sequence[RequestClass],
    tests: Mapping[str, LiveTest] | None = None,
    *,
    max_requests: int,
    deadline_s: float,
    concurrency: int = 4,
    timeout_s: float = 2.0,
    on_response: Callable[[Observation], None] | None = None,
    transport: Literal["socket", "requests"] = "socket",
    attribute: Callable[[str | None, str | None], str | None] | None = None,
) -> LoadResult:
    """Send the request classes round-robin to `base_url` until decided or out of budget.

    `base_url` (``http://127.0.0.1:PORT``, optionally with a path prefix) must be loopback,
    else `NotLoopback`. `tests` maps each class label to its live sequential test; the run
    stops when all have decided. It always stops after `max_requests` requests or
    `deadline_s` seconds, whichever comes first: a request's timeout is cut to the time left,
    and a request cut off that way is dropped (counted in `abandoned`). `concurrency`
    requests are in flight at once, each on its own keep-alive connection. `on_response` is
    called once per answer, one call at a time (in the calling thread for the socket
    transport, from worker threads for the requests transport). `attribute` maps an answer's
    (``x-abtest-upstream-host``, ``x-model-version``) to its outcome (a version, or an
    ``error:...`` outcome); without it the ``x-model-version`` header names the version
    (see ``harness.attribution``).
    """
    target = loopback_target(base_url)
    if max_requests < 0:
        raise ValueError(f"max_requests must be >= 0, got {max_requests}")
    if deadline_s <= 0 or timeout_s <= 0:
        raise ValueError(f"deadline_s and timeout_s must be > 0, got {deadline_s} and {timeout_s}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if not classes:
        raise ValueError("no request classes to send")
    labels = [c.label for c in classes]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"request class labels must be unique; repeated: {', '.join(duplicates)}")
    if tests is not None and set(tests) != set(labels):
        raise ValueError(
            f"tests must cover exactly the request classes: classes {sorted(labels)}, "
            f"tests {sorted(tests)}"
        )
    prepared = {c.label: _prepare(target, c) for c in classes}

    started = time.monotonic()
    run = _Run(prepared, tests, max_requests, started + deadline_s, timeout_s, on_response, attribute)
    if max_requests == 0:
        run.stop("max_requests")
    workers = max(1, min(concurrency, max_requests))
    if transport == "socket":
        tallies = [_Tally()]
        try:
            _EventLoop(run, target, tallies[0]).run_until_done(workers)
        except BaseException:
            run.stop("interrupted")
            raise
    else:
        tallies = _run_threads(run, target, workers)
    elapsed = time.monotonic() - started
    if not run.stopped_by:
        run.stop("deadline" if time.monotonic() >= run.deadline else "max_requests")
    return _merge(run, tallies, labels, elapsed)


def _merge(run: _Run, tallies: Sequence[_Tally], labels: Sequence[str], elapsed: float) -> LoadResult:
    counts: dict[str, dict[str, int]] = {label: {} for label in labels}
    answers: dict[str, dict[str, int]] = {}
    errors: dict[str, int] = {}
    details: list[str] = []
    abandoned = 0
    for tally in tallies:
        abandoned += tally.abandoned
        details.extend(tally.details)
        for label, per_outcome in tally.counts.items():
            merged = counts[label]
            for outcome, n in per_outcome.items():
                merged[outcome] = merged.get(outcome, 0) + n
                if outcome.startswith(("status:", "error:")):
                    errors[outcome] = errors.get(outcome, 0) + n
        for version, per_body in tally.answers.items():
            merged_bodies = answers.setdefault(version, {})
            for body, n in per_body.items():
                merged_bodies[body] = merged_bodies.get(body, 0) + n
    verdicts = {label: test.verdict() for label, test in run.tests.items()} if run.tests else {}
    total = sum(sum(per.values()) for per in counts.values())
    return LoadResult(counts, answers, errors, verdicts, total, elapsed, run.stopped_by, abandoned,
                      details[:_MAX_DETAILS])


# --- the CLI's `abtest load` ------------------------------------------------------------------


def load_command(
    url: str,
    n: int,
    version: str | None,
    concurrency: int,
    out: TextIO,
    *,
    deadline_s: float = 60.0,
    timeout_s: float = 2.0,
) -> int:
    """`abtest load URL -n N [--version V]`: send N requests, print each answer, then the counts.

    The reference guide's ``charts/load_test.sh`` done properly: bounded in count and time,
    loopback only, each answer printed with the version that gave it, then the counts per
    version and per error. Returns 0 when every request got a version's answer, 1 when some
    failed or did not complete in time, 2 for a bad target or arguments.
    """
    try:
        target = loopback_target(url)
        if n < 1:
            raise ValueError(f"-n must be >= 1, got {n}")
    except ValueError as exc:
        print(f"abtest load: {exc}", file=out)
        return 2
    query = urlsplit(url).query
    path = target.base_path or "/"
    if query:
        path = f"{path}?{query}"
    request = Request(
        label=f"header-{version}" if version else "weighted",
        path=path,
        headers={CLASS_HEADER: version} if version else {},
        authority=target.netloc,  # as curl would send it: the URL's host and port
    )
    base = f"http://{target.netloc}"

    def show(observation: Observation) -> None:
        if observation.outcome == observation.version:
            print(f"{json.dumps(observation.body)}  ({observation.version})", file=out, flush=True)
        else:
            why = observation.detail or (observation.body or "")[:200]
            source = f" from {observation.version}" if observation.version else ""
            print(f"[{observation.outcome}{source}] {why}", file=out, flush=True)

    try:
        result = run_load(base, [request], max_requests=n, deadline_s=deadline_s,
                          concurrency=max(1, min(concurrency, n)), timeout_s=timeout_s,
                          on_response=show)
    except ValueError as exc:
        print(f"abtest load: {exc}", file=out)
        return 2
    print(_summary(result, url, version, n), file=out, flush=True)
    complete = result.requests == n
    return 0 if complete and not result.errors else 1


def _summary(result: LoadResult, url: str, version: str | None, n: int) -> str:
    pinned = f" with {CLASS_HEADER}: {version}" if version else ""
    lines = [f"{result.requests} of {n} requests to {url}{pinned} in {result.elapsed_s:.2f}s"
             f" ({result.requests_per_s:.0f}/s)"]
    outcomes = result.outcomes()
    total = max(result.requests, 1)
    for version_name in sorted(result.answers):
        count = outcomes.get(version_name, 0)
        bodies = ", ".join(f"{json.dumps(b)} x{c}" for b, c in sorted(result.answers[version_name].items()))
        lines.append(f"  {version_name}: {count} ({100.0 * count / total:.1f}%)  {bodies}")
    if result.errors:
        for outcome, count in sorted(result.errors.items()):
            lines.append(f"  {outcome}: {count} ({100.0 * count / total:.1f}%)")
    else:
        lines.append("  errors: none")
    if result.requests < n:
        lines.append(f"  stopped by {result.stopped_by} after {result.requests} of {n} requests")
    return "\n".join(lines)
