"""The ``abtest`` command: render, validate, run, load.

Exit codes: 0 success; 1 a check failed (finding, verdict); 2 bad input or a harness error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from harness.errors import ConfigError, HarnessError
from harness.plan import RolloutPlan, Stage, load_plan
from harness.render import render_stage, render_yaml


def _image_refs(values: Sequence[str]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for value in values:
        key, sep, ref = value.partition("=")
        if not sep or not key or not ref:
            raise ConfigError("option --image", value, "takes KEY=REF, e.g. A=abtest/scorer-a:1a2b")
        refs[key] = ref
    return refs


def cmd_render(args: argparse.Namespace, out: TextIO) -> int:
    plan = load_plan(args.plan)
    out.write(render_yaml(render_stage(plan, args.stage, image_refs=_image_refs(args.image))))
    return 0


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    from harness.validate import format_findings, has_errors, load_manifests, summarize, validate_objects

    if args.file:
        failed = False
        for path in args.file:
            findings = validate_objects(load_manifests(path))
            failed = failed or has_errors(findings)
            out.write(f"{path}: {summarize(findings)}\n")
            if findings:
                out.write("".join(f"    {line}\n" for line in format_findings(findings).splitlines()))
        return 1 if failed else 0
    plan = load_plan(args.plan)
    stages = [plan.stage(args.stage)] if args.stage else list(plan.stages)
    return 0 if validate_stages(plan, stages, out) is not None else 1


def validate_stages(plan: RolloutPlan, stages: Sequence[Stage], out: TextIO) -> dict[str, list[dict[str, Any]]] | None:
    """Render and check each stage offline; one line each (weights, verdict) plus its findings.

    Three checks: the schemas and semantics of `harness.validate`, the routing oracle's refusal
    of anything it does not model, and agreement between what the manifests route and what
    the plan says. Returns the rendered objects by stage name, or None when any stage failed.
    """
    from harness.rollout import manifest_mismatches
    from harness.routing import STANDARD_CLASSES
    from harness.validate import has_errors, validate_objects

    rendered: dict[str, list[dict[str, Any]]] = {}
    valid = True
    for stage in stages:
        objects = render_stage(plan, stage)
        checked = validate_objects(objects)
        findings = [str(f) for f in checked]
        errors = has_errors(checked)
        if not errors:
            try:
                mismatches = manifest_mismatches(objects, stage, STANDARD_CLASSES)
            except ConfigError as exc:
                mismatches = [f"routing: {exc}"]
            findings += [f"error PLAN {m}" for m in mismatches]
            errors = bool(mismatches)
        valid = valid and not errors
        rendered[stage.name] = objects
        out.write(f"{stage.name:<11} {stage.summary():<40} {'INVALID' if errors else 'valid'}\n")
        for finding in findings:
            out.write(f"    {finding}\n")
    return rendered if valid else None


def cmd_load(args: argparse.Namespace, out: TextIO) -> int:
    from harness.traffic import load_command

    return load_command(
        args.url, args.n, args.version, args.concurrency, out, deadline_s=args.deadline, timeout_s=args.timeout
    )


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from harness import rollout
    from harness.stats import StatsConfig

    plan = load_plan(args.plan)
    stages = [plan.stage(name) for name in args.stage] or list(plan.stages)
    config = StatsConfig(alpha=args.alpha, beta=args.beta, delta=args.delta)
    options = rollout.MeshOptions(
        mesh=args.mesh,
        workloads=args.workloads,
        artifacts_dir=args.artifacts_dir,
        keep_cluster=args.keep_cluster,
        cluster_name=args.cluster_name,
        base_image=args.base_image,
        translator=args.translator,
    )

    def progress(line: str) -> None:
        print(f"[abtest] {line}", file=sys.stderr, flush=True)

    # Offline first: a broken manifest is named before anything is started.
    rendered = validate_stages(plan, stages, out)
    if rendered is None:
        out.write("FAIL: invalid manifests; nothing was started\n")
        return 1
    started = time.monotonic()
    session = rollout.open_mesh(plan, options, progress=progress)
    out.write(f"abtest run: {len(stages)} stages on the {args.mesh} mesh ({args.workloads} workloads), "
              f"alpha={args.alpha:g} beta={args.beta:g} delta={args.delta:g}\n")
    with session:
        up_s = time.monotonic() - started
        try:
            refs = session.image_refs
            result = rollout.run_rollout(
                # Objects rendered for validation carry the default image refs; reuse them
                # only when the mesh runs those.
                session.mesh, plan, config, stages=stages, image_refs=refs,
                rendered=rendered if refs is None else None, out=out,
            )
        except KeyboardInterrupt:
            raise  # the user wants out: tear down now, no dump first
        except Exception:
            target = args.artifacts_dir / "run-failure"
            try:
                session.mesh.dump(target)
                progress(f"dumped the mesh state to {target}")
            except Exception as exc:  # noqa: BLE001 - the original error matters more than the dump's
                progress(f"could not dump the mesh state: {exc}")
            raise
        if not result.passed:
            target = args.artifacts_dir / "run"
            session.mesh.dump(target)
            progress(f"verdicts failed: mesh state dumped to {target}")
    from harness.report import write_report

    for path in write_report(result, args.artifacts_dir):
        progress(f"wrote {path}")
    timings = ", ".join(
        f"{s.stage.name} {s.apply_s + s.converge_s:.2f}+{s.sample_s:.2f}s" for s in result.stages
    )
    requests = sum(s.requests for s in result.stages)
    out.write(
        f"{'PASS' if result.passed else 'FAIL'}: {sum(s.passed for s in result.stages)}/{len(result.stages)} stages "
        f"passed, {requests} requests, {time.monotonic() - started:.1f}s "
        f"(up {up_s:.2f}s; per stage converge+sample: {timings})\n"
    )
    return 0 if result.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abtest", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log what runs (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_plan(p: argparse.ArgumentParser) -> None:
        p.add_argument("--plan", type=Path, default=None, help="stage plan (default manifests/stages.yaml)")

    render = sub.add_parser("render", help="print the objects of one stage as YAML")
    with_plan(render)
    render.add_argument("--stage", required=True, help="stage name, e.g. Blue_50")
    render.add_argument("--image", action="append", default=[], metavar="KEY=REF",
                        help="image reference for an image key of the plan (repeatable), e.g. A=abtest/scorer-a:1a2b")
    render.set_defaults(func=cmd_render)

    validate = sub.add_parser("validate", help="validate stages offline: schemas and routing semantics")
    with_plan(validate)
    which = validate.add_mutually_exclusive_group()
    which.add_argument("--stage", help="one stage (default: all)")
    which.add_argument("--all", action="store_true", help="every stage of the plan (the default)")
    which.add_argument("--file", type=Path, action="append", metavar="PATH",
                       help="validate the objects in a YAML file instead of rendering stages (repeatable)")
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="drive every stage on a mesh and judge the routing statistically")
    with_plan(run)
    run.add_argument("--mesh", choices=("local", "kind"), default="local")
    run.add_argument("--workloads", choices=("process", "docker"), default="process")
    run.add_argument("--stage", action="append", default=[], help="only these stages (repeatable; default all)")
    run.add_argument("--alpha", type=float, default=1e-6)
    run.add_argument("--beta", type=float, default=1e-6)
    run.add_argument("--delta", type=float, default=0.10)
    run.add_argument("--artifacts-dir", type=Path, default=Path("artifacts"))
    run.add_argument("--keep-cluster", action="store_true")
    run.add_argument("--cluster-name", default="abtest")
    run.add_argument("--base-image", default=None)
    run.add_argument("--translator", choices=("python", "istio"), default="python",
                     help="local mesh: who computes the gateway config, the harness (python) or Istio's own "
                          "code (istio; needs `make istio-xds`)")
    run.set_defaults(func=cmd_run)

    load = sub.add_parser("load", help="send N requests and print each answer, then counts per version")
    load.add_argument("url", help="e.g. http://127.0.0.1:8080/score (loopback only)")
    load.add_argument("-n", type=int, default=10, help="number of requests (default 10)")
    load.add_argument("--version", choices=("blue", "green"), default=None, help="send x-api-version: VERSION")
    load.add_argument("-c", "--concurrency", type=int, default=1)
    load.add_argument("--deadline", type=float, default=60.0, help="stop after this many seconds (default 60)")
    load.add_argument("--timeout", type=float, default=2.0, help="per-request timeout in seconds (default 2)")
    load.set_defaults(func=cmd_load)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args, out or sys.stdout))
    except HarnessError as exc:
        print(f"abtest: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("abtest: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
