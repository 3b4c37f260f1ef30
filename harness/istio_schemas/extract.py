"""Extract the schemas of Istio's networking kinds from a release's CRDs into this folder.

Istio publishes its CustomResourceDefinitions, with an OpenAPI v3 schema per kind and API
version, in each release (``manifests/charts/base/files/crd-all.gen.yaml`` in istio/istio).
This turns the ``networking.istio.io`` ones into plain JSON Schema as the API server
applies them to a structural schema:

* an object with ``properties`` and without ``x-kubernetes-preserve-unknown-fields`` gets
  ``additionalProperties: false`` (the API server prunes, and a strict client refuses,
  unknown fields; ``mtach:`` is such a field);
* ``x-kubernetes-int-or-string`` becomes "integer or string", ``nullable`` adds null;
* ``format`` (int32, uint32, ...), descriptions and CEL rules (``x-kubernetes-validations``)
  are dropped: the first two do not constrain JSON, the last need a CEL evaluator;
* the root object's ``apiVersion``, ``kind`` and ``metadata`` are checked elsewhere (the
  Kubernetes ObjectMeta schema) and ``status`` is written by the server: both are left out
  of the data validated against these schemas.

Usage (writes ``networking-<version>.json`` here, with the source's SHA-256)::

    python -m abtest_harness.istio_schemas.extract 1.30.3 path/to/crd-all.gen.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

GROUP = "networking.istio.io"
HERE = Path(__file__).resolve().parent
_DROPPED = ("description", "format", "x-kubernetes-validations", "x-kubernetes-list-type",
            "x-kubernetes-list-map-keys", "x-kubernetes-map-type")


def to_json_schema(node: Any) -> Any:
    """The OpenAPI v3 structural schema ``node`` as a strict JSON Schema (see the module docstring)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or key in ("nullable", "x-kubernetes-int-or-string",
                                      "x-kubernetes-preserve-unknown-fields"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        else:
            out[key] = to_json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if "properties" in node and not preserve and "additionalProperties" not in node:
        out["additionalProperties"] = False
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def extract(crds_text: str) -> dict[str, dict[str, Any]]:
    """apiVersion -> kind -> JSON Schema of the object without apiVersion, kind, metadata, status."""
    kinds: dict[str, dict[str, Any]] = {}
    for doc in yaml.safe_load_all(crds_text):
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        if spec["group"] != GROUP:
            continue
        kind = spec["names"]["kind"]
        for version in spec["versions"]:
            root = dict(version["schema"]["openAPIV3Schema"])
            props = dict(root.get("properties", {}))
            props.pop("status", None)
            root["properties"] = props
            kinds.setdefault(f"{GROUP}/{version['name']}", {})[kind] = to_json_schema(root)
    return kinds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("version", help="the Istio release the CRDs come from, e.g. 1.30.3")
    parser.add_argument("crds", type=Path, help="crd-all.gen.yaml of that release")
    parser.add_argument("--source", default="istio/istio manifests/charts/base/files/crd-all.gen.yaml",
                        help="where the file came from, recorded in the output")
    parser.add_argument("--note", default="", help="a remark recorded with the source, e.g. releases it matches")
    args = parser.parse_args(argv)
    raw = args.crds.read_bytes()
    kinds = extract(raw.decode("utf-8"))
    # Identical schemas across API versions are stored once, by their hash.
    schemas: dict[str, Any] = {}
    index: dict[str, dict[str, str]] = {}
    for api_version, by_kind in sorted(kinds.items()):
        for kind, schema in sorted(by_kind.items()):
            text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
            key = hashlib.sha256(text.encode()).hexdigest()[:16]
            schemas[key] = schema
            index.setdefault(api_version, {})[kind] = key
    out = {
        "istio_version": args.version,
        "source": f"{args.source} at {args.version}" + (f"; {args.note}" if args.note else ""),
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "kinds": index,
        "schemas": schemas,
    }
    target = HERE / f"networking-{args.version.rsplit('.', 1)[0]}.json"
    target.write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{target}: {sum(len(k) for k in index.values())} kinds, {len(schemas)} distinct schemas, "
          f"{target.stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
