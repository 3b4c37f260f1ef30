"""Figures of the scorer images: sizes, build times (cold, layer-cached, tag present), container start.

    python -m bench.bench_images [--base-image REF] [--starts N]

Builds throw-away tags (a nonce in a Dockerfile comment changes the content tag but not the
layers), so the project's real images are neither rebuilt nor removed; the throw-away tags are
removed at the end. Prints a note and exits 0 where no Docker engine or base image is available.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import docker

from abtest_harness.images import (
    BaseImageMissing,
    BuildContext,
    DockerUnavailable,
    base_image_id,
    build_scorer_images,
    docker_client,
    resolve_base_image,
)
from abtest_harness.mesh.containers import DockerRunner
from abtest_harness.mesh.workloads import WorkloadSpec
from abtest_harness.plan import ImageSpec, load_plan


@dataclass(frozen=True)
class _Plan:
    """The plan's images under bench-only repositories, so timing builds never touch real tags."""

    images: Mapping[str, ImageSpec]


def _mb(size: int) -> str:
    return f"{size / 1e6:7.1f} MB"


def _timed_build(plan: _Plan, base: str, client: docker.DockerClient, context: BuildContext,
                 *, no_cache: bool) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    refs = build_scorer_images(plan, base_image=base, client=client, context=context, no_cache=no_cache)
    return time.perf_counter() - started, refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-image", default=None, help="base image (default: the local debootstrap one)")
    parser.add_argument("--starts", type=int, default=5, help="container starts to time (default 5)")
    args = parser.parse_args(argv)

    try:
        client = docker_client()
        base = resolve_base_image(args.base_image)
        base_image_id(client, base)
    except (DockerUnavailable, BaseImageMissing) as exc:
        print(f"bench_images: skipped: {exc}")
        return 0

    plan = load_plan()
    real = build_scorer_images(plan, base_image=base, client=client)
    base_size = int(client.images.get(base).attrs["Size"])
    print(f"base image  {base:40s} {_mb(base_size)}")
    for key, ref in real.items():
        size = int(client.images.get(ref).attrs["Size"])
        print(f"image {key}     {ref:40s} {_mb(size)}  (+{(size - base_size) / 1e3:.1f} kB over the base)")

    # Throw-away repositories and a nonce: same layers, new tags, nothing of the real images touched.
    nonce = secrets.token_hex(4)
    bench_plan = _Plan({
        key: ImageSpec(key, f"abtest-bench/scorer-{key.lower()}", spec.answer)
        for key, spec in plan.images.items()
    })
    scorer = BuildContext.scorer()

    def context(tag: str) -> BuildContext:
        dockerfile = scorer.files["Dockerfile"] + f"\n# bench {nonce} {tag}\n".encode()
        return BuildContext({**scorer.files, "Dockerfile": dockerfile})

    made: list[str] = []
    try:
        cold, refs = _timed_build(bench_plan, base, client, context("cold"), no_cache=True)
        made += refs.values()
        present, _ = _timed_build(bench_plan, base, client, context("cold"), no_cache=False)
        layered, refs = _timed_build(bench_plan, base, client, context("layers"), no_cache=False)
        made += refs.values()
        print(f"build A+B cold (no layer cache)      {cold:6.2f} s")
        print(f"build A+B, layers cached, new tags   {layered:6.2f} s")
        print(f"build A+B, tags present (skipped)    {present:6.3f} s")
    finally:
        for ref in made:
            try:
                client.images.remove(ref)
            except docker.errors.APIError as exc:
                print(f"bench_images: could not remove {ref}: {exc}", file=sys.stderr)

    ready: list[float] = []
    stopped: list[float] = []
    with DockerRunner(client=client) as runner:
        for _ in range(max(1, args.starts)):
            started = time.perf_counter()
            spec = WorkloadSpec("abtesting", "model-green", 0, real["A"], {"MODEL_VERSION": "green"})
            workload = runner.start(spec)
            runner.wait_ready(workload, timeout=30)
            ready.append(time.perf_counter() - started)
            started = time.perf_counter()
            runner.stop(workload)
            stopped.append(time.perf_counter() - started)
    print(f"container start to /healthz 200      median {statistics.median(ready):.2f} s "
          f"(min {min(ready):.2f}, max {max(ready):.2f}, n={len(ready)})")
    print(f"container stop (SIGTERM) + remove    median {statistics.median(stopped):.2f} s "
          f"(min {min(stopped):.2f}, max {max(stopped):.2f}, n={len(stopped)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
