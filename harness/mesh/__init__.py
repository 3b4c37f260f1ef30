"""Mesh backends behind one protocol: the local Envoy on loopback, and kind + Istio.

:class:`~abtest_harness.mesh.base.Mesh` is what the fixtures and ``abtest run`` drive;
:class:`~abtest_harness.mesh.local.LocalMesh` is the embedded default. The convergence check
(:func:`~abtest_harness.mesh.routetable.route_table_from_config_dump` against
:func:`~abtest_harness.mesh.routetable.expected_route_table`) is shared by every backend.
"""

from __future__ import annotations

from abtest_harness.mesh.base import Mesh
from abtest_harness.mesh.routetable import (
    RouteTable,
    diff_route_tables,
    expected_route_table,
    route_table_from_config_dump,
)
from abtest_harness.routing import cluster_name

__all__ = [
    "LocalMesh",
    "Mesh",
    "RouteTable",
    "cluster_name",
    "diff_route_tables",
    "expected_route_table",
    "route_table_from_config_dump",
]


def __getattr__(name: str) -> object:
    # LocalMesh pulls in requests and the process machinery; import it only when asked.
    if name == "LocalMesh":
        from abtest_harness.mesh.local import LocalMesh

        return LocalMesh
    raise AttributeError(f"module 'abtest_harness.mesh' has no attribute {name!r}")
