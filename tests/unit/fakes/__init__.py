"""Stand-ins at the kind backend's process and API boundaries, for the contract tests.

``install_fake_tools`` writes fake ``kind``, ``istioctl`` and ``kubectl`` executables (stdlib Python) that
record their argv to ``$FAKE_TOOLS_DIR/calls.jsonl`` and answer as the real tools do, from
the shared state in ``$FAKE_TOOLS_DIR/state.json``; ``stub_kube_api`` is a Kubernetes API
on loopback that the real kubernetes client talks HTTP to; ``docker_client`` is a fake docker SDK
client.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

FAKE_TOOLS = ("kind", "istioctl", "kubectl", "docker")
_SCRIPT = Path(__file__).resolve().parent / "fake_tool.py"


def install_fake_tools(bin_dir: Path) -> Path:
    """Write executable fake ``kind``, ``istioctl``, ``kubectl`` and ``docker`` into `bin_dir`; return it.

    Each runs fake_tool.py under this interpreter with ``-S`` (no site import): about 15 ms a
    call, where ``#!/usr/bin/env python3`` through a pyenv shim costs 250 ms.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in FAKE_TOOLS:
        tool = bin_dir / name
        tool.write_text(
            f"#!{sys.executable} -S\n"
            "import sys\n"
            f"sys.path.insert(0, {str(_SCRIPT.parent)!r})\n"
            "from fake_tool import main\n"
            f"sys.exit(main({name!r}, sys.argv[1:]))\n"
        )
        tool.chmod(0o755)
    return bin_dir


def fake_tools_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fake tools first on PATH, with a fresh HOME and no KUBECONFIG; return their state directory.

    The state directory (``$FAKE_TOOLS_DIR``) is ``tmp_path/tools``, the executables are in ``tmp_path/bin``.
    """
    tools = tmp_path / "tools"
    tools.mkdir()
    fakes = install_fake_tools(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fakes}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TOOLS_DIR", str(tools))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return tools
