"""The fake kind / istioctl / kubectl / docker: one script, dispatched on the name it was called by.

Standard library only (it runs under whatever python3 is on PATH). Every call is appended
to ``$FAKE_TOOLS_DIR/calls.jsonl`` as {"tool", "argv", "kubeconfig_env"}; behaviour comes
from ``$FAKE_TOOLS_DIR/state.json``:

    clusters         kind cluster names that exist (create/delete change it)
    api_server       URL of the stub Kubernetes API written into kubeconfigs
    istioctl_version what `istioctl version --remote=false -o json` reports
    config_dump      path of a JSON file `kubectl exec ... pilot-agent request GET config_dump` prints
    fail             {"<tool> <args prefix>": {"rc": N, "stderr": "..."}}: make a call fail
    loaded           images side-loaded per cluster (kind load docker-image adds)
    kind_version     what `kind version` reports (default v0.33.0)
    docker_server    what `docker version --format {{.Server.Version}}` prints (unset: daemon down)
    docker_images    images `docker image inspect` finds
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

STATE_DIR = Path(os.environ["FAKE_TOOLS_DIR"])
STATE = STATE_DIR / "state.json"
CALLS = STATE_DIR / "calls.jsonl"


def load() -> dict[str, Any]:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def save(state: dict[str, Any]) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, STATE)


def flag(argv: list[str], name: str, default: str | None = None) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return default


def die(message: str, rc: int = 1) -> int:
    sys.stderr.write(message + "\n")
    return rc


def kubeconfig_for(name: str, server: str) -> str:
    # JSON is YAML: the kubernetes client reads it, and this script needs no yaml module.
    ctx = f"kind-{name}"
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": ctx, "cluster": {"server": server}}],
            "users": [{"name": ctx, "user": {"token": "fake-token"}}],
            "contexts": [{"name": ctx, "context": {"cluster": ctx, "user": ctx}}],
            "current-context": ctx,
        }
    )


def write_kubeconfig(argv: list[str], name: str, state: dict[str, Any]) -> None:
    """Write cluster ``name``'s kubeconfig where ``--kubeconfig`` says, as kind does; nothing without it."""
    kubeconfig = flag(argv, "--kubeconfig")
    if kubeconfig:
        Path(kubeconfig).write_text(kubeconfig_for(name, state["api_server"]))


def published_ports(config: str | None) -> dict[str, list[dict[str, str]]]:
    """The HostConfig.PortBindings docker reports for kind's ``--publish`` of each extraPortMapping.

    kind passes ``--publish=<listenAddress>:<hostPort>:<containerPort>/TCP``; docker reports
    the key in lower case (``30080/tcp``). The config is read line by line (no YAML parser
    here: the fakes run without site-packages), which is enough for manifests/kind/cluster.yaml.
    """
    bindings: dict[str, list[dict[str, str]]] = {"6443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "41234"}]}
    if not config:
        return bindings
    current: dict[str, str] = {}
    mappings: list[dict[str, str]] = []
    for raw in Path(config).read_text().splitlines():
        line = raw.split("#", 1)[0].strip().lstrip("- ").strip()
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = value.strip().strip('"')
        if key == "containerPort":
            current = {"containerPort": value}
            mappings.append(current)
        elif key in ("hostPort", "listenAddress", "protocol") and current:
            current[key] = value
    for m in mappings:
        port = f"{m['containerPort']}/{m.get('protocol', 'TCP').lower()}"
        bindings[port] = [{"HostIp": m.get("listenAddress", ""), "HostPort": m.get("hostPort", "")}]
    return bindings


def kind(argv: list[str], state: dict[str, Any]) -> int:
    clusters: list[str] = state.setdefault("clusters", [])
    name = flag(argv, "--name", "kind") or "kind"
    if argv[:1] == ["version"]:
        print(f"kind {state.get('kind_version', 'v0.33.0')} go1.25.1 linux/amd64")
        return 0
    if argv[:2] == ["get", "clusters"]:
        if not clusters:
            return die("No kind clusters found.", 0)
        print("\n".join(clusters))
        return 0
    if argv[:2] == ["create", "cluster"]:
        config = flag(argv, "--config")
        if config and not Path(config).is_file():
            return die(
                "ERROR: failed to create cluster: error reading file: "
                f"open {config}: no such file or directory"
            )
        if name in clusters:
            return die(
                f'ERROR: failed to create cluster: node(s) already exist for a cluster with the name "{name}"'
            )
        clusters.append(name)
        state.setdefault("port_bindings", {})[f"{name}-control-plane"] = published_ports(config)
        save(state)
        write_kubeconfig(argv, name, state)
        sys.stderr.write(f'Creating cluster "{name}" ...\nSet kubectl context to "kind-{name}"\n')
        return 0
    if argv[:2] == ["export", "kubeconfig"]:
        if name not in clusters:
            return die(f'ERROR: could not locate any control plane nodes for cluster named "{name}"')
        write_kubeconfig(argv, name, state)
        sys.stderr.write(f'Set kubectl context to "kind-{name}"\n')
        return 0
    if argv[:2] == ["load", "docker-image"]:
        if name not in clusters:
            return die(f'ERROR: no nodes found for cluster "{name}"')
        state.setdefault("loaded", {}).setdefault(name, []).append(argv[2])
        save(state)
        # kind logs progress to stderr; stdout stays empty.
        sys.stderr.write(
            f'Image: "{argv[2]}" with ID "sha256:0123" not yet present '
            f'on node "{name}-control-plane", loading...\n'
        )
        return 0
    if argv[:2] == ["export", "logs"]:
        if name not in clusters:
            return die(f'ERROR: unknown cluster "{name}"')
        target = Path(argv[2])
        target.mkdir(parents=True, exist_ok=True)
        (target / "kind-version.txt").write_text("kind v0.33.0 (fake)\n")
        # As kind does: the message on stderr, only the directory on stdout (for callers to capture).
        sys.stderr.write(f'Exporting logs for cluster "{name}" to:\n')
        print(target)
        return 0
    if argv[:2] == ["delete", "cluster"]:
        if name in clusters:
            clusters.remove(name)
            save(state)
        sys.stderr.write(f'Deleting cluster "{name}" ...\n')
        return 0
    return die(f"fake kind: unknown command {argv}", 2)


def api_call(server: str, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server + path, data=data, method=method)
    request.add_header("Authorization", "Bearer fake-token")
    request.add_header("Content-Type", "application/apply-patch+yaml")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def api_get(server: str, path: str) -> Any:
    request = urllib.request.Request(server + path, method="GET")
    request.add_header("Authorization", "Bearer fake-token")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def live_endpoints(dump: dict[str, Any], server: str) -> dict[str, Any]:
    """`dump` with its endpoints replaced by the Ready pods behind each cluster's Service now,
    as istiod keeps a gateway's EDS current (cluster names ``outbound|PORT||svc.ns.svc...``)."""
    for section in dump.get("configs", []):
        if not str(section.get("@type", "")).endswith("EndpointsConfigDump"):
            continue
        for entry in section.get("dynamic_endpoint_configs", []):
            config = entry["endpoint_config"]
            port = int(config["cluster_name"].split("|")[1])
            service, namespace = config["cluster_name"].split("|")[3].split(".")[:2]
            try:
                selector = api_get(server, f"/api/v1/namespaces/{namespace}/services/{service}")["spec"]["selector"]
            except urllib.error.HTTPError:
                selector = None
            pods = api_get(server, f"/api/v1/namespaces/{namespace}/pods")["items"] if selector else []
            ips = [
                p["status"]["podIP"]
                for p in pods
                if selector.items() <= (p["metadata"].get("labels") or {}).items()
                and not p["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            ]
            config["endpoints"] = [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
                        for ip in ips
                    ]
                }
            ]
    return dump


def istio_objects(version: str) -> list[tuple[str, dict[str, Any]]]:
    def deployment(name: str, labels: dict[str, str], image: str) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "istio-system", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {"name": "discovery" if name == "istiod" else "istio-proxy", "image": image}
                        ]
                    },
                },
            },
        }

    gateway_labels = {"app": "istio-ingressgateway", "istio": "ingressgateway"}
    base = "/apis/apps/v1/namespaces/istio-system/deployments"
    return [
        (
            f"{base}/istiod",
            deployment("istiod", {"app": "istiod", "istio": "pilot"}, f"docker.io/istio/pilot:{version}"),
        ),
        (
            f"{base}/istio-ingressgateway",
            deployment("istio-ingressgateway", gateway_labels, f"docker.io/istio/proxyv2:{version}"),
        ),
        (
            "/api/v1/namespaces/istio-system/services/istio-ingressgateway",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
                "spec": {
                    "type": "NodePort",
                    "selector": gateway_labels,
                    "ports": [
                        {"name": "status-port", "port": 15021, "targetPort": 15021, "nodePort": 31021},
                        {"name": "http2", "port": 80, "targetPort": 8080, "nodePort": 30080},
                    ],
                },
            },
        ),
    ]


def istioctl(argv: list[str], state: dict[str, Any]) -> int:
    version = state.get("istioctl_version", "1.30.4")
    if argv[:1] == ["version"]:
        print(
            json.dumps(
                {"clientVersion": {"version": version, "revision": "fake", "golang_version": "go1.25"}}
            )
        )
        return 0
    if argv[:1] == ["install"]:
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig or not Path(kubeconfig).is_file():
            return die("Error: failed to construct Kubernetes client: no configuration has been provided")
        operator = flag(argv, "-f")
        if not operator or "IstioOperator" not in Path(operator).read_text():
            return die(f"Error: could not read IstioOperator from {operator}")
        server = json.loads(Path(kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
        for path, obj in istio_objects(version):
            api_call(server, "PATCH", path + "?fieldManager=istio-operator&force=true", obj)
        print(
            "✔ Istio core installed\n✔ Istiod installed\n"
            "✔ Ingress gateways installed\n✔ Installation complete"
        )
        return 0
    return die(f"fake istioctl: unknown command {argv}", 2)


def kubectl(argv: list[str], state: dict[str, Any]) -> int:
    kubeconfig = flag(argv, "--kubeconfig")
    if not kubeconfig or not Path(kubeconfig).is_file():
        return die("error: no --kubeconfig given to the fake kubectl (the harness must always pass its own)")
    context = flag(argv, "--context")
    if context is not None:
        names = [c["name"] for c in json.loads(Path(kubeconfig).read_text()).get("contexts", [])]
        if context not in names:
            return die(f'error: context "{context}" does not exist')
    if (
        "exec" in argv
        and argv[-4:-1] == ["pilot-agent", "request", "GET"]
        and argv[-1].startswith("config_dump")
    ):
        source = state.get("config_dump")
        if not source:
            return die('error: unable to upgrade connection: container not found ("istio-proxy")')
        text = Path(source).read_text()
        if state.get("live_endpoints"):
            text = json.dumps(live_endpoints(json.loads(text), state["api_server"]))
        print(text)
        return 0
    return die(f"fake kubectl: unknown command {argv}", 2)


def docker(argv: list[str], state: dict[str, Any]) -> int:
    if argv[:1] == ["version"]:
        server = state.get("docker_server")
        if not server:
            return die(
                "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                "Is the docker daemon running?"
            )
        print(server)
        return 0
    if argv[:1] == ["inspect"] and "{{json .HostConfig.PortBindings}}" in argv:
        container = argv[-1]
        bindings = (state.get("port_bindings") or {}).get(container)
        if bindings is None:
            print("[]")
            return die(f"Error: No such object: {container}")
        print(json.dumps(bindings))
        return 0
    if argv[:2] == ["image", "inspect"]:
        name = argv[-1]
        if name not in state.get("docker_images", []):
            return die(f"Error: No such image: {name}")
        print("sha256:" + "ab" * 32)
        return 0
    return die(f"fake docker: unknown command {argv}", 2)


def main(tool: str, argv: list[str]) -> int:
    with CALLS.open("a") as calls:
        calls.write(
            json.dumps({"tool": tool, "argv": argv, "kubeconfig_env": os.environ.get("KUBECONFIG")}) + "\n"
        )
    state = load()
    line = " ".join([tool, *argv])
    for prefix, failure in (state.get("fail") or {}).items():
        if line.startswith(prefix):
            sys.stderr.write(failure.get("stderr", "ERROR: injected failure") + "\n")
            return int(failure.get("rc", 1))
    return {"kind": kind, "istioctl": istioctl, "kubectl": kubectl, "docker": docker}[tool](argv, state)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[0]).name, sys.argv[1:]))
