"""The harness's error types: each says what failed and where, in words a person can act on."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class ConfigError(HarnessError):
    """A manifest, plan or option is wrong; names the object and the field.

    >>> str(ConfigError("Stage Blue_50", "weights", "sum to 110, not 100"))
    'Stage Blue_50: weights: sum to 110, not 100'
    """

    def __init__(self, obj: str, field: str, message: str) -> None:
        self.obj = obj
        self.field = field
        self.message = message
        super().__init__(f"{obj}: {field}: {message}" if field else f"{obj}: {message}")


class UnsupportedField(ConfigError):
    """A manifest uses a field that the oracle or the Envoy translation does not implement.

    Raised instead of silently ignoring the field, which would make a verdict lie.
    """


def named(items: Iterable[T], name: str, label: Callable[[T], str], *, obj: str, field: str, noun: str) -> T:
    """The item of `items` whose `label` is `name`; a ConfigError on `obj`'s `field` lists the known ones."""
    listed = list(items)
    for item in listed:
        if label(item) == name:
            return item
    known = ", ".join(label(item) for item in listed)
    raise ConfigError(obj, field, f"no {noun} {name!r} (known: {known})")


class ToolNotFound(HarnessError):
    """A command-line tool the harness needs is not installed."""


class CommandError(HarnessError):
    """A subprocess failed or timed out; keeps argv, exit code and output for the log."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
        *,
        reason: str = "",
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = reason or f"exited with {returncode}"
        tail = stderr.strip().splitlines()[-5:] if stderr else []
        detail = ("\n  " + "\n  ".join(tail)) if tail else ""
        super().__init__(f"command {self.argv[0]!r} {what}: {' '.join(self.argv)}{detail}")


class WaitTimeout(HarnessError):
    """A wait ran past its deadline: says what was awaited, how long, and what was last seen."""

    def __init__(
        self, what: str, timeout: float, last_seen: str, attempts: int, elapsed: float | None = None
    ) -> None:
        self.what = what
        self.timeout = timeout
        self.last_seen = last_seen
        self.attempts = attempts
        self.elapsed = timeout if elapsed is None else elapsed
        super().__init__(
            f"timed out after {self.elapsed:.1f}s (limit {timeout:g}s, {attempts} attempts) waiting for {what}; "
            f"last seen: {last_seen}"
        )
