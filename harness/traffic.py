"""Load generator: sends request classes to a loopback gateway and classifies every answer.

`run_load` drives a pool of worker threads, each with its own keep-alive connection, round-robin
over the request classes that have not been decided yet. Every answer is classified:

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

Transport, decided by measurement (``python -m bench.bench_traffic``: 2 shared cores, loopback,
8 workers, the server in its own process; requests/s, median of 3; ``hey`` is the Go load
generator run with the same -n and -c against the same server):

=================================  =======  ===============  =================  =========
server                             hey      socket (ratio)   requests (ratio)   goal 0.5
=================================  =======  ===============  =================  =========
minimal asyncio server             17,900   15,500 (0.81)    1,960 (0.12)       socket
``harness.scorer`` + TCP_NODELAY   11,800   13,100 (1.06)    1,710 (0.13)       socket
``harness.scorer`` as shipped         174      180 (1.01)      170 (0.95)       both
=================================  =======  ===============  =================  =========

- ``transport="socket"`` (the default): one plain TCP socket per worker thread speaking
  HTTP/1.1 keep-alive with a small response parser (Content-Length, chunked,
  close-delimited, 1xx, HEAD/204/304). A profile puts its Python cost at about 12 us per
  request; a single worker makes about 40,000 requests/s against the asyncio server.
- ``transport="requests"``: one `requests.Session` per worker thread, as first planned. It
  costs about 450 us of Python per request, so the generator, not the gateway, becomes the
  bottleneck (0.12x of ``hey``). Kept for comparison and for targets that need what
  `requests` adds.
- A prototype with `http.client.HTTPConnection` per thread sat in between (8,500 requests/s
  where ``hey`` made 28,000: 0.3x); its header parsing via the email package is most of it.

The scorer as shipped answers in about 45 ms whatever the client: it writes headers and body
separately and Nagle holds the body until the client's delayed ACK.

The shared state is lock-free on the hot path: tickets come from an `itertools.count` (one
atomic `next` under the GIL), counts are per worker and merged at the end, and a lock is taken
only to feed the sequential tests and the `on_response` callback, which therefore see one
answer at a time.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import json
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
_RAMP_S = 0.002  # the longest a worker waits for the previous one's first answer (ramp-up)
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


class _Transport(Protocol):
    def exchange(self, request: _Prepared, budget: float) -> _Answer: ...

    def close(self) -> None: ...


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


class _SocketTransport:
    """HTTP/1.1 keep-alive over one plain socket; reconnects after any failure."""

    def __init__(self, target: Target) -> None:
        self._addresses = target.addresses
        self._port = target.port
        self._sock: socket.socket | None = None
        self._buf = b""

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                self._buf = b""

    def exchange(self, request: _Prepared, budget: float) -> _Answer:
        end = time.monotonic() + budget
        reused = self._sock is not None
        try:
            try:
                return self._attempt(request, end)
            except _StaleConnection:
                # The server closed an idle keep-alive connection just as it was reused: no
                # byte came back, so the request never reached it and one retry on a fresh
                # connection is safe, as urllib3 does. On a fresh connection it is a failure.
                self.close()
                if reused:
                    return self._attempt(request, end)
                raise
        except _StaleConnection:
            self.close()
            raise _Failure(OUTCOME_CONNECTION, "connection closed before any answer") from None
        except BaseException:
            self.close()
            raise

    def _connect(self, end: float) -> socket.socket:
        last: OSError | None = None
        for address in self._addresses:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("connect timed out")
            try:
                sock = socket.create_connection((address, self._port), timeout=remaining)
            except TimeoutError:
                raise
            except OSError as exc:
                last = exc
                continue
            # Small requests must leave at once: Nagle would hold them for the previous ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise last or OSError(errno.ECONNREFUSED, "no address to connect to")

    def _attempt(self, request: _Prepared, end: float) -> _Answer:
        sock = self._sock
        if sock is None:
            try:
                sock = self._sock = self._connect(end)
            except TimeoutError:
                raise _Timeout("connect timed out") from None
            except OSError as exc:
                raise _Failure(OUTCOME_CONNECTION, f"connect to port {self._port}: {exc}") from None
            self._buf = b""
        self._fresh_answer = not self._buf
        try:
            sock.settimeout(max(end - time.monotonic(), 1e-3))
            sock.sendall(request.wire)
            return self._read(sock, request, end)
        except TimeoutError:
            raise _Timeout("no answer within the timeout") from None
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            if self._fresh_answer:
                raise _StaleConnection() from None
            raise _Failure(OUTCOME_CONNECTION, f"connection broken: {exc}") from None
        except OSError as exc:
            raise _Failure(OUTCOME_CONNECTION, f"socket error: {exc}") from None

    _fresh_answer = True  # no byte of the current answer received yet (stale-connection test)

    def _recv(self, sock: socket.socket, end: float, first: bool) -> bytes:
        if not first:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            sock.settimeout(remaining)
        data = sock.recv(65536)
        if data:
            self._fresh_answer = False
        return data

    def _read(self, sock: socket.socket, request: _Prepared, end: float) -> _Answer:
        buf = self._buf
        first = True
        while True:  # one pass per interim (1xx) answer; the final answer returns
            i = buf.find(b"\r\n\r\n")
            while i < 0:
                if len(buf) > _MAX_HEAD:
                    raise _Failure(OUTCOME_OTHER, f"response head larger than {_MAX_HEAD} bytes")
                data = self._recv(sock, end, first)
                first = False
                if not data:
                    if not buf:
                        raise _StaleConnection()
                    raise _Failure(OUTCOME_CONNECTION, "connection closed in the response head")
                buf += data
                i = buf.find(b"\r\n\r\n")
            lines = buf[:i].split(b"\r\n")
            buf = buf[i + 4:]
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
                elif key == b"transfer-encoding":
                    chunked = value.strip().lower().endswith(b"chunked")
                elif key == b"connection":
                    tokens = value.strip().lower()
                    if b"close" in tokens:
                        close = True
                    elif b"keep-alive" in tokens:
                        close = False
            if 100 <= status < 200 and status != 101:
                continue  # interim answer (100 Continue, 103 Early Hints): the real one follows
            if request.bodyless or status in (204, 304):
                body = b""
            elif chunked:
                body, buf = self._read_chunked(sock, buf, end)
            elif length is not None:
                if length > _MAX_BODY:
                    raise _Failure(OUTCOME_OTHER, f"body of {length} bytes is over {_MAX_BODY}")
                while len(buf) < length:
                    data = self._recv(sock, end, first)
                    first = False
                    if not data:
                        raise _Failure(OUTCOME_CONNECTION, "connection closed in the response body")
                    buf += data
                body, buf = buf[:length], buf[length:]
            else:
                # No framing: the body runs to the end of the connection.
                while True:
                    data = self._recv(sock, end, first)
                    first = False
                    if not data:
                        break
                    buf += data
                    if len(buf) > _MAX_BODY:
                        raise _Failure(OUTCOME_OTHER, f"body over {_MAX_BODY} bytes")
                body, buf, close = buf, b"", True
            if close:
                self.close()
            else:
                self._buf = buf
            return _Answer(status, version, body)

    def _read_chunked(self, sock: socket.socket, buf: bytes, end: float) -> tuple[bytes, bytes]:
        parts: list[bytes] = []
        size_total = 0

        def fill(need_crlf_at: int | None = None, need_len: int | None = None) -> None:
            nonlocal buf
            while (need_len is not None and len(buf) < need_len) or (
                need_crlf_at is not None and buf.find(b"\r\n") < 0
            ):
                data = self._recv(sock, end, False)
                if not data:
                    raise _Failure(OUTCOME_CONNECTION, "connection closed in a chunked body")
                buf += data
                if len(buf) > _MAX_BODY + _MAX_HEAD:
                    raise _Failure(OUTCOME_OTHER, "chunked body too large")

        while True:
            fill(need_crlf_at=0)
            j = buf.find(b"\r\n")
            size_text = buf[:j].split(b";", 1)[0].strip()
            buf = buf[j + 2:]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Failure(OUTCOME_OTHER, f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while True:  # trailer fields, then the empty line that ends the message
                    fill(need_crlf_at=0)
                    j = buf.find(b"\r\n")
                    line, buf = buf[:j], buf[j + 2:]
                    if not line:
                        return b"".join(parts), buf
            size_total += size
            if size_total > _MAX_BODY:
                raise _Failure(OUTCOME_OTHER, f"chunked body over {_MAX_BODY} bytes")
            fill(need_len=size + 2)
            parts.append(buf[:size])
            buf = buf[size + 2:]


class _Timeout(_Failure):
    def __init__(self, detail: str) -> None:
        super().__init__(OUTCOME_TIMEOUT, detail)


class _StaleConnection(Exception):
    """The connection ended before any byte of the answer: maybe a closed idle keep-alive."""


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
        return _Answer(response.status_code, response.headers.get(VERSION_HEADER), body)


_TRANSPORTS: dict[str, Callable[[Target], _Transport]] = {
    "socket": _SocketTransport,
    "requests": _RequestsTransport,
}


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
    ) -> None:
        self.prepared = prepared
        self.tests = tests
        self.max_requests = max_requests
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.on_response = on_response
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


def _work(run: _Run, transport: _Transport, tally: _Tally, first_answer: threading.Event) -> None:
    clock = time.monotonic
    tickets = run.tickets
    max_requests = run.max_requests
    deadline = run.deadline
    timeout_s = run.timeout_s
    counts = tally.counts
    answers = tally.answers
    feeding = run.tests is not None or run.on_response is not None
    try:
        while not run.stopped_by:
            active = run.active
            if not active:
                run.stop("decided")
                break
            ticket = next(tickets)
            if ticket >= max_requests:
                run.stop("max_requests")
                break
            started = clock()
            remaining = deadline - started
            if remaining <= 0:
                run.stop("deadline")
                break
            request = active[ticket % len(active)]
            budget = timeout_s if timeout_s <= remaining else remaining
            status: int | None = None
            version: str | None = None
            text: str | None = None
            detail = ""
            try:
                answer = transport.exchange(request, budget)
            except _Failure as failure:
                if failure.kind == OUTCOME_TIMEOUT and budget < timeout_s:
                    tally.abandoned += 1  # the deadline's timeout, not the target's
                    run.stop("deadline")
                    break
                outcome = failure.kind
                detail = str(failure)
                if len(tally.details) < _MAX_DETAILS:
                    tally.details.append(f"{request.label}: {outcome}: {detail}")
            else:
                status = answer.status
                version = answer.version
                text = tally.answer_text(answer.body)
                if version is not None and status < 400:
                    outcome = version
                    per_version = answers.get(version)
                    if per_version is None:
                        per_version = answers[version] = {}
                    per_version[text] = per_version.get(text, 0) + 1
                else:
                    outcome = f"status:{status}"
                    if len(tally.details) < _MAX_DETAILS:
                        tally.details.append(f"{request.label}: {outcome}: {text[:200]}")
            per_label = counts.get(request.label)
            if per_label is None:
                per_label = counts[request.label] = {}
            per_label[outcome] = per_label.get(outcome, 0) + 1
            first_answer.set()
            if feeding:
                run.feed(Observation(request.label, outcome, status, text, clock() - started,
                                     version, detail))
    except BaseException as exc:  # a bug or a failing callback: stop everyone and re-raise
        if run.failure is None:
            run.failure = exc
        run.stop("interrupted")
    finally:
        first_answer.set()
        transport.close()


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
) -> LoadResult:
    """Send the request classes round-robin to `base_url` until decided or out of budget.

    `base_url` (``http://127.0.0.1:PORT``, optionally with a path prefix) must be loopback,
    else `NotLoopback`. `tests` maps each class label to its live sequential test; the run
    stops when all have decided. It always stops after `max_requests` requests or
    `deadline_s` seconds, whichever comes first: a request's timeout is cut to the time left,
    and a request cut off that way is dropped (counted in `abandoned`). `on_response` is
    called once per answer, one call at a time, from the worker threads.
    """
    target = loopback_target(base_url)
    if max_requests < 0:
        raise ValueError(f"max_requests must be >= 0, got {max_requests}")
    if deadline_s <= 0 or timeout_s <= 0:
        raise ValueError(f"deadline_s and timeout_s must be > 0, got {deadline_s} and {timeout_s}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if transport not in _TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(_TRANSPORTS)}, got {transport!r}")
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
    run = _Run(prepared, tests, max_requests, started + deadline_s, timeout_s, on_response)
    if max_requests == 0:
        run.stop("max_requests")
    make_transport = _TRANSPORTS[transport]
    tallies = [_Tally() for _ in range(min(concurrency, max_requests))]
    first_answers = [threading.Event() for _ in tallies]
    workers = [
        threading.Thread(target=_work, args=(run, make_transport(target), tally, first),
                         name=f"load-{i}", daemon=True)
        for i, (tally, first) in enumerate(zip(tallies, first_answers, strict=True))
    ]
    try:
        for worker, first in zip(workers, first_answers, strict=True):
            worker.start()
            # Ramp up: the next worker connects once this one has its first answer, or after
            # _RAMP_S. Opening every connection at once overflows a small listen backlog (5 in
            # Python's socketserver) and the dropped handshakes cost a 1 s SYN retransmit.
            if not run.stopped_by:
                first.wait(_RAMP_S)
        for worker in workers:
            # Every blocking call in a worker ends by the deadline; the margin covers scheduling.
            worker.join(max(run.deadline - time.monotonic(), 0.0) + 5.0)
    except BaseException:
        run.stop("interrupted")
        for worker in workers:
            worker.join(timeout_s + 1.0)
        raise
    elapsed = time.monotonic() - started
    if run.failure is not None:
        raise run.failure
    stuck = [w.name for w in workers if w.is_alive()]
    if stuck:
        raise HarnessError(f"load workers still running after the deadline: {', '.join(stuck)}")
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
