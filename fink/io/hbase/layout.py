"""The archive's table layout: which cells and index rows an alert of the science schema
becomes (cell encoding in :mod:`fink.io.hbase.cells`, the tables in :mod:`fink.io.hbase.tables`).

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
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fink.io.hbase.cells import (
    ADDED,
    ALERT,
    CUTOUT,
    META,
    REF,
    ArchiveError,
    CellCodec,
    Column,
    cell_schema,
    describe,
    fields_of,
    key_text,
    leaf_column,
    loose,
    to_json,
    unkeyable,
)

LAYOUT_VERSION = "1"
#: the main table's row holding the layout (sorts after every object id)
META_ROW = b"~schema"
INDEXES = ("class", "pixel", "night")
#: HEALPix order of the pixel index: order 7 (nside 128) has 27 arcmin pixels
DEFAULT_ORDER = 7


@dataclasses.dataclass(frozen=True)
class Keys:
    """Which columns identify an alert, date it and place it on the sky (dotted paths)."""

    object_id: str = "objectId"
    time: str = "candidate.jd"
    alert_id: str = "candid"
    ra: str = "candidate.ra"
    dec: str = "candidate.dec"


class RowKeys(CellCodec):
    """Row keys and index rows of a :class:`Layout` (its ``keys``, ``order`` and columns).

    Notes
    -----
    A row key depends only on the alert (``<object id>_<time>_<alert id>``, each part
    written to sort as its value: :func:`fink.io.hbase.cells.key_text`), so writing a batch
    again writes the same rows.
    """

    keys: Keys
    order: int
    field_type: Callable[[str], pa.DataType]  # Layout's

    def object_key(self, object_id: str | int) -> str:
        """An object's id as its row keys start (integer ids zero-padded, as :func:`key_text` writes them)."""
        t = self.field_type(fields_of(self.keys.object_id)[0])  # an expression: its first column's type
        if pa.types.is_integer(t):
            return key_text(pa.array([int(object_id)], pa.int64()))[0]
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
        parts = [key_text(self.values(table, p)) for p in (k.object_id, k.time, k.alert_id)]
        return [f"{o}_{t}_{a}".encode() for o, t, a in zip(*parts, strict=True)]

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
        times = key_text(self.values(table, k.time))
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


class Layout(RowKeys):
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
                self.columns += [leaf_column(f"{field.name}.{child.name}", family, child.type) for child in field.type]
            else:
                self.columns.append(leaf_column(field.name, family, field.type))
        for key in dataclasses.astuple(keys):
            for path in fields_of(key):
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
                b"m:added": to_json(sorted(self.added)),
                b"m:cutouts": to_json(sorted(self.cutouts)),
                b"m:keys": to_json(dataclasses.asdict(self.keys)),
                b"m:order": str(self.order).encode(),
                b"m:avro": to_json(self.avro),
                b"m:groups": to_json(self.groups)}

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
            if have is not None and [loose(c) for c in have] != [loose(c) for c in cols]:
                raise ArchiveError(
                    f"table {self.table!r} holds {name!r} as {', '.join(describe(c) for c in cols)}; this stream "
                    f"writes it as {', '.join(describe(c) for c in have)}: use another table")
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

    def qualifiers(self, columns: Iterable[str]) -> list[bytes]:
        """The cells to fetch for the top-level ``columns``."""
        placed = self.placement()
        return list(dict.fromkeys(c.qualifier for name in columns for c in placed.get(name, [])))




