"""The archive's table layout without HBase: cells read back equal, keys sort, clashes are named."""

import math
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from fink.io.hbase import ArchiveError, Keys, Layout, time_key

CANDIDATE = pa.struct([("jd", pa.float64()), ("fid", pa.int32()), ("magpsf", pa.float32()), ("ra", pa.float64()),
                       ("dec", pa.float64()), ("isdiffpos", pa.string())])
SCHEMA = pa.schema([
    ("objectId", pa.string()), ("candid", pa.int64()), ("candidate", CANDIDATE),
    ("prv_candidates", pa.list_(CANDIDATE)),
    ("cutoutScience", pa.struct([("fileName", pa.string()), ("stampData", pa.binary())])),
    ("processingEnd", pa.timestamp("us", tz="UTC")), ("snia_prob", pa.float64()), ("rb_ok", pa.bool_()),
    ("rb", pa.float32()),
    ("fink_modules", pa.map_(pa.string(), pa.string())),
])


def alerts() -> pa.Table:
    point = {"jd": 2461371.5000001, "fid": 1, "magpsf": 18.3, "ra": 10.0, "dec": -5.0, "isdiffpos": "t"}
    rows = [
        {"objectId": "ZTF26aaaaaaa", "candid": 7, "candidate": point,
         "prv_candidates": [{**point, "jd": 2461370.25, "magpsf": None}, None, {**point, "magpsf": float("nan")}],
         "cutoutScience": {"fileName": "s.fits.gz", "stampData": b"\x1f\x8b\x00binary\xff"},
         "processingEnd": datetime(2026, 11, 27, 3, 4, 5, 123456, tzinfo=UTC), "snia_prob": 1e-300,
         "rb_ok": True, "rb": 18.3, "fink_modules": [("features", "1.0"), ("xmatch", "")]},
        {"objectId": "ZTF26aaaaaab", "candid": 8, "candidate": {**point, "magpsf": 3.4028235e38, "isdiffpos": ""},
         "prv_candidates": [], "cutoutScience": None, "processingEnd": None, "snia_prob": None,
         "rb_ok": False, "rb": 3.4028235e38, "fink_modules": None},
        {"objectId": "ZTF26aaaaaaa", "candid": 9, "candidate": {**point, "jd": 2461371.9, "magpsf": 1.17549435e-38},
         "prv_candidates": None, "cutoutScience": {"fileName": None, "stampData": b""},
         "processingEnd": datetime(1970, 1, 1, tzinfo=UTC), "snia_prob": float("inf"), "rb_ok": None,
         "fink_modules": []},
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def layout(**kw) -> Layout:
    return Layout("t", SCHEMA, added=["snia_prob", "fink_modules", "processingEnd"], cutouts=["cutoutScience"], **kw)


def nan_equal(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(nan_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(nan_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_cells_read_back_as_the_same_values_and_types():
    lay, table = layout(), alerts()
    rows = lay.encode(table)
    back = lay.decode(rows)
    assert back.schema == SCHEMA
    assert nan_equal(back.to_pylist(), table.to_pylist())


def test_a_group_of_columns_is_one_cell_and_reads_back_as_columns():
    lay = layout(groups={"scores": ["snia_prob", "fink_modules", "processingEnd"]})
    rows = lay.encode(alerts())
    assert all(b"d:snia_prob" not in cells and b"d:scores" in cells for _, cells in rows)
    back = lay.decode(rows)
    assert back.schema == SCHEMA and nan_equal(back.to_pylist(), alerts().to_pylist())
    assert lay.decode(rows, ["objectId", "snia_prob"]).column("snia_prob").to_pylist() == [1e-300, None, float("inf")]
    assert lay.qualifiers(["snia_prob", "processingEnd"]) == [b"d:scores"]
    again = Layout.from_meta("t", lay.meta_cells())
    assert again.groups == lay.groups and nan_equal(again.decode(rows).to_pylist(), alerts().to_pylist())
    with pytest.raises(ArchiveError, match="this stream writes it as d:scores"):
        lay.merged_with(layout())
    with pytest.raises(ArchiveError, match="mixes added values"):
        layout(groups={"bad": ["snia_prob", "rb"]})
    with pytest.raises(ArchiveError, match="is a cutout"):
        layout(groups={"bad": ["cutoutScience"]})


def test_families_qualifiers_and_nulls():
    lay = layout()
    key, cells = lay.encode(alerts())[1]
    assert key == b"ZTF26aaaaaab_02461371.5000001_00000000000000000008"
    assert cells[b"i:rb"] == b"3.4028235e+38"  # float32 shortest text
    assert cells[b"i:objectId"] == b"ZTF26aaaaaab" and cells[b"i:candid"] == b"8"
    assert set(cells) >= {b"i:candidate", b"i:prv_candidates"}  # a struct, a list: one Avro cell each
    assert b"i:fink_modules" not in cells and b"d:fink_modules" not in cells  # null: no cell
    first = lay.encode(alerts())[0][1]
    assert first[b"b:cutoutScience.stampData"] == b"\x1f\x8b\x00binary\xff"  # cutout bytes as they came
    assert first[b"d:fink_modules"] and first[b"d:processingEnd"] == b"2026-11-27 03:04:05.123456Z"
    assert b"d:snia_prob" not in cells and b"b:cutoutScience.stampData" not in cells
    empty = lay.encode(alerts())[2][1]
    assert empty[b"b:cutoutScience.stampData"] == b"" and b"b:cutoutScience.fileName" not in empty
    assert cells[b"i:rb_ok"] == b"false"
    families = {q.split(b":")[0] for _, c in lay.encode(alerts()) for q in c}
    assert families == {b"i", b"d", b"b"}


def test_row_keys_keep_an_object_contiguous_and_in_time_order():
    keys = layout().row_keys(alerts())
    assert sorted(keys) == [keys[0], keys[2], keys[1]]  # ZTF26aaaaaaa at two times, then ZTF26aaaaaab
    assert time_key(2461371.5000001) == "02461371.5000001" and time_key(60000.5) == "00060000.5000000"
    missing = alerts().set_column(0, "objectId", pa.array(["a", None, "c"]))
    with pytest.raises(ArchiveError, match="no value in a key column"):
        layout().row_keys(missing)


def test_negative_ids_are_keyed_in_order_and_unkeyable_alerts_are_named():
    """Rubin's ids may be negative: they key rows (before the fix: "a negative integer cannot be
    part of a row key", and the archive stopped on that alert forever)."""
    ids = [-(2 ** 63), -8, -1, 0, 7, 2 ** 63 - 1]
    table = pa.Table.from_pylist([{**alerts().to_pylist()[0], "candid": i} for i in ids], schema=SCHEMA)
    keys = layout().row_keys(table)
    assert sorted(keys) == keys and len(set(keys)) == len(ids)  # same object and time: the id's order
    assert keys[1].endswith(b"_-9999999999999999992") and keys[4].endswith(b"_00000000000000000007")
    broken = alerts().set_column(0, "objectId", pa.array(["a", None, "c"]))
    broken = broken.set_column(2, "candidate", pa.array([{**r["candidate"], "jd": jd} for r, jd in zip(
        alerts().to_pylist(), [float("nan"), 1.0, 2.0], strict=True)], CANDIDATE))
    assert layout().unkeyable(broken) == ["missing_key", "missing_key", None]


def test_index_rows_point_at_the_main_rows():
    import astropy.units as u
    from astropy_healpix import HEALPix

    lay, table = layout(order=7), alerts()
    keys = lay.row_keys(table)
    index = lay.index_rows(table, keys, tags=[["a", "b"], [], ["a"]], nights=["20261127", "20261127", None])
    pixel = int(HEALPix(nside=128, order="nested").lonlat_to_healpix(10.0 * u.deg, -5.0 * u.deg))
    assert index["pixel"][0] == (f"{pixel:06d}_".encode() + keys[0],
                                 {b"r:k": keys[0], b"r:ra": b"10", b"r:dec": b"-5"})
    assert [k for k, _ in index["night"]] == [b"20261127_" + keys[0], b"20261127_" + keys[1]]
    assert [k for k, _ in index["class"]] == [b"a_02461371.5000001_" + keys[0], b"b_02461371.5000001_" + keys[0],
                                              b"a_02461371.9000000_" + keys[2]]
    assert all(cells[b"r:k"] in keys for rows in index.values() for _, cells in rows)


def test_the_layout_survives_its_meta_row_and_clashes_are_named():
    lay = layout()
    again = Layout.from_meta("t", lay.meta_cells())
    assert again.schema == lay.schema and again.added == lay.added and again.avro == lay.avro
    assert nan_equal(again.decode(lay.encode(alerts())).to_pylist(), alerts().to_pylist())
    extra = pa.schema([*SCHEMA, ("new_score", pa.float32())])
    merged = Layout("t", extra, added=["new_score", "snia_prob", "fink_modules", "processingEnd"],
                    cutouts=["cutoutScience"]).merged_with(lay)
    assert "new_score" in merged.schema.names and "snia_prob" in merged.added
    clash = pa.schema([f if f.name != "snia_prob" else pa.field("snia_prob", pa.string()) for f in SCHEMA])
    with pytest.raises(ArchiveError, match=r"holds 'snia_prob' as d:snia_prob \(double, text\)"):
        Layout("t", clash, added=["snia_prob", "fink_modules", "processingEnd"],
               cutouts=["cutoutScience"]).merged_with(lay)
    strict = pa.schema([f if f.name != "fink_modules" else
                        pa.field("fink_modules", pa.map_(pa.string(), pa.field("value", pa.string(), nullable=False)))
                        for f in SCHEMA])
    same = Layout("t", strict, added=["snia_prob", "fink_modules", "processingEnd"], cutouts=["cutoutScience"])
    assert same.merged_with(lay).schema.names == SCHEMA.names  # nullability alone is no clash
    with pytest.raises(ArchiveError, match="HEALPix order"):
        layout(order=8).merged_with(lay)
    with pytest.raises(ArchiveError, match="layout 0"):
        Layout.from_meta("t", {**lay.meta_cells(), b"m:layout": b"0"})


def test_missing_key_columns_and_unknown_columns_are_named():
    with pytest.raises(ArchiveError, match="no field 'candidate.ra_deg'"):
        Layout("t", SCHEMA, keys=Keys(ra="candidate.ra_deg"))
    with pytest.raises(ArchiveError, match="no column 'nope'"):
        layout().decode([], ["nope"])
