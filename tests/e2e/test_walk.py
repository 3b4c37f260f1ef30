"""The whole rollout walked in order under continuous traffic: failed requests per transition.

Make-before-break means a stage change never leaves a request without a version to answer
it: new workloads are ready before routes move to them, and old ones stop only after routes
moved away. On the local mesh the goal is zero failed requests in every transition.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from abtest_harness.mesh.base import Mesh
from abtest_harness.rollout import MeshSession
from abtest_harness.spec import RolloutSpec
from abtest_harness.traffic import Observation, allowed_url_of, run_load

pytestmark = pytest.mark.e2e

#: Upper bounds for the background load: it stops on its own even if the walk hangs.
MAX_REQUESTS = 200_000
DEADLINE_S = 120.0


def test_walk_all_stages_under_continuous_traffic(
    mesh_session: MeshSession,
    abtest_spec: RolloutSpec,
    deploy_stage: Callable[..., object],
    report_line: Callable[[str], None],
    mesh_kind: str,
) -> None:
    mesh: Mesh = mesh_session.mesh
    weighted = [abtest_spec.classes[0]]  # the sample spec's first class: no header, the weighted route
    phase = ["start"]
    failures: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    details: list[str] = []
    stop = threading.Event()

    def record(observation: Observation) -> None:
        if stop.is_set():
            raise _Stop()
        answered[phase[0]] += 1
        if observation.outcome.startswith(("status:", "error:")):
            failures[phase[0]] += 1
            if len(details) < 10:
                details.append(f"{phase[0]}: {observation.outcome} {observation.detail}".strip())

    # Put the mesh in the first stage before the traffic starts.
    deploy_stage(abtest_spec.stages[0].name)

    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            outcome["result"] = run_load(mesh.gateway_url, weighted, None, max_requests=MAX_REQUESTS,
                                         deadline_s=DEADLINE_S, concurrency=2, on_response=record,
                                         allowed_url=allowed_url_of(mesh))
        except _Stop:
            outcome["stopped"] = True
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread below
            outcome["error"] = exc

    worker = threading.Thread(target=load, name="walk-load", daemon=True)
    worker.start()
    try:
        for before, after in zip(abtest_spec.stages, abtest_spec.stages[1:], strict=False):
            phase[0] = f"{before.name} -> {after.name}"
            deploy_stage(after.name)
            # Keep the traffic on the new stage for a moment so late failures are attributed here.
            settle = time.monotonic() + 0.3
            while time.monotonic() < settle and worker.is_alive():
                time.sleep(0.05)
    finally:
        stop.set()
        worker.join(DEADLINE_S)
    assert "error" not in outcome, f"load generator failed: {outcome.get('error')!r}"
    table = "\n".join(
        f"  {name:<24} {failures[name]:>5} failed of {answered[name]:>6}" for name in answered if name != "start"
    )
    report_line(f"failed requests per transition ({mesh.name} mesh, {mesh_kind}):\n{table}")
    transitions = [f"{b.name} -> {a.name}" for b, a in zip(abtest_spec.stages, abtest_spec.stages[1:], strict=False)]
    assert all(answered[t] > 0 for t in transitions), f"no traffic during some transitions:\n{table}"
    assert sum(failures.values()) == 0, f"failed requests during the walk:\n{table}\nfirst: {details}"


class _Stop(Exception):
    """Raised from the response callback to end the background load."""
