"""The JSON Schemas of Istio's networking kinds, per Istio minor version, as data.

Each ``networking-<minor>.json`` holds the ``networking.istio.io`` kinds (VirtualService,
DestinationRule, Gateway, ServiceEntry, Sidecar, ...) of every API version that release
serves, converted from the release's own CRDs by `abtest_harness.istio_schemas.extract`, with the
release and the SHA-256 of the CRD file they came from. Unknown fields are refused wherever
the CRD's structural schema does not preserve them.

`for_version` picks the set for an Istio version ("1.30.4" or "1.30"); `DEFAULT_MINOR` is the
minor the kind backend installs (`abtest_harness.istioctl.ISTIO_VERSION`; a unit test keeps the two
in step).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abtest_harness.errors import ConfigError

__all__ = ["DEFAULT_MINOR", "SUPPORTED_MINORS", "IstioSchemas", "for_version"]

#: The Istio minor the kind backend installs, and so the one manifests are checked against.
DEFAULT_MINOR = "1.30"
#: Every minor whose schemas are bundled.
SUPPORTED_MINORS = ("1.24", "1.30")


@dataclass(frozen=True)
class IstioSchemas:
    """The schemas of one Istio release: ``schema(api_version, kind)`` or None when it has no such kind."""

    minor: str
    release: str  # the release the CRDs were taken from
    source: str
    source_sha256: str
    kinds: dict[str, dict[str, str]]  # apiVersion -> kind -> key into schemas
    schemas: dict[str, Any]

    def schema(self, api_version: str, kind: str) -> dict[str, Any] | None:
        key = self.kinds.get(api_version, {}).get(kind)
        return None if key is None else dict(self.schemas[key])

    @property
    def api_versions(self) -> list[str]:
        return sorted(self.kinds)


def minor_of(version: str) -> str:
    """``"1.30.4"`` -> ``"1.30"``; a minor is returned as given."""
    return ".".join(version.split(".")[:2])


@functools.cache
def for_version(version: str = DEFAULT_MINOR) -> IstioSchemas:
    """The bundled schemas of the Istio minor of ``version``; a ConfigError names the supported ones."""
    minor = minor_of(version)
    if minor not in SUPPORTED_MINORS:
        raise ConfigError("Istio version", version,
                          f"no bundled schemas; supported: {', '.join(SUPPORTED_MINORS)}")
    text = (Path(__file__).resolve().parent / f"networking-{minor}.json").read_text(encoding="utf-8")
    data = json.loads(text)
    return IstioSchemas(minor, data["istio_version"], data["source"], data["source_sha256"], data["kinds"],
                        data["schemas"])
