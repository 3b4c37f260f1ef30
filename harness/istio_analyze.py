"""Istio's own configuration analyzers beside ``abtest validate``.

The ``istio-xds`` program (``make istio-xds``) has an ``-analyze`` mode that runs what
``istioctl analyze --use-kube=false --all-namespaces`` runs on files: every analyzer of
Istio's ``analyzers.AllCombined()``, Istio's default mesh config, the default ingress
gateway objects Istio assumes when no cluster is read, and the objects read as istioctl
reads files. It is Istio's code at the pinned release, with no cluster contacted.

:func:`analyze` and :func:`analyze_batch` return Istio's messages as :class:`IstioFinding`;
:func:`compare` sets them beside the findings of :func:`abtest_harness.validate.validate_objects`,
matched by code and object, and returns what only one side reports. Which of those are
expected, and why, is the table in ``docs/istio-translation.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from abtest_harness.errors import HarnessError
from abtest_harness.mesh import istio_xds as ix
from abtest_harness.validate import Finding

__all__ = ["Analysis", "Difference", "IstioFinding", "analyze", "analyze_batch", "compare"]

_TIMEOUT_S = 300.0

Side = Literal["istio", "abtest"]


@dataclass(frozen=True, order=True)
class IstioFinding:
    """One message of Istio's analyzers: code (``IST0101``), level, object, message."""

    code: str
    severity: str
    obj: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity.lower()} {self.code} {self.obj}: {self.message}"


@dataclass(frozen=True, order=True)
class Difference:
    """A (code, object) that one side reports and the other does not."""

    side: Side
    code: str
    obj: str
    message: str

    def __str__(self) -> str:
        return f"only {self.side}: {self.code} {self.obj}: {self.message}"


@dataclass(frozen=True)
class Analysis:
    """Istio's messages for one set of objects, and the analyzers it skipped for want of an input kind."""

    findings: tuple[IstioFinding, ...]
    skipped: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Analysis:
        findings = sorted(
            IstioFinding(str(m["code"]), str(m["level"]), str(m.get("object") or ""), str(m["message"]))
            for m in data.get("analysis") or ()
        )
        return cls(tuple(findings), tuple(str(s) for s in data.get("skipped") or ()))


def _run(stdin: str, batch: bool, runtime_kinds: bool, timeout: float) -> str:
    args = ["-analyze", *(["-batch"] if batch else []), *(["-runtime-kinds"] if runtime_kinds else [])]
    return ix.run_program(args, stdin, timeout, what="Istio's analyzers")


def analyze(
    objects: Sequence[Mapping[str, Any]], *, runtime_kinds: bool = False, timeout: float = _TIMEOUT_S
) -> Analysis:
    """Istio's analyzer messages for one set of objects, sorted.

    runtime_kinds: read Services, Namespaces, Pods, Nodes and Secrets too (istioctl's file mode
    ignores them, and skips every analyzer that needs one).
    """
    return Analysis.from_json(json.loads(_run(ix._yaml(objects), False, runtime_kinds, timeout)))


def analyze_batch(
    cases: Mapping[str, Sequence[Mapping[str, Any]]], *, runtime_kinds: bool = False, timeout: float = _TIMEOUT_S
) -> dict[str, Analysis]:
    """Istio's analyzer messages for many cases in one run of the program: id -> analysis."""
    lines = [json.dumps({"id": case_id, "yaml": ix._yaml(objects)}) for case_id, objects in cases.items()]
    out = _run("\n".join(lines) + "\n", True, runtime_kinds, timeout)
    results: dict[str, Analysis] = {}
    for line in out.splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        if data.get("error"):
            raise HarnessError(f"Istio's analyzers failed on {data.get('id')}: {data['error']}")
        results[str(data.get("id"))] = Analysis.from_json(data)
    missing = set(cases) - set(results)
    if missing:
        example = sorted(missing)[0]
        raise HarnessError(f"istio-xds -analyze returned no result for {len(missing)} case(s), e.g. {example}")
    return results


def compare(ours: Iterable[Finding], istio: Iterable[IstioFinding]) -> list[Difference]:
    """What one side reports and the other does not, matched by (code, object).

    Levels are not compared (``abtest validate`` raises some of Istio's warnings to errors,
    a choice its docstring lists); the first message of each side names the difference.
    """
    mine: dict[tuple[str, str], str] = {}
    for f in ours:
        mine.setdefault((f.code, f.obj), f.message)
    theirs: dict[tuple[str, str], str] = {}
    for g in istio:
        theirs.setdefault((g.code, g.obj), g.message)
    diffs = [Difference("abtest", code, obj, msg) for (code, obj), msg in mine.items() if (code, obj) not in theirs]
    diffs += [Difference("istio", code, obj, msg) for (code, obj), msg in theirs.items() if (code, obj) not in mine]
    return sorted(diffs)
