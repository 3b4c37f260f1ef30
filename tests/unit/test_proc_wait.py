"""The subprocess chokepoint and the deadline wait: argv, env merging, typed errors, injected clocks."""

from __future__ import annotations

import sys

import pytest

from abtest_harness import proc
from abtest_harness.errors import CommandError, ToolNotFound, WaitTimeout
from abtest_harness.wait import wait_until
from tests.unit.fakes.clock import FakeClock


def test_run_merges_env_over_the_environment_and_keeps_path() -> None:
    code = "import os; print(os.environ['ABTEST_X'], bool(os.environ.get('PATH')))"
    done = proc.run([sys.executable, "-c", code], timeout=30, env={"ABTEST_X": "42"})
    assert done.stdout.split() == ["42", "True"]


def test_run_failure_is_typed_with_argv_code_and_stderr() -> None:
    code = "import sys; sys.stderr.write('boom: no such object\\n'); sys.exit(3)"
    with pytest.raises(CommandError) as info:
        proc.run([sys.executable, "-c", code], timeout=30)
    assert info.value.returncode == 3
    assert info.value.argv[0] == sys.executable
    assert "boom: no such object" in info.value.stderr
    assert "boom: no such object" in str(info.value)


def test_run_timeout_is_a_command_error_saying_so() -> None:
    with pytest.raises(CommandError, match=r"timed out after 0.2s") as info:
        proc.run([sys.executable, "-c", "import threading; threading.Event().wait()"], timeout=0.2)
    assert info.value.returncode is None


def test_missing_tool_names_it_with_a_hint() -> None:
    with pytest.raises(ToolNotFound, match="'abtest-no-such-tool' not found"):
        proc.tool("abtest-no-such-tool")
    with pytest.raises(ToolNotFound, match="kind.sigs.k8s.io"):
        proc.run(["/nonexistent/kind", "version"], timeout=5)


def test_tool_prefers_the_venv_kubectl() -> None:
    assert proc.tool("kubectl").startswith(str(__import__("pathlib").Path(sys.executable).parent))


def test_wait_returns_the_first_truthy_value() -> None:
    clock = FakeClock()
    values = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(values), what="x", timeout=10, clock=clock, sleep=clock.sleep) == "ready"
    assert len(clock.sleeps) == 3


def test_wait_timeout_says_what_how_long_and_last_seen() -> None:
    clock = FakeClock()
    with pytest.raises(WaitTimeout) as info:
        wait_until(lambda: None, what="gateway route table", timeout=5, clock=clock, sleep=clock.sleep,
                   describe=lambda v: "2 of 3 routes")
    message = str(info.value)
    assert "waiting for gateway route table" in message
    assert "timed out after 5.0s (limit 5s" in message
    assert "last seen: 2 of 3 routes" in message
    assert clock.now == pytest.approx(5.0), "the last sleep ends at the deadline, not past it"
    assert max(clock.sleeps) <= 1.0, "backoff is capped"


def test_wait_retries_only_named_transient_errors() -> None:
    clock = FakeClock()
    calls = iter([ConnectionRefusedError("refused"), "up"])

    def probe() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert wait_until(probe, what="x", timeout=5, transient=(ConnectionError,), clock=clock, sleep=clock.sleep) == "up"
    with pytest.raises(KeyError):
        wait_until(lambda: {}["missing"], what="x", timeout=5, transient=(ConnectionError,),
                   clock=clock, sleep=clock.sleep)


def test_wait_reports_progress_on_long_waits() -> None:
    clock = FakeClock()
    lines: list[str] = []
    with pytest.raises(WaitTimeout, match="last seen: ConnectionRefusedError: nope"):
        wait_until(lambda: (_ for _ in ()).throw(ConnectionRefusedError("nope")), what="istiod", timeout=30,
                   transient=(ConnectionError,), clock=clock, sleep=clock.sleep,
                   progress=lines.append, progress_every=10)
    assert lines, "a 30 s wait must print progress"
    assert all(line.startswith("still waiting for istiod") for line in lines)
