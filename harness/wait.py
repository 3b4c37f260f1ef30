"""Deadline-based waiting: poll a probe until it succeeds, retrying only named transient errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from abtest_harness.errors import WaitTimeout

T = TypeVar("T")


class _NotYet(Exception):
    """The probe answered, but not with what we wait for."""


def wait_until(
    probe: Callable[[], T | None],
    *,
    what: str,
    timeout: float,
    interval: float = 0.05,
    max_interval: float = 1.0,
    transient: tuple[type[BaseException], ...] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    describe: Callable[[T | None], str] | None = None,
    progress: Callable[[str], None] | None = None,
    progress_every: float = 10.0,
) -> T:
    """Call `probe` until it returns a truthy value, and return that value.

    Polls with a capped exponential backoff from `interval` to `max_interval`, never sleeping
    past the deadline; gives up at `timeout` seconds (measured with `clock`) with a WaitTimeout
    that says what was awaited, how long it really waited, how many attempts, and the last
    value or transient error seen. A probe that blocks is not interrupted: give it a timeout
    of its own no longer than the time left. Exceptions not
    listed in `transient` propagate at once: only named, expected failures are retried.
    `progress` (if given) receives a line every `progress_every` seconds of a long wait.

    >>> wait_until(lambda: 42, what="the answer", timeout=1.0)
    42
    """
    started = clock()
    state: dict[str, object] = {"last": "nothing yet", "attempts": 0, "said": started}

    def attempt() -> T:
        state["attempts"] = int(state["attempts"]) + 1  # type: ignore[call-overload]
        try:
            value = probe()
        except transient as exc:  # only the named transient errors are retried
            state["last"] = f"{type(exc).__name__}: {exc}"
            raise _NotYet() from exc
        if not value:
            state["last"] = describe(value) if describe else repr(value)
            raise _NotYet()
        return value

    def before_sleep(_: tenacity.RetryCallState) -> None:
        now = clock()
        if progress is not None and now - float(state["said"]) >= progress_every:  # type: ignore[arg-type]
            state["said"] = now
            progress(f"still waiting for {what} ({now - started:.0f}s of {timeout:.0f}s): {state['last']}")

    backoff = tenacity.wait_exponential(multiplier=interval, min=interval, max=max_interval)

    def pause(retry_state: tenacity.RetryCallState) -> float:
        # Never sleep past the deadline: the last attempt happens at the deadline, not after it.
        return max(0.0, min(backoff(retry_state), started + timeout - clock()))

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_NotYet),
        stop=lambda rs: clock() - started >= timeout,
        wait=pause,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _NotYet:
        raise WaitTimeout(
            what, timeout, str(state["last"]), int(state["attempts"]), clock() - started  # type: ignore[call-overload]
        ) from None
