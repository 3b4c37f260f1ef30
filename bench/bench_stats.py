"""Requests to a verdict: the sequential test against fixed-sample and peer rules, at equal error rates.

Run: ``python -m bench.bench_stats [--alpha 1e-6] [--beta 1e-6] [--delta 0.1]``.

For expected blue shares 0.5, 0.9 and 0.1 and true shares p0, p0 - d and p0 + d, prints:

- the sequential test (`abtest_harness.stats.SequentialTest`, the boundaries it really uses):
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

Then the sequential design side by side with the best possible at 50/50 (docs/statistics.md,
"How close to the best possible"): today's design; today's with its pass threshold lowered
until the exact miss rate, cap included, is beta (an achievable design); and a lower bound on
the mean of every test with the same guarantees and a worst case within 5000 requests, by
Lagrangian duality and backward induction. ``--no-design`` skips it (about a minute).

``--build-times`` instead prints how long building a 50/50 split's boundaries takes (all of it
before the first request), from delta = 0.1 down to the smallest delta `StatsConfig` admits at
these alpha and beta (its class needs at most `MAX_CLASS_REQUESTS` requests).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import binom

from abtest_harness.errors import ConfigError
from abtest_harness.stats import (
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


def lagrangian_value(p0: float, d: float, lam: float, lam0: float, horizon: int) -> float:
    """min over every test with at most `horizon` responses of
    E_p0[N] + lam * (P(PASS | p0 - d) + P(PASS | p0 + d)) + lam0 * P(FAIL | p0), by backward induction.

    r(n, s), the best cost to go divided by the path's probability under p0, is the least of
    passing (lam * (L(p0-d) + L(p0+d)) / L(p0)), failing (lam0) and one more response
    (1 + p0 r(n+1, s+1) + (1 - p0) r(n+1, s)); the value is r(0, 0).
    """
    lo, hi = p0 - d, p0 + d
    a_lo, b_lo = math.log(lo / p0), math.log((1 - lo) / (1 - p0))
    a_hi, b_hi = math.log(hi / p0), math.log((1 - hi) / (1 - p0))
    r = np.zeros(0)
    for n in range(horizon, -1, -1):
        s = np.arange(n + 1)
        with np.errstate(over="ignore"):
            ratio = np.exp(s * a_lo + (n - s) * b_lo) + np.exp(s * a_hi + (n - s) * b_hi)
            stop = np.minimum(lam * ratio, lam0)
        r = stop if n == horizon else np.minimum(stop, 1.0 + p0 * r[1:] + (1 - p0) * r[:-1])
    return float(r[0])


def lower_bound(p0: float, d: float, alpha: float, beta: float, horizon: int) -> tuple[float, float, float]:
    """(bound, lam, lam0): E_p0[N] >= V(lam, lam0) - 2 lam beta - lam0 alpha for every test with these errors."""
    best = (-math.inf, 0.0, 0.0)
    for lam0 in (1e3 / alpha * 1e-6, 1e4 / alpha * 1e-6, 1e5 / alpha * 1e-6):
        def negative(log_lam: float, lam0: float = lam0) -> float:
            lam = math.exp(log_lam)
            return -(lagrangian_value(p0, d, lam, lam0, horizon) - 2 * lam * beta - lam0 * alpha)

        found = minimize_scalar(negative, bounds=(math.log(1 / beta), math.log(1e3 / beta)), method="bounded",
                                options={"xatol": 1e-3})
        if -found.fun > best[0]:
            best = (-float(found.fun), math.exp(float(found.x)), lam0)
    return best


def _with_pass_level(bounds: SplitBoundaries, level: float) -> SplitBoundaries:
    """The same boundaries with both SPRTs' pass threshold at `level` (log scale)."""
    p0, d = bounds.p0, bounds.delta
    pass_lo, pass_hi = [1], [0]
    for n in range(1, bounds.cap + 1):
        s = np.arange(n + 1)
        ll0 = s * math.log(p0) + (n - s) * math.log1p(-p0)
        ok = np.ones(n + 1, dtype=bool)
        for p in (p0 - d, p0 + d):
            ok &= ll0 - (s * math.log(p) + (n - s) * math.log1p(-p)) >= level
        idx = np.nonzero(ok)[0]
        pass_lo.append(int(idx[0]) if idx.size else 1)
        pass_hi.append(int(idx[-1]) if idx.size else 0)
    return dataclasses.replace(bounds, pass_lo=tuple(pass_lo), pass_hi=tuple(pass_hi))


def calibrated(bounds: SplitBoundaries, beta: float) -> SplitBoundaries:
    """Today's boundaries with the lowest pass threshold whose exact miss at p0 +- d is <= beta (bisection)."""
    p0, d = bounds.p0, bounds.delta
    low, high = math.log(1 / beta) - 2.0, math.log(1 / bounds.beta_seq)  # too lenient, safe

    def miss(b: SplitBoundaries) -> float:
        return max(operating_characteristic(b, p).passed for p in (p0 - d, p0 + d))

    while high - low > 1e-3:
        mid = (low + high) / 2
        if miss(_with_pass_level(bounds, mid)) <= beta:
            high = mid
        else:
            low = mid
    return _with_pass_level(bounds, high)


def design_comparison(config: StatsConfig) -> None:
    """Today's design beside an exactly calibrated one and the lower bound for every design, at 50/50."""
    if config.delta >= 0.5:
        return
    started = time.monotonic()
    today = _bounds_for(0.5, config)
    rows = [("today (Ville thresholds, 10% to the cap)", today),
            ("today, pass threshold calibrated exactly", calibrated(today, config.beta))]
    print(f"Sequential design at 50/50, alpha={config.alpha:g}, beta={config.beta:g}, d={config.delta:g} "
          f"(exact DP; target mean <= 1.2 x the information bound):")
    print(f"{'design':<44} {'mean':>6} {'p95':>5} {'max':>5} {'P(FAIL|.5)':>10} {'miss .4/.6':>10}")
    for name, b in rows:
        at = operating_characteristic(b, 0.5)
        miss = max(operating_characteristic(b, p).passed for p in (0.5 - config.delta, 0.5 + config.delta))
        print(f"{name:<44} {at.mean_n:>6.1f} {at.quantile_n(0.95):>5d} {b.cap:>5d} {at.fail:>10.2e} {miss:>10.2e}")
    ww = wald_wolfowitz_bound(0.5, config.beta, config.delta)
    for horizon in (3000, 5000):
        bound, lam, lam0 = lower_bound(0.5, config.delta, config.alpha, config.beta, horizon)
        print(f"{'lower bound, any design, worst case <= ' + str(horizon):<44} {bound:>6.1f}"
              f"   (lam={lam:.3g}, lam0={lam0:.3g})")
    print(f"information bound {ww:.1f}; 1.2 x = {1.2 * ww:.1f}: "
          f"{'reachable' if bound <= 1.2 * ww else 'out of reach for every design with these guarantees'}")
    print(f"({time.monotonic() - started:.1f} s)")


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
    parser.add_argument("--no-design", action="store_true", help="skip the design comparison at 50/50")
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
    print(f"Peers beyond d: Istio passes a 60/40 split expected as 50/50 with "
          f"P={istio_rule(0.5, 0.6):.3f}; Knative passes 70/30 with P={knative_rule(0.5, 0.7):.3f}; "
          f"the sequential test: P={operating_characteristic(_bounds_for(0.5, config), 0.7).passed:.1e}.")
    print(f"Fixed-sample N at p0=0.5 accepts {fixed_sample_test(0.5, config.alpha, config.beta, d).accept_lo}"
          f"..{fixed_sample_test(0.5, config.alpha, config.beta, d).accept_hi}.")
    worst_p0, worst_all = max(ratios_at_p0), max(ratios_all)
    print(f"mean/fixed-N at the true share: max {worst_p0:.3f}; over all rows: max {worst_all:.3f}; "
          f"goal <= {GOAL}: {'MET' if worst_p0 <= GOAL else 'NOT MET'} at the true share, "
          f"{'MET' if worst_all <= GOAL else 'NOT MET'} on every row.")
    print(f"({time.monotonic() - started:.1f} s)")
    if not args.no_design:
        print()
        design_comparison(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
