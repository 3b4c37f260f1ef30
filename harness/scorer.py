"""The mock scoring server: the stand-in for a model image (standard library only).

It answers like the mock images of the reference guide (`"New Model A"` / `"New Model B"`)
and says which version it is in the response header `x-model-version`, because in the
Blue_Green stage both versions give the same answer and only the header tells them apart.

Configured by environment, as a Deployment configures its container:

=====================  ===============  ==================================================
variable               default          meaning
=====================  ===============  ==================================================
``PORT``               ``5001``         TCP port to listen on
``SCORER_HOST``        ``0.0.0.0``      address to bind (local processes use 127.0.0.1)
``SCORER_ANSWER``      ``New Model A``  the answer, sent as a JSON string (the image bakes it)
``MODEL_VERSION``      ``unknown``      value of the ``x-model-version`` response header
``SCORER_LATENCY_MS``  ``0``            added delay before each ``/score`` answer
``SCORER_ERROR_RATE``  ``0``            share of ``/score`` answers that are 500s (0..1)
``SCORER_SEED``        (random)         seed for the error draw, for reproducible faults
=====================  ===============  ==================================================

Run it with ``python -m abtest_harness.scorer`` or, in the image, ``python3 scorer.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


class ScorerConfig:
    """The server's settings, read once from the environment."""

    def __init__(self, environ: dict[str, str] | os._Environ[str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.host = env.get("SCORER_HOST", "0.0.0.0")  # noqa: S104 - a container must listen on all interfaces
        self.port = int(_number(env, "PORT", "5001", int))
        self.answer = env.get("SCORER_ANSWER", "New Model A")
        self.version = env.get("MODEL_VERSION", "unknown")
        self.latency_s = _number(env, "SCORER_LATENCY_MS", "0", float) / 1000.0
        self.error_rate = _number(env, "SCORER_ERROR_RATE", "0", float)
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"SCORER_ERROR_RATE must be within 0..1, got {self.error_rate}")
        if self.latency_s < 0:
            raise ValueError(f"SCORER_LATENCY_MS must not be negative, got {self.latency_s * 1000:g}")
        seed = env.get("SCORER_SEED")
        self.rng = random.Random(int(seed)) if seed else random.Random()


def _number(env: object, name: str, default: str, kind: type[float] | type[int]) -> float:
    raw = env.get(name, default)  # type: ignore[attr-defined]
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


class _Handler(BaseHTTPRequestHandler):
    server: _ScorerServer
    protocol_version = "HTTP/1.1"  # keep-alive, as a real model server behind Envoy
    # Headers and body go out in two writes; with Nagle on, every keep-alive answer waits
    # ~40 ms for the client's delayed ACK (44 ms -> 0.5 ms per request measured).
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)  # a scoring request's payload; the mock ignores it
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        config = self.server.config
        if path == "/healthz":
            self._send(200, b"ok", "text/plain")
        elif path == "/score":
            if config.latency_s:
                time.sleep(config.latency_s)
            with self.server.rng_lock:
                fail = config.error_rate > 0 and config.rng.random() < config.error_rate
            if fail:
                self._send(500, json.dumps("injected failure").encode(), "application/json")
            else:
                self._send(200, json.dumps(config.answer).encode(), "application/json")
        else:
            self._send(404, json.dumps(f"no route {path}").encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-model-version", self.server.config.version)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # One line per request would drown the logs under load; errors still go to stderr.
        return


class _ScorerServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 drops handshakes when a gateway opens connections in a burst,
    # and each dropped SYN costs a 1 s retransmit.
    request_queue_size = 128

    def __init__(self, config: ScorerConfig) -> None:
        self.config = config
        self.rng_lock = threading.Lock()
        super().__init__((config.host, config.port), _Handler)


def serve(config: ScorerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then close the socket and return."""
    server = _ScorerServer(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() blocks until serve_forever returns, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = str(server.server_address[0]), server.server_address[1]
    print(
        f"scorer {config.version!r} answering {config.answer!r} on {host}:{port}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    print("scorer stopped", file=sys.stderr, flush=True)


def main() -> int:
    try:
        config = ScorerConfig()
    except ValueError as exc:
        print(f"scorer: {exc}", file=sys.stderr)
        return 2
    serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
