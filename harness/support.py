"""What the harness supports of Istio's routing API, and the rules it shares between readers.

The oracle (:mod:`harness.routing`), the Envoy translation (:mod:`harness.mesh.envoy`), the
offline validation (:mod:`harness.validate`) and the plan (:mod:`harness.plan`) read their
rules from here, so a manifest cannot be judged by one rule and served by another.

Weights (:func:`destination_shares`): Istio's API gives a destination ``weight / (sum of all
weights)`` of a route's requests, all of them to a lone destination, none to weight 0
(``HTTPRouteDestination.weight`` in istio/api ``networking/v1alpha3/virtual_service.proto``).
Istio's translation writes the weights as they are into Envoy's ``weighted_clusters``,
dropping weight-0 destinations, and uses a plain ``cluster`` for a lone destination, whose
weight it never reads (``pilot/pkg/networking/core/route/route.go``,
``applyHTTPRouteDestination``); Envoy then picks a cluster with probability weight / sum.
Istio's validation refuses a negative weight and, with several destinations, a total of 0
(``pkg/config/validation/validation.go``, ``validateWeight`` and
``validateHTTPRouteDestinations``); Envoy refuses a total of 0 or one above 4294967295.

>>> [str(s) for s in destination_shares([3, 1])]
['3/4', '1/4']
>>> [str(s) for s in destination_shares([50])]
['1']
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

__all__ = [
    "MAX_TOTAL_WEIGHT",
    "WeightProblem",
    "destination_shares",
]

#: Envoy refuses a weighted_clusters whose weights sum above this (uint32).
MAX_TOTAL_WEIGHT = 2**32 - 1
#: The API's weight is an int32.
_MAX_WEIGHT = 2**31 - 1


class WeightProblem(ValueError):
    """A route's weights that Istio or Envoy refuse (or, with ``percent``, the plan's format does).

    ``index`` is the destination at fault, or None when the route's weights as a whole are.
    """

    def __init__(self, index: int | None, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def destination_shares(weights: Sequence[object], *, percent: bool = False) -> tuple[Fraction, ...]:
    """Each destination's share of a route's requests, from its weights (None: omitted).

    Istio's rule (see the module docstring): a lone destination gets everything whatever its
    weight; otherwise an omitted weight is 0, each weight is a non-negative integer, each
    destination gets weight / sum, and a sum of 0 is refused. Raises :class:`WeightProblem`.

    ``percent``: the harness's own plan format, not an Istio rule: every weight given, each a
    whole percent from 0 to 100, summing to exactly 100, so a plan reads as the split it means.
    """
    given: list[int] = []
    for i, weight in enumerate(weights):
        if weight is None and not percent:
            given.append(0)
            continue
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise WeightProblem(i, f"must be a whole number, not {weight!r}")
        if weight < 0:
            raise WeightProblem(i, f"must not be negative, is {weight}")
        if weight > (100 if percent else _MAX_WEIGHT):
            limit = "100 (a percent)" if percent else f"{_MAX_WEIGHT} (an int32)"
            raise WeightProblem(i, f"is {weight}, above {limit}")
        given.append(weight)
    if not given:
        raise WeightProblem(None, "no destination: the route sends traffic nowhere")
    total = sum(given)
    shown = " + ".join(str(w) for w in given)
    if percent and total != 100:
        raise WeightProblem(None, f"{shown} = {total}; the plan's weights are percents summing to 100")
    if len(given) == 1:
        return (Fraction(1),)
    if total == 0:
        raise WeightProblem(None, f"{shown} = 0: no destination would get traffic (Istio refuses a total of 0)")
    if total > MAX_TOTAL_WEIGHT:
        raise WeightProblem(None, f"{shown} = {total}, above {MAX_TOTAL_WEIGHT}, which Envoy refuses")
    return tuple(Fraction(w, total) for w in given)
