"""abtest-harness: integration tests for Istio canary and A/B rollouts of model-scoring services.

The library works without pytest: plan a rollout, render each stage, validate it offline,
compute the routing Istio promises, drive a mesh and judge the observed split statistically.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
