"""Several ``kubectl kustomize`` renders in one process, when that gives kubectl's output.

``kubectl kustomize DIR`` spends about 0.1 s of CPU starting kubectl, more than rendering a
stage's overlay; a gate over six stages pays it six times. ``abtest-kustomize`` (built by
``make kustomize-batch`` from ``kustomize-batch/``) runs the same build command of the same
kustomize module kubectl embeds, for every directory given, in one process. It is used only
when it reports the same kustomize version as ``kubectl version --client`` (both readings
are cached by the binaries' identity), so what it prints is what kubectl prints; anything
it fails on is rendered by kubectl again, so errors read exactly as kubectl's.

``ABTEST_KUSTOMIZE_BATCH`` names the binary, or ``off`` turns the batch off; else it is
looked for on PATH, beside the running interpreter and in ``.cache/bin``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from abtest_harness import proc, rendercache
from abtest_harness.errors import HarnessError
from abtest_harness.plan import MANIFESTS_DIR

__all__ = ["ENV", "NAME", "find", "render_dirs", "usable"]

log = logging.getLogger(__name__)

NAME = "abtest-kustomize"
ENV = "ABTEST_KUSTOMIZE_BATCH"
TIMEOUT_S = 120.0


def find() -> str | None:
    """The batch binary, or None (not built, or turned off)."""
    given = os.environ.get(ENV)
    if given == "off":
        return None
    candidates = [given] if given else [
        shutil.which(NAME),
        str(Path(sys.executable).parent / NAME),
        *(str(d / ".cache" / "bin" / NAME) for d in (Path.cwd(), MANIFESTS_DIR.parent)),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _output(tool: str, *command: str) -> str:
    """A version command's output, cached by the binary's identity (it is the same until the binary changes)."""
    return rendercache.cached_output(tool, list(command), lambda: [],
                                     lambda: proc.run([tool, *command], timeout=30.0).stdout)


def usable(batch: str, kubectl: str) -> bool:
    """Whether `batch` embeds the kustomize release `kubectl` does (so their outputs are the same)."""
    try:
        ours = _output(batch, "-version").strip().removeprefix("kustomize ").strip()
        theirs = str(json.loads(_output(kubectl, "version", "--client", "-o", "json")).get("kustomizeVersion", ""))
    except (HarnessError, OSError, ValueError) as exc:
        log.info("kustomize batch: not used (%s)", exc)
        return False
    if not ours or ours != theirs:
        log.info("kustomize batch: not used (it embeds kustomize %s, kubectl %s)", ours, theirs)
        return False
    return True


def render_dirs(batch: str, dirs: Sequence[Path]) -> dict[Path, str]:
    """Each directory's ``kubectl kustomize`` output, by directory; those that failed are left out."""
    try:
        done = proc.run([batch, *(str(d) for d in dirs)], timeout=TIMEOUT_S)
        results = json.loads(done.stdout)
    except (HarnessError, OSError, ValueError) as exc:
        log.info("kustomize batch: failed (%s); kubectl renders each directory", exc)
        return {}
    out: dict[Path, str] = {}
    for directory, result in zip(dirs, results, strict=False):
        if isinstance(result, dict) and not result.get("error") and isinstance(result.get("yaml"), str):
            out[directory] = result["yaml"]
    return out
