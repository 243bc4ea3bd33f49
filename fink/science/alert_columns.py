"""Alert columns as the module runner gives them, from decoded Avro alerts (no Spark).

:func:`alert_series` turns alerts decoded with fastavro into the pandas Series a module or a
filter receives in the stream (Spark's types through Arrow), to try one on a few alerts in a
notebook; :func:`avro_names` and :func:`avro_has` describe an Avro schema the way a Fink filter's
arguments are resolved against it (:mod:`fink.filters.community_filters`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fink.survey.description import get_path

_ARROW = {"float": "float32", "double": "float64", "int": "int32", "long": "int64", "string": "string",
          "boolean": "bool_", "bytes": "binary"}


def avro_type(schema: Any, path: str) -> tuple[str, bool]:
    """The primitive Avro type at a dotted ``path`` of a record schema, and whether an array
    lies on the way (a history field)."""
    node, through_array = schema, False
    for part in path.split("."):
        node = next(f["type"] for f in record_of(node)["fields"] if f["name"] == part)
        node = non_null(node)
        if isinstance(node, dict) and node.get("type") == "array":
            node, through_array = non_null(node["items"]), True
    return (node if isinstance(node, str) else node.get("type")), through_array


def non_null(t: Any) -> Any:
    return next(x for x in t if x != "null") if isinstance(t, list) else t


def record_of(t: Any) -> dict:
    t = non_null(t)
    if isinstance(t, dict) and t.get("type") == "array":
        t = non_null(t["items"])
    return t


def alert_series(alerts: Sequence[Mapping[str, Any]], paths: Sequence[str], schema: Mapping[str, Any]) -> list:
    """The Series the module runner gives a module for ``paths`` of decoded ``alerts`` (dicts)
    whose Avro ``schema`` is given, with the types Spark's Arrow batches have (``float`` as
    float32, a history field as one array per alert, None when the alert has no history):
    try a module or filter on a few alerts without Spark (:func:`fink.science.run_module`)."""
    import pyarrow as pa

    out = []
    for path in paths:
        kind, history = avro_type(schema, path)
        arrow = getattr(pa, _ARROW.get(kind, "string"))()
        head, _, rest = path.partition(".")
        if history:
            values = [None if a.get(head) is None else [get_path(x, rest) for x in a[head]] for a in alerts]
            arrow = pa.list_(arrow)
        else:
            values = [get_path(a, path) for a in alerts]
        out.append(pa.array(values, type=arrow).to_pandas())
    return out


def avro_names(schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The flattened column names of an Avro record schema, as Fink flattens an alert (records
    entered, arrays and maps not): what a Fink filter's arguments are resolved among."""
    out = []
    for f in record_of(schema)["fields"]:
        name = prefix + f["name"]
        out.append(name)
        t = non_null(f["type"])
        if isinstance(t, dict) and t.get("type") == "record":
            out += avro_names(t, name + ".")
    return out


def avro_has(schema: Mapping[str, Any], path: str) -> bool:
    """Whether the dotted ``path`` is a field of the Avro record ``schema`` (through arrays)."""
    try:
        avro_type(schema, path)
    except (StopIteration, KeyError, TypeError, AttributeError):
        return False
    return True


