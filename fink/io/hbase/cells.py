"""The archive's cells: one per scalar column, one Avro cell per struct, list or map (or
group of columns), one per child of a cutout struct; and the text of row keys.

Notes
-----
Scalars are one cell each, their shortest text that reads back to the same value (``18.3``
for a float32 18.3); binaries are stored as they are; structs, lists and maps are one cell
of schemaless Avro (a record whose one field is the value, its schema in the layout row).
HBase's cost grows with the cells written far more than with their bytes, so nested values
are never split field by field. Reading turns cells back into the stored Arrow types.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fink.errors import FinkError

ALERT, ADDED, CUTOUT, META, REF = "i", "d", "b", "m", "r"


class ArchiveError(FinkError, RuntimeError):
    """The archive table cannot be used as asked, or HBase stayed unavailable."""


@dataclasses.dataclass(frozen=True)
class Column:
    """One cell per row: ``family:name``, where ``name`` is a column or ``parent.child``."""

    name: str
    family: str
    type: pa.DataType
    kind: str  # text | avro | binary

    @property
    def qualifier(self) -> bytes:
        return f"{self.family}:{self.name}".encode()



def leaf_column(name: str, family: str, t: pa.DataType) -> Column:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return Column(name, family, t, "binary")
    if pa.types.is_nested(t):
        return Column(name, family, t, "avro")
    return Column(name, family, t, "text")



def to_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()



def cell_schema(name: str, t: pa.DataType) -> dict[str, Any]:
    """The Avro schema of a nested cell: a record with one field, the value (named as the
    column's last part), written the way :func:`fink.survey.avro.avro_schema` writes Spark types."""
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    from fink.survey.avro import avro_schema

    leaf = name.rpartition(".")[2]
    return avro_schema(StructType([StructField(leaf, from_arrow_type(t))]), name="cell")



def _for_avro(t: pa.DataType, value: Any) -> Any:
    """A value of ``to_pylist`` as fastavro writes it (maps as dicts)."""
    if value is None:
        return None
    if pa.types.is_map(t):
        return {k: _for_avro(t.item_type, v) for k, v in value}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [_for_avro(t.value_type, v) for v in value]
    if pa.types.is_struct(t):
        return {f.name: _for_avro(f.type, value.get(f.name)) for f in t}
    return value



@functools.cache
def _has_map(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_map(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_map(f.type) for f in t)
    return False



def _from_avro(t: pa.DataType, value: Any) -> Any:
    """A value fastavro read, as ``pa.array`` takes it (maps as lists of pairs)."""
    if value is None or not _has_map(t):  # lists and records come as pa.array takes them
        return value
    if pa.types.is_map(t):
        return [(k, _from_avro(t.item_type, v)) for k, v in value.items()]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [_from_avro(t.value_type, v) for v in value]
    if pa.types.is_struct(t):
        return {f.name: _from_avro(f.type, value.get(f.name)) for f in t}
    return value



def _nullable(t: pa.DataType) -> pa.DataType:
    """``t`` with every nested field nullable (Spark's schemas differ only in that, from
    one source to another; the Avro cells are nullable everywhere)."""
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _nullable(f.type)) for f in t])
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_nullable(t.value_type))
    if pa.types.is_map(t):
        return pa.map_(_nullable(t.key_type), _nullable(t.item_type))
    return t



def loose(col: Column) -> Column:
    return dataclasses.replace(col, type=_nullable(col.type))



def describe(col: Column) -> str:
    return f"{col.qualifier.decode()} ({col.type}, {col.kind})"



def fields_of(key: str) -> list[str]:
    """The columns a key reads: itself (``candid``, ``candidate.jd``), or the dotted paths of a
    Spark SQL expression (``coalesce(nullif(diaSource.diaObjectId, 0), diaSource.ssObjectId)``)."""
    if re.fullmatch(r"\w+(\.\w+)*", key):
        return [key]
    return re.findall(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", key)



#: what a negative integer of a row key is written as the complement to (64-bit integers fit)
NEGATIVE = 10 ** 19



def unkeyable(values: Sequence[Any]) -> list[bool]:
    """Which values cannot be part of a row key: missing, or a float that is not finite."""
    return [v is None or (isinstance(v, float) and not math.isfinite(v)) for v in values]



def key_text(arr: pa.Array) -> list[str]:
    """Key parts that sort as their values: strings as they are, integers zero-padded to 20
    digits (a negative one, as Rubin's ids may be, is ``-`` and the 19 digits of 10**19 + v:
    before every positive one, the most negative first), times with 7 decimals on 16 characters."""
    t = arr.type
    values = arr.to_pylist()
    if any(v is None for v in values):
        raise ArchiveError("an alert has no value in a key column (object id, time or alert id)")
    if pa.types.is_integer(t):
        return [f"{v:020d}" if v >= 0 else f"-{NEGATIVE + v:019d}" for v in values]
    if pa.types.is_floating(t):
        return [f"{v:016.7f}" for v in values]
    return [str(v) for v in values]



def time_key(value: float) -> str:
    """A time as it appears in row keys (for scan bounds)."""
    return f"{float(value):016.7f}"


class CellCodec:
    """Arrow columns to cells and back, for a :class:`~fink.io.hbase.Layout` (its columns,
    groups and the Avro schemas of its nested cells)."""

    columns: list[Column]
    groups: dict[str, tuple[str, ...]]
    member_of: dict[str, str]
    avro: dict[str, dict]
    schema: pa.Schema
    table: str
    _parsed: dict[str, Any]
    placement: Callable[[], dict[str, list[Column]]]  # Layout's

    def values(self, table: pa.Table, path: str) -> pa.Array:
        """The column ``path`` (``a`` or ``a.b``) of ``table``, nulls where its parent is null.

        A column of ``table`` named ``a.b`` is taken as it is (the stage adds the key fields
        so, as it sends the structs already encoded).
        """
        if path in table.column_names:
            arr = table.column(path).combine_chunks()
            return arr if not isinstance(arr, pa.ChunkedArray) else pa.array([], arr.type)
        top, _, child = path.partition(".")
        arr = table.column(top).combine_chunks()
        if isinstance(arr, pa.ChunkedArray):  # an empty table
            arr = pa.array([], arr.type)
        return pc.struct_field(arr, [arr.type.get_field_index(child)]) if child else arr

    def parsed(self, name: str) -> Any:
        import fastavro

        if name not in self._parsed:
            self._parsed[name] = fastavro.parse_schema(self.avro[name])
        return self._parsed[name]

    def _cells(self, table: pa.Table, col: Column) -> list[bytes | None]:
        if col.kind == "avro" and col.name in table.column_names \
                and pa.types.is_binary(table.schema.field(col.name).type):
            return table.column(col.name).to_pylist()  # written by Spark's to_avro (fink.stages.archive)
        if col.name in self.groups:
            members = [table.column(m).combine_chunks() for m in self.groups[col.name]]
            arr = pa.StructArray.from_arrays(members, fields=list(col.type))
        else:
            arr = self.values(table, col.name)
        if col.kind == "binary":
            return arr.cast(pa.binary()).to_pylist()
        if col.kind == "avro":
            import fastavro

            schema, leaf, out = self.parsed(col.name), col.name.rpartition(".")[2], []
            for value in arr.to_pylist():
                if value is None:
                    out.append(None)
                    continue
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, schema, {leaf: _for_avro(col.type, value)})
                out.append(buf.getvalue())
            return out
        return arr.cast(pa.string()).cast(pa.binary()).to_pylist()

    def encode(self, table: pa.Table, keys: Sequence[bytes] | None = None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The main table's rows for the alerts of ``table``: ``(row key, {qualifier: value})``."""
        keys = self.row_keys(table) if keys is None else keys
        have = set(table.column_names)
        present = [c for c in self.columns if c.name in have or c.name.partition(".")[0] in have
                   or (c.name in self.groups and set(self.groups[c.name]) <= have)]
        quals = [c.qualifier for c in present]
        cells = [self._cells(table, c) for c in present]
        rows = []
        for i, key in enumerate(keys):
            rows.append((key, {q: vals[i] for q, vals in zip(quals, cells, strict=True) if vals[i] is not None}))
        return rows

    def decode(self, rows: Sequence[tuple[bytes, dict[bytes, bytes]]], columns: Iterable[str] | None = None
               ) -> pa.Table:
        """The alerts of main-table ``rows`` as an Arrow table of the stored schema.

        ``columns`` keeps only these top-level columns (all by default). A struct whose every
        child is absent reads as null.
        """
        wanted = list(columns) if columns is not None else self.schema.names
        arrays, fields = [], []
        placed = self.placement()
        groups: dict[str, pa.StructArray] = {}
        for name in wanted:
            if name not in self.schema.names:
                raise ArchiveError(f"table {self.table!r} has no column {name!r}")
            field = self.schema.field(name)
            cols = placed[name]
            if name in self.member_of:  # one field of a group's cell
                g = self.member_of[name]
                if g not in groups:
                    groups[g] = self._decode_cells(cols[0], [cells.get(cols[0].qualifier) for _, cells in rows])
                arrays.append(pc.struct_field(groups[g], [groups[g].type.get_field_index(name)]))
            elif "." in cols[0].name:  # a struct split into one cell per child
                children = [self._decode_cells(c, [cells.get(c.qualifier) for _, cells in rows]) for c in cols]
                present = [any(cells.get(c.qualifier) is not None for c in cols) for _, cells in rows]
                mask = pa.array([not p for p in present], pa.bool_())
                arrays.append(pa.StructArray.from_arrays(children, fields=list(field.type), mask=mask))
            else:
                arrays.append(self._decode_cells(cols[0], [cells.get(cols[0].qualifier) for _, cells in rows]))
            fields.append(field)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def _decode_cells(self, col: Column, raw: list[bytes | None]) -> pa.Array:
        if col.kind == "binary":
            return pa.array(raw, pa.binary()).cast(col.type)
        if col.kind == "avro":
            import fastavro

            schema, leaf = self.parsed(col.name), col.name.rpartition(".")[2]
            values = [None if v is None else
                      _from_avro(col.type, fastavro.schemaless_reader(io.BytesIO(v), schema, None)[leaf])
                      for v in raw]
            return pa.array(values, col.type)
        return pa.array(raw, pa.binary()).cast(pa.string()).cast(col.type)
