"""The enriched archive in HBase: table layout, cell encoding, batched writes that wait out
an unavailable HBase, and typed reads.

Layout (version :data:`LAYOUT_VERSION`)
---------------------------------------
Main table ``<table>``, one row per alert, keyed ``<object id>_<time>_<alert id>`` so an
object's alerts are contiguous and in time order (a prefix scan reads its whole history):

========  ===================================================================
family    what it holds
========  ===================================================================
``i``     the alert's own fields and the ingest provenance
``d``     the values the science modules added (and their provenance)
``b``     the cutouts (raw gzipped FITS bytes)
``m``     only in the row :data:`META_ROW`: layout version and Arrow schema
========  ===================================================================

Scalars are one cell each, their shortest text that reads back to the same value (``18.3``
for a float32 18.3); binaries are stored as they are; structs, lists and maps are one cell
of schemaless Avro (``i:candidate``, ``i:prv_candidates``: a record whose one field is the
value, its schema in the layout row), compact and exact, written by Spark's ``to_avro`` in
the stage. A cutout struct is split into one cell per child (``b:cutoutScience.stampData``
holds the gzipped FITS as it came). A null is no cell.

HBase's cost grows with the cells written far more than with their bytes: one cell for the
~100 fields of ``candidate`` instead of one each doubles the rate the local HBase takes.
Reading turns cells back into the stored Arrow types, so a query returns the same values as
the science Parquet.

Index tables, one row per alert and a reference ``r:k`` to its main row key:
``<table>_class`` keyed ``<tag>_<time>_<key>`` (the tags are filters, see
:mod:`fink.filters`), ``<table>_pixel`` keyed ``<HEALPix nested pixel>_<key>`` (with
``r:ra``/``r:dec`` so a cone search reads no main row outside the cone) and
``<table>_night`` keyed ``<night>_<key>``.

Writes are idempotent: a row key depends only on the alert, so writing a batch again
writes the same cells, and every family keeps one version.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fink.errors import FinkError

log = logging.getLogger(__name__)

LAYOUT_VERSION = "1"
#: the main table's row holding the layout (sorts after every object id)
META_ROW = b"~schema"
ALERT, ADDED, CUTOUT, META, REF = "i", "d", "b", "m", "r"
INDEXES = ("class", "pixel", "night")
#: HEALPix order of the pixel index: order 7 (nside 128) has 27 arcmin pixels
DEFAULT_ORDER = 7


class ArchiveError(FinkError, RuntimeError):
    """The archive table cannot be used as asked, or HBase stayed unavailable."""


@dataclasses.dataclass(frozen=True)
class Keys:
    """Which columns identify an alert, date it and place it on the sky (dotted paths)."""

    object_id: str = "objectId"
    time: str = "candidate.jd"
    alert_id: str = "candid"
    ra: str = "candidate.ra"
    dec: str = "candidate.dec"


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


def _leaf(name: str, family: str, t: pa.DataType) -> Column:
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return Column(name, family, t, "binary")
    if pa.types.is_nested(t):
        return Column(name, family, t, "avro")
    return Column(name, family, t, "text")


def _to_json(value: Any) -> bytes:
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


class Layout:
    """How a science schema maps to the main table's cells and to the index tables.

    Parameters
    ----------
    table
        The main table's name; the index tables are ``<table>_class|pixel|night``.
    schema
        The Arrow schema of the alerts archived (the science archive's, ``night`` excluded).
    added
        Top-level columns that science modules added (family ``d``); the others are ``i``.
    cutouts
        Top-level columns holding cutouts (family ``b``).
    keys
        The columns that identify, date and place an alert.
    order
        HEALPix order of the pixel index.
    groups
        Cell name -> top-level columns stored together in that one Avro cell (the outputs
        of one science module: ``d:lightcurve_features`` holds its 56 features).
    """

    def __init__(self, table: str, schema: pa.Schema, added: Iterable[str] = (), cutouts: Iterable[str] = (),
                 keys: Keys = Keys(), order: int = DEFAULT_ORDER, avro: dict[str, dict] | None = None,
                 groups: Mapping[str, Sequence[str]] | None = None):
        self.table, self.schema, self.keys, self.order = table, schema, keys, int(order)
        self.added, self.cutouts = frozenset(added), frozenset(cutouts)
        if not 0 <= self.order <= 29:
            raise ArchiveError(f"HEALPix order must be within 0..29, got {order}")
        self.groups = {g: tuple(members) for g, members in (groups or {}).items()}
        self.member_of: dict[str, str] = {}
        for g, members in self.groups.items():
            if g in schema.names or not members:
                raise ArchiveError(f"cell group {g!r}: the name of a column, or no columns")
            for m in members:
                if m not in schema.names or m in self.cutouts or m in self.member_of:
                    raise ArchiveError(f"cell group {g!r}: {m!r} is not a column, is a cutout or is in two groups")
                self.member_of[m] = g
            if len({m in self.added for m in members}) > 1:
                raise ArchiveError(f"cell group {g!r} mixes added values with alert fields")
        self.columns: list[Column] = []
        for field in schema:
            family = CUTOUT if field.name in self.cutouts else ADDED if field.name in self.added else ALERT
            g = self.member_of.get(field.name)
            if g is not None:
                if g not in (c.name for c in self.columns):
                    t = pa.struct([schema.field(m) for m in self.groups[g]])
                    self.columns.append(Column(g, family, t, "avro"))
            elif pa.types.is_struct(field.type) and family == CUTOUT:  # its FITS bytes readable as they are
                self.columns += [_leaf(f"{field.name}.{child.name}", family, child.type) for child in field.type]
            else:
                self.columns.append(_leaf(field.name, family, field.type))
        for key in dataclasses.astuple(keys):
            for path in _fields_of(key):
                self.field_type(path)  # raises if a key column is missing
        avro = dict(avro or {})
        self.avro = {c.name: avro.get(c.name) or cell_schema(c.name, c.type) for c in self.columns if c.kind == "avro"}
        self._parsed: dict[str, Any] = {}

    # -- names --------------------------------------------------------------------------------

    def index_table(self, index: str) -> str:
        return f"{self.table}_{index}"

    @property
    def tables(self) -> dict[str, dict[str, dict]]:
        """Every table with its column families (one version kept per cell)."""
        one = {"max_versions": 1}
        main = {ALERT: one, ADDED: one, CUTOUT: one, META: one}
        return {self.table: main, **{self.index_table(i): {REF: one} for i in INDEXES}}

    def field_type(self, path: str) -> pa.DataType:
        top, _, child = path.partition(".")
        if top not in self.schema.names:
            raise ArchiveError(f"the archived schema has no column {top!r} (wanted for {path!r})")
        t = self.schema.field(top).type
        if child:
            if not pa.types.is_struct(t) or t.get_field_index(child) < 0:
                raise ArchiveError(f"the archived schema has no field {path!r}")
            t = t.field(child).type
        return t

    # -- the layout itself, stored in the table -------------------------------------------------

    def meta_cells(self) -> dict[bytes, bytes]:
        return {b"m:layout": LAYOUT_VERSION.encode(),
                b"m:schema": self.schema.serialize().to_pybytes(),
                b"m:added": _to_json(sorted(self.added)),
                b"m:cutouts": _to_json(sorted(self.cutouts)),
                b"m:keys": _to_json(dataclasses.asdict(self.keys)),
                b"m:order": str(self.order).encode(),
                b"m:avro": _to_json(self.avro),
                b"m:groups": _to_json(self.groups)}

    @classmethod
    def from_meta(cls, table: str, cells: dict[bytes, bytes]) -> Layout:
        version = cells.get(b"m:layout", b"?").decode()
        if version != LAYOUT_VERSION:
            raise ArchiveError(f"table {table!r} has archive layout {version}; this version of fink reads "
                               f"layout {LAYOUT_VERSION}")
        schema = pa.ipc.read_schema(pa.py_buffer(cells[b"m:schema"]))
        return cls(table, schema, json.loads(cells[b"m:added"]), json.loads(cells[b"m:cutouts"]),
                   Keys(**json.loads(cells[b"m:keys"])), int(cells[b"m:order"]), json.loads(cells[b"m:avro"]),
                   json.loads(cells.get(b"m:groups", b"{}")))

    def merged_with(self, stored: Layout) -> Layout:
        """This layout extended by what ``stored`` has and it lacks (columns of an earlier run).

        A column stored with another type or in another family is an error: the table would
        hold two meanings under one name.
        """
        if stored.keys != self.keys or stored.order != self.order:
            raise ArchiveError(f"table {self.table!r} is keyed {stored.keys} at HEALPix order {stored.order}; "
                               f"this stream asks for {self.keys} at order {self.order}")
        mine, theirs = self.placement(), stored.placement()
        for name, cols in theirs.items():
            have = mine.get(name)
            if have is not None and [_loose(c) for c in have] != [_loose(c) for c in cols]:
                raise ArchiveError(
                    f"table {self.table!r} holds {name!r} as {', '.join(_describe(c) for c in cols)}; this stream "
                    f"writes it as {', '.join(_describe(c) for c in have)}: use another table")
        fields = list(self.schema) + [f for f in stored.schema if f.name not in self.schema.names]
        return Layout(self.table, pa.schema(fields), self.added | stored.added, self.cutouts | stored.cutouts,
                      self.keys, self.order, {**stored.avro, **self.avro}, {**stored.groups, **self.groups})

    def placement(self) -> dict[str, list[Column]]:
        """Top-level column -> the cells that hold it (its group's cell for a group member)."""
        out: dict[str, list[Column]] = {}
        for col in self.columns:
            names = self.groups.get(col.name) or (col.name.partition(".")[0],)
            for name in names:
                out.setdefault(name, []).append(col)
        return out

    # -- encoding -----------------------------------------------------------------------------

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

    def object_key(self, object_id: str | int) -> str:
        """An object's id as its row keys start (integer ids zero-padded, as :func:`_key_text` writes them)."""
        t = self.field_type(_fields_of(self.keys.object_id)[0])  # an expression: its first column's type
        if pa.types.is_integer(t):
            return _key_text(pa.array([int(object_id)], pa.int64()))[0]
        return str(object_id)

    def unkeyable(self, table: pa.Table) -> list[str | None]:
        """Per alert, why it cannot be keyed (``missing_key``: its object id, time or alert id
        is missing or not finite), or None."""
        k = self.keys
        bad = [False] * table.num_rows
        for path in (k.object_id, k.time, k.alert_id):
            bad = [a or b for a, b in zip(bad, unkeyable(self.values(table, path).to_pylist()), strict=True)]
        return ["missing_key" if b else None for b in bad]

    def row_keys(self, table: pa.Table) -> list[bytes]:
        k = self.keys
        parts = [_key_text(self.values(table, p)) for p in (k.object_id, k.time, k.alert_id)]
        return [f"{o}_{t}_{a}".encode() for o, t, a in zip(*parts, strict=True)]

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

    def pixels(self, ra: Sequence[float], dec: Sequence[float]) -> list[int]:
        import astropy.units as u
        import numpy as np

        ra = np.asarray(ra, dtype=float)
        dec = np.asarray(dec, dtype=float)
        return self.healpix().lonlat_to_healpix(ra * u.deg, dec * u.deg).tolist()

    def healpix(self):
        from astropy_healpix import HEALPix

        return HEALPix(nside=2 ** self.order, order="nested")

    def pixel_prefix(self, pixel: int) -> str:
        width = len(str(12 * 4 ** self.order - 1))
        return f"{pixel:0{width}d}_"

    def index_rows(self, table: pa.Table, keys: Sequence[bytes], tags: Sequence[Sequence[str]] | None = None,
                   nights: Sequence[str] | None = None) -> dict[str, list[tuple[bytes, dict[bytes, bytes]]]]:
        """The rows of the three index tables for the alerts of ``table`` (main row ``keys``).

        ``tags`` lists per alert the tags (classes) it has; ``nights`` its night (``YYYYMMDD``).
        """
        k = self.keys
        times = _key_text(self.values(table, k.time))
        ra = self.values(table, k.ra).to_pylist()
        dec = self.values(table, k.dec).to_pylist()
        ras = pc.cast(self.values(table, k.ra), pa.string()).cast(pa.binary()).to_pylist()
        decs = pc.cast(self.values(table, k.dec), pa.string()).cast(pa.binary()).to_pylist()
        out: dict[str, list] = {i: [] for i in INDEXES}
        placed = [i for i, (a, b) in enumerate(zip(ra, dec, strict=True)) if a is not None and b is not None]
        pixels = dict(zip(placed, self.pixels([ra[i] for i in placed], [dec[i] for i in placed]), strict=True))
        for i, key in enumerate(keys):
            ref = {b"r:k": key}
            if i in pixels:
                out["pixel"].append(((self.pixel_prefix(pixels[i])).encode() + key,
                                     {**ref, b"r:ra": ras[i], b"r:dec": decs[i]}))
            if nights is not None and nights[i]:
                out["night"].append((f"{nights[i]}_".encode() + key, ref))
            for tag in (tags[i] if tags is not None else ()):
                out["class"].append((f"{tag}_{times[i]}_".encode() + key, ref))
        return out

    # -- decoding -----------------------------------------------------------------------------

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

    def qualifiers(self, columns: Iterable[str]) -> list[bytes]:
        """The cells to fetch for the top-level ``columns``."""
        placed = self.placement()
        return list(dict.fromkeys(c.qualifier for name in columns for c in placed.get(name, [])))


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


def _loose(col: Column) -> Column:
    return dataclasses.replace(col, type=_nullable(col.type))


def _describe(col: Column) -> str:
    return f"{col.qualifier.decode()} ({col.type}, {col.kind})"


def _fields_of(key: str) -> list[str]:
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


def _key_text(arr: pa.Array) -> list[str]:
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


# -- connections, writes with retries ----------------------------------------------------------

def connect(host: str, port: int, timeout_ms: int = 30000):
    import happybase

    return happybase.Connection(host, port=port, timeout=timeout_ms, autoconnect=True)


class Writer:
    """Batched, parallel, retried writes to the archive through the Thrift gateway.

    ``write`` returns only when HBase has accepted every row; while the gateway or HBase is
    down it retries with exponential backoff (``backoff`` doubling up to ``max_backoff``
    seconds), which holds the streaming query where it is, and gives up with
    :class:`ArchiveError` after ``retry_for`` seconds without success.
    """

    def __init__(self, host: str, port: int, pool_size: int = 4, batch_size: int = 200,
                 retry_for: float = 600.0, backoff: float = 0.5, max_backoff: float = 10.0,
                 on_retry: Callable[[int, float, BaseException], None] | None = None):
        import happybase

        self.host, self.port, self.batch_size = host, int(port), int(batch_size)
        self.retry_for, self.backoff, self.max_backoff = float(retry_for), float(backoff), float(max_backoff)
        self.pool = happybase.ConnectionPool(size=int(pool_size), host=host, port=int(port), timeout=30000,
                                             autoconnect=False)
        self.threads = ThreadPoolExecutor(max_workers=int(pool_size), thread_name_prefix="fink-hbase")
        self.on_retry = on_retry
        self.retries = 0

    def close(self) -> None:
        self.threads.shutdown(wait=True)

    def _put(self, table: str, rows: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> int:
        with self.pool.connection() as conn:
            try:
                # one mutateRows call per chunk (happybase's batch_size counts cells, not rows)
                with conn.table(table).batch() as batch:
                    for key, cells in rows:
                        batch.put(key, cells)
            except Exception:
                # the pool refreshes a connection only on transport errors: make sure a
                # half-failed one is reopened before it is handed out again
                conn.close()
                raise
        return len(rows)

    def retried(self, what: str, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt`` until it succeeds, waiting with backoff while HBase is unavailable."""
        start, wait, tries = time.monotonic(), self.backoff, 0
        while True:
            try:
                return attempt()
            except ArchiveError:
                raise
            except Exception as exc:  # thrift transport, socket, or HBase's TIOError
                tries += 1
                self.retries += 1
                down = time.monotonic() - start
                if down > self.retry_for:
                    raise ArchiveError(f"{what}: HBase at {self.host}:{self.port} still unavailable after "
                                       f"{down:.0f} s and {tries} tries: {exc}") from exc
                if self.on_retry is not None:
                    self.on_retry(tries, down, exc)
                log.warning("%s: HBase unavailable (%s); try %d again in %.1f s", what, exc, tries + 1, wait)
                time.sleep(wait)
                wait = min(wait * 2, self.max_backoff)

    def write(self, tables: dict[str, Sequence[tuple[bytes, dict[bytes, bytes]]]]) -> dict[str, int]:
        """Write ``{table: rows}``; rows are sent in chunks over the pool's connections.

        Chunks already accepted are not sent again when another chunk has to be retried.
        """
        chunk = max(self.batch_size, 1)
        pending = [(t, rows[i:i + chunk]) for t, rows in tables.items() for i in range(0, len(rows), chunk)]
        counts = {t: 0 for t in tables}

        def attempt() -> None:
            futures = [(t, rows, self.threads.submit(self._put, t, rows)) for t, rows in pending]
            failed, error = [], None
            for t, rows, future in futures:
                try:
                    counts[t] += future.result()
                except Exception as exc:
                    failed.append((t, rows))
                    error = exc
            pending[:] = failed
            if error is not None:
                raise error

        self.retried(f"writing {sum(len(r) for _, r in pending)} rows", attempt)
        return counts


def ensure_tables(conn, layout: Layout, opener: Callable[[], Any] | None = None) -> Layout:
    """Create the main and index tables if absent and record the layout in the main table.

    An existing table keeps its layout, extended by new columns; a clash is an
    :class:`ArchiveError`. Returns the layout now stored. With ``opener`` (a function
    returning a new connection), the missing tables are created side by side, each through
    a connection of its own (HBase takes about a second per table).
    """
    existing = {t.decode() for t in conn.tables()}

    def create(name: str, families: dict, through=None) -> None:
        own = through is None and opener is not None
        c = opener() if own else (through or conn)
        try:
            c.create_table(name, families)
        except Exception as exc:  # created meanwhile by another writer
            if "TableExistsException" not in repr(exc) and "already exists" not in str(exc):
                raise
        finally:
            if own:
                c.close()

    missing = [(name, families) for name, families in layout.tables.items() if name not in existing]
    if opener is not None and len(missing) > 1:
        with ThreadPoolExecutor(len(missing)) as pool:
            for done in [pool.submit(create, name, families) for name, families in missing]:
                done.result()
    else:
        for name, families in missing:
            create(name, families, conn)
    main = conn.table(layout.table)
    cells = main.row(META_ROW)
    merged = layout.merged_with(Layout.from_meta(layout.table, cells)) if cells else layout
    main.put(META_ROW, merged.meta_cells())
    return merged


def read_layout(conn, table: str) -> Layout:
    """The layout recorded in ``table``; a clear error if it is absent or not an archive."""
    if table.encode() not in conn.tables():
        raise ArchiveError(f"no archive table {table!r} in HBase (tables: "
                           f"{', '.join(t.decode() for t in conn.tables()) or 'none'})")
    cells = conn.table(table).row(META_ROW)
    if not cells:
        raise ArchiveError(f"table {table!r} holds no archive layout (row {META_ROW.decode()!r} is missing)")
    return Layout.from_meta(table, cells)


def delete_tables(conn, table: str) -> list[str]:
    """Delete the archive ``table`` and its index tables; return the names deleted."""
    existing = {t.decode() for t in conn.tables()}
    names = [n for n in (table, *(f"{table}_{i}" for i in INDEXES)) if n in existing]
    for name in names:
        conn.delete_table(name, disable=True)
    return names
