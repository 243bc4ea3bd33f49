"""Write the project's ZTF alert schemas (fink/data/schemas/ztf/<version>.avsc) from ZTF's published ones.

ZTF publishes each schema version as several .avsc files (alert, candidate,
prv_candidate, cutout, fp_hist) that reference each other by name. The project keeps one
self-contained file per version: the same record names, fields, types and defaults (so
that what it writes is what ZTF writes on the wire), without the documentation strings.

Usage::

    python tools/ztf_schemas.py ../shared/datasim/schemas    # folders ztf-avro-alert_v<version>/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "fink" / "data" / "schemas" / "ztf"
VERSIONS = ("3.1", "3.2", "3.3", "4.02")


def strip_docs(node):
    if isinstance(node, dict):
        return {k: strip_docs(v) for k, v in node.items() if k != "doc"}
    if isinstance(node, list):
        return [strip_docs(v) for v in node]
    return node


def inline(node, named: dict, seen: set):
    """Replace each named-type reference by its definition, the first time it is used."""
    if isinstance(node, str) and node in named and node not in seen:
        seen.add(node)
        return inline(named[node], named, seen)
    if isinstance(node, list):
        return [inline(v, named, seen) for v in node]
    if isinstance(node, dict):
        return {k: inline(v, named, seen) if k in ("type", "items", "fields") else v for k, v in node.items()}
    return node


def build(folder: Path, version: str) -> dict:
    parts = {}
    for path in sorted(folder.glob("*.avsc")):
        schema = strip_docs(json.loads(path.read_text()))
        full = f"{schema['namespace']}.{schema['name']}" if "namespace" in schema else schema["name"]
        parts[full] = {**{k: v for k, v in schema.items() if k != "namespace"}, "name": full}
        parts[full]["fields"] = [
            {**f, "type": _qualify(f["type"], schema.get("namespace", ""))} for f in schema["fields"]]
    alert = parts.pop("ztf.alert")
    out = inline(alert, parts, set())
    out["version"] = version
    return out


def _qualify(t, namespace: str):
    """Name references inside ZTF's files are relative to the file's namespace."""
    if isinstance(t, str):
        if t in ("null", "boolean", "int", "long", "float", "double", "bytes", "string") or "." in t:
            return t
        return f"{namespace}.{t}" if namespace else t
    if isinstance(t, list):
        return [_qualify(v, namespace) for v in t]
    if isinstance(t, dict) and t.get("type") == "array":
        return {**t, "items": _qualify(t["items"], namespace)}
    return t


if __name__ == "__main__":
    src = Path(sys.argv[1])
    OUT.mkdir(parents=True, exist_ok=True)
    for v in VERSIONS:
        schema = build(src / f"ztf-avro-alert_v{v}", v)
        (OUT / f"{v}.avsc").write_text(json.dumps(schema, indent=1) + "\n")
        print(OUT / f"{v}.avsc")
