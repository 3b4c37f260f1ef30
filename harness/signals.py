"""One way for every backend to tear down when the process receives SIGTERM.

Ctrl-C raises KeyboardInterrupt, which unwinds through ``with`` blocks, ``finally`` clauses
and fixture teardowns. SIGTERM (what a cancelled CI job or ``docker stop`` sends) kills the
process at once by default, and nothing is cleaned up: the Envoy, the workload processes, the
containers and the temporary directories stay behind. While a :func:`teardown_on_sigterm`
block is active in the main thread:

* the first SIGTERM raises :class:`Terminated` (a ``SystemExit`` with code 143, 128 + 15), so
  the code running unwinds as it would for Ctrl-C and the process ends with the code a
  shell reports for SIGTERM;
* later SIGTERMs are ignored until the outermost block exits, so a teardown already under
  way is not cut short by an impatient second signal;
* when the outermost block exits, the handler that was there before is put back.

Blocks nest and may end in any order (one counter for the process): several meshes, a
docker runner and a CLI command can each hold one. Outside the main thread (where Python
cannot install a handler) a block does nothing. A block can also be held across calls, for
objects with ``up()``/``down()`` rather than a ``with`` statement::

    guard = teardown_on_sigterm()
    guard.activate()      # in up()
    ...
    guard.deactivate()    # at the end of down(); idempotent

A teardown that must not be cut short by the first SIGTERM runs under :func:`shielded`: the
signal is held until the teardown ends, then raised.

:func:`sigterm_received` tells a caller that caught the exception (a test runner reports an
exception in a test and goes on) that the run was terminated and should stop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

__all__ = [
    "EXIT_SIGTERM",
    "TeardownOnSigterm",
    "Terminated",
    "shielded",
    "sigterm_received",
    "teardown_on_sigterm",
]

log = logging.getLogger(__name__)

#: The exit code of a run ended by SIGTERM, as shells report it (128 + 15).
EXIT_SIGTERM = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """The process received SIGTERM while a :func:`teardown_on_sigterm` block was active."""

    def __init__(self) -> None:
        super().__init__(EXIT_SIGTERM)

    def __str__(self) -> str:
        return f"terminated by SIGTERM (exit {EXIT_SIGTERM})"


# Process-wide state. Only the main thread changes it (activate/deactivate refuse other
# threads), and the handler runs in the main thread too, between two bytecodes of whatever
# it interrupts; so the handler only reads and sets plain attributes and never takes a lock.
class _State:
    depth = 0
    previous: Any = None
    fired = False  # a SIGTERM arrived during the current outermost block
    received = False  # a SIGTERM arrived at any time since import (for sigterm_received)
    shielding = 0  # depth of shielded() blocks: a teardown under way
    held = False  # a SIGTERM arrived during a shielded() block and is raised at its end


def _handler(signum: int, frame: FrameType | None) -> None:
    _State.received = True
    if _State.shielding and not _State.fired:
        _State.held = True
        log.warning("SIGTERM during a teardown: it finishes first, then the run ends with %d", EXIT_SIGTERM)
        return
    if _State.fired:
        log.warning("SIGTERM again while tearing down: ignored, the teardown goes on")
        return
    _State.fired = True
    log.warning("SIGTERM: tearing down, then exiting with %d", EXIT_SIGTERM)
    raise Terminated()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class TeardownOnSigterm:
    """One hold on the SIGTERM handler; see the module docstring. Use it as a context manager,
    or call :meth:`activate` and :meth:`deactivate` (each idempotent for this object)."""

    def __init__(self) -> None:
        self._active = False

    @property
    def active(self) -> bool:
        """Whether this object holds the handler now (False outside the main thread)."""
        return self._active

    def activate(self) -> None:
        if self._active or not _in_main_thread():
            return
        if _State.depth == 0:
            _State.previous = signal.getsignal(signal.SIGTERM)
            _State.fired = False
            signal.signal(signal.SIGTERM, _handler)
        _State.depth += 1
        self._active = True

    def deactivate(self) -> None:
        if not self._active or not _in_main_thread():
            return
        self._active = False
        _State.depth -= 1
        if _State.depth > 0:
            return
        previous, _State.previous = _State.previous, None
        _State.fired = False
        _State.held = False
        if signal.getsignal(signal.SIGTERM) is _handler:
            # None means a handler not installed from Python; the default is the closest.
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        else:  # someone replaced ours meanwhile: theirs stays, they restore what they saved
            log.debug("SIGTERM handler replaced while active; leaving the replacement in place")

    def __enter__(self) -> TeardownOnSigterm:
        self.activate()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()


def teardown_on_sigterm() -> TeardownOnSigterm:
    """A block during which SIGTERM raises :class:`Terminated` (``SystemExit(143)``) once."""
    return TeardownOnSigterm()


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run a teardown to its end even when SIGTERM arrives meanwhile.

    A first SIGTERM during the block is held and raised as :class:`Terminated` when the
    block ends (so the run still ends as terminated, with its teardown complete); a SIGTERM
    that already fired before the block means later ones are ignored, as anywhere else.
    Inert where no :func:`teardown_on_sigterm` block is active or outside the main thread.
    """
    if _State.depth == 0 or not _in_main_thread():
        yield
        return
    _State.shielding += 1
    try:
        yield
    finally:
        _State.shielding -= 1
        if _State.shielding == 0 and _State.held:
            _State.held = False
            if not _State.fired:
                _State.fired = True
                raise Terminated()


def sigterm_received() -> bool:
    """Whether this process has received SIGTERM while a block was active."""
    return _State.received
