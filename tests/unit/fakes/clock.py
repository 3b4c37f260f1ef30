"""The one fake clock of the unit tests: time passes only when code sleeps (or asks the time).

Pass ``clock=fake`` and ``sleep=fake.sleep`` to `abtest_harness.wait.wait_until` (or any code with an
injectable clock): a wait of minutes runs in microseconds and never sleeps for real.
"""

from __future__ import annotations


class FakeClock:
    """``monotonic()`` as a call and ``sleep()``; every sleep is recorded in `sleeps`.

    `tick` is how far each reading advances the time (0 by default: the time stands still
    between sleeps; a small tick models code that takes time to run, so a probe that never
    sleeps still reaches its deadline).
    """

    def __init__(self, start: float = 0.0, *, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
