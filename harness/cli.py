"""The ``abtest`` command: render, validate, run, up, mutate, load.

Exit codes: 0 success; 1 a check failed (finding, verdict); 2 bad input or a harness error
(one line naming file, object and field); 130/143 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from abtest_harness import options as opts
from abtest_harness.errors import ConfigError, HarnessError

if TYPE_CHECKING:
    from abtest_harness.spec import RolloutSpec, StageSpec

# Heavy modules (the mesh, scipy, the Istio models) are imported inside the commands, so
# `abtest --help` and a bad argument answer at once.


def _image_refs(values: Sequence[str]) -> dict[str, str]:
    refs: dict[str, str] = {}
    for value in values:
        key, sep, ref = value.partition("=")
        if not sep or not key or not ref:
            raise ConfigError("option --image", value, "takes KEY=REF, e.g. A=abtest/scorer-a:1a2b")
        refs[key] = ref
    return refs


def _load(args: argparse.Namespace) -> RolloutSpec:
    from abtest_harness.spec import load_spec

    return load_spec(args.plan if getattr(args, "plan", None) else args.spec)


def cmd_render(args: argparse.Namespace, out: TextIO) -> int:
    from abtest_harness.render import render, render_yaml

    spec = _load(args)
    refs = _image_refs(args.image)
    unknown = sorted(set(refs) - set(spec.images))
    if unknown:
        keys = ", ".join(spec.images) or "none"
        raise ConfigError("option --image", unknown[0], f"no such image key in the spec (keys: {keys})")
    out.write(render_yaml(render(spec, args.stage, image_refs=refs)))
    return 0


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    if args.file:
        return validate_files(args.file, out)
    spec = _load(args)
    stages = [spec.stage(args.stage)] if args.stage else list(spec.stages)
    return 0 if validate_stages(spec, stages, out) is not None else 1


def validate_files(paths: Sequence[Path], out: TextIO) -> int:
    """Validate the objects of files and directories as one set (references across files resolve)."""
    from abtest_harness.validate import format_findings, has_errors, load_manifest_paths, summarize, validate_objects

    objects = load_manifest_paths(paths)  # bounded reads; a bad path is a one-line ConfigError
    checked = validate_objects(objects)
    lines = format_findings(checked).splitlines() if checked else []
    out.write(f"{', '.join(str(p) for p in paths)}: {len(objects)} objects: {summarize(checked)}\n")
    out.write("".join(f"    {line}\n" for line in lines))
    return 1 if has_errors(checked) else 0


def _summary(spec: RolloutSpec, stage: StageSpec, objects: list[dict[str, Any]]) -> str:
    """One line: the first class's expected shares and each version's image."""
    from abtest_harness.rollout import expected_shares, version_images

    images = version_images(spec, objects)
    try:
        shares = expected_shares(spec, stage, objects, spec.classes[:1])[spec.classes[0].label]
    except ConfigError:
        shares = {}
    parts = []
    for version in spec.versions:
        share = shares.get(version, 0.0)
        image = images.get(version, "absent").rsplit("/", 1)[-1]
        parts.append(f"{version} {100 * share:g} ({image})")
    parts += [f"{k} {100 * v:g}" for k, v in shares.items() if k not in spec.versions and v > 0]
    return " / ".join(parts)


def validate_stages(
    spec: RolloutSpec, stages: Sequence[StageSpec], out: TextIO
) -> dict[str, list[dict[str, Any]]] | None:
    """Render and check each stage offline; one line each (shares, images, verdict) plus its findings.

    Two checks: the schemas and semantics of `abtest_harness.validate` (which include every field the
    routing oracle does not model, ABT020, and every value Istio refuses, ABT021), and the
    agreement between what the manifests route and the stage's ``expect`` table. Returns the
    rendered objects by stage name, or None when any stage failed.
    """
    from abtest_harness.render import render_many
    from abtest_harness.rollout import manifest_mismatches
    from abtest_harness.validate import has_errors, validate_objects

    rendered: dict[str, list[dict[str, Any]]] = {}
    valid = True
    # The stages' tools run concurrently; the checks and the lines stay in stage order.
    for stage, objects in zip(stages, render_many(spec, stages), strict=True):
        checked = validate_objects(objects)
        findings = [str(f) for f in checked]
        errors = has_errors(checked)
        if not errors:
            try:
                mismatches = manifest_mismatches(objects, stage, spec.classes, versions=spec.versions)
                findings += [f"error EXPECT {m}" for m in mismatches]
            except ConfigError as exc:
                mismatches = [str(exc)]
                findings += [f"error ROUTING {exc}"]
            errors = bool(mismatches)
        valid = valid and not errors
        rendered[stage.name] = objects
        summary = _summary(spec, stage, objects) if not errors else stage.source.describe()
        out.write(f"{stage.name:<11} {summary:<40} {'INVALID' if errors else 'valid'}\n")
        for finding in findings:
            out.write(f"    {finding}\n")
    return rendered if valid else None


def cmd_load(args: argparse.Namespace, out: TextIO) -> int:
    from abtest_harness.loadcmd import load_command

    return load_command(
        args.url, args.n, args.version, args.concurrency, out, deadline_s=args.deadline, timeout_s=args.timeout
    )


def _progress(line: str) -> None:
    print(f"[abtest] {line}", file=sys.stderr, flush=True)


def _mesh_options(args: argparse.Namespace, workloads: str) -> Any:
    """The mesh the command's options ask for; an option a command does not offer keeps its default."""
    from abtest_harness import rollout

    def value(name: str) -> Any:
        option = opts.by_name(name)
        return getattr(args, option.dest, option.default)

    return rollout.MeshOptions(
        mesh=value("mesh"),
        workloads=workloads,
        artifacts_dir=value("artifacts-dir"),
        keep_cluster=value("keep-cluster"),
        cluster_name=value("cluster-name"),
        base_image=value("base-image"),
        kubeconfig=value("kubeconfig"),
        context=value("context"),
        namespace=value("namespace"),
        gateway_url=value("gateway-url"),
        judge_live=value("judge-live"),
        translator=value("translator"),
    )


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from abtest_harness.stats import StatsConfig, check_settings

    check_settings(args.alpha, args.beta, args.delta, obj="abtest run")  # before anything is read or started
    spec = _load(args)
    stages = [spec.stage(name) for name in args.stage] or list(spec.stages)
    config = StatsConfig(alpha=args.alpha, beta=args.beta, delta=args.delta)
    # Offline first: a broken manifest is named before anything is started.
    rendered = validate_stages(spec, stages, out)
    if rendered is None:
        out.write("FAIL: invalid manifests; nothing was started\n")
        return 1
    runners = ["kind"] if args.mesh == "kind" else args.workloads.split(",")
    code = 0
    for runner in runners:
        code = max(code, _run_on(args, spec, stages, config, rendered, runner, out))
    return code


def _run_on(
    args: argparse.Namespace,
    spec: RolloutSpec,
    stages: Sequence[StageSpec],
    config: Any,
    rendered: dict[str, list[dict[str, Any]]],
    runner: str,
    out: TextIO,
) -> int:
    from abtest_harness import rollout
    from abtest_harness.dumps import dump_failure
    from abtest_harness.report import run_metadata, write_report

    started = time.monotonic()
    session = rollout.open_mesh(spec, _mesh_options(args, "process" if runner == "kind" else runner),
                                progress=_progress)
    label = f"the {args.mesh} mesh" + ("" if runner == "kind" else f" ({runner} workloads)")
    out.write(f"abtest run: {spec.name}: {len(stages)} stages on {label}, "
              f"alpha={args.alpha:g} beta={args.beta:g} delta={args.delta:g}\n")
    artifacts: Path = args.artifacts_dir if len(args.workloads.split(",")) == 1 else args.artifacts_dir / runner
    with session:
        up_s = time.monotonic() - started
        try:
            refs = session.image_refs
            result = rollout.run_rollout(
                # Objects rendered for validation carry the manifests' image refs; reuse them
                # only when the mesh runs those.
                session.mesh, spec, config, stages=stages, image_refs=refs,
                rendered=rendered if not refs else None, out=out,
            )
        except KeyboardInterrupt:
            raise  # the user wants out: tear down now, no dump first
        except Exception:
            _progress(dump_failure(session.mesh, artifacts, "run-failure").line)
            raise
        if not result.passed:
            _progress("verdicts failed: " + dump_failure(session.mesh, artifacts, "run").line)
    settings = {"spec": str(spec.source), "stages": [s.name for s in stages], "alpha": args.alpha,
                "beta": args.beta, "delta": args.delta}
    meta = run_metadata(settings, mesh=args.mesh, workloads=None if runner == "kind" else runner)
    for path in write_report(result, artifacts, meta=meta):
        _progress(f"wrote {path}")
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


def curl_lines(spec: RolloutSpec, url: str) -> list[str]:
    """One ready-to-paste curl command per request class of the spec."""
    import shlex

    lines = []
    for request in spec.classes:
        argv = ["curl", "-sS", "-i"]
        if request.method != "GET":
            argv += ["-X", request.method]
        argv += ["-H", f"Host: {request.authority}"]
        for name, value in request.headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv.append(url + request.path)
        lines.append(f"# {request.label}\n{' '.join(shlex.quote(a) for a in argv)}")
    return lines


def cmd_up(args: argparse.Namespace, out: TextIO) -> int:
    """Serve one stage on the local mesh until Ctrl-C (or SIGTERM): a gateway to curl by hand."""
    import contextlib
    import threading

    from abtest_harness import rollout
    from abtest_harness.render import render

    spec = _load(args)
    stage = spec.stage(args.stage)
    if "," in args.workloads:
        raise ConfigError("option --workloads", args.workloads, "abtest up serves with one runner: process or docker")
    try:
        from abtest_harness.signals import teardown_on_sigterm  # type: ignore[import-not-found, unused-ignore]

        guard: Any = teardown_on_sigterm()
    except ImportError:
        guard = contextlib.nullcontext()
    with guard:
        session = rollout.open_mesh(spec, _mesh_options(args, args.workloads), progress=_progress)
        with session:
            objects = render(spec, stage, image_refs=session.image_refs)
            session.mesh.apply(objects)
            session.mesh.converge(objects, timeout=60.0)
            url = session.mesh.gateway_url
            out.write(f"{spec.name} stage {stage.name} is served at {url} (Host {spec.gateway.host}); "
                      "Ctrl-C stops it.\n")
            out.write("\n".join(curl_lines(spec, url)) + "\n")
            out.flush()
            threading.Event().wait()  # until Ctrl-C / SIGTERM; nothing else ends it
    return 0


def cmd_mutate(args: argparse.Namespace, out: TextIO) -> int:
    from abtest_harness import mutate, rollout
    from abtest_harness.stats import StatsConfig

    if args.suite and args.offline:
        raise ConfigError("option --suite", " ".join(args.suite), "runs on a mesh; it cannot be used with --offline")
    missing = [path for path in args.suite if not Path(path.split("::", 1)[0]).exists()]
    if missing:
        raise ConfigError("option --suite", missing[0], "no such test file or directory")
    from abtest_harness.signals import teardown_on_sigterm

    spec = _load(args)
    config = StatsConfig(alpha=args.alpha, beta=args.beta, delta=args.delta)
    options = rollout.MeshOptions(mesh="local", workloads=args.workloads.split(",")[0],
                                  artifacts_dir=args.artifacts_dir, base_image=args.base_image)
    # The meshes run in worker threads, where a mesh's own SIGTERM guard is inert: here, in the
    # main thread, SIGTERM unwinds (SystemExit 143) and the workers close their meshes and stop
    # the suites in flight before the command exits.
    with teardown_on_sigterm():
        return mutate.mutate_command(
            spec, args.stage, out, run=not args.offline, confirm_equivalent=args.confirm_equivalent,
            open_session=lambda: rollout.open_mesh(spec, options, progress=_progress), config=config,
            jobs=args.jobs, deadline_s=args.deadline, progress=_progress, suite=args.suite,
            workloads=options.workloads,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abtest", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log what runs (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_spec(p: argparse.ArgumentParser) -> None:
        opts.add_to_argparse(p, ["spec"])
        p.add_argument("--plan", type=Path, default=None, help=argparse.SUPPRESS)

    render = sub.add_parser("render", help="print the objects of one stage as YAML")
    with_spec(render)
    render.add_argument("--stage", required=True, help="stage name, e.g. Blue_50")
    render.add_argument("--image", action="append", default=[], metavar="KEY=REF",
                        help="image reference for an image key of the spec (repeatable), e.g. A=abtest/scorer-a:1a2b")
    render.set_defaults(func=cmd_render)

    validate = sub.add_parser("validate", help="validate stages offline: schemas, routing semantics, expectations")
    with_spec(validate)
    which = validate.add_mutually_exclusive_group()
    which.add_argument("--stage", help="one stage (default: all)")
    which.add_argument("--all", action="store_true", help="every stage of the spec (the default)")
    which.add_argument("--file", type=Path, action="append", metavar="PATH",
                       help="validate the objects in YAML files or directories instead of rendering stages "
                            "(repeatable; all of them are checked as one set)")
    validate.set_defaults(func=cmd_validate)

    run = sub.add_parser("run", help="drive every stage on a mesh and judge the routing statistically")
    opts.add_to_argparse(run)
    run.add_argument("--plan", type=Path, default=None, help=argparse.SUPPRESS)
    run.add_argument("--stage", "--abtest-stage", action="append", default=[],
                     help="only these stages (repeatable; default all)")
    run.set_defaults(func=cmd_run)

    up = sub.add_parser("up", help="serve one stage on the local mesh and print the gateway URL, until Ctrl-C")
    opts.add_to_argparse(up, ["spec", "workloads", "translator", "base-image", "artifacts-dir"])
    up.add_argument("--stage", required=True, help="stage name, e.g. Blue_50")
    up.set_defaults(func=cmd_up, mesh="local", plan=None)

    mutate = sub.add_parser("mutate", help="one-edit mutants of every stage, and which check catches each")
    opts.add_to_argparse(mutate, ["spec", "workloads", "alpha", "beta", "delta", "artifacts-dir", "base-image"])
    mutate.add_argument("--plan", type=Path, default=None, help=argparse.SUPPRESS)
    mutate.add_argument("--stage", "--abtest-stage", action="append", default=[],
                        help="only these stages (repeatable; default all)")
    mutate.add_argument("--offline", action="store_true",
                        help="the offline checks only (validate, oracle, images); nothing runs on a mesh")
    mutate.add_argument("--suite", action="append", default=[], metavar="PATH",
                        help="also run this pytest rollout suite (a test file, directory or node id; repeatable) "
                             "on every mutant that goes to the mesh, with --abtest-spec and --abtest-stage set")
    mutate.add_argument("--confirm-equivalent", action="store_true",
                        help="also run the mutants the oracle calls equivalent on the mesh")
    mutate.add_argument("--jobs", type=int, default=1, help="meshes run in parallel (default 1)")
    mutate.add_argument("--deadline", type=float, default=900.0, help="stop after this many seconds (default 900)")
    mutate.set_defaults(func=cmd_mutate)

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
        print(f"abtest: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("abtest: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`abtest validate | head`): stop quietly, as a shell tool does.
        # stdout is pointed at /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE
    except SystemExit as exc:
        if exc.code == 143:
            print("abtest: terminated", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
