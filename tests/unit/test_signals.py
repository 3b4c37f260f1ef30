"""teardown_on_sigterm: the first SIGTERM unwinds as SystemExit(143), later ones wait for the teardown.

The signal tests run a child interpreter and send it a real SIGTERM (a signal to the pytest
process itself would end the test run if anything went wrong). The child reports each step on
stdout; the parent waits for a line, never for a fixed time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from abtest_harness import signals
from abtest_harness.signals import EXIT_SIGTERM, Terminated, teardown_on_sigterm

ROOT = Path(__file__).resolve().parents[2]


def _child(body: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(
        """
        import json, os, signal, sys, threading
        from abtest_harness.signals import teardown_on_sigterm, Terminated, sigterm_received
        def say(*words):
            print(json.dumps(words), flush=True)
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(  # noqa: S603 - our own interpreter and script; Popen to signal it mid-run
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _expect(child: subprocess.Popen[str], line: list[str]) -> None:
    assert child.stdout is not None
    got = child.stdout.readline()
    if not got:
        child.wait(timeout=10)
        err = child.stderr.read() if child.stderr else ""
        pytest.fail(f"child ended before saying {line}: exit {child.returncode}\n{err}")
    assert json.loads(got) == line


def _finish(child: subprocess.Popen[str]) -> tuple[int, list[list[str]], str]:
    out, err = child.communicate(timeout=20)
    return child.returncode, [json.loads(x) for x in out.splitlines()], err


def test_first_sigterm_unwinds_with_143_and_a_second_one_does_not_cut_the_teardown_short() -> None:
    child = _child(
        """
        try:
            with teardown_on_sigterm():
                say("ready")
                threading.Event().wait(30)   # bounded: the parent signals within seconds
                say("not interrupted")
        except SystemExit as exc:
            say("unwound", type(exc).__name__, str(exc.code), str(isinstance(exc, Terminated)))
            raise
        """
    )
    _expect(child, ["ready"])
    child.send_signal(signal.SIGTERM)
    code, lines, err = _finish(child)
    assert code == EXIT_SIGTERM == 143, err
    assert lines == [["unwound", "Terminated", "143", "True"]], err


def test_later_sigterms_are_ignored_until_the_block_exits_then_the_default_applies_again() -> None:
    child = _child(
        """
        with teardown_on_sigterm():
            try:
                say("ready")
                threading.Event().wait(30)
            finally:
                # the teardown: two more SIGTERMs arrive while it runs
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
                say("teardown finished", str(sigterm_received()))
        """
    )
    _expect(child, ["ready"])
    child.send_signal(signal.SIGTERM)
    code, lines, err = _finish(child)
    assert lines == [["teardown finished", "True"]], err
    assert code == 143, err


def test_after_the_block_sigterm_has_its_previous_meaning() -> None:
    child = _child(
        """
        with teardown_on_sigterm():
            pass
        say("outside", str(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL))
        threading.Event().wait(30)
        say("survived")
        """
    )
    _expect(child, ["outside", "True"])
    child.send_signal(signal.SIGTERM)
    code, lines, err = _finish(child)
    assert code == -signal.SIGTERM, f"the default action (death by the signal) must apply again: {code} {err}"
    assert lines == []


def test_nested_blocks_ending_out_of_order_keep_the_handler_until_the_last_one() -> None:
    child = _child(
        """
        outer, inner = teardown_on_sigterm(), teardown_on_sigterm()
        outer.activate(); inner.activate()
        outer.deactivate()   # the first one taken ends first: the handler stays for inner
        try:
            say("ready")
            threading.Event().wait(30)
        except Terminated:
            say("inner still protected")
        inner.deactivate()
        say("restored", str(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL))
        """
    )
    _expect(child, ["ready"])
    child.send_signal(signal.SIGTERM)
    code, lines, err = _finish(child)
    assert code == 0, err
    assert lines == [["inner still protected"], ["restored", "True"]]


def test_a_program_handler_is_restored_on_exit() -> None:
    def theirs(signum: int, frame: object) -> None:  # never called: no signal is sent here
        raise AssertionError("not expected")

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        with teardown_on_sigterm() as outer:
            assert outer.active
            during = signal.getsignal(signal.SIGTERM)
            with teardown_on_sigterm():
                assert signal.getsignal(signal.SIGTERM) is during
            assert signal.getsignal(signal.SIGTERM) is during, "an inner block must not restore early"
        assert during is not theirs
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_deactivate_is_idempotent_and_a_block_is_inert_outside_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    guard = teardown_on_sigterm()
    guard.activate()
    guard.activate()
    guard.deactivate()
    guard.deactivate()
    assert signal.getsignal(signal.SIGTERM) is before
    assert signals._State.depth == 0

    seen: dict[str, object] = {}

    def in_thread() -> None:
        with teardown_on_sigterm() as block:
            seen["active"] = block.active

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(timeout=10)
    assert seen == {"active": False}
    assert signal.getsignal(signal.SIGTERM) is before


def test_terminated_is_a_system_exit_with_the_shell_code() -> None:
    exc = Terminated()
    assert isinstance(exc, SystemExit)
    assert exc.code == 143
    assert "SIGTERM" in str(exc)


def test_a_sigterm_during_a_shielded_teardown_waits_for_its_end_then_ends_the_run() -> None:
    child = _child(
        """
        from abtest_harness.signals import shielded
        with teardown_on_sigterm():
            with shielded():
                say("tearing down")
                sys.stdin.readline()  # a teardown step: the parent signals, then lets it finish
                say("teardown step after the signal")
                os.kill(os.getpid(), signal.SIGTERM)  # a second one is ignored
                say("teardown finished")
            say("not reached: the held SIGTERM is raised when the shield ends")
        """
    )
    _expect(child, ["tearing down"])
    child.send_signal(signal.SIGTERM)
    assert child.stdin is not None
    child.stdin.write("go on\n")
    child.stdin.flush()
    code, lines, err = _finish(child)
    assert code == 143, err
    assert lines == [["teardown step after the signal"], ["teardown finished"]], err
    assert "SIGTERM during a teardown" in err


def test_a_shield_without_a_signal_changes_nothing_and_is_inert_outside_a_block() -> None:
    from abtest_harness.signals import shielded

    with shielded():
        pass
    with teardown_on_sigterm():
        with shielded():
            pass
    assert signals._State.shielding == 0 and not signals._State.held
