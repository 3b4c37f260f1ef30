"""What every mesh backend shares: the Mesh protocol a backend implements.

"Converged" means the gateway's live route table, read from its Envoy admin ``/config_dump``,
equals the route table the manifests promise and every cluster has its endpoints; the
comparable form of a route table is :mod:`abtest_harness.mesh.routetable`, whose names are also
importable from here.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from abtest_harness.errors import HarnessError
from abtest_harness.mesh.routetable import (
    HeaderMatch,
    PathMatch,
    RouteAction,
    RouteEntry,
    RouteTable,
    VirtualHost,
    diff_route_tables,
    expected_route_table,
    route_configs_from_config_dump,
    route_table_from_config_dump,
    route_table_from_route_configs,
)
from abtest_harness.routing import cluster_name

__all__ = [
    "HeaderMatch",
    "Mesh",
    "MeshNotUp",
    "PathMatch",
    "RouteAction",
    "RouteEntry",
    "RouteTable",
    "VirtualHost",
    "cluster_name",
    "diff_route_tables",
    "expected_route_table",
    "route_configs_from_config_dump",
    "route_table_from_config_dump",
    "route_table_from_route_configs",
]


class MeshNotUp(HarnessError, AttributeError):
    """A mesh's URLs were asked for while it is down.

    Also an AttributeError, so ``hasattr(mesh, "gateway_url")`` (and ``isinstance(mesh, Mesh)``,
    which runtime protocols check with hasattr) answer False for a mesh that is down instead
    of raising.
    """


@runtime_checkable
class Mesh(Protocol):
    """A data plane the harness can deploy a stage to and send traffic through.

    ``gateway_url`` is where requests go (``http://127.0.0.1:PORT``); ``admin_url`` is the
    gateway Envoy's admin endpoint, which :meth:`converge` reads.
    """

    name: str

    @property
    def gateway_url(self) -> str: ...

    @property
    def admin_url(self) -> str: ...

    def __enter__(self) -> Mesh: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def up(self) -> None:
        """Start the data plane."""

    def down(self) -> None:
        """Stop exactly what :meth:`up` and :meth:`apply` started; safe to call twice."""

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Reconcile the mesh to `objects`, make-before-break."""

    def converge(self, objects: list[dict[str, Any]], timeout: float = 30.0) -> None:
        """Wait until the gateway serves `objects`; WaitTimeout with a diff otherwise."""

    def dump(self, directory: Path) -> None:
        """Write what explains a failure (config_dump, logs) into `directory`."""

    def endpoint_labels(self) -> dict[str, dict[str, str]]:
        """``"ip:port"`` of every endpoint the gateway may choose now -> the pod labels behind it.

        What a response's ``x-abtest-upstream-host`` header is looked up in, to attribute the
        response to a version by the workload that served it.
        """
