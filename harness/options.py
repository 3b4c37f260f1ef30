"""The options of a rollout run, defined once for both front ends: ``abtest`` and pytest.

Each :class:`Option` has one name, help text, default and check. ``abtest run`` spells it
``--<name>``; the pytest plugin spells it ``--abtest-<name>`` (pytest has one option
namespace for every plugin, and pytest-kind already has ``--keep-cluster`` and
``--cluster-name``), and ``abtest`` accepts that spelling too, so one command line works in
both. :func:`add_to_argparse` and :func:`add_to_pytest` install the table;
:func:`check` validates a value the same way for both.

This module imports nothing heavy: ``abtest --help`` builds its parser from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["OPTIONS", "Option", "add_to_argparse", "add_to_pytest", "by_name", "check", "pytest_flag"]

MESHES = ("local", "kind", "cluster")
WORKLOADS = ("process", "docker")
PYTEST_PREFIX = "abtest-"


@dataclass(frozen=True)
class Option:
    """One option: ``--name`` on the command line, ``--abtest-name`` under pytest."""

    name: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    flag: bool = False  # a switch without a value
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def _share(value: str) -> float:
    """A number; its range is `abtest_harness.stats.check_settings`'s one rule, which each front end
    applies to alpha, beta and delta together before anything starts."""
    return float(value)


def _workloads(value: str) -> str:
    names = [w.strip() for w in value.split(",") if w.strip()]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown or not names:
        raise ValueError(f"unknown runner {', '.join(unknown) or repr(value)}; choose from {', '.join(WORKLOADS)}")
    return ",".join(names)


OPTIONS: tuple[Option, ...] = (
    Option("spec", "rollout spec file (default: the sample, manifests/rollout.yaml); a stages.yaml plan works too",
           None, Path, metavar="FILE"),
    Option("mesh", "data plane to test through: local Envoy on loopback (default), kind + Istio, or an existing "
           "cluster with Istio (cluster)",
           "local", str, MESHES),
    Option("workloads", "comma-separated workload runners for the local mesh: process, docker (default: process)",
           "process", _workloads, metavar="RUNNERS"),
    Option("alpha", "false-failure rate of each verdict (default 1e-6)", 1e-6, _share),
    Option("beta", "rate of missing a misroute of --delta (default 1e-6)", 1e-6, _share),
    Option("delta", "smallest share error that must be caught (default 0.10)", 0.10, _share),
    Option("artifacts-dir", "where failure dumps and reports go (default artifacts/)", Path("artifacts"), Path,
           metavar="DIR"),
    Option("keep-cluster", "kind: keep the cluster after the run for reuse", False, flag=True),
    Option("cluster-name", "kind: cluster name; an existing one is reused (default abtest)", "abtest", str,
           metavar="NAME"),
    Option("base-image", "base image for the scorer images (docker workloads, kind)", None, str, metavar="IMAGE"),
    Option("translator", "local mesh: who computes the gateway's configuration, the harness (python, default) "
           "or Istio's own code (istio; needs `make istio-xds`)", "python", str, ("python", "istio")),
    Option("kubeconfig", "cluster: kubeconfig file of the existing cluster (required with --mesh cluster)", None, Path,
           metavar="FILE"),
    Option("context", "cluster: the kubeconfig context to use (required; never guessed)", None, str, metavar="NAME"),
    Option("namespace", "cluster: existing namespace each stage is applied into (required)", None, str,
           metavar="NS"),
    Option("gateway-url", "cluster: where requests go, e.g. http://gateway.example:80 (required)", None, str,
           metavar="URL"),
    Option("judge-live", "cluster: apply nothing; only judge the stage the cluster serves now", False, flag=True),
)


def by_name(name: str) -> Option:
    """The option called `name` (``mesh``, ``artifacts-dir``, ...)."""
    for option in OPTIONS:
        if option.name == name:
            return option
    raise KeyError(name)


def pytest_flag(option: Option) -> str:
    """How the pytest plugin spells an option: ``--abtest-<name>``."""
    return f"--{PYTEST_PREFIX}{option.name}"


def check(option: Option, value: Any) -> Any:
    """`value` converted and checked as the option's type says; ValueError naming the option."""
    if option.flag or value is None or option.type is None:
        return value
    try:
        converted = option.type(str(value)) if not isinstance(value, Path) else value
    except ValueError as exc:
        raise ValueError(f"--{option.name}: {exc}") from None
    if option.choices is not None and converted not in option.choices:
        raise ValueError(f"--{option.name}: {value!r} is not one of {', '.join(option.choices)}")
    return converted


def add_to_argparse(parser: Any, names: Sequence[str] | None = None) -> None:
    """Add the options (all, or those named) to an argparse parser, both spellings."""
    import argparse

    for option in OPTIONS:
        if names is not None and option.name not in names:
            continue
        flags = [f"--{option.name}", pytest_flag(option)]
        if option.flag:
            parser.add_argument(*flags, dest=option.dest, action="store_true", default=option.default,
                                help=option.help)
            continue

        def convert(value: str, option: Option = option) -> Any:
            try:
                return check(option, value)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

        parser.add_argument(*flags, dest=option.dest, default=option.default, type=convert,
                            metavar=option.metavar or (option.choices and "{" + ",".join(option.choices) + "}"),
                            help=option.help)


def add_to_pytest(group: Any, names: Sequence[str] | None = None) -> None:
    """Add the options to a pytest option group (``parser.getgroup("abtest")``), as ``--abtest-<name>``."""
    for option in OPTIONS:
        if names is not None and option.name not in names:
            continue
        if option.flag:
            group.addoption(pytest_flag(option), dest=f"abtest_{option.dest}", action="store_true",
                            default=option.default, help=option.help)
        else:
            group.addoption(pytest_flag(option), dest=f"abtest_{option.dest}", default=option.default,
                            metavar=option.metavar, help=option.help)
