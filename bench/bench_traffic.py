"""Load generator throughput against `hey`, same server, same concurrency, same request count.

Run: ``python -m bench.bench_traffic [-c 1 8 32] [--repeats 3] [--seconds 1.5]``.

Each server runs in its own process, so it does not share a GIL with the generator:

- ``scorer``: the mock scorer (``python -m abtest_harness.scorer``), what the workloads run;
- ``fast``: a minimal asyncio HTTP/1.1 server (this file, ``--serve``) that answers far faster
  than the generators can ask, so the generator is the bottleneck: the hardest comparison.

Clients: ``socket`` is `abtest_harness.traffic.run_load` (one event loop over keep-alive sockets);
``requests`` is a comparison client kept here only, one `requests.Session` per thread, which
shows what a thread-per-connection client in Python costs. Each is compared with ``hey``, the Go
load generator (https://github.com/rakyll/hey): a short calibration picks a request count that
takes about ``--seconds`` for the slower of the two, then ``hey -n N -c C`` and the client
alternate ``--repeats`` times. Printed: median requests/s of each, the median of the per-repeat
ratios, and whether the goal (>= 0.5) holds.

Needs ``hey`` on PATH (``go install github.com/rakyll/hey@latest``); without it the comparison
is skipped with that reason and only the clients' own rates are printed. Every run is bounded
in count and time; every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from abtest_harness.errors import ToolNotFound
from abtest_harness.mesh.workloads import free_port, start_process, stop_process, tail
from abtest_harness.proc import run, tool
from abtest_harness.routing import Request
from abtest_harness.traffic import run_load
from abtest_harness.wait import wait_until

GOAL = 0.5
Transport = Literal["socket", "requests"]


# --- the fast server (runs in its own process) ----------------------------------------------

_BODY = b'"New Model A"'
_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-model-version: green\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


class _FastProtocol(asyncio.Protocol):
    """Answers every request head with the same canned answer; keep-alive, no parsing beyond that."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while (end := self.pending.find(b"\r\n\r\n")) >= 0:
            self.pending = self.pending[end + 4:]
            self.transport.write(_ANSWER)


async def _serve_fast(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FastProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# --- servers --------------------------------------------------------------------------------


@contextmanager
def _server(kind: str, log_dir: Path) -> Iterator[str]:
    """Start one server process on a free loopback port; yield its /score URL; stop it."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SCORER_HOST": "127.0.0.1", "MODEL_VERSION": "green",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    argv = {
        "scorer": [sys.executable, "-m", "abtest_harness.scorer"],
        "fast": [sys.executable, "-m", "bench.bench_traffic", "--serve", str(port)],
    }[kind]
    log_path = log_dir / f"{kind}.log"
    process = start_process(argv, env=env, log_path=log_path, what=f"{kind} server")
    try:
        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{kind} server exited with {process.returncode}: {tail(log_path)}")
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True

        wait_until(listening, what=f"{kind} server on 127.0.0.1:{port}", timeout=15.0,
                   transient=(ConnectionRefusedError,))
        yield f"http://127.0.0.1:{port}/score"
    finally:
        stop_process(process, f"{kind} server")


# --- the two clients ------------------------------------------------------------------------


def hey_rate(url: str, n: int, concurrency: int) -> float:
    """Requests/s from hey's summary; every answer must have been a 200."""
    done = run([tool("hey"), "-n", str(n), "-c", str(concurrency), "-t", "5", url], timeout=120.0)
    rate = re.search(r"Requests/sec:\s*([0-9.]+)", done.stdout)
    answered = sum(int(k) for k in re.findall(r"\[200\]\s+(\d+) responses", done.stdout))
    if rate is None or answered != n:
        raise RuntimeError(f"hey: expected {n} answers of 200, got {answered}:\n{done.stdout[-800:]}")
    return float(rate.group(1))


def hey_missing() -> str | None:
    """Why hey cannot run here, or None when it can."""
    try:
        tool("hey")
    except ToolNotFound:
        return "hey not on PATH (go install github.com/rakyll/hey@latest)"
    return None


def ours_rate(url: str, n: int, concurrency: int, transport: Transport) -> float:
    """Requests/s of one client; every answer must have been a version's."""
    if transport == "requests":
        return requests_rate(url, n, concurrency)
    base, _, path = url.partition("/score")
    result = run_load(base, [Request("weighted", path="/score" + path)], max_requests=n,
                      deadline_s=60.0, concurrency=concurrency)
    if result.requests != n or result.errors:
        raise RuntimeError(f"run_load: {result.requests} of {n}, errors {result.errors}, "
                           f"{result.error_details[:3]}")
    return result.requests_per_s


def requests_rate(url: str, n: int, concurrency: int) -> float:
    """Requests/s of `concurrency` threads, each with its own `requests.Session`, n in all."""
    import requests

    failures: list[str] = []
    deadline = time.monotonic() + 60.0

    def work(count: int) -> None:
        with requests.Session() as session:
            session.trust_env = False  # a proxy from the environment must never see this load
            for _ in range(count):
                if time.monotonic() > deadline:
                    failures.append("deadline")
                    return
                response = session.get(url, timeout=5.0)
                if response.status_code != 200 or "x-model-version" not in response.headers:
                    failures.append(f"status {response.status_code}")
                    return

    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in shares]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(70.0)
    elapsed = time.monotonic() - started
    if failures or any(t.is_alive() for t in threads):
        raise RuntimeError(f"requests client: {failures[:3] or 'threads still running'}")
    return n / elapsed


@dataclass(frozen=True)
class Row:
    server: str
    transport: str
    n: int
    concurrency: int
    hey: list[float]
    ours: list[float]

    @property
    def ratio(self) -> float | None:
        """Median of the per-repeat ratios to hey; None when hey did not run."""
        if not self.hey:
            return None
        return statistics.median(o / h for o, h in zip(self.ours, self.hey, strict=True))


def measure(server: str, url: str, transport: Transport, concurrency: int, repeats: int,
            seconds: float, with_hey: bool) -> Row:
    """Calibrate a request count worth about `seconds`, then alternate hey and the client."""
    probe = concurrency * max(25, 200 // concurrency)
    ours_guess = ours_rate(url, probe, concurrency, transport)
    hey_guess = hey_rate(url, probe, concurrency) if with_hey else ours_guess
    n = int(min(hey_guess, ours_guess) * seconds)
    n = max(concurrency * 50, min(n, 60_000))
    n -= n % concurrency  # hey sends n // c per worker: a remainder would go unsent
    hey: list[float] = []
    ours: list[float] = []
    runners: list[Callable[[], None]] = [lambda: ours.append(ours_rate(url, n, concurrency, transport))]
    if with_hey:
        runners.insert(0, lambda: hey.append(hey_rate(url, n, concurrency)))
    for i in range(repeats):
        for runner in runners if i % 2 == 0 else runners[::-1]:  # alternate who goes first
            runner()
    return Row(server, transport, n, concurrency, hey, ours)


def _fmt(rates: list[float]) -> str:
    if not rates:
        return "skipped"
    return f"{statistics.median(rates):>8.0f} ({min(rates):.0f}-{max(rates):.0f})"


def _verdict(ratio: float | None) -> str:
    if ratio is None:
        return "  n/a  n/a"
    return f"{ratio:>5.2f}  {'met' if ratio >= GOAL else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="target duration of one run")
    parser.add_argument("--servers", nargs="+", default=["scorer", "fast"], choices=["scorer", "fast"])
    parser.add_argument("--transports", nargs="+", default=["socket", "requests"],
                        choices=["socket", "requests"])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve_fast(args.serve))
        return 0

    started = time.monotonic()
    missing = hey_missing()
    if missing:
        print(f"SKIPPED the comparison with hey: {missing}; printing the clients' own rates only")
    print(f"load generator vs hey, {os.cpu_count()} CPUs, loopback; requests/s median (min-max) "
          f"of {args.repeats} runs; goal ratio >= {GOAL}")
    header = (f"{'server':<7} {'transport':<9} {'c':>3} {'n':>6}  {'hey req/s':>22}  "
              f"{'client req/s':>22}  {'ratio':>5}  goal")
    print(header)
    print("-" * len(header))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-traffic-") as tmp:
        for server in args.servers:
            with _server(server, Path(tmp)) as url:
                for transport in args.transports:
                    for concurrency in args.concurrency:
                        row = measure(server, url, transport, concurrency, args.repeats, args.seconds,
                                      with_hey=missing is None)
                        rows.append(row)
                        print(f"{row.server:<7} {row.transport:<9} {row.concurrency:>3} {row.n:>6}  "
                              f"{_fmt(row.hey):>22}  {_fmt(row.ours):>22}  {_verdict(row.ratio)}",
                              flush=True)
    for concurrency in args.concurrency:
        default = [(r.ratio, r.server) for r in rows
                   if r.transport == "socket" and r.concurrency == concurrency and r.ratio is not None]
        if default:
            ratio, worst = min(default)
            print(f"run_load (socket) at c={concurrency}: worst ratio {ratio:.2f} "
                  f"({worst}); goal {'met' if ratio >= GOAL else 'MISSED'}")
    print(f"({max(time.monotonic() - started, 0.0):.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
