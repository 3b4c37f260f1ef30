"""The local mesh the end-to-end routing tests share: Envoy in front of the two scorer images, run as processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from abtest_harness.mesh.local import LocalMesh
from abtest_harness.mesh.workloads import ProcessRunner

IMAGES = {"abtest/scorer-a": "New Model A", "abtest/scorer-b": "New Model B"}


@contextmanager
def process_mesh(log_dir: Path) -> Iterator[LocalMesh]:
    """A local mesh that is up, its workloads processes logging into `log_dir`; down and stopped on exit."""
    runner = ProcessRunner(IMAGES, log_dir=log_dir)
    with LocalMesh(runner=runner) as local:
        yield local
    runner.close()
