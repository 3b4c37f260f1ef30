"""The statistics behind every verdict: error rates by exact computation and by simulation.

Exact checks run at the defaults (alpha = beta = 1e-6, d = 0.1), where simulation could never
see an error; simulations run at loose settings (alpha = beta = 0.01) with 20,000 runs per
rate, vectorized over the precomputed boundaries, and a separate test proves that
`SequentialTest.observe` follows those boundaries response by response.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from scipy.stats import beta as beta_dist
from scipy.stats import binom

from abtest_harness import stats
from abtest_harness.errors import ConfigError
from abtest_harness.stats import (
    Decision,
    ErrorBound,
    SequentialTest,
    SplitBoundaries,
    StatsConfig,
    clopper_pearson,
    error_bound,
    fixed_sample_test,
    is_error_outcome,
    operating_characteristic,
    split_boundaries,
    wald_wolfowitz_bound,
    zero_leak_n,
)

DEFAULT = StatsConfig()
LOOSE = StatsConfig(alpha=0.01, beta=0.01)
RUNS = 20_000


def _bounds(expected: dict[str, float], config: StatsConfig) -> tuple[str, SplitBoundaries]:
    (name, bounds), = SequentialTest(expected, config).boundaries
    return name, bounds


# --------------------------------------------------------------------------- reference figures


def test_fixed_sample_reference_at_one_half() -> None:
    t = fixed_sample_test(0.5, 1e-6, 1e-6, 0.1)
    assert (t.n, t.accept_lo, t.accept_hi) == (2291, 1029, 1262), t
    # The meaning of the figure, recomputed from the binomial directly.
    false_fail = binom.cdf(1028, 2291, 0.5) + binom.sf(1262, 2291, 0.5)
    miss = binom.cdf(1262, 2291, 0.4) - binom.cdf(1028, 2291, 0.4)
    assert false_fail <= 1e-6 and miss <= 1e-6, (false_fail, miss)
    assert math.isclose(t.false_fail, false_fail, rel_tol=1e-9) and math.isclose(t.miss, miss, rel_tol=1e-9)


def test_fixed_sample_reference_at_nine_tenths() -> None:
    t = fixed_sample_test(0.9, 1e-6, 1e-6, 0.1)
    assert t.n == 1119, t
    # At 0.9 the upper alternative is 1.0: an acceptance region short of n rejects it for free,
    # so almost all of alpha goes to the lower tail (equal tails would need 1154).
    assert t.accept_hi < t.n and t.false_fail <= 1e-6 and t.miss <= 1e-6, t


@pytest.mark.parametrize(("p0", "n"), [(0.5, 2291), (0.9, 1119)])
def test_fixed_sample_n_is_the_smallest(p0: float, n: int) -> None:
    # Every way of splitting alpha between the tails, at the few sizes just below: none has miss <= beta.
    for m in range(n - 5, n):
        k = np.arange(m + 1)
        below = np.concatenate(([0.0], binom.cdf(k[:-1], m, p0)))
        above = binom.sf(k, m, p0)
        best_miss = 1.0
        for lo in np.nonzero(below <= 1e-6)[0]:
            hi = int(np.nonzero(above <= 1e-6 - below[lo])[0][0])
            misses = [binom.cdf(hi, m, p) - binom.cdf(lo - 1, m, p) for p in (p0 - 0.1, p0 + 0.1) if p < 1]
            misses += [1.0] if p0 + 0.1 >= 1 and hi == m else []
            best_miss = min(best_miss, max(misses))
        assert best_miss > 1e-6, f"n={m} already has a region with miss {best_miss:.3g} at p0={p0}"


def test_wald_wolfowitz_reference() -> None:
    assert round(wald_wolfowitz_bound(0.5, 1e-6, 0.1)) == 677
    assert round(wald_wolfowitz_bound(0.9, 1e-6, 0.1)) == 377
    assert math.isclose(wald_wolfowitz_bound(0.1, 1e-6, 0.1), wald_wolfowitz_bound(0.9, 1e-6, 0.1))


def test_zero_leak_reference() -> None:
    assert zero_leak_n(1e-6, 0.10) == 132
    assert zero_leak_n(1e-6, 0.01) == 1375
    assert 0.9**132 <= 1e-6 < 0.9**131, "132 is the smallest n with (1 - leak)^n <= beta"


# --------------------------------------------------------------------------- exact error rates at defaults


@pytest.mark.parametrize("p0", [0.5, 0.9, 0.7])
def test_exact_error_rates_at_defaults(p0: float) -> None:
    name, bounds = _bounds({"blue": p0, "green": round(1 - p0, 12)}, DEFAULT)
    share = p0 if name == "blue" else round(1 - p0, 12)
    at_p0 = operating_characteristic(bounds, share)
    assert at_p0.fail <= DEFAULT.alpha, f"false failure {at_p0.fail:.3g} > alpha at p0={p0}"
    assert math.isclose(at_p0.stop.sum(), 1.0, rel_tol=1e-9), "the cap must decide every path"
    for p in (share - 0.1, share + 0.1, share - 0.2, share + 0.2):
        if 0.0 <= p <= 1.0:
            wrong = operating_characteristic(bounds, round(p, 12))
            assert wrong.passed <= DEFAULT.beta, f"miss {wrong.passed:.3g} > beta at true {p:.2f}, p0={p0}"
    # The class waits for the error rule's 132 clean responses: a floor on PASS, nearly free.
    floored = operating_characteristic(bounds, share, pass_floor=132)
    assert math.isclose(floored.passed, at_p0.passed) and floored.quantile_n(1.0) <= bounds.cap
    assert at_p0.mean_n <= floored.mean_n <= at_p0.mean_n + 1, (at_p0.mean_n, floored.mean_n)
    # Worst case bounded: in the indifference zone the cap decides by n = cap at the latest.
    middle = operating_characteristic(bounds, share + 0.05)
    assert middle.quantile_n(1.0) <= bounds.cap and middle.stop[bounds.cap] > 0


def test_mean_requests_meet_the_goal_at_one_half() -> None:
    _, bounds = _bounds({"blue": 0.5, "green": 0.5}, DEFAULT)
    mean = operating_characteristic(bounds, 0.5).mean_n
    assert 677 < mean <= 0.4 * 2291, f"mean {mean:.0f} requests at p0=0.5 (goal <= 916, bound 677)"


# --------------------------------------------------------------------------- the split rule, recomputed


def _documented_split_rule(p0: float, alpha: float, beta: float, d: float, cap_share: float = 0.1,
                           w: float = 0.1) -> tuple[list[np.ndarray], int, int, int]:
    """The split rule's decision at every (n, s) as docs/statistics.md states it, computed here.

    Returns per n (0..cap) an int array over s: -1 FAIL, 1 PASS, 0 continue; and the cap
    with its acceptance region (from `fixed_sample_test`, whose region is checked below by
    exact binomial tails). FAIL: the mixture (1-w)/2 [L(p0-d) + L(p0+d)]/L(p0) +
    w B(s+1, n-s+1)/L(p0) reaches 1/alpha_seq; PASS: L(p0)/L(p0 -+ d) >= 1/beta_seq both; FAIL
    wins a tie; at the cap an undecided count passes iff inside the region.
    """
    from scipy.special import betaln

    alpha_seq, beta_seq = alpha * (1 - cap_share), beta * (1 - cap_share)
    cap_test = fixed_sample_test(p0, alpha * cap_share, beta * cap_share, d)
    n_cap, lo_cap, hi_cap = cap_test.n, cap_test.accept_lo, cap_test.accept_hi
    for p, inside_at_most in ((p0, None), (p0 - d, beta * cap_share), (p0 + d, beta * cap_share)):
        inside = binom.cdf(hi_cap, n_cap, p) - binom.cdf(lo_cap - 1, n_cap, p)
        if inside_at_most is None:
            assert 1 - inside <= alpha * cap_share
        else:
            assert inside <= inside_at_most
    lo, hi = max(p0 - d, 0.0), min(p0 + d, 1.0)

    def loglik(s: np.ndarray, n: int, p: float) -> np.ndarray:
        if p in (0.0, 1.0):
            ok = s == (0 if p == 0.0 else n)
            return np.where(ok, 0.0, -np.inf)
        return s * math.log(p) + (n - s) * math.log(1 - p)

    decisions = [np.zeros(1, dtype=int)]
    for n in range(1, n_cap + 1):
        s = np.arange(n + 1)
        l0, l_lo, l_hi = loglik(s, n, p0), loglik(s, n, lo), loglik(s, n, hi)
        with np.errstate(divide="ignore"):
            mixture = np.logaddexp(math.log((1 - w) / 2) + np.logaddexp(l_lo, l_hi),
                                   math.log(w) + betaln(s + 1, n - s + 1)) - l0
        fail = mixture >= math.log(1 / alpha_seq)
        passing = (l0 - l_lo >= math.log(1 / beta_seq)) & (l0 - l_hi >= math.log(1 / beta_seq))
        decision = np.where(fail, -1, np.where(passing, 1, 0))
        if n == n_cap:
            decision = np.where(decision == 0, np.where((s >= lo_cap) & (s <= hi_cap), 1, -1), decision)
        decisions.append(decision)
    return decisions, n_cap, lo_cap, hi_cap


def _exact_run(decisions: list[np.ndarray], p: float) -> tuple[float, float, float]:
    """(P(FAIL), P(PASS), mean n) at true share p: carry every undecided (n, s) forward."""
    alive = np.ones(1)
    failed = passed = mean = 0.0
    for n in range(1, len(decisions)):
        step = np.zeros(n + 1)
        step[1:] += alive * p
        step[:-1] += alive * (1 - p)
        decision = decisions[n]
        f, q = float(step[decision == -1].sum()), float(step[decision == 1].sum())
        failed, passed, mean = failed + f, passed + q, mean + n * (f + q)
        alive = np.where(decision == 0, step, 0.0)
    assert float(alive.sum()) == 0.0, "the cap decides every path"
    return failed, passed, mean


@cache
def _documented_at_one_half() -> tuple[list[np.ndarray], int, int, int]:
    return _documented_split_rule(0.5, DEFAULT.alpha, DEFAULT.beta, DEFAULT.delta)


def test_the_boundaries_are_the_documented_rule() -> None:
    decisions, n_cap, lo_cap, hi_cap = _documented_at_one_half()
    b = split_boundaries(0.5, 1e-6, 1e-6, 0.1)
    assert (b.cap, b.cap_lo, b.cap_hi) == (n_cap, lo_cap, hi_cap)
    as_int = {Decision.FAIL: -1, Decision.PASS: 1, Decision.CONTINUE: 0}
    for n in range(1, n_cap):
        s = np.arange(n + 1)
        arrays = np.where((s <= b.fail_lo[n]) | (s >= b.fail_hi[n]), -1,
                          np.where((s >= b.pass_lo[n]) & (s <= b.pass_hi[n]), 1, 0))
        assert np.array_equal(arrays, decisions[n]), f"boundaries differ from the documented rule at n={n}"
    for n in (1, 97, 682, 900, n_cap - 1, n_cap):  # and decide() reads them as stored
        assert [as_int[b.decide(n, k)] for k in range(n + 1)] == decisions[n].tolist(), n


def test_exact_error_rates_and_mean_recomputed_from_the_documented_rule() -> None:
    # The headline claims, computed without stats.operating_characteristic: false failure
    # <= 1e-6 at 50/50, a miss <= 1e-6 at 40/60 and 60/40, and 894 requests on average at
    # 50/50 (docs/statistics.md). The computation is exact, so the tolerance on the mean is
    # only the rounding of the documented figure: 0.5 requests.
    decisions, _, _, _ = _documented_at_one_half()
    failed, passed, mean = _exact_run(decisions, 0.5)
    assert failed <= 1e-6 and math.isclose(failed + passed, 1.0, rel_tol=1e-9)
    assert abs(mean - 894) <= 0.5, f"mean {mean:.2f} requests at 50/50, documented 894"
    for wrong in (0.4, 0.6):
        _, missed, _ = _exact_run(decisions, wrong)
        assert missed <= 1e-6, f"miss {missed:.3g} at true share {wrong}"
    # And the module's own dynamic programming agrees with this one.
    oc = operating_characteristic(split_boundaries(0.5, 1e-6, 1e-6, 0.1), 0.5)
    assert math.isclose(oc.fail, failed, rel_tol=1e-9) and math.isclose(oc.mean_n, mean, rel_tol=1e-12)


def test_boundaries_are_cached_and_capped_by_the_fixed_sample_rule() -> None:
    b = split_boundaries(0.5, 1e-6, 1e-6, 0.1)
    assert split_boundaries(0.5, 1e-6, 1e-6, 0.1) is b, "boundaries must be computed once per setting"
    cap = fixed_sample_test(0.5, 1e-7, 1e-7, 0.1)  # cap_share 0.1 of alpha and beta
    assert (b.cap, b.cap_lo, b.cap_hi) == (cap.n, cap.accept_lo, cap.accept_hi)
    assert len(b.pass_lo) == len(b.fail_hi) == b.cap + 1
    assert b.overlaps == 0, "at p0 = 0.5 no count should cross both boundaries"


# --------------------------------------------------------------------------- simulation at loose settings


def _simulate(bounds: SplitBoundaries, p: float, runs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(decision is FAIL, n at the decision) for `runs` independent streams at true share p."""
    rng = np.random.default_rng(seed)
    cap = bounds.cap
    idx = np.arange(1, cap + 1)
    fail_lo, fail_hi = np.asarray(bounds.fail_lo)[idx], np.asarray(bounds.fail_hi)[idx]
    pass_lo, pass_hi = np.asarray(bounds.pass_lo)[idx], np.asarray(bounds.pass_hi)[idx]
    fails, sizes = [], []
    for start in range(0, runs, 5000):
        m = min(5000, runs - start)
        s = np.cumsum(rng.random((m, cap)) < p, axis=1, dtype=np.int32)
        fail = (s <= fail_lo) | (s >= fail_hi)
        decided = fail | ((s >= pass_lo) & (s <= pass_hi))
        first = np.where(decided.any(axis=1), decided.argmax(axis=1), cap - 1)
        rows = np.arange(m)
        at_cap = ~decided[rows, first]
        final = s[rows, first]
        fails.append(np.where(at_cap, (final < bounds.cap_lo) | (final > bounds.cap_hi), fail[rows, first]))
        sizes.append(first + 1)
    return np.concatenate(fails), np.concatenate(sizes)


@pytest.mark.parametrize(
    ("p0", "true", "seed"),
    [(0.5, 0.5, 11), (0.5, 0.4, 12), (0.5, 0.6, 13), (0.9, 0.9, 14), (0.9, 0.8, 15), (0.3, 0.4, 16)],
)
def test_simulated_error_rates_at_loose_settings(p0: float, true: float, seed: int) -> None:
    name, bounds = _bounds({"blue": p0, "green": round(1 - p0, 12)}, LOOSE)
    share = true if name == "blue" else round(1 - true, 12)
    fails, _ = _simulate(bounds, share, RUNS, seed)
    at_p0 = abs(true - p0) < 1e-9
    rate = float(fails.mean()) if at_p0 else float(1.0 - fails.mean())
    nominal = LOOSE.alpha if at_p0 else LOOSE.beta
    # Margin: a test whose true rate equals the nominal 0.01 would show a count ~ Bin(20000, 0.01),
    # sd 0.0007 as a rate; 3 sd above nominal is passed by a correctly sized test with probability
    # > 0.998 for any seed, while a test at twice the nominal rate (0.02) fails it for every seed.
    sd = math.sqrt(nominal * (1 - nominal) / RUNS)
    assert rate <= nominal + 3 * sd, f"{'false failure' if at_p0 else 'miss'} rate {rate:.4f} at true {true}"
    # The simulation and the exact computation describe the same procedure: within 4 sd.
    exact = operating_characteristic(bounds, share)
    exact_rate = exact.fail if at_p0 else exact.passed
    assert exact_rate <= nominal, f"exact rate {exact_rate:.4f} above nominal"
    exact_sd = math.sqrt(max(exact_rate * (1 - exact_rate), 1e-12) / RUNS)
    assert abs(rate - exact_rate) <= 4 * exact_sd + 1e-9, (rate, exact_rate)


def test_observe_follows_the_boundaries() -> None:
    """SequentialTest.observe decides at the same n, the same way, as the vectorized boundaries."""
    rng = np.random.default_rng(7)
    name, bounds = _bounds({"blue": 0.5, "green": 0.5}, LOOSE)
    for share in (0.5, 0.42, 0.58, 0.5, 0.47):
        for _ in range(40):
            test = SequentialTest({"blue": 0.5, "green": 0.5}, LOOSE, label="weighted")
            draws = rng.random(bounds.cap) < share
            count, split_passed = 0, False
            for n, hit in enumerate(draws, start=1):
                count += int(hit)
                got = test.observe(name if hit else "green")
                # A split that passes early waits for the error rule's clean responses (min_pass_n).
                split_passed = split_passed or bounds.decide(n, count) is Decision.PASS
                if split_passed:
                    want = Decision.PASS if n >= test.min_pass_n else Decision.CONTINUE
                else:
                    want = bounds.decide(n, count)
                assert got is want, f"n={n} count={count}: observe said {got}, boundaries say {want}"
                if got is not Decision.CONTINUE:
                    break
            assert test.decision is not Decision.CONTINUE and test.n <= test.max_n


def test_cap_decides_a_stream_that_never_crosses() -> None:
    # Steer each response to stay undecided: the cap's exact fixed-sample rule must decide.
    test = SequentialTest({"blue": 0.5, "green": 0.5}, LOOSE, label="weighted")
    (name, bounds), = test.boundaries
    count = 0
    for n in range(1, bounds.cap + 1):
        hit = bounds.decide(n, count + 1) is Decision.CONTINUE or (
            n == bounds.cap and bounds.cap_lo <= count + 1 <= bounds.cap_hi)
        count += int(hit)
        test.observe(name if hit else "green")
        if test.decision is not Decision.CONTINUE:
            break
    assert test.n == bounds.cap == test.max_n, (test.n, bounds.cap)
    verdict = test.verdict()
    assert verdict.rule == "cap: exact fixed-sample test", verdict.rule
    assert verdict.passed == (bounds.cap_lo <= count <= bounds.cap_hi)


def test_a_small_share_that_gets_nothing_fails() -> None:
    # 5% expected, d = 10 points: share 0 is clipped in as the lower alternative, so a weight
    # that was never applied fails instead of passing inside the tolerance.
    test = SequentialTest({"blue": 0.05, "green": 0.95}, DEFAULT, label="weighted")
    while test.observe("green") is Decision.CONTINUE:
        pass
    assert test.decision is Decision.FAIL and test.verdict().rule == "mixture fail", test.verdict().message
    assert test.n < 400, test.n


# --------------------------------------------------------------------------- zero-leak, errors


def test_zero_leak_passes_at_132_and_fails_at_the_first_wrong_answer() -> None:
    test = SequentialTest({"blue": 1.0}, label="header-blue")
    decisions = [test.observe("blue") for _ in range(132)]
    assert decisions[:131] == [Decision.CONTINUE] * 131 and decisions[131] is Decision.PASS
    assert test.max_n == 132
    wrong = SequentialTest({"blue": 1.0}, label="header-blue")
    for _ in range(50):
        wrong.observe("blue")
    assert wrong.observe("green") is Decision.FAIL
    verdict = wrong.verdict()
    assert verdict.counts == {"blue": 50, "green": 1} and verdict.n == 51, verdict
    assert "green x1" in verdict.message and verdict.rule.startswith("zero-leak"), verdict.message


def test_zero_leak_uses_the_configured_leak() -> None:
    test = SequentialTest({"green": 1.0, "blue": 0.0}, StatsConfig(leak=0.01), label="weighted")
    assert test.zero_leak_n == 1375 and test.max_n == 1375
    assert SequentialTest({"blue": 1.0}, StatsConfig(delta=0.05)).zero_leak_n == zero_leak_n(1e-6, 0.05)


def test_expected_status_is_an_outcome_not_an_error() -> None:
    test = SequentialTest({"status:503": 1.0}, label="header-blue")
    for _ in range(132):
        test.observe("status:503")
    assert test.decision is Decision.PASS and test.verdict().errors == {}
    assert SequentialTest({"status:503": 1.0}).observe("blue") is Decision.FAIL
    other = SequentialTest({"status:503": 1.0})
    assert other.observe("status:404") is Decision.FAIL and other.verdict().errors == {"status:404": 1}


def test_default_error_bound_fails_on_the_first_error_and_keeps_it_apart() -> None:
    test = SequentialTest({"blue": 0.5, "green": 0.5}, label="weighted")
    test.observe("blue")
    test.observe("green")
    assert test.observe("error:timeout") is Decision.FAIL
    verdict = test.verdict()
    assert verdict.counts == {"blue": 1, "green": 1} and verdict.errors == {"error:timeout": 1}
    assert verdict.observed["blue"] == 0.5, "errors must not dilute the observed shares"
    assert verdict.rule.startswith("error bound") and "error:timeout x1" in verdict.message, verdict.message
    assert "errors 1 = 33.3% [" in verdict.message and verdict.boundary.startswith("1 error in n=3"), verdict
    assert is_error_outcome("status:500") and not is_error_outcome("status:503", {"status:503": 1.0})


def _error_rule_oc(rule: ErrorBound, e: float, n_max: int) -> tuple[float, float]:
    """Exact (P(FAIL), P(rule satisfied)) of the error rule at error rate e within n_max responses, by DP."""
    state = np.ones(1)  # state[k]: still undecided with k errors
    failed = satisfied = 0.0
    for n in range(1, n_max + 1):
        nxt = np.zeros(n + 1)
        nxt[:-1] += state * (1 - e)
        nxt[1:] += state * e
        k = np.arange(n + 1)
        fail = k >= rule.fail_threshold(n)
        ok = np.array([rule.check(n, int(j)) is Decision.PASS for j in k]) & ~fail
        fail |= np.array([rule.check(n, int(j)) is Decision.FAIL for j in k])
        failed += float(nxt[fail].sum())
        satisfied += float(nxt[ok].sum())
        nxt[fail | ok] = 0.0
        state = nxt
    return failed, satisfied


def test_tolerated_error_rate_has_both_error_rates() -> None:
    e0, alpha, beta = 0.05, 0.01, 0.01
    rule = error_bound(e0, alpha, beta, 0.1, 0.1)
    assert rule.catch_rate == pytest.approx(0.15) and rule.cap > 100
    n_max = rule.cap
    failed, _ = _error_rule_oc(rule, e0, n_max)
    assert failed <= alpha, f"P(error rule fails | rate = max_error_rate) = {failed:.4f} > {alpha}"
    _, satisfied = _error_rule_oc(rule, 0.15, n_max)
    assert satisfied <= beta, f"P(error rule satisfied | rate = e0 + d) = {satisfied:.4f} > {beta}"
    assert all(rule.fail_threshold(n) <= rule.fail_threshold(n + 1) <= rule.fail_threshold(n) + 1
               for n in range(1, n_max))


def test_tolerated_errors_pass_and_excess_errors_fail() -> None:
    config = StatsConfig(max_error_rate=0.05)
    rng = np.random.default_rng(3)
    for error_rate, decision in ((0.15, Decision.FAIL), (0.30, Decision.FAIL), (0.01, Decision.PASS)):
        test = SequentialTest({"blue": 1.0}, config, label="header-blue")
        while test.decision is Decision.CONTINUE:
            test.observe("status:500" if rng.random() < error_rate else "blue")
        v = test.verdict()
        assert test.decision is decision, (error_rate, v.message)
        assert test.n <= test.max_n and v.counts["blue"] + sum(v.errors.values()) == v.n
        if decision is Decision.PASS:
            assert "errors below 15%" in v.rule, v.rule
    # With no errors at all, the error SPRT rejects 15% after ln(1/beta_seq) / ln(0.95/0.85) = 126
    # clean responses, before the zero-leak rule is done at 132.
    clean = SequentialTest({"blue": 1.0}, config, label="header-blue")
    while clean.observe("blue") is Decision.CONTINUE:
        pass
    first_clean = math.ceil(math.log(1 / 0.9e-6) / math.log(0.95 / 0.85))
    assert clean.n == 132 and f"(0 in n={first_clean})" in clean.verdict().rule, clean.verdict().rule


def test_default_error_rule_is_satisfied_after_the_zero_leak_number() -> None:
    rule = error_bound(0.0, 1e-6, 1e-6, 0.1, 0.1)
    assert rule.check(131, 0) is Decision.CONTINUE and rule.check(132, 0) is Decision.PASS
    assert rule.fail_threshold(1) == 1 == rule.fail_threshold(5000)


def test_max_n_allows_for_tolerated_errors() -> None:
    strict = SequentialTest({"blue": 0.5, "green": 0.5}, DEFAULT)
    tolerant = SequentialTest({"blue": 0.5, "green": 0.5}, StatsConfig(max_error_rate=0.05))
    (_, b), = tolerant.boundaries
    assert strict.max_n == 2736
    # The split's cap (at alpha / 2) plus the errors the fail rule lets through on the way.
    assert b.cap < tolerant.max_n < b.cap * 1.2, (b.cap, tolerant.max_n)


# --------------------------------------------------------------------------- multi-outcome


def test_three_versions_each_against_the_rest_at_alpha_over_k() -> None:
    shares = {"a": 0.3, "b": 0.3, "c": 0.4}
    test = SequentialTest(shares, DEFAULT)
    comps = dict(test.boundaries)
    assert set(comps) == {"a", "b", "c"}
    assert all(math.isclose(b.alpha, DEFAULT.alpha / 3) and b.beta == DEFAULT.beta for b in comps.values())
    # Union bound, exactly: the k false-failure probabilities add up to at most alpha.
    total = sum(operating_characteristic(b, shares[name]).fail for name, b in comps.items())
    assert total <= DEFAULT.alpha, total
    # A misroute of d on one version is caught by that version's test.
    assert operating_characteristic(comps["a"], 0.2).passed <= DEFAULT.beta


def test_three_versions_pass_when_right_and_fail_when_one_is_off() -> None:
    rng = np.random.default_rng(5)
    names = np.array(["a", "b", "c"])
    for probs, decision in (((0.3, 0.3, 0.4), Decision.PASS), ((0.1, 0.5, 0.4), Decision.FAIL)):
        test = SequentialTest({"a": 0.3, "b": 0.3, "c": 0.4}, LOOSE, label="three")
        for outcome in rng.choice(names, size=test.max_n, p=probs):
            if test.observe(str(outcome)) is not Decision.CONTINUE:
                break
        assert test.decision is decision, test.verdict().message
    zero = SequentialTest({"a": 0.5, "b": 0.5, "c": 0.0})
    assert zero.observe("c") is Decision.FAIL and zero.verdict().rule.startswith("zero-leak")


# --------------------------------------------------------------------------- the verdict


def test_verdict_message_and_intervals() -> None:
    test = SequentialTest({"green": 0.5, "blue": 0.5}, DEFAULT, label="weighted")
    rng = np.random.default_rng(1)
    while test.observe("blue" if rng.random() < 0.5 else "green") is Decision.CONTINUE:
        pass
    v = test.verdict()
    assert v.passed and v.decision is Decision.PASS and v.rule == "SPRT pass"
    blue, n = v.counts["blue"], v.counts["blue"] + v.counts["green"]
    lo = beta_dist.ppf(DEFAULT.alpha / 2, blue, n - blue + 1)
    hi = beta_dist.ppf(1 - DEFAULT.alpha / 2, blue + 1, n - blue)
    assert np.allclose(v.intervals["blue"], (lo, hi)), (v.intervals["blue"], lo, hi)
    expected_start = (f"weighted: PASS blue {100 * blue / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
                      f"expected 50% +-10, n={n}")
    assert v.message.startswith(expected_start) and v.message.endswith("(SPRT pass)"), v.message
    assert "pass if" in v.boundary and f"n={n}" in v.boundary, v.boundary
    # Responses in flight after the decision are counted apart and change nothing.
    test.observe("green")
    late = test.verdict()
    assert late.counts == v.counts and late.late == 1 and "1 late" in late.message


def test_failing_split_message_names_the_rule() -> None:
    test = SequentialTest({"green": 0.5, "blue": 0.5}, DEFAULT, label="weighted")
    while test.observe("blue") is Decision.CONTINUE:
        pass
    v = test.verdict()
    assert v.decision is Decision.FAIL and v.rule == "mixture fail" and v.n < 60, v.message
    assert v.message.startswith("weighted: FAIL blue 100.0% ") and v.message.endswith("(mixture fail)")


def test_clopper_pearson_edges() -> None:
    assert clopper_pearson(0, 0, 0.99) == (0.0, 1.0)
    lo, hi = clopper_pearson(0, 132, 1 - 1e-6)
    assert lo == 0.0 and math.isclose(hi, 1 - (1e-6 / 2) ** (1 / 132), rel_tol=1e-9)
    lo, hi = clopper_pearson(132, 132, 1 - 1e-6)
    assert hi == 1.0 and math.isclose(lo, (1e-6 / 2) ** (1 / 132), rel_tol=1e-9)


def _cp_cases() -> list[tuple[int, int]]:
    cases = []
    for n in (1, 2, 3, 5, 10, 30, 100, 1000, 2736, 10_000, 100_000):
        ks = {0, 1, 2, 7, n // 10, n // 3, n // 2, n - 2, n - 1, n}
        cases += [(k, n) for k in sorted(ks) if 0 <= k <= n]
    return cases


@pytest.mark.parametrize("alpha", [1e-12, 1e-6, 1e-3, 0.05, 0.5])
def test_clopper_pearson_matches_scipy_beta_quantiles(alpha: float) -> None:
    level = 1 - alpha
    tail = (1.0 - level) / 2.0  # what the interval is asked for, rounding of 1 - alpha included
    worst = 0.0
    for k, n in _cp_cases():
        lo, hi = clopper_pearson(k, n, level)
        ref_lo = 0.0 if k == 0 else float(beta_dist.ppf(tail, k, n - k + 1))
        # isf(t) is ppf(1 - t) without rounding 1 - t (which alone moves a bound by ~1e-16 / density)
        ref_hi = 1.0 if k == n else float(beta_dist.isf(tail, k + 1, n - k))
        assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
        assert abs(lo - ref_lo) <= 1e-10 and abs(hi - ref_hi) <= 1e-10, (k, n, lo, ref_lo, hi, ref_hi)
        if 0 < ref_lo:  # far into a tail too: relative agreement where the bound is tiny
            assert math.isclose(lo, ref_lo, rel_tol=1e-7), (k, n, lo, ref_lo)
        worst = max(worst, abs(lo - ref_lo), abs(hi - ref_hi))
    assert worst < 1e-11, worst


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.5), (2.5, 0.7), (0.3, 40.0), (1.0, 1.0), (17.0, 3.0), (4e4, 6e4)])
def test_beta_quantile_matches_scipy_at_non_integer_shapes(a: float, b: float) -> None:
    for q in (1e-15, 1e-9, 0.001, 0.2, 0.5, 0.77, 0.999, 1 - 1e-9):
        x = stats.beta_quantile(q, a, b)
        ref = float(beta_dist.ppf(q, a, b))
        assert abs(x - ref) <= 1e-10, (q, a, b, x, ref)
        low, high = stats.log_betainc(a, b, x)
        assert math.isclose(math.exp(low) + math.exp(high), 1.0, rel_tol=1e-12)
    assert stats.beta_quantile(0.0, a, b) == 0.0 and stats.beta_quantile(1.0, a, b) == 1.0


def _binom_pmf(k: int, n: int, p: float) -> float:
    return math.comb(n, k) * p**k * (1 - p) ** (n - k)


@pytest.mark.parametrize("level", [0.9, 0.99, 1 - 1e-6])
def test_clopper_pearson_is_exact_and_covers(level: float) -> None:
    """The bounds solve the binomial tail equations, and coverage is at least `level` at every p."""
    tail = (1.0 - level) / 2.0
    for n in (1, 2, 5, 12, 25):
        bounds = [clopper_pearson(k, n, level) for k in range(n + 1)]
        for k, (lo, hi) in enumerate(bounds):
            # lo: P(X >= k | lo) = tail; hi: P(X <= k | hi) = tail (binomial sums, not beta functions)
            if k > 0:
                upper = math.fsum(_binom_pmf(j, n, lo) for j in range(k, n + 1))
                assert math.isclose(upper, tail, rel_tol=1e-8), (n, k, lo, upper, tail)
            if k < n:
                lower = math.fsum(_binom_pmf(j, n, hi) for j in range(k + 1))
                assert math.isclose(lower, tail, rel_tol=1e-8), (n, k, hi, lower, tail)
        # Coverage: the probability that the interval misses p is at most 1 - level, checked on a
        # grid and just outside every bound (where it is largest).
        points = [i / 200 for i in range(201)]
        points += [b * (1 + s * 1e-9) for pair in bounds for b in pair for s in (-1, 1) if 0.0 < b < 1.0]
        for p in points:
            miss = math.fsum(_binom_pmf(k, n, p) for k, (lo, hi) in enumerate(bounds) if not lo <= p <= hi)
            assert miss <= (1.0 - level) * (1 + 1e-9), (n, p, miss)


@pytest.mark.parametrize(
    ("expected", "config_kwargs"),
    [({"blue": 0.5, "green": 0.6}, {}), ({}, {}), ({"blue": -0.1, "green": 1.1}, {}),
     ({"blue": 1.0}, {"alpha": 0.0}), ({"blue": 1.0}, {"max_error_rate": 1.0}), ({"blue": 1.0}, {"leak": 1.5})],
)
def test_bad_input_is_a_config_error(expected: dict[str, float], config_kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        SequentialTest(expected, StatsConfig(**config_kwargs))


# --------------------------------------------------------------------------- bounded work


def test_settings_that_need_too_many_requests_are_refused_at_once() -> None:
    # delta = 0.001 needs about 2.7 million requests per class at a 50/50 split: building its
    # boundaries would take days, so the config itself is refused, by an estimate.
    with pytest.raises(ConfigError) as tiny_delta:
        StatsConfig(delta=0.001)
    assert (tiny_delta.value.obj, tiny_delta.value.field) == ("StatsConfig", "delta")
    assert f"needs more than {stats.MAX_CLASS_REQUESTS} requests per class" in tiny_delta.value.message
    assert "choose a larger delta or looser alpha/beta" in tiny_delta.value.message
    with pytest.raises(ConfigError, match="requests per class"):
        StatsConfig(alpha=1e-12, beta=1e-12, delta=0.03)  # about 52,000 at a 50/50 split
    with pytest.raises(ConfigError) as tiny_leak:
        StatsConfig(leak=1e-4)  # zero-leak needs ln(1e-6) / ln(1 - 1e-4) = 138,149
    assert tiny_leak.value.field == "leak"
    # A share far below delta is checked when its boundaries are built: 1e-4 needs 161,000.
    with pytest.raises(ConfigError, match="for a share of 0.0001"):
        SequentialTest({"blue": 1e-4, "green": 1 - 1e-4})
    assert StatsConfig(delta=0.05).delta == 0.05, "delta = 0.05 (11,045 requests at 50/50) stays allowed"


def test_error_rates_below_double_precision_are_refused() -> None:
    # alpha = 1e-20 gives the cap's test 1e-21: a miss computed as a difference of CDFs near 1
    # cannot resolve it, and the search used to run forever finding no size.
    with pytest.raises(ConfigError) as tiny_alpha:
        StatsConfig(alpha=1e-20, delta=0.3)
    assert tiny_alpha.value.field == "alpha" and "double precision" in tiny_alpha.value.message
    with pytest.raises(ConfigError) as tiny_beta:
        StatsConfig(beta=1e-300, delta=0.49)
    assert tiny_beta.value.field == "beta"
    with pytest.raises(ConfigError, match="double precision"):
        fixed_sample_test(0.5, 1e-17, 1e-17, 0.3)
    # The smallest allowed at the default cap share (1e-13 gives 1e-14 at the cap) still works:
    # a 50/50 split at delta = 0.3 needs 564 requests, the estimate says 534.
    assert SequentialTest({"blue": 0.5, "green": 0.5}, StatsConfig(alpha=1e-13, beta=1e-13, delta=0.3)).max_n \
        == 564


def test_exact_searches_stop_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # The estimates can be a little low; the exact searches must still stop at the limit.
    # Reference: the fixed-sample N at (0.5, 1e-7, 1e-7, 0.1) is 2736, the estimate about 2717.
    estimate = stats._split_n_estimate(0.5, 1e-7, 1e-7, 0.1)
    assert estimate < 2735, f"estimate {estimate:.0f} would refuse before searching"
    monkeypatch.setattr(stats, "MAX_CLASS_REQUESTS", 2735)
    with pytest.raises(ConfigError, match="needs more than 2735 requests per class"):
        stats.fixed_sample_test.__wrapped__(0.5, 1e-7, 1e-7, 0.1)  # bypass the cache
    monkeypatch.setattr(stats, "MAX_CLASS_REQUESTS", 2736)
    assert stats.fixed_sample_test.__wrapped__(0.5, 1e-7, 1e-7, 0.1).n == 2736
    # The error rule's one-sided search: exact n, then one below it.
    n, _ = stats._error_cap(0.05, 0.15, 1e-7, 1e-7)
    assert stats._normal_n(0.05, 0.15, 1e-7, 1e-7) < n - 1, "the estimate must let the search run"
    monkeypatch.setattr(stats, "MAX_CLASS_REQUESTS", n - 1)
    with pytest.raises(ConfigError, match="for the error rule at 0.05"):
        stats._error_cap(0.05, 0.15, 1e-7, 1e-7)


# --------------------------------------------------------------------------- one range rule


@pytest.mark.parametrize(("name", "value"), [
    ("alpha", 0.0), ("alpha", 0.5), ("beta", -1e-6), ("beta", 0.7), ("delta", 0.5), ("delta", 0.9),
    ("delta", float("nan")),
])
def test_one_range_rule_for_every_front_end(name: str, value: float) -> None:
    settings = {"alpha": 1e-6, "beta": 1e-6, "delta": 0.1, name: value}
    with pytest.raises(ConfigError) as options:
        stats.check_settings(**settings)
    assert (options.value.obj, options.value.field) == ("options", f"--{name}")
    assert "strictly between 0 and 0.5" in options.value.message
    with pytest.raises(ConfigError) as config:
        StatsConfig(**settings)
    assert (config.value.obj, config.value.field) == ("StatsConfig", name)


def test_the_range_rule_admits_the_edges_it_promises() -> None:
    # Just inside the range, a 50/50 split still builds (delta = 0.49: both alternatives in (0, 1)).
    stats.check_settings(0.49, 0.49, 0.49)
    assert SequentialTest({"blue": 0.5, "green": 0.5}, StatsConfig(alpha=0.4, beta=0.4, delta=0.49)).max_n > 0
    with pytest.raises(ConfigError, match="--delta: needs more than"):
        stats.check_settings(1e-6, 1e-6, 0.001)


# --------------------------------------------------------------------------- the lower bound's machinery


@pytest.mark.parametrize(("d", "lam", "lam0"), [(0.45, 10.0, 8.0), (0.45, 100.0, 60.0), (0.4, 20.0, 50.0)])
def test_lagrangian_value_is_the_minimum_over_every_test(d: float, lam: float, lam0: float) -> None:
    # docs/statistics.md bounds the mean of every test by a value found by backward induction
    # (bench.bench_stats.lagrangian_value). Here that value is checked against brute force:
    # every assignment of pass / fail / continue to the states (n, s) of a horizon-3 test,
    # evaluated exactly, with multipliers where the best test samples before it decides (its
    # value is below both deciding at once: 2 * lam to pass, lam0 to fail).
    import itertools

    from bench.bench_stats import lagrangian_value

    p0, horizon = 0.5, 3
    states = [(n, s) for n in range(horizon) for s in range(n + 1)]
    finals = [(horizon, s) for s in range(horizon + 1)]

    def cost(policy: dict[tuple[int, int], str]) -> float:
        total = 0.0
        for path in itertools.product((0, 1), repeat=horizon):
            n = s = 0
            while True:
                action = policy[(n, s)]
                if action != "continue":
                    break
                s, n = s + path[n], n + 1
            def prob(p: float, n: int = n, s: int = s) -> float:
                return float(p ** s * (1 - p) ** (n - s)) / 2 ** (horizon - n)  # paths sharing this prefix
            total += prob(p0) * n
            if action == "pass":
                total += lam * (prob(p0 - d) + prob(p0 + d))
            else:
                total += lam0 * prob(p0)
        return total

    best = min(cost(dict(zip(states, inner, strict=True)) | dict(zip(finals, last, strict=True)))
               for inner in itertools.product(("pass", "fail", "continue"), repeat=len(states))
               for last in itertools.product(("pass", "fail"), repeat=len(finals)))
    assert best < min(2 * lam, lam0), "the case must need sampling to be a check of the induction"
    assert math.isclose(lagrangian_value(p0, d, lam, lam0, horizon), best, rel_tol=1e-12)


def test_abtest_run_refuses_a_bad_delta_before_it_starts_anything(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from abtest_harness import cli, rollout

    def started(*_: object, **__: object) -> None:
        raise AssertionError("nothing may start with a bad setting")

    monkeypatch.setattr(rollout, "open_mesh", started)
    monkeypatch.setattr(cli, "validate_stages", started)
    assert cli.main(["run", "--delta", "0.9"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "delta: must be strictly between 0 and 0.5, got 0.9" in err[0], err
