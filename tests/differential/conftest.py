"""Shared fixtures of the differential tests: the istio-xds program, or a skip saying how to get it."""

from __future__ import annotations

import os

import pytest

from abtest_harness.mesh import istio_xds as ix


@pytest.fixture(scope="session")
def istio_xds_binary() -> str:
    """The built istio-xds program; skips (fails under CI=true) when it is not built."""
    try:
        return ix.binary()
    except ix.IstioXdsUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"istio-xds must be built in CI: {exc}", pytrace=False)
        pytest.skip(str(exc))
