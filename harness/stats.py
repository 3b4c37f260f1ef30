"""Sequential tests that turn a stream of classified responses into a Verdict.

One `SequentialTest` judges one request class (no header, ``x-api-version: blue``, ...)
against the share of each outcome the routing oracle expects. It takes one outcome at a
time (`observe`, O(1): every boundary is computed once, when the test is built, and cached)
and answers CONTINUE, PASS or FAIL, with false-failure rate alpha and miss rate beta for a
share off by delta, however often it is looked at.

The rules, by kind of expected share (docs/statistics.md states each with its derivation):

- a split (0 < p0 < 1): a mixture likelihood-ratio FAIL rule, PASS when two Wald SPRTs
  reject p0 - d and p0 + d, and an exact fixed-sample rule at a cap (`split_boundaries`);
  `operating_characteristic` computes its exact error rates by dynamic programming;
- shares 0 and 1 (zero-leak): one wrong response fails, `zero_leak_n` clean ones pass;
- error responses: counted apart, judged by `ErrorBound` against `max_error_rate`.

`check_settings` is the one range rule for alpha, beta and delta that every front end
applies before anything starts. numpy and scipy are imported where boundaries are computed,
not at import, so commands that do not sample (``abtest validate``) do not load them; the
verdict's Clopper-Pearson intervals are pure Python (`beta_quantile`), so a run whose
boundaries are stored (`stored_split_boundaries`) does not load them either.
"""

from __future__ import annotations

import functools
import math
import statistics
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from abtest_harness.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MAX_CLASS_REQUESTS",
    "Decision",
    "ErrorBound",
    "FixedSampleTest",
    "OperatingPoint",
    "SequentialTest",
    "SplitBoundaries",
    "StatsConfig",
    "Verdict",
    "check_settings",
    "beta_quantile",
    "clopper_pearson",
    "error_bound",
    "fixed_sample_test",
    "is_error_outcome",
    "log_betainc",
    "operating_characteristic",
    "split_boundaries",
    "wald_wolfowitz_bound",
    "zero_leak_n",
]

_STANDARD_NORMAL = statistics.NormalDist()

# Shares within this of 0 or 1 are treated as exactly 0 or 1 (weights are integers / 100).
_SHARE_EPS = 1e-9

# The most requests one class may need (any cap: split, error rule, zero-leak). Building a split's
# boundaries is quadratic in its cap (about 0.3 s at the default 2736, 4 s at 11045 for
# delta = 0.05, 14 s at this limit, minutes beyond), and all of it happens before the first
# request is sent; settings that need more are refused with a ConfigError instead.
MAX_CLASS_REQUESTS = 20_000


# The smallest error probability the exact searches are given. A miss is computed as a
# difference of two binomial CDFs near 1, exact to about 1e-16 only: below this the search
# finds nothing (or trusts rounding noise), so such settings are refused instead.
_MIN_TAIL = 1e-14


def _check_tails(alpha: float, beta: float, *, obj: str = "StatsConfig", prefix: str = "") -> None:
    """Refuse error probabilities below what double-precision binomial tails resolve."""
    for name, value in (("alpha", alpha), ("beta", beta)):
        if value < _MIN_TAIL:
            raise ConfigError(obj, prefix + name,
                              f"gives an error probability of {value:.3g} to an exact binomial test "
                              f"(its share at the cap, per tracked outcome), below {_MIN_TAIL:g}, "
                              "which double precision does not resolve; choose a larger one")


def _too_many(what: str, field_name: str, needed: float, *, obj: str = "StatsConfig") -> ConfigError:
    """The refusal of settings under which one class would need more than MAX_CLASS_REQUESTS."""
    about = f" (about {needed:.0f} {what})" if math.isfinite(needed) else f" ({what})"
    return ConfigError(obj, field_name,
                       f"needs more than {MAX_CLASS_REQUESTS} requests per class{about}; "
                       "choose a larger delta or looser alpha/beta")


def _normal_n(p0: float, p1: float, alpha: float, beta: float) -> float:
    """Normal-approximation size of a one-sided test of p0 against p1 with errors (alpha, beta)."""
    z_alpha, z_beta = -_STANDARD_NORMAL.inv_cdf(alpha), -_STANDARD_NORMAL.inv_cdf(beta)
    spread = z_alpha * math.sqrt(p0 * (1 - p0)) + z_beta * math.sqrt(p1 * (1 - p1))
    return (max(spread, 0.0) / abs(p1 - p0)) ** 2


def _split_n_estimate(p0: float, alpha: float, beta: float, delta: float) -> float:
    """About `fixed_sample_test(p0, alpha, beta, delta).n`, computed in microseconds (no search).

    Normal approximation with alpha split evenly between the tails (within 1% of the exact N at
    the defaults), and the exact lower bound an alternative clipped to 0 or 1 imposes: the
    region must exclude 0 (or n), so (1 - p0)^n (or p0^n) <= alpha.
    """
    needed = 0.0
    for p1 in (max(p0 - delta, 0.0), min(p0 + delta, 1.0)):
        needed = max(needed, _normal_n(p0, p1, alpha / 2, beta))
    if p0 - delta <= 0.0:
        needed = max(needed, math.log(alpha) / math.log1p(-p0))
    if p0 + delta >= 1.0:
        needed = max(needed, math.log(alpha) / math.log(p0))
    return needed


#: The open interval every one of alpha, beta and delta must lie in. An error probability of
#: 0.5 or more is no better than a coin; a delta of 0.5 or more tolerates a 50/50 split sent
#: all one way, and leaves a 50/50 split with no alternative inside [0, 1] to test against.
SETTING_RANGE = (0.0, 0.5)


def check_settings(
    alpha: float, beta: float, delta: float, *, cap_share: float = 0.1, obj: str = "options", prefix: str = "--"
) -> None:
    """The one range rule for alpha, beta and delta, for every front end, before anything starts.

    Each must lie strictly inside `SETTING_RANGE`; a ConfigError names the first one that does
    not as ``<prefix><name>`` (``--delta`` for the command line and the pytest options,
    ``delta`` for `StatsConfig`). Also refuses, by estimate, settings under which one class
    would need more than MAX_CLASS_REQUESTS requests (see `StatsConfig`).

    >>> check_settings(1e-6, 1e-6, 0.9)
    Traceback (most recent call last):
    ...
    abtest_harness.errors.ConfigError: options: --delta: must be strictly between 0 and 0.5, got 0.9
    """
    low, high = SETTING_RANGE
    for name, value in (("alpha", alpha), ("beta", beta), ("delta", delta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise ConfigError(obj, prefix + name, f"must be strictly between {low:g} and {high:g}, got {value!r}")
    _check_tails(alpha * cap_share, beta * cap_share, obj=obj, prefix=prefix)
    needed = _split_n_estimate(0.5, alpha * cap_share, beta * cap_share, delta)
    if needed > MAX_CLASS_REQUESTS:
        raise _too_many("for a 50/50 split", prefix + "delta", needed, obj=obj)


@dataclass(frozen=True)
class StatsConfig:
    """Error rates and tolerances of every verdict.

    alpha: probability of failing a correct rollout (false failure), per request class.
    beta: probability of passing a share that is off by delta or more (missed misroute).
    delta: the smallest share error (absolute) that must be caught, 0.10 = 10 points.
    max_error_rate: error responses tolerated as a share of all responses (0: none).
    leak: the smallest leak a deterministic route must catch; None means delta.
    cap_share: share of alpha and of beta given to the fixed-sample rule at the cap.
    composite_weight: weight of the uniform-prior part of the fail mixture.
    """

    alpha: float = 1e-6
    beta: float = 1e-6
    delta: float = 0.10
    max_error_rate: float = 0.0
    leak: float | None = None
    cap_share: float = 0.1
    composite_weight: float = 0.1

    def __post_init__(self) -> None:
        for name in ("cap_share", "composite_weight"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError("StatsConfig", name, f"must be strictly between 0 and 1, got {value!r}")
        check_settings(self.alpha, self.beta, self.delta, cap_share=self.cap_share, obj="StatsConfig", prefix="")
        if not 0.0 <= self.max_error_rate < 1.0:
            raise ConfigError("StatsConfig", "max_error_rate",
                              f"must be in [0, 1), got {self.max_error_rate!r}")
        if self.leak is not None and not 0.0 < self.leak < 1.0:
            raise ConfigError("StatsConfig", "leak", f"must be strictly between 0 and 1, got {self.leak!r}")
        self._check_size()

    def _check_size(self) -> None:
        """Refuse at once settings under which a class needs more than MAX_CLASS_REQUESTS requests.

        Estimates only (normal approximation, no search), at a 50/50 split, the costliest
        share for a given delta; other shares and k-way splits are checked exactly, and bounded,
        when their boundaries are built (`fixed_sample_test`).
        """
        split_alpha = self.alpha / (2 if self.max_error_rate > 0 else 1)
        _check_tails(split_alpha * self.cap_share, self.beta * self.cap_share)
        needed = _split_n_estimate(0.5, split_alpha * self.cap_share, self.beta * self.cap_share, self.delta)
        if needed > MAX_CLASS_REQUESTS:
            raise _too_many("for a 50/50 split", "delta", needed)
        e0 = self.max_error_rate
        e1 = min(e0 + self.delta, 1.0)
        if e0 > 0.0 and e1 < 1.0:
            needed = _normal_n(e0, e1, self.alpha / 2 * self.cap_share, self.beta * self.cap_share)
            if needed > MAX_CLASS_REQUESTS:
                raise _too_many(f"for the error rule at {e0:g}", "delta", needed)
        leak_n = math.log(self.beta) / math.log1p(-self.leak_share)
        if leak_n > MAX_CLASS_REQUESTS:
            raise _too_many("for a deterministic route", "delta" if self.leak is None else "leak", leak_n)

    @property
    def leak_share(self) -> float:
        """The leak a deterministic route must catch: `leak`, or delta when unset."""
        return self.delta if self.leak is None else self.leak


class Decision(Enum):
    """What a sequential test says after each observation."""

    CONTINUE = "continue"
    PASS = "pass"
    FAIL = "fail"


def is_error_outcome(outcome: str, expected: Mapping[str, float] | None = None) -> bool:
    """True for "status:NNN" / "error:KIND" outcomes that the expected distribution does not list."""
    if expected is not None and outcome in expected:
        return False
    return outcome.startswith(("status:", "error:"))


# --------------------------------------------------------------------------- reference rules


def _loglik(successes: np.ndarray, n: int, p: float) -> np.ndarray:
    """log L(p) of `successes` in n Bernoulli trials, without the binomial coefficient; -inf if impossible."""
    import numpy as np

    s = successes.astype(float)
    if p <= 0.0:
        return np.where(successes == 0, 0.0, -np.inf)
    if p >= 1.0:
        return np.where(successes == n, 0.0, -np.inf)
    return s * math.log(p) + (n - s) * math.log1p(-p)


@dataclass(frozen=True)
class FixedSampleTest:
    """The exact fixed-sample binomial test: pass iff accept_lo <= count <= accept_hi after n trials.

    false_fail = P(count outside | p0) <= alpha; miss = max over p0 +- delta of P(count inside) <= beta.
    """

    p0: float
    n: int
    accept_lo: int
    accept_hi: int
    false_fail: float
    miss: float


def _fixed_sample_region(
    n: int, p0: float, alpha: float, beta: float, delta: float
) -> tuple[int, int, float, float] | None:
    """The region with the smallest miss among those with false failure <= alpha, if that miss is <= beta.

    For every lower end lo with P(X < lo | p0) <= alpha, the upper end is the smallest hi with
    P(X > hi | p0) <= alpha - P(X < lo | p0): every way of splitting alpha between the tails.
    """
    import numpy as np
    from scipy.stats import binom

    k = np.arange(n + 1)
    below = np.concatenate(([0.0], binom.cdf(k[:-1], n, p0)))  # below[lo] = P(X < lo)
    above = binom.sf(k, n, p0)  # above[hi] = P(X > hi), decreasing in hi
    los = np.nonzero(below <= alpha)[0]
    if los.size == 0:
        return None
    budget = alpha - below[los]
    # smallest hi with above[hi] <= budget: above is decreasing, so search on its negation
    his = np.searchsorted(-above, -budget, side="left")
    keep = (his <= n) & (his >= los)
    los, his = los[keep], his[keep]
    if los.size == 0:
        return None
    miss = np.zeros(los.size)
    for p in (p0 - delta, p0 + delta):
        if p <= 0.0:
            inside = (los == 0).astype(float)
        elif p >= 1.0:
            inside = (his == n).astype(float)
        else:
            cdf = binom.cdf(k, n, p)
            inside = cdf[his] - np.where(los > 0, cdf[np.maximum(los - 1, 0)], 0.0)
        miss = np.maximum(miss, inside)
    best = int(np.argmin(miss))
    if miss[best] > beta:
        return None
    lo, hi = int(los[best]), int(his[best])
    return lo, hi, float(below[lo] + above[hi]), float(miss[best])


def _fixed_sample_candidates(ns: np.ndarray, p0: float, alpha: float, beta: float, delta: float) -> np.ndarray:
    """The sizes among `ns` that pass a cheap necessary condition for `_fixed_sample_region` (vectorized).

    Any feasible region has lo <= L (the largest lo with P(X < lo | p0) <= alpha) and
    hi >= H (the smallest hi with P(X > hi | p0) <= alpha), so its miss at p is at least
    P(L <= X <= H | p). L and H come from the binomial quantile functions; taking L + 1 and
    H - 1 keeps the condition necessary even if a quantile is off by one in floating point.
    """
    import numpy as np
    from scipy.stats import binom

    lo = binom.ppf(alpha, ns, p0) + 1  # >= L
    hi = binom.isf(alpha, ns, p0) - 1  # <= H
    ok = np.ones(ns.size, dtype=bool)
    for p in (p0 - delta, p0 + delta):
        if 0.0 < p < 1.0:
            inside = np.where(hi >= lo, binom.cdf(hi, ns, p) - binom.cdf(lo - 1, ns, p), 0.0)
            ok &= inside <= beta
    return ns[ok]


@functools.lru_cache(maxsize=256)
def fixed_sample_test(p0: float, alpha: float, beta: float, delta: float) -> FixedSampleTest:
    """The smallest n at which an exact two-sided binomial test has errors (alpha, beta) at p0 +- delta.

    "Has errors (alpha, beta)": some region [lo, hi] with P(outside | p0) <= alpha (alpha split
    between the tails in whichever way works best) and P(inside | p) <= beta at p = p0 - delta
    and p0 + delta (an alternative at 0 or 1 is decided by whether the region holds 0 or n).
    Among feasible regions the one with the smallest miss is returned. The scan starts at
    the information bound (`wald_wolfowitz_bound` with these errors), below which no test
    exists, and skips sizes that fail a cheap necessary condition, so n is the true minimum.

    >>> t = fixed_sample_test(0.5, 1e-6, 1e-6, 0.1)
    >>> (t.n, t.accept_lo, t.accept_hi)
    (2291, 1029, 1262)
    """
    import numpy as np

    if not 0.0 < p0 < 1.0:
        raise ConfigError("fixed_sample_test", "p0", f"must be strictly between 0 and 1, got {p0!r}")
    _check_tails(alpha, beta)
    what = f"for a share of {p0:g}"
    needed = _split_n_estimate(p0, alpha, beta, delta)
    if needed > MAX_CLASS_REQUESTS:  # refuse before a search that would take minutes
        raise _too_many(what, "delta", needed)
    start = max(1, math.floor(_information_bound(p0, alpha, beta, delta)))
    while start <= MAX_CLASS_REQUESTS:  # the estimate can be low: the search stays bounded
        ns = np.arange(start, min(start + 512, MAX_CLASS_REQUESTS + 1))
        for n in _fixed_sample_candidates(ns, p0, alpha, beta, delta):
            region = _fixed_sample_region(int(n), p0, alpha, beta, delta)
            if region is not None:
                lo, hi, false_fail, miss = region
                return FixedSampleTest(p0, int(n), lo, hi, false_fail, miss)
        start += 512
    raise _too_many(what, "delta", math.inf)


def _kl(p: float, q: float) -> float:
    """Kullback-Leibler divergence KL(Bern(p) || Bern(q)), +inf when q puts no mass where p does."""
    total = 0.0
    for a, b in ((p, q), (1.0 - p, 1.0 - q)):
        if a > 0.0:
            if b <= 0.0:
                return math.inf
            total += a * math.log(a / b)
    return total


def _information_bound(p0: float, alpha: float, beta: float, delta: float) -> float:
    """Wald-Wolfowitz with both error terms: no test (fixed or sequential) needs fewer trials on average."""
    # E_p0[log LR] over the decision: KL(Bern(1-alpha) || Bern(beta)) per the data-processing inequality.
    info = (1 - alpha) * math.log((1 - alpha) / beta) + alpha * math.log(alpha / (1 - beta))
    kls = [_kl(p0, p) for p in (p0 - delta, p0 + delta) if 0.0 <= p <= 1.0]
    return max(info / kl for kl in kls if kl > 0.0)


def wald_wolfowitz_bound(p0: float, beta: float, delta: float) -> float:
    """ln(1/beta) / KL(p0 || p0 +- delta), the larger side: the expected size no test can beat at p0.

    To pass at p0 a test must reject "share = p0 + d" and "share = p0 - d", each at error
    beta; rejecting one needs on average ln(1/beta) / KL(p0 || p0 +- d) observations
    (Wald-Wolfowitz). An alternative at 0 or 1 costs nothing (one counterexample rejects it).
    676.8 at p0 = 0.5 and 376.5 at 0.9, delta = 0.1, beta = 1e-6.
    """
    kls = [_kl(p0, p) for p in (p0 - delta, p0 + delta) if 0.0 <= p <= 1.0]
    return max((math.log(1 / beta) / kl for kl in kls if 0.0 < kl < math.inf), default=0.0)


def zero_leak_n(beta: float, leak: float) -> int:
    """Requests without a wrong answer needed to bound a leak: ceil(ln(beta) / ln(1 - leak)).

    >>> zero_leak_n(1e-6, 0.10), zero_leak_n(1e-6, 0.01)
    (132, 1375)
    """
    return math.ceil(math.log(beta) / math.log1p(-leak) - 1e-12)


def clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial share k/n at confidence `level`.

    The bounds are beta quantiles: lo = B^-1(t; k, n - k + 1), hi = B^-1(1 - t; k + 1, n - k)
    with t = (1 - level) / 2, and 0 (1) when k = 0 (k = n). hi is computed as
    1 - B^-1(t; n - k, k + 1), the same quantity without rounding 1 - t. Pure Python
    (`beta_quantile`), so a verdict does not import scipy.
    """
    if n <= 0:
        return (0.0, 1.0)
    tail = (1.0 - level) / 2.0
    lo = 0.0 if k <= 0 else beta_quantile(tail, k, n - k + 1)
    hi = 1.0 if k >= n else 1.0 - beta_quantile(tail, n - k, k + 1)
    return (lo, hi)


# The continued fraction stops when a factor is within this of 1 (a few ulps).
_CF_EPS = 4e-16
_CF_TINY = 1e-300  # stands in for a zero numerator/denominator (modified Lentz)
_CF_MAX_TERMS = 100_000


def _log1mexp(x: float) -> float:
    """log(1 - e^x) for x <= 0, accurate near 0 and far below it."""
    if x >= 0.0:
        return -math.inf
    return math.log(-math.expm1(x)) if x > -math.log(2.0) else math.log1p(-math.exp(x))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _betainc_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (DLMF 8.17.22) by the modified Lentz method.

    Returns F with I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) / F, where
    F = 1 + d1 / (1 + d2 / (1 + ...)), d_2m+1 = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)) and
    d_2m = m(b-m)x / ((a+2m-1)(a+2m)). It converges fast for x < (a+1)/(a+b+2); larger x
    go through the symmetry I_x(a, b) = 1 - I_1-x(b, a).
    """
    f = c = 1.0
    d = 0.0
    for j in range(1, _CF_MAX_TERMS):
        m = j // 2
        if j % 2:
            term = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            term = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + term * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + term / c
        if abs(c) < _CF_TINY:
            c = _CF_TINY
        factor = c * d
        f *= factor
        if abs(factor - 1.0) <= _CF_EPS:
            return f
    raise ArithmeticError(f"incomplete beta fraction did not converge for a={a}, b={b}, x={x}")


def log_betainc(a: float, b: float, x: float) -> tuple[float, float]:
    """(log I_x(a, b), log(1 - I_x(a, b))): the regularized incomplete beta and its complement.

    The smaller of the two comes from the continued fraction, on the side where it converges
    fast, so each is accurate to a few ulps relative even when tiny; the larger follows from it.
    """
    if x <= 0.0:
        return (-math.inf, 0.0)
    if x >= 1.0:
        return (0.0, -math.inf)
    front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    if x * (a + b + 2.0) < a + 1.0:
        lower = front - math.log(a) - math.log(_betainc_fraction(a, b, x))
        return (lower, _log1mexp(lower))
    upper = front - math.log(b) - math.log(_betainc_fraction(b, a, 1.0 - x))
    return (_log1mexp(upper), upper)


def beta_quantile(q: float, a: float, b: float) -> float:
    """x with I_x(a, b) = q: the q-quantile of the Beta(a, b) distribution (a, b > 0).

    Solved for the smaller tail (q > 1/2 through B^-1(q; a, b) = 1 - B^-1(1 - q; b, a)) by
    Newton's method on log I as a function of log x, kept inside a bracket that every
    evaluation narrows (bisection when a step leaves it). For b >= 1, log I is concave in
    log x (log X has a log-concave density), so after the first step Newton approaches the
    root from below without overshooting. The error is below 1e-12 absolute on the tested
    grid (shapes up to 1e5; the tests hold it to 1e-10 against scipy); relative to a tiny
    quantile it is about 1e-13 for shapes up to a few thousand and up to about 1e-9 near 1e5,
    where log B(a, b) from `math.lgamma` carries rounding of that order.
    """
    if not (a > 0.0 and b > 0.0):
        raise ValueError(f"beta_quantile needs a, b > 0, got a={a!r}, b={b!r}")
    if not q > 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    if q > 0.5:
        return 1.0 - beta_quantile(1.0 - q, b, a)
    log_q, log_b = math.log(q), _log_beta(a, b)
    # I_x <= x^a / (a B(a, b)) for b >= 1: this start is at or left of the root.
    u = min((log_q + math.log(a) + log_b) / a, math.log(0.5))
    low, high = -math.inf, 0.0  # log x: I below q at low, above q at high
    for _ in range(400):
        x = math.exp(u)
        log_i = log_betainc(a, b, x)[0]
        gap = log_i - log_q
        if gap == 0.0:
            return x
        if gap < 0.0:
            low = u
        else:
            high = u
        # d log I / d log x = x * density(x) / I
        log_slope = a * u + (b - 1.0) * math.log1p(-x) - log_b - log_i
        step = -gap / math.exp(log_slope) if log_slope > -700.0 else -math.copysign(math.inf, gap)
        if abs(step) <= 1e-13:  # relative in x; Newton's next correction would be about its square
            return math.exp(u + step)
        nxt = u + step
        if not low < nxt < high:
            nxt = (low + high) / 2.0 if low > -math.inf else high - max(1.0, 2.0 * abs(high - u))
        if high - low <= 1e-15:
            return math.exp(nxt)
        u = nxt
    return math.exp(u)


# --------------------------------------------------------------------------- split boundaries


@dataclass(frozen=True)
class SplitBoundaries:
    """Precomputed decision boundaries of one tracked share (index: n, the responses so far).

    After n responses with count s of the tracked outcome: FAIL if s <= fail_lo[n] or
    s >= fail_hi[n]; else PASS if pass_lo[n] <= s <= pass_hi[n]; at n == cap an undecided
    test passes iff cap_lo <= s <= cap_hi and fails otherwise.
    """

    p0: float
    delta: float
    alpha: float
    beta: float
    alpha_seq: float
    beta_seq: float
    cap: int
    cap_lo: int
    cap_hi: int
    fail_lo: tuple[int, ...]
    fail_hi: tuple[int, ...]
    pass_lo: tuple[int, ...]
    pass_hi: tuple[int, ...]
    overlaps: int  # sizes n at which some count crosses both boundaries (FAIL wins there)

    def decide(self, n: int, s: int) -> Decision:
        """The decision after n responses of which s are the tracked outcome."""
        if s <= self.fail_lo[n] or s >= self.fail_hi[n]:
            return Decision.FAIL
        if self.pass_lo[n] <= s <= self.pass_hi[n]:
            return Decision.PASS
        if n >= self.cap:
            return Decision.PASS if self.cap_lo <= s <= self.cap_hi else Decision.FAIL
        return Decision.CONTINUE

    def describe(self, n: int, name: str) -> str:
        """The boundary in force at n, in words, for the Verdict."""
        n = min(max(n, 0), self.cap)
        fail = []
        if self.fail_lo[n] >= 0:
            fail.append(f"{name} <= {self.fail_lo[n]}")
        if self.fail_hi[n] <= n:
            fail.append(f"{name} >= {self.fail_hi[n]}")
        parts = ["fail if " + " or ".join(fail) if fail else "no fail yet"]
        if self.pass_lo[n] <= self.pass_hi[n]:
            parts.append(f"else pass if {self.pass_lo[n]} <= {name} <= {self.pass_hi[n]}")
        else:
            parts.append("no pass yet")
        return f"n={n}: " + ", ".join(parts) + f"; cap n={self.cap} accepts {self.cap_lo}..{self.cap_hi}"


@functools.lru_cache(maxsize=256)
def split_boundaries(
    p0: float, alpha: float, beta: float, delta: float, cap_share: float = 0.1, composite_weight: float = 0.1
) -> SplitBoundaries:
    """Boundaries of the split test for a tracked share p0 (docs/statistics.md states the rules)."""
    import numpy as np
    from scipy import special

    if not 0.0 < p0 < 1.0:
        raise ConfigError("split_boundaries", "p0", f"must be strictly between 0 and 1, got {p0!r}")
    alpha_seq, beta_seq = alpha * (1 - cap_share), beta * (1 - cap_share)
    cap_test = fixed_sample_test(p0, alpha * cap_share, beta * cap_share, delta)
    cap = cap_test.n
    pass_level = math.log(1 / beta_seq)
    fail_level = math.log(1 / alpha_seq)
    w_points = math.log((1 - composite_weight) / 2)
    w_uniform = math.log(composite_weight)
    lower, upper = max(p0 - delta, 0.0), min(p0 + delta, 1.0)
    fail_lo, fail_hi, pass_lo, pass_hi = [-1], [1], [1], [0]  # n = 0: nothing decided
    overlaps = 0
    for n in range(1, cap + 1):
        s = np.arange(n + 1)
        ll0 = _loglik(s, n, p0)
        ll_lower, ll_upper = _loglik(s, n, lower), _loglik(s, n, upper)
        passing = (ll0 - ll_lower >= pass_level) & (ll0 - ll_upper >= pass_level)
        with np.errstate(divide="ignore"):
            points = w_points + np.logaddexp(ll_lower, ll_upper) - ll0
        # integral of q^s (1-q)^(n-s) over a uniform prior = B(s+1, n-s+1)
        uniform = w_uniform + special.betaln(s + 1, n - s + 1) - ll0
        failing = np.logaddexp(points, uniform) >= fail_level
        overlaps += int(np.any(passing & failing))
        idx = np.nonzero(passing)[0]
        pass_lo.append(int(idx[0]) if idx.size else 1)
        pass_hi.append(int(idx[-1]) if idx.size else 0)
        keep = np.nonzero(~failing)[0]
        if keep.size == 0:  # every count fails: encode as "s <= n"
            fail_lo.append(n)
            fail_hi.append(0)
        else:
            # log M_n is convex in s (a sum of log-convex terms), so the non-failing counts are an interval
            if keep[-1] - keep[0] + 1 != keep.size:
                raise AssertionError(f"fail region of p0={p0} at n={n} is not two-sided")
            fail_lo.append(int(keep[0]) - 1)
            fail_hi.append(int(keep[-1]) + 1)
    return SplitBoundaries(
        p0, delta, alpha, beta, alpha_seq, beta_seq, cap, cap_test.accept_lo, cap_test.accept_hi,
        tuple(fail_lo), tuple(fail_hi), tuple(pass_lo), tuple(pass_hi), overlaps,
    )


#: Where `stored_split_boundaries` keeps boundaries; ``off`` computes them every time.
STATS_CACHE_ENV = "ABTEST_STATS_CACHE"
_STORE_FORMAT = 1


@functools.lru_cache(maxsize=256)
def stored_split_boundaries(
    p0: float, alpha: float, beta: float, delta: float, cap_share: float = 0.1, composite_weight: float = 0.1
) -> SplitBoundaries:
    """`split_boundaries`, kept on disk between processes (building one costs 1-2 s of CPU).

    The entry's name is the sha256 of the arguments, this file's bytes and the numpy and
    scipy versions, so any change to the computation is a new entry; a stored entry that does
    not read back as boundaries of the right size is computed again. Stored under
    ``$ABTEST_STATS_CACHE``, else ``$XDG_CACHE_HOME/abtest-harness/stats`` or
    ``~/.cache/abtest-harness/stats``.
    """
    import hashlib
    import json
    import os
    import tempfile
    from importlib import metadata
    from pathlib import Path

    args = [p0, alpha, beta, delta, cap_share, composite_weight]
    given = os.environ.get(STATS_CACHE_ENV)
    if given is not None and given.strip().lower() in ("", "0", "off", "no", "false", "none"):
        return split_boundaries(*args)
    directory = Path(given) if given is not None else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "abtest-harness" / "stats"
    try:
        versions = [metadata.version("numpy"), metadata.version("scipy")]
        source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    except (OSError, metadata.PackageNotFoundError):
        return split_boundaries(*args)
    name = hashlib.sha256(json.dumps([_STORE_FORMAT, [repr(a) for a in args], source, versions]).encode())
    entry = directory / f"split-{name.hexdigest()}.json"
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        bounds = SplitBoundaries(**fields)
        sizes = {len(bounds.fail_lo), len(bounds.fail_hi), len(bounds.pass_lo), len(bounds.pass_hi)}
        if sizes == {bounds.cap + 1} and [bounds.p0, bounds.alpha, bounds.beta, bounds.delta] == args[:4]:
            return bounds
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # missing or damaged: compute it
    bounds = split_boundaries(*args)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({k: getattr(bounds, k) for k in bounds.__dataclass_fields__}, handle)
        os.replace(tmp, entry)
    except OSError:
        pass
    return bounds


@dataclass(frozen=True)
class OperatingPoint:
    """Exact behaviour of a split test at one true share: P(FAIL), P(PASS), and when it stops.

    `stop[n]` is the probability of deciding at exactly n responses (sums to 1: the cap decides).
    """

    p: float
    fail: float
    passed: float
    stop: np.ndarray = field(repr=False)

    @property
    def mean_n(self) -> float:
        """Expected responses to a decision."""
        import numpy as np

        return float(np.dot(np.arange(self.stop.size), self.stop))

    def quantile_n(self, q: float) -> int:
        """The smallest n by which the test has decided with probability >= q."""
        import numpy as np

        return int(np.searchsorted(np.cumsum(self.stop), q - 1e-12))


def operating_characteristic(bounds: SplitBoundaries, p: float, pass_floor: int = 0) -> OperatingPoint:
    """Exact P(FAIL), P(PASS) and stopping-time distribution at true share p, by dynamic programming.

    Carries the probability of every (n, count) state still undecided forward one response at
    a time, removing the mass that crosses a boundary: O(cap^2), no simulation error.
    `pass_floor`: a PASS before this n is reported at it (`SequentialTest.min_pass_n`: the
    class also waits for its error rule, which needs that many clean responses).
    """
    import numpy as np

    state = np.ones(1)
    fail = passed = 0.0
    stop = np.zeros(max(bounds.cap, pass_floor) + 1)
    for n in range(1, bounds.cap + 1):
        nxt = np.zeros(n + 1)
        nxt[:-1] += state * (1.0 - p)
        nxt[1:] += state * p
        s = np.arange(n + 1)
        fail_mask = (s <= bounds.fail_lo[n]) | (s >= bounds.fail_hi[n])
        pass_mask = ~fail_mask & (s >= bounds.pass_lo[n]) & (s <= bounds.pass_hi[n])
        if n == bounds.cap:
            undecided = ~(pass_mask | fail_mask)
            pass_mask |= undecided & (s >= bounds.cap_lo) & (s <= bounds.cap_hi)
            fail_mask = ~pass_mask
        f, q = float(nxt[fail_mask].sum()), float(nxt[pass_mask].sum())
        fail += f
        passed += q
        stop[n] += f
        stop[max(n, pass_floor)] += q
        nxt[fail_mask | pass_mask] = 0.0
        state = nxt
    return OperatingPoint(p, fail, passed, stop)


# --------------------------------------------------------------------------- error bound


def _error_cap(e0: float, e1: float, alpha: float, beta: float) -> tuple[int, int]:
    """One-sided exact test: smallest (n, c) with P(Bin(n, e0) > c) <= alpha, P(Bin(n, e1) <= c) <= beta."""
    from scipy.stats import binom

    _check_tails(alpha, beta)
    what = f"for the error rule at {e0:g}"
    if e1 < 1.0:
        needed = _normal_n(e0, e1, alpha, beta)
        if needed > MAX_CLASS_REQUESTS:  # refuse before a search of one scipy call per size
            raise _too_many(what, "delta", needed)
    info = (1 - alpha) * math.log((1 - alpha) / beta) + alpha * math.log(alpha / (1 - beta))
    n = max(1, math.floor(info / _kl(e0, e1)))
    while n <= MAX_CLASS_REQUESTS:
        c = int(binom.isf(alpha, n, e0))
        while c > 0 and binom.sf(c - 1, n, e0) <= alpha:
            c -= 1
        while binom.sf(c, n, e0) > alpha:
            c += 1
        if binom.cdf(c, n, e1) <= beta:
            return n, c
        n += 1
    raise _too_many(what, "delta", math.inf)


class ErrorBound:
    """The error-rate rule of a class: e0 = max_error_rate tolerated, e1 = e0 + delta must be caught.

    FAIL once the error count reaches `fail_threshold(n)` among n responses (any error when
    e0 = 0); the rule is satisfied (`check` says PASS, once and for good) when Wald's SPRT
    rejects "error rate = e1", or at the cap by the exact one-sided fixed-sample test. The fail
    thresholds keep being watched after that. docs/statistics.md, "Errors", gives the guarantees.
    Fail thresholds are computed on first use and kept; extension takes a lock because one
    cached rule serves every test built with the same settings.
    """

    def __init__(
        self, max_error_rate: float, alpha: float, beta: float, delta: float, cap_share: float
    ) -> None:
        e0, e1 = max_error_rate, min(max_error_rate + delta, 1.0)
        self.max_error_rate, self.catch_rate = e0, e1
        self.alpha, self.beta = alpha, beta
        tolerant = e0 > 0.0
        # With e0 = 0 nothing is spent on a cap (the rule is deterministic: pass after the
        # zero-leak number of clean responses), so the sequential parts get everything.
        self._alpha_seq = alpha * (1 - cap_share) if tolerant else alpha
        beta_seq = beta * (1 - cap_share) if tolerant else beta
        self._pass_level = math.log(1 / beta_seq)
        if tolerant:
            self.cap, self.cap_max_errors = _error_cap(e0, e1, alpha * cap_share, beta * cap_share)
        else:
            self.cap, self.cap_max_errors = zero_leak_n(beta, e1), 0
        self._log_error = math.log(e0 / e1) if tolerant else -math.inf
        self._log_clean = math.inf if e1 >= 1.0 else math.log((1 - e0) / (1 - e1))
        self._thresholds: list[int] = [1]  # n = 0: nothing observed, nothing can fail
        self._lock = threading.Lock()
        # Responses the rule needs when none fails: the SPRT's clean-run length, or the cap.
        self.clean_n = (self.cap if not tolerant or self._log_clean == math.inf
                        else min(self.cap, math.ceil(self._pass_level / self._log_clean - 1e-12)))

    def fail_threshold(self, n: int) -> int:
        """Smallest error count that fails after n responses (n + 1: none can yet)."""
        if self.max_error_rate == 0.0:
            return 1
        thr = self._thresholds
        if n < len(thr):
            return thr[n]
        level = math.log(1 / self._alpha_seq)
        with self._lock:
            while len(thr) <= n:
                m = len(thr)
                e = thr[-1]  # non-decreasing in n, and grows by at most one per response
                while e <= m and self._log_mixture(m, e) < level:
                    e += 1
                thr.append(e)
        return thr[n]

    def check(self, n: int, errors: int) -> Decision:
        """PASS once "error rate >= e1" is rejected (SPRT, or the cap's exact test), FAIL at a failed cap."""
        if self.max_error_rate == 0.0:
            return Decision.PASS if errors == 0 and n >= self.cap else Decision.CONTINUE
        clean = n - errors
        if clean > 0 and self._log_clean == math.inf:
            return Decision.PASS  # e1 = 1: one clean response rejects "every response fails"
        if errors * self._log_error + clean * self._log_clean >= self._pass_level:
            return Decision.PASS
        if n >= self.cap:
            return Decision.PASS if errors <= self.cap_max_errors else Decision.FAIL
        return Decision.CONTINUE

    def _log_mixture(self, n: int, errors: int) -> float:
        """log of the mixture over e in (e0, 1] (uniform prior) of L(e) / L(e0)."""
        from scipy import special

        e0 = self.max_error_rate
        a, b = errors + 1, n - errors + 1
        tail = float(special.betaincc(a, b, e0))  # P(Beta(a, b) > e0)
        if tail <= 0.0:
            return -math.inf
        return (
            float(special.betaln(a, b)) + math.log(tail) - math.log1p(-e0)
            - errors * math.log(e0) - (n - errors) * math.log1p(-e0)
        )

    def describe(self) -> str:
        """The rule in words."""
        if self.max_error_rate == 0.0:
            return "any error fails"
        return (f"errors within {100 * self.max_error_rate:g}%: fail when credibly above "
                f"(mixture test), pass when {100 * self.catch_rate:g}% is rejected (SPRT; cap n={self.cap} "
                f"allows <= {self.cap_max_errors})")


@functools.lru_cache(maxsize=64)
def error_bound(
    max_error_rate: float, alpha: float, beta: float = 1e-6, delta: float = 0.1, cap_share: float = 0.1
) -> ErrorBound:
    """The (cached) error rule for a tolerated error share and the class's error rates."""
    return ErrorBound(max_error_rate, alpha, beta, delta, cap_share)


# --------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class Verdict:
    """The outcome of one request class, for code (fields) and people (`message`)."""

    label: str
    passed: bool
    decision: Decision
    n: int  # responses counted: versions (and expected statuses) plus errors
    counts: Mapping[str, int]  # outcome -> responses, errors excluded
    expected: Mapping[str, float]
    observed: Mapping[str, float]  # outcome -> share of counted non-error responses
    intervals: Mapping[str, tuple[float, float]]  # Clopper-Pearson at 1 - alpha
    errors: Mapping[str, int]
    rule: str  # the rule that decided ("undecided" while CONTINUE)
    boundary: str  # the boundary in force when it decided
    message: str  # one line for CI logs
    max_n: int = 0  # the most responses this class could have needed
    late: int = 0  # responses that arrived after the decision (not counted)


class _Component:
    """One tracked outcome of a split, with its boundaries and running count."""

    __slots__ = ("name", "bounds", "count", "decision", "decided_at")

    def __init__(self, name: str, bounds: SplitBoundaries) -> None:
        self.name = name
        self.bounds = bounds
        self.count = 0
        self.decision = Decision.CONTINUE
        self.decided_at = 0


class SequentialTest:
    """Judge one request class one response at a time; docs/statistics.md states the rules.

    >>> t = SequentialTest({"blue": 1.0}, label="header-blue")
    >>> t.observe("green")
    <Decision.FAIL: 'fail'>
    >>> t.verdict().rule
    'zero-leak: a response from an outcome expected to get 0%'
    """

    def __init__(
        self, expected: Mapping[str, float], config: StatsConfig | None = None, label: str = ""
    ) -> None:
        self.config = config if config is not None else StatsConfig()
        self.label = label
        self.expected: dict[str, float] = {str(k): float(v) for k, v in expected.items()}
        self._validate()
        cfg = self.config
        positive = sorted((k for k, v in self.expected.items() if _SHARE_EPS < v < 1 - _SHARE_EPS),
                          key=lambda k: (self.expected[k], k))
        if len(positive) == 2:
            positive = positive[:1]  # the other share is the complement: one test decides both
        # Errors tolerated (e0 > 0) take half of alpha; k tracked shares split the rest (union bound).
        split_alpha = cfg.alpha / (2 if cfg.max_error_rate > 0 else 1) / max(len(positive), 1)
        self._components = [
            _Component(name, stored_split_boundaries(
                round(self.expected[name], 12), split_alpha, cfg.beta, cfg.delta, cfg.cap_share,
                cfg.composite_weight))
            for name in positive
        ]
        self._zero = {k for k, v in self.expected.items() if v <= _SHARE_EPS}
        self._leak_n = 0 if self._components else zero_leak_n(cfg.beta, cfg.leak_share)
        error_alpha = cfg.alpha / 2 if self._components else cfg.alpha
        self._errors_rule = error_bound(cfg.max_error_rate, error_alpha, cfg.beta, cfg.delta, cfg.cap_share)
        self._counts: dict[str, int] = {k: 0 for k in self.expected}
        self._errors: dict[str, int] = {}
        self._n = 0
        self._versions = 0
        self._error_total = 0
        self._late = 0
        self._decision = Decision.CONTINUE
        self._versions_ok = False  # the split / zero-leak rule has passed (final)
        self._errors_ok = False  # the error rule has rejected "error rate >= e0 + delta" (final)
        self._version_rule = self._error_rule_text = ""
        self._rule = "undecided"
        self._boundary = ""
        version_cap = max((c.bounds.cap for c in self._components), default=self._leak_n)
        self.max_n = max(version_cap + self._max_errors(version_cap), self._errors_rule.cap)

    def _validate(self) -> None:
        obj = f"expected distribution {self.label or '(unlabelled)'}"
        if not self.expected:
            raise ConfigError(obj, "shares", "is empty")
        for key, share in self.expected.items():
            if not (0.0 <= share <= 1.0) or math.isnan(share):
                raise ConfigError(obj, f"shares[{key}]", f"must be in [0, 1], got {share!r}")
        total = sum(self.expected.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(obj, "shares", f"sum to {total!r}, not 1")

    def _max_errors(self, version_cap: int) -> int:
        """Most errors a class can see before its split reaches the cap without the error rule failing."""
        if self.config.max_error_rate == 0.0:
            return 0
        # Worst case: the versions come first, then errors (a later error faces a higher threshold).
        errors = 0
        while errors + 1 < self._errors_rule.fail_threshold(version_cap - 1 + errors + 1):
            errors += 1
        return errors

    # ---------------------------------------------------------------- state

    @property
    def boundaries(self) -> tuple[tuple[str, SplitBoundaries], ...]:
        """The tracked outcomes of a split and their boundaries (empty for a zero-leak test)."""
        return tuple((c.name, c.bounds) for c in self._components)

    @property
    def min_pass_n(self) -> int:
        """Responses any PASS needs when none is an error (the error rule's clean-run length)."""
        return self._errors_rule.clean_n

    @property
    def zero_leak_n(self) -> int:
        """Expected responses a zero-leak test needs to pass (0 for a split)."""
        return self._leak_n

    @property
    def decision(self) -> Decision:
        """CONTINUE until a rule decides; then final."""
        return self._decision

    @property
    def n(self) -> int:
        """Responses counted (errors included), up to the decision."""
        return self._n

    @property
    def late(self) -> int:
        """Responses observed after the decision (ignored)."""
        return self._late

    # ---------------------------------------------------------------- the hot path

    def observe(self, outcome: str) -> Decision:
        """Count one classified response and return the decision (O(1); final once not CONTINUE)."""
        if self._decision is not Decision.CONTINUE:
            self._late += 1
            return self._decision
        self._n += 1
        rules = self._errors_rule
        if outcome not in self.expected and outcome.startswith(("status:", "error:")):
            self._errors[outcome] = self._errors.get(outcome, 0) + 1
            self._error_total += 1
            limit = rules.fail_threshold(self._n)
            if self._error_total >= limit:
                self._decide(Decision.FAIL, "error bound: " + rules.describe(),
                             f"{self._error_total} error{'s' if self._error_total != 1 else ''} "
                             f"in n={self._n} reach the limit {limit}")
                return self._decision
        else:
            self._counts[outcome] = self._counts.get(outcome, 0) + 1
            self._versions += 1
            if outcome in self._zero or outcome not in self.expected:
                self._decide(Decision.FAIL, "zero-leak: a response from an outcome expected to get 0%",
                             f"any response from {outcome} fails")
                return self._decision
            if not self._versions_ok:
                if self._components:
                    if self._observe_split(outcome) is Decision.FAIL:
                        return self._decision
                elif self._versions >= self._leak_n:
                    self._versions_ok = True
                    self._version_rule = (f"zero-leak: none wrong in {self._leak_n} bounds a leak below "
                                          f"{100 * self.config.leak_share:g}%")
                    self._boundary = (f"pass at n >= {self._leak_n} = ln(beta)/ln(1-leak); "
                                      "fail at the first wrong response")
        if not self._errors_ok:
            errors_say = rules.check(self._n, self._error_total)
            if errors_say is Decision.FAIL:
                self._decide(Decision.FAIL, "error bound: exact fixed-sample test at the cap",
                             f"{self._error_total} errors in n={self._n} exceed the cap's "
                             f"{rules.cap_max_errors}")
                return self._decision
            if errors_say is Decision.PASS:
                self._errors_ok = True
                if rules.max_error_rate > 0.0:
                    self._error_rule_text = (f"errors below {100 * rules.catch_rate:g}% "
                                             f"({self._error_total} in n={self._n})")
        if self._versions_ok and self._errors_ok:
            rule = self._version_rule + (f"; {self._error_rule_text}" if self._error_rule_text else "")
            self._decide(Decision.PASS, rule, self._boundary)
        return self._decision

    def _observe_split(self, outcome: str) -> Decision:
        """Feed the split's tracked shares; FAIL decides the class, PASS marks the versions done."""
        nv = self._versions
        undecided = False
        for comp in self._components:
            if comp.decision is not Decision.CONTINUE:
                continue
            if outcome == comp.name:
                comp.count += 1
            verdict = comp.bounds.decide(nv, comp.count)
            if verdict is Decision.CONTINUE:
                undecided = True
                continue
            comp.decision, comp.decided_at = verdict, nv
            if verdict is Decision.FAIL:
                self._decide(Decision.FAIL, self._split_rule(comp, nv, failed=True),
                             comp.bounds.describe(nv, comp.name))
                return Decision.FAIL
        if undecided:
            return Decision.CONTINUE
        last = max(self._components, key=lambda c: c.decided_at)
        self._versions_ok = True
        self._version_rule = self._split_rule(last, last.decided_at, failed=False)
        self._boundary = "; ".join(c.bounds.describe(c.decided_at, c.name) for c in self._components)
        return Decision.PASS

    @staticmethod
    def _split_rule(comp: _Component, n: int, *, failed: bool) -> str:
        b = comp.bounds
        s = comp.count
        sequential = b.pass_lo[n] <= s <= b.pass_hi[n] or s <= b.fail_lo[n] or s >= b.fail_hi[n]
        if not sequential:
            return "cap: exact fixed-sample test"
        return "mixture fail" if failed else "SPRT pass"

    def _decide(self, decision: Decision, rule: str, boundary: str) -> None:
        self._decision, self._rule, self._boundary = decision, rule, boundary

    # ---------------------------------------------------------------- reporting

    def verdict(self) -> Verdict:
        """The verdict so far (final once `decision` is not CONTINUE)."""
        level = 1.0 - self.config.alpha
        nv = self._versions
        observed = {k: (c / nv if nv else 0.0) for k, c in self._counts.items()}
        intervals = {k: clopper_pearson(c, nv, level) for k, c in self._counts.items()}
        boundary = self._boundary or self._current_boundary()
        return Verdict(
            label=self.label, passed=self._decision is Decision.PASS, decision=self._decision, n=self._n,
            counts=dict(self._counts), expected=dict(self.expected), observed=observed, intervals=intervals,
            errors=dict(self._errors), rule=self._rule, boundary=boundary,
            message=self._message(observed, intervals), max_n=self.max_n, late=self._late,
        )

    def _current_boundary(self) -> str:
        if self._components:
            return "; ".join(c.bounds.describe(self._versions, c.name) for c in self._components)
        return f"pass at n >= {self._leak_n}; fail at the first wrong response"

    def _message(self, observed: Mapping[str, float], intervals: Mapping[str, tuple[float, float]]) -> str:
        tol = f" +-{100 * self.config.delta:g}"
        shown = [c.name for c in self._components] or [k for k, v in self.expected.items() if v > _SHARE_EPS]
        parts = []
        for name in shown:
            lo, hi = intervals.get(name, (0.0, 1.0))
            exp = self.expected.get(name, 0.0)
            parts.append(f"{name} {100 * observed.get(name, 0.0):.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
                         f"expected {100 * exp:.4g}%{tol if self._components else ''}")
        wrong = {k: c for k, c in self._counts.items() if c and self.expected.get(k, 0.0) <= _SHARE_EPS}
        text = f"{self.label or 'class'}: {self._decision.name} " + ", ".join(parts) + f", n={self._n}"
        if wrong:
            text += "; unexpected " + ", ".join(f"{k} x{c}" for k, c in sorted(wrong.items()))
        if self._error_total:
            lo, hi = clopper_pearson(self._error_total, self._n, 1.0 - self.config.alpha)
            text += (f"; errors {self._error_total} = {100 * self._error_total / self._n:.1f}% "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] (" + ", ".join(
                         f"{k} x{c}" for k, c in sorted(self._errors.items())) + ")")
        if self._late:
            text += f"; {self._late} late"
        return text + f" ({self._rule})"
