"""Requests to a verdict: the sequential test against fixed-sample and peer rules, at equal error rates.

Run: ``python -m bench.bench_stats [--alpha 1e-6] [--beta 1e-6] [--delta 0.1]``.

For expected blue shares 0.5, 0.9 and 0.1 and true shares p0, p0 - d and p0 + d, prints:

- the sequential test (`harness.stats.SequentialTest`, the boundaries it really uses):
  P(FAIL), P(PASS), mean and 95th percentile of the responses to a verdict, all computed
  exactly by dynamic programming over its boundaries up to the cap (no simulation error),
  with no error responses (a PASS also waits for the error rule's 132 clean responses);
- the exact fixed-sample test's N at the same (alpha, beta, d), and the Wald-Wolfowitz bound
  ln(1/beta) / KL(p0 || p0 +- d) that no test can beat on average at p0;
- two peers' rules, exact binomial: Istio's traffic-shifting test (100 requests, pass when
  the count is within +-10 points of the expected share) and Knative's blue/green test
  (200 requests, each side at least 25%; for splits other than 50/50 read as "each side at
  least half its expected share", which is what 25% is of 50%). At p0 the column is their
  false-failure rate, at p0 +- d their miss rate (they are fixed-size: n = 100 / 200).

Then the ratio mean / fixed-sample N for each row, and whether the goal (<= 0.4) holds. The
ratio that matters most is at the true share (a correct rollout is the common case).

``--build-times`` instead prints how long building a 50/50 split's boundaries takes (all of it
before the first request), from delta = 0.1 down to the smallest delta `StatsConfig` admits at
these alpha and beta (its class needs at most `MAX_CLASS_REQUESTS` requests).
"""

from __future__ import annotations

import argparse
import time

from scipy.stats import binom

from harness.errors import ConfigError
from harness.stats import (
    MAX_CLASS_REQUESTS,
    SequentialTest,
    SplitBoundaries,
    StatsConfig,
    fixed_sample_test,
    operating_characteristic,
    split_boundaries,
    wald_wolfowitz_bound,
)

GOAL = 0.4


def istio_rule(p0: float, p: float) -> float:
    """P(pass) of Istio's rule: 100 requests, count within +-10 of 100 * p0."""
    lo, hi = round(100 * p0) - 10, round(100 * p0) + 10
    return float(binom.cdf(hi, 100, p) - binom.cdf(lo - 1, 100, p))


def knative_rule(p0: float, p: float) -> float:
    """P(pass) of Knative's rule: 200 requests, each side at least half its expected share."""
    lo = round(200 * p0 / 2)  # blue >= half of its expected count
    hi = 200 - round(200 * (1 - p0) / 2)  # green >= half of its expected count
    return float(binom.cdf(hi, 200, p) - binom.cdf(lo - 1, 200, p))


def _bounds_for(p0: float, config: StatsConfig) -> SplitBoundaries:
    """The boundaries a SequentialTest for this split uses (tracking blue's share)."""
    (tracked, bounds), = SequentialTest({"blue": p0, "green": round(1 - p0, 12)}, config).boundaries
    if tracked != "blue":
        raise AssertionError(f"expected blue to be tracked at p0={p0}, got {tracked}")
    return bounds


def _rate(p0: float, p: float, passes: float) -> float:
    """The error rate a row shows: false failure at the true share, miss elsewhere."""
    return 1.0 - passes if abs(p - p0) < 1e-9 else passes


def _smallest_delta(alpha: float, beta: float) -> float:
    """The smallest delta (to 1e-4) that StatsConfig admits at these error rates (bisection)."""
    lo, hi = 1e-4, 0.49  # refused, admitted
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        try:
            StatsConfig(alpha=alpha, beta=beta, delta=mid)
        except ConfigError:
            lo = mid
        else:
            hi = mid
    return round(hi + 5e-5, 4)


def build_times(alpha: float, beta: float) -> None:
    """Seconds to build a 50/50 split's boundaries (uncached) from delta = 0.1 to the smallest admitted."""
    smallest = _smallest_delta(alpha, beta)
    print(f"Building a 50/50 split's boundaries at alpha={alpha:g}, beta={beta:g} "
          f"(limit {MAX_CLASS_REQUESTS} requests per class; smallest delta admitted {smallest:g})")
    for delta in sorted({0.1, 0.07, 0.05, smallest}, reverse=True):
        split_boundaries.cache_clear()
        fixed_sample_test.cache_clear()
        started = time.monotonic()
        try:
            test = SequentialTest({"blue": 0.5, "green": 0.5}, StatsConfig(alpha=alpha, beta=beta, delta=delta))
        except ConfigError as exc:
            print(f"delta={delta:<7g} refused in {time.monotonic() - started:.3f} s: {exc}")
            continue
        print(f"delta={delta:<7g} cap {test.max_n:>6d}: {time.monotonic() - started:6.2f} s")


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 0 (figures, not a test)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=1e-6)
    parser.add_argument("--beta", type=float, default=1e-6)
    parser.add_argument("--delta", type=float, default=0.10)
    parser.add_argument("--build-times", action="store_true",
                        help="time building the boundaries down to the smallest delta admitted")
    args = parser.parse_args(argv)
    if args.build_times:
        build_times(args.alpha, args.beta)
        return 0
    config = StatsConfig(alpha=args.alpha, beta=args.beta, delta=args.delta)
    d = config.delta
    started = time.monotonic()
    print(f"Requests to a verdict at alpha={config.alpha:g}, beta={config.beta:g}, d={d:g} "
          f"(sequential: exact DP over the boundaries; peers: exact binomial)")
    header = (f"{'p0':>4} {'true':>5} | {'P(FAIL)':>9} {'P(PASS)':>9} {'mean':>6} {'p95':>5} {'cap':>5} | "
              f"{'fixedN':>6} {'WW':>5} {'mean/N':>6} | {'Istio100 err':>12} {'Knative200 err':>14}")
    print(header)
    print("-" * len(header))
    ratios_at_p0: list[float] = []
    ratios_all: list[float] = []
    for p0 in (0.5, 0.9, 0.1):
        test = SequentialTest({"blue": p0, "green": round(1 - p0, 12)}, config, label="bench")
        (tracked, bounds), = test.boundaries
        fixed = fixed_sample_test(p0, config.alpha, config.beta, d)
        ww = wald_wolfowitz_bound(p0, config.beta, d)
        for p in (p0, p0 - d, p0 + d):
            p = round(p, 12)
            if not 0.0 <= p <= 1.0:
                continue
            share = p if tracked == "blue" else round(1 - p, 12)
            oc = operating_characteristic(bounds, share, pass_floor=test.min_pass_n)
            ratio = oc.mean_n / fixed.n
            ratios_all.append(ratio)
            if p == p0:
                ratios_at_p0.append(ratio)
            print(f"{p0:>4g} {p:>5.2f} | {oc.fail:>9.2e} {oc.passed:>9.2e} {oc.mean_n:>6.0f} "
                  f"{oc.quantile_n(0.95):>5d} {bounds.cap:>5d} | {fixed.n:>6d} {ww:>5.0f} {ratio:>6.3f} | "
                  f"{_rate(p0, p, istio_rule(p0, p)):>12.2e} {_rate(p0, p, knative_rule(p0, p)):>14.2e}")
    print()
    print("err: at the true share the false-failure rate, at share +- d the miss rate.")
    print(f"Peers beyond d (DESIGN.md's figures): Istio passes a 60/40 split expected as 50/50 with "
          f"P={istio_rule(0.5, 0.6):.3f}; Knative passes 70/30 with P={knative_rule(0.5, 0.7):.3f}; "
          f"the sequential test: P={operating_characteristic(_bounds_for(0.5, config), 0.7).passed:.1e}.")
    print(f"Fixed-sample N at p0=0.5 accepts {fixed_sample_test(0.5, config.alpha, config.beta, d).accept_lo}"
          f"..{fixed_sample_test(0.5, config.alpha, config.beta, d).accept_hi}.")
    worst_p0, worst_all = max(ratios_at_p0), max(ratios_all)
    print(f"mean/fixed-N at the true share: max {worst_p0:.3f}; over all rows: max {worst_all:.3f}; "
          f"goal <= {GOAL}: {'MET' if worst_p0 <= GOAL else 'NOT MET'} at the true share, "
          f"{'MET' if worst_all <= GOAL else 'NOT MET'} on every row.")
    print(f"({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
