"""A Kubernetes API on loopback, just deep enough for the kind backend's calls.

The real kubernetes client talks HTTP to it: server-side apply (PATCH with
``application/apply-patch+yaml``), GET of objects and collections with label selectors,
DELETE with propagation, pod logs, events and nodes. A Deployment applied here becomes
"ready" at once (status with observedGeneration, updated and available replicas) and gets
one Running pod, unless its name is in ``never_ready``. Every request is recorded.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml


@dataclass
class Request:
    """One request as the stub saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    body: str
    authorization: str


@dataclass
class StubState:
    """What the stub serves, and knobs for failure tests."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    never_ready: set[str] = field(default_factory=set)
    reject_apply: dict[str, tuple[int, str]] = field(default_factory=dict)  # object name -> (status, message)
    nodes_ready: bool = True
    pod_ips: Iterator[int] = field(default_factory=lambda: itertools.count(10))
    lock: threading.Lock = field(default_factory=threading.Lock)


def _selector_matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing
    def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, message: str) -> None:
        self._reply(
            code,
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code},
        )

    def _record(self) -> tuple[str, dict[str, list[str]], str]:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        query = parse_qs(parts.query)
        state = self.server.state
        with state.lock:
            state.requests.append(
                Request(
                    self.command,
                    parts.path,
                    query,
                    self.headers.get("Content-Type", ""),
                    body,
                    self.headers.get("Authorization", ""),
                )
            )
        return parts.path, query, body

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != "Bearer fake-token":
            self._status(401, "Unauthorized")
            return False
        return True

    # -- verbs
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        path, query, _ = self._record()
        if not self._authorized():
            return
        state = self.server.state
        if path == "/api/v1/nodes":
            ready = "True" if state.nodes_ready else "False"
            self._reply(
                200,
                {
                    "kind": "NodeList",
                    "items": [
                        {
                            "metadata": {"name": "abtest-control-plane"},
                            "status": {"conditions": [{"type": "Ready", "status": ready}]},
                        }
                    ],
                },
            )
            return
        if path.endswith("/log"):
            pod_path = path[: -len("/log")]
            if pod_path not in state.objects:
                self._status(404, f"pod {pod_path} not found")
                return
            container = query.get("container", ["?"])[0]
            self._reply(200, f"log line of {pod_path.rsplit('/', 1)[-1]}/{container}\n", "text/plain")
            return
        if path.endswith("/events"):
            namespace = path.split("/")[4]
            self._reply(
                200,
                {
                    "kind": "EventList",
                    "items": [
                        {
                            "type": "Normal",
                            "reason": "Scheduled",
                            "message": f"stub event in {namespace}",
                            "lastTimestamp": "2026-11-26T10:00:00Z",
                            "involvedObject": {"kind": "Pod", "name": "x"},
                        }
                    ],
                },
            )
            return
        with state.lock:
            if path in state.objects:
                self._reply(200, state.objects[path])
                return
            prefix = path.rstrip("/") + "/"
            selector = query.get("labelSelector", [None])[0]
            items = [
                obj
                for key, obj in sorted(state.objects.items())
                if key.startswith(prefix)
                and "/" not in key[len(prefix) :]
                and _selector_matches(obj.get("metadata", {}).get("labels", {}) or {}, selector)
            ]
        if items or _is_collection(path):
            self._reply(200, {"kind": "List", "items": items})
            return
        self._status(404, f"{path} not found")

    def do_PATCH(self) -> None:  # noqa: N802
        path, query, body = self._record()
        if not self._authorized():
            return
        if self.headers.get("Content-Type") != "application/apply-patch+yaml":
            self._status(
                415, f"the stub only serves server-side apply, not {self.headers.get('Content-Type')}"
            )
            return
        if not query.get("fieldManager"):
            self._status(422, "fieldManager is required for apply requests")
            return
        obj = yaml.safe_load(body)
        state = self.server.state
        name = obj.get("metadata", {}).get("name")
        if name in state.reject_apply:
            code, message = state.reject_apply[name]
            self._status(code, message)
            return
        with state.lock:
            old = state.objects.get(path)
            generation = int(old["metadata"].get("generation", 1)) if old else 0
            if old is None or old.get("spec") != obj.get("spec"):
                generation += 1
            obj.setdefault("metadata", {})["generation"] = generation
            obj["metadata"]["managedFields"] = [{"manager": query["fieldManager"][0], "operation": "Apply"}]
            if obj.get("kind") == "Deployment":
                self._deploy(path, obj, generation)
            state.objects[path] = obj
        self._reply(201 if old is None else 200, obj)

    def _deploy(self, path: str, obj: dict[str, Any], generation: int) -> None:
        """Make the Deployment's status and pod, as the controllers would."""
        state = self.server.state
        replicas = int(obj.get("spec", {}).get("replicas", 1))
        name = obj["metadata"]["name"]
        namespace = obj["metadata"]["namespace"]
        if name in state.never_ready:
            obj["status"] = {
                "observedGeneration": generation,
                "replicas": replicas,
                "updatedReplicas": replicas,
                "unavailableReplicas": replicas,
            }
            return
        obj["status"] = {
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
            "readyReplicas": replicas,
        }
        template = obj.get("spec", {}).get("template", {})
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-7d4f9c-x{generation}",
                "namespace": namespace,
                "labels": dict(template.get("metadata", {}).get("labels", {})),
                "ownerReferences": [{"kind": "ReplicaSet", "name": f"{name}-7d4f9c"}],
            },
            "spec": template.get("spec", {}),
            # TEST-NET-1 addresses (RFC 5737): documentation only, never routed anywhere.
            "status": {
                "phase": "Running",
                "podIP": f"192.0.2.{next(state.pod_ips)}",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        pods = f"/api/v1/namespaces/{namespace}/pods/"
        for key in [
            k for k in state.objects if k.startswith(pods) and k[len(pods) :].startswith(f"{name}-7d4f9c-")
        ]:
            del state.objects[key]
        state.objects[pods + pod["metadata"]["name"]] = pod

    def do_DELETE(self) -> None:  # noqa: N802
        path, _, body = self._record()
        if not self._authorized():
            return
        state = self.server.state
        with state.lock:
            obj = state.objects.pop(path, None)
            if obj is not None and obj.get("kind") == "Deployment":
                name = obj["metadata"]["name"]
                pods = f"/api/v1/namespaces/{obj['metadata']['namespace']}/pods/"
                for key in [k for k in state.objects if k.startswith(pods + f"{name}-7d4f9c-")]:
                    del state.objects[key]
        if obj is None:
            self._status(404, f"{path} not found")
            return
        self._reply(
            200, {"kind": "Status", "status": "Success", "details": {"name": obj["metadata"]["name"]}}
        )


_COLLECTIONS = (
    "namespaces",
    "services",
    "deployments",
    "pods",
    "configmaps",
    "gateways",
    "virtualservices",
    "destinationrules",
    "envoyfilters",
    "events",
)


def _is_collection(path: str) -> bool:
    return path.rstrip("/").rsplit("/", 1)[-1] in _COLLECTIONS


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: StubState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class StubKubeAPI:
    """Context manager: a stub API server on 127.0.0.1 with a fresh StubState."""

    def __init__(self) -> None:
        self.state = StubState()
        self._server = _Server(self.state)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="stub-kube-api",
            daemon=True,
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> StubKubeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def requests(self, method: str | None = None) -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.requests if method is None or r.method == method]

    def ready_pod_ips(self, namespace: str, labels: dict[str, str]) -> list[str]:
        """IPs of the stored Ready pods whose labels include `labels`."""
        prefix = f"/api/v1/namespaces/{namespace}/pods/"
        with self.state.lock:
            pods = [o for k, o in self.state.objects.items() if k.startswith(prefix)]
        return sorted(
            p["status"]["podIP"]
            for p in pods
            if labels.items() <= (p["metadata"].get("labels") or {}).items() and p["status"].get("podIP")
        )

    def names(self, collection: str) -> list[str]:
        """Names of the stored objects under a collection path."""
        prefix = collection.rstrip("/") + "/"
        with self.state.lock:
            return sorted(
                k[len(prefix) :]
                for k in self.state.objects
                if k.startswith(prefix) and "/" not in k[len(prefix) :]
            )
