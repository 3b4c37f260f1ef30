"""HTTP/1.1 to the gateway under test: the wire format and one event loop that multiplexes keep-alive connections.

What the load run (`abtest_harness.traffic`) sends and reads, kept free of any notion of versions or
request classes:

- `loopback_target` refuses any target that is not this machine (127.0.0.0/8, ::1, or a
  ``localhost`` name that resolves only to those). `load_target` is the one way to name
  another host: a URL is accepted there only when it is exactly the URL a user named for a
  cluster they run (``--mesh cluster --gateway-url``), passed in as `allowed`; there is no
  switch or environment variable that widens it.
- `prepare` turns a request into its bytes once per run; `parse_answer` is a pure parser of an
  answer at the start of a buffer (Content-Length, chunked, close-delimited, interim 1xx,
  HEAD/204/304), with every header kept (lower-case names) for the caller's classifier.
- `EventLoop` keeps N connections busy in the calling thread over non-blocking sockets
  (`selectors`), one request in flight per connection (no pipelining), as ``hey -c N`` does.
  A `Driver` decides what to send next and receives each answer or failure.

Failures are one of three outcomes: ``error:timeout`` (no complete answer within the time
budget), ``error:connection`` (refused, reset, closed early) and ``error:other`` (malformed or
oversized answers). A connection that failed is closed, so a late answer is never read as the
next request's. An idle keep-alive connection the server closed just as it was reused is
retried once on a fresh connection (the request never reached the server), as urllib3 does.

New connections ramp up: each waits for the previous one's first answer (at most 10 ms), since
opening them all at once overflows a small listen backlog (5 in Python's socketserver) and
every dropped handshake costs a 1 s SYN retransmit.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

from abtest_harness.errors import HarnessError

OUTCOME_TIMEOUT = "error:timeout"
OUTCOME_CONNECTION = "error:connection"
OUTCOME_OTHER = "error:other"

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
RAMP_S = 0.01  # the longest a new connection waits for the previous one's first answer (ramp-up)
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class NotLoopback(HarnessError, ValueError):
    """The target is not a loopback address (nor the one URL a user allowed): no load goes there."""


class UnresolvedTarget(HarnessError, ValueError):
    """The allowed gateway URL's host name does not resolve."""


class Request(Protocol):
    """What a request needs for the wire; `abtest_harness.routing.Request` has this shape."""

    @property
    def label(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str] | Iterable[tuple[str, str]]: ...


@dataclass(frozen=True)
class Target:
    """A checked target: where to connect and what to put before each class's path.

    `allowed` is True when the target is the URL a user named (see `load_target`), which
    may be anywhere; False for a loopback target, which every other run is limited to.
    """

    scheme: str
    host: str
    port: int
    netloc: str
    base_path: str
    addresses: tuple[str, ...]
    allowed: bool = False


Resolver = Callable[[str, int], Sequence[str]]
"""``resolve(host, port) -> addresses``; `resolve_addresses` by default."""


def resolve_addresses(host: str, port: int) -> tuple[str, ...]:
    """The addresses `host` resolves to for a TCP connection, in the resolver's order, once each."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))


def _url_key(url: str) -> tuple[str, str, int, str, str]:
    """What makes two URLs the same target: scheme, host (lower case), port (80 by default), path, query."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port or 80
    except ValueError:
        port = -1
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/"), parts.query)


def load_target(url: str, *, allowed: str | None = None, resolve: Resolver = resolve_addresses) -> Target:
    """The target load for `url` may be sent to.

    Without `allowed`: `loopback_target` (127.0.0.0/8, ::1, localhost), as in every mode but
    ``--mesh cluster``. With `allowed`, the URL a user gave for the gateway of a cluster they
    run: `url` must be exactly that URL (same scheme, host, port and path; any other URL,
    loopback or not, is refused), and its host, wherever it is, is resolved with `resolve`.
    Plain HTTP only: this generator speaks no TLS.

    >>> load_target("http://10.1.2.3:8080", allowed="http://10.1.2.3:8080").addresses
    ('10.1.2.3',)
    """
    if allowed is None:
        return loopback_target(url)
    parts = urlsplit(url)
    if parts.scheme != "http" or urlsplit(allowed).scheme != "http":
        raise NotLoopback(
            f"{url!r}: only plain http:// is supported (no TLS); point --gateway-url at the gateway's "
            f"HTTP port, or reach it through a loopback port-forward"
        )
    if _url_key(url) != _url_key(allowed):
        raise NotLoopback(f"{url!r}: this run sends load only to the gateway URL given, {allowed!r}")
    host, port = _host_port(url, parts)
    if _is_ip(host):
        addresses: tuple[str, ...] = (host,)
    else:
        try:
            addresses = tuple(resolve(host, port))
        except OSError as exc:
            raise UnresolvedTarget(f"{url!r}: {host} does not resolve ({exc})") from None
        if not addresses:
            raise UnresolvedTarget(f"{url!r}: {host} resolves to no address")
    return Target(parts.scheme, host, port, parts.netloc, parts.path.rstrip("/"), addresses, allowed=True)


def _host_port(url: str, parts: SplitResult) -> tuple[str, int]:
    """The host and port (80 if none) of `url`, split as `parts`; NotLoopback if either is missing or bad."""
    host = parts.hostname
    if not host:
        raise NotLoopback(f"{url!r}: no host")
    try:
        return host, parts.port or 80
    except ValueError as exc:
        raise NotLoopback(f"{url!r}: bad port ({exc})") from None


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
    host, port = _host_port(url, parts)
    if is_loopback_ip(host):
        addresses: tuple[str, ...] = (host,)
    elif host.lower() in _LOOPBACK_NAMES:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NotLoopback(f"{url!r}: {host} does not resolve ({exc})") from None
        resolved = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        strays = [a for a in resolved if not is_loopback_ip(a)]
        if strays or not resolved:
            raise NotLoopback(f"{url!r}: {host} resolves to non-loopback {', '.join(strays) or 'nothing'}")
        addresses = resolved
    else:
        raise NotLoopback(
            f"{url!r}: host {host!r} is not loopback; load goes only to 127.0.0.0/8, ::1 or localhost"
        )
    return Target(parts.scheme, host, port, parts.netloc, parts.path.rstrip("/"), addresses)


def is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class Failure(Exception):
    """A request failed; `kind` is the outcome (``error:timeout`` ...), the message the detail."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Timeout(Failure):
    def __init__(self, detail: str) -> None:
        super().__init__(OUTCOME_TIMEOUT, detail)


@dataclass(frozen=True)
class Prepared:
    """A request turned into what goes on the wire, computed once per run."""

    label: str
    method: str
    path: str
    url: str
    headers: Mapping[str, str]
    wire: bytes
    bodyless: bool  # HEAD: the answer has headers only


@dataclass(frozen=True)
class Answer:
    """A complete answer: status, headers (lower-case names; repeated fields joined by ", "), body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def prepare(target: Target, request: Request) -> Prepared:
    """The request's bytes for `target`: Host (the request's `authority` if it has one), a few
    fixed headers, then the request's own headers (which override those of the same name)."""
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
    return Prepared(request.label, method, path, url, headers, (head + "\r\n").encode("latin-1"),
                    method == "HEAD")


def parse_answer(buf: bytes, bodyless: bool, eof: bool) -> tuple[Answer, int, bool] | None:
    """Parse the answer at the start of `buf`: (answer, bytes used, close after) or None for more.

    Pure, so it can be fed whatever has arrived so far: Content-Length, chunked and
    close-delimited bodies (complete only once `eof`), interim 1xx answers skipped, no body
    for HEAD, 204 and 304. Malformed or oversized answers raise `Failure` (error:other).
    """
    start = 0
    while True:  # one pass per interim (1xx) answer; the final answer returns
        i = buf.find(b"\r\n\r\n", start)
        if i < 0:
            if len(buf) - start > MAX_HEAD:
                raise Failure(OUTCOME_OTHER, f"response head larger than {MAX_HEAD} bytes")
            return None
        lines = buf[start:i].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise Failure(OUTCOME_OTHER, f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise Failure(OUTCOME_OTHER, f"bad status code: {lines[0][:80]!r}") from None
        length: int | None = None
        chunked = False
        close = status_line[0] == b"HTTP/1.0"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            text = value.strip().decode("latin-1")
            field = key.decode("latin-1")
            headers[field] = f"{headers[field]}, {text}" if field in headers else text
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise Failure(OUTCOME_OTHER, f"bad content-length {value[:40]!r}") from None
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
            return Answer(status, headers, b""), pos, True
        if bodyless or status in (204, 304):
            return Answer(status, headers, b""), pos, close
        if chunked:
            found = parse_chunked(buf, pos)
            if found is None:
                return None
            body, end = found
            return Answer(status, headers, body), end, close
        if length is not None:
            if length > MAX_BODY:
                raise Failure(OUTCOME_OTHER, f"body of {length} bytes is over {MAX_BODY}")
            if len(buf) < pos + length:
                return None
            return Answer(status, headers, buf[pos:pos + length]), pos + length, close
        # No framing: the body runs to the end of the connection.
        if len(buf) - pos > MAX_BODY:
            raise Failure(OUTCOME_OTHER, f"body over {MAX_BODY} bytes")
        if not eof:
            return None
        return Answer(status, headers, buf[pos:]), len(buf), True


def parse_chunked(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at `pos`: (body, end) once complete (trailers read), else None."""
    parts: list[bytes] = []
    total = 0
    while True:
        j = buf.find(b"\r\n", pos)
        if j < 0:
            if len(buf) - pos > MAX_HEAD:
                raise Failure(OUTCOME_OTHER, "chunk size line too long")
            return None
        size_text = buf[pos:j].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise Failure(OUTCOME_OTHER, f"bad chunk size {size_text[:20]!r}") from None
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
        if total > MAX_BODY:
            raise Failure(OUTCOME_OTHER, f"chunked body over {MAX_BODY} bytes")
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos:pos + size])
        pos += size + 2


Taken = tuple[Prepared, float, float]
"""What a driver hands out: (request, start time, time budget in seconds)."""


class Driver(Protocol):
    """What decides the requests of an `EventLoop` and receives their answers."""

    @property
    def stopped(self) -> bool:
        """True once no more requests may start (answers in flight are still delivered)."""
        ...

    def take(self) -> Taken | None:
        """The next request to send, or None: the run is over."""
        ...

    def finish(self, taken: Taken, answer: Answer | None, failure: Failure | None) -> bool:
        """One request ended, with an answer or a failure; False: take no more on this connection."""
        ...


class _Conn:
    """One keep-alive connection of the event loop and the request it carries."""

    __slots__ = ("sock", "buf", "out", "request", "started", "budget", "expires", "connecting",
                 "reused", "retried", "address")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.buf = b""
        self.out = b""
        self.request: Prepared | None = None
        self.started = 0.0
        self.budget = 0.0
        self.expires = 0.0
        self.connecting = False
        self.reused = False  # the socket answered before: a close before any byte may be stale
        self.retried = False
        self.address = 0  # index into the target's addresses


class EventLoop:
    """All connections in the calling thread: no locks, no thread switches, one `select` per batch.

    Each connection carries one request at a time (HTTP/1.1 keep-alive, no pipelining), so
    `concurrency` connections keep `concurrency` requests in flight, as `hey -c` does.
    """

    def __init__(self, driver: Driver, target: Target) -> None:
        self.driver = driver
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
        driver = self.driver
        opened = 0
        newest: _Conn | None = None  # the newest connection, until its first answer
        next_open = 0.0
        try:
            while True:
                now = time.monotonic()
                # Ramp up: open the next connection once the newest one has answered, or after
                # RAMP_S. Opening every connection at once overflows a small listen backlog
                # (5 in Python's socketserver) and the dropped handshakes cost a 1 s SYN retry.
                if opened < concurrency and not driver.stopped and (newest is None or now >= next_open):
                    opened += 1
                    conn = _Conn()
                    self.conns.append(conn)
                    if self._begin(conn):
                        newest, next_open = conn, now + RAMP_S
                    continue
                while self.refused:
                    conn, sock, err = self.refused.pop()
                    if conn.sock is sock:  # not timed out and moved on meanwhile
                        self._connect_failed(conn, err)
                if not self.busy:
                    return
                wake = min(c.expires for c in self.busy)
                if opened < concurrency and newest is not None and not driver.stopped:
                    wake = min(wake, next_open)
                for key, _ in self.selector.select(max(wake - now, 0.0)):
                    conn = key.data
                    if conn.request is not None and self._ready(conn) and conn is newest:
                        newest = None
                now = time.monotonic()
                for conn in [c for c in self.busy if c.expires <= now]:
                    self._fail(conn, Timeout("no answer within the timeout"))
        finally:
            for conn in self.conns:
                self._close(conn)
            self.selector.close()

    # ---------------------------------------------------------------- one request

    def _begin(self, conn: _Conn) -> bool:
        """Start the next request on `conn`; False (and the connection closed) when the run is over."""
        taken = self.driver.take()
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
        address = self.addresses[conn.address % len(self.addresses)]
        conn.address = 0
        where = f"[{address}]" if ":" in address else address
        self._fail(conn, Failure(OUTCOME_CONNECTION, f"connect to {where}:{self.port}: {os.strerror(err)}"))

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
            parsed = parse_answer(conn.buf, conn.request.bodyless, eof=not data)
        except Failure as failure:
            self._fail(conn, failure)
            return False
        if parsed is None:
            if not data:
                self._fail(conn, Failure(OUTCOME_CONNECTION, "connection closed in the middle of the answer"))
            return False
        answer, used, close = parsed
        request, started, budget = conn.request, conn.started, conn.budget
        if close:
            self._close(conn)
        else:
            conn.buf = conn.buf[used:]
        conn.request = None
        self.busy.discard(conn)
        assert request is not None
        self.driver.finish((request, started, budget), answer, None)
        self._begin(conn)
        return True

    def _broken(self, conn: _Conn, exc: OSError) -> None:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) and not conn.buf:
            self._stale(conn)
        else:
            self._fail(conn, Failure(OUTCOME_CONNECTION, f"connection broken: {exc}"))

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
        self._fail(conn, Failure(OUTCOME_CONNECTION, "connection closed before any answer"))

    def _fail(self, conn: _Conn, failure: Failure) -> None:
        """Count a failed request, drop its connection (a late answer must never be read as the
        next one's), and go on with the next request on a fresh connection."""
        self._close(conn)
        request, started, budget = conn.request, conn.started, conn.budget
        conn.request = None
        self.busy.discard(conn)
        assert request is not None
        if self.driver.finish((request, started, budget), None, failure):
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
