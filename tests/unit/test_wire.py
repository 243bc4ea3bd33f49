"""Rubin's wire format and schema ids, and the survey descriptions the decoders read.

The real Rubin alerts of ``../shared/datasim/rubin`` (schemas 7.4, 9.0, 10.0) are decoded
through :class:`fink.survey.wire.SchemaResolver` and compared with fastavro's decode of the same
body under the schema file that came with them; the registry path runs against a real
HTTP server on loopback that answers as a Confluent registry does.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
from importlib import resources
from pathlib import Path

import fastavro
import pytest

from fink.config import ConfigError
from fink.errors import FinkError
from fink.survey import avro, wire
from fink.survey import description as survey
from fink.survey.avro import AlertDecodeError

RUBIN = survey.load("rubin")


def _rubin_folders(shared_datasim: Path) -> list[Path]:
    folders = sorted({p.parent for p in (shared_datasim / "rubin").rglob("*.avro")})
    if not folders:
        pytest.skip(f"no Rubin alerts under {shared_datasim / 'rubin'}")
    return folders


def _sidecar(folder: Path) -> dict:
    (path,) = folder.glob("*.avsc")
    return fastavro.parse_schema(json.loads(path.read_text()))


# -- survey descriptions -------------------------------------------------------------------

def test_the_shipped_descriptions_load_and_differ_only_as_data():
    assert set(survey.shipped()) >= {"ztf", "rubin"}
    ztf = survey.load("ztf")
    assert (ztf.wire, RUBIN.wire) == ("container", "confluent")
    assert (ztf.alert_id, RUBIN.alert_id) == ("candid", "diaSource.diaSourceId")
    assert ztf.topic_for("20261127") == "ztf_20261127_programid1"
    assert ztf.jd({"candidate": {"jd": 2461000.5}}) == 2461000.5
    assert RUBIN.jd({"diaSource": {"midpointMjdTai": 61000.0}}) == 2461000.5
    assert RUBIN.jd({"diaSource": {"midpointMjdTai": float("nan")}}) is None
    # an SSO source without diaObject is named by its ssObjectId
    assert RUBIN.object_key({"diaSource": {"diaObjectId": None, "ssObjectId": 42}}) == 42


def test_a_third_survey_is_a_yaml_file(tmp_path):
    text = (resources.files("fink") / "data" / "surveys" / "rubin.yaml").read_text()
    path = tmp_path / "other.yaml"
    path.write_text(text.replace("name: rubin", "name: other").replace("lsst_{night}", "other_{night}"))
    other = survey.load(str(path))
    assert other.name == "other" and other.topic_for("20270101") == "other_20270101"


@pytest.mark.parametrize("change, message", [
    ({"wire": "ndjson"}, "wire 'ndjson'"),
    ({"schemas": {"source": "web"}}, "schemas.source"),
    ({"topic": "static"}, "{night}"),
    ({"alert_id": ""}, "alert_id"),
    ({"photometry": {"kind": "counts"}}, "photometry.kind"),
    ({"alert_idd": "x"}, "unknown key 'alert_idd'"),
])
def test_a_bad_description_is_refused_by_key(change, message):
    data = {**survey.load("ztf").to_dict(), **change}
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        survey.Survey.from_mapping(data, source="test.yaml")


def test_an_unknown_survey_name_says_what_is_shipped():
    with pytest.raises(ConfigError, match="not a shipped survey .*rubin.*ztf"):
        survey.load("hst")


# -- the wire format -----------------------------------------------------------------------

def test_frame_and_unframe_are_inverse_and_bad_frames_are_named():
    assert wire.unframe(wire.frame(1000, b"body")) == (1000, b"body")
    bad = [(b"", "empty"), (None, "empty"), (b"Obj\x01abc", "not_avro"), (b"\x00\x00\x00\x03", "truncated")]
    for data, reason in bad:
        with pytest.raises(AlertDecodeError) as err:
            wire.unframe(data)
        assert err.value.reason == reason


def test_every_packaged_major_from_7_is_known():
    resolver = wire.SchemaResolver(RUBIN)
    ids = resolver.known_ids()
    assert {704, 900, 1000} <= set(ids) and min(ids) >= 700
    assert {major for major, _ in map(lambda i: divmod(i, 100), ids)} >= {7, 8, 9, 10}
    for sid in ids:  # each one loads as an alert schema and gives Spark a self-contained text
        assert json.loads(resolver.schema_json(sid))["type"] == "record"


@pytest.mark.shared
def test_every_real_rubin_alert_decodes_as_fastavro_reads_its_body(shared_datasim):
    resolver = wire.SchemaResolver(RUBIN)
    seen = {}
    for folder in _rubin_folders(shared_datasim):
        reference = _sidecar(folder)
        for path in sorted(folder.glob("*.avro")):
            data = path.read_bytes()
            decoded = resolver.decode(data)
            expected = fastavro.schemaless_reader(io.BytesIO(data[5:]), reference, None)
            assert decoded.alert == expected, path
            assert decoded.schema_version == folder.parent.name[1:].replace("_", ".")
            assert RUBIN.alert_key(decoded.alert) == expected["diaSource"]["diaSourceId"]
            seen[decoded.schema_version] = seen.get(decoded.schema_version, 0) + 1
    assert set(seen) == {"7.4", "9.0", "10.0"} and sum(seen.values()) == 232, seen


@pytest.mark.shared
def test_encode_then_decode_gives_the_alert_back(shared_datasim):
    folder = _rubin_folders(shared_datasim)[-1]
    data = sorted(folder.glob("*.avro"))[0].read_bytes()
    resolver = wire.SchemaResolver(RUBIN)
    alert = resolver.decode(data).alert
    sid = int.from_bytes(data[1:5], "big")
    assert wire.encode(alert, sid, resolver.schema(sid)) == data


@pytest.mark.shared
def test_unknown_ids_old_majors_and_corrupt_bodies_are_quarantine_reasons(shared_datasim):
    folder = _rubin_folders(shared_datasim)[-1]
    data = sorted(folder.glob("*.avro"))[0].read_bytes()
    resolver = wire.SchemaResolver(RUBIN)
    cases = {
        "unknown id": (wire.frame(99999, data[5:]), "unknown_schema", "99999"),
        "old major": (wire.frame(602, data[5:]), "unknown_schema", "older than the oldest supported"),
        "cut short": (data[:len(data) // 2], "truncated", ""),
        "bytes left over": (data + b"\x00\x01", "truncated", "after the alert"),
        "oversized": (data, "oversized", ""),
    }
    for name, (message, reason, detail) in cases.items():
        with pytest.raises(AlertDecodeError) as err:
            wire.decode(message, resolver, max_bytes=len(data) - 1 if name == "oversized" else avro.MAX_ALERT_BYTES)
        assert err.value.reason == reason and detail in str(err.value), name


@pytest.mark.shared
def test_rubin_identity_and_time_checks(shared_datasim):
    folder = _rubin_folders(shared_datasim)[-1]
    data = sorted(folder.glob("*.avro"))[0].read_bytes()
    resolver = wire.SchemaResolver(RUBIN)
    sid = int.from_bytes(data[1:5], "big")
    alert = resolver.decode(data).alert
    no_object = {**alert, "diaSource": {**alert["diaSource"], "diaObjectId": None, "ssObjectId": None}}
    no_time = {**alert, "diaSource": {**alert["diaSource"], "midpointMjdTai": float("nan")}}
    for record, reason in ((no_object, "missing_identifiers"), (no_time, "bad_time")):
        with pytest.raises(AlertDecodeError) as err:
            resolver.decode(wire.encode(record, sid, resolver.schema(sid)))
        assert err.value.reason == reason


# -- the registry --------------------------------------------------------------------------

class _Registry(http.server.BaseHTTPRequestHandler):
    schemas: dict[int, str] = {}
    asked: list[str] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        self.asked.append(self.path)
        sid = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/schemas/ids/") and sid.isdigit() and int(sid) in self.schemas:
            body, code = json.dumps({"schema": self.schemas[int(sid)]}).encode(), 200
        else:
            body, code = json.dumps({"error_code": 40403, "message": "Schema not found"}).encode(), 404
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Registry.asked = []
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.shared
def test_a_registry_answers_ids_no_file_has_once_each(shared_datasim, registry):
    folder = _rubin_folders(shared_datasim)[-1]
    files = sorted(folder.glob("*.avro"))
    sid = int.from_bytes(files[0].read_bytes()[1:5], "big")
    # the registry serves the schema under an id of its own choosing
    _Registry.schemas = {123456: next(folder.glob("*.avsc")).read_text()}
    url = f"http://127.0.0.1:{registry.server_address[1]}"
    resolver = wire.SchemaResolver(RUBIN, registry_url=url, packaged=False)
    for path in files:
        data = path.read_bytes()
        decoded = resolver.decode(wire.frame(123456, data[5:]))
        assert decoded.alert == wire.SchemaResolver(RUBIN).decode(data).alert
    assert _Registry.asked == ["/schemas/ids/123456"]  # cached by id: one request for every message
    with pytest.raises(AlertDecodeError, match="the registry has no such id"):
        resolver.decode(wire.frame(sid, files[0].read_bytes()[5:]))


def test_an_unreachable_registry_quarantines_and_is_asked_again(registry):
    port = registry.server_address[1]
    registry.shutdown()
    registry.server_close()
    resolver = wire.SchemaResolver(RUBIN, registry_url=f"http://127.0.0.1:{port}", packaged=False, timeout=2)
    for _ in range(2):
        with pytest.raises(AlertDecodeError, match="registry unreachable"):
            resolver.schema(1000)
    assert resolver.registry_requests == 2


def test_a_local_schema_folder_answers_before_the_package(tmp_path):
    source = wire.lsst_alert_packet_root() / "10" / "0"
    for f in source.glob("*.avsc"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "lsst.v10_0.alert.avsc").rename(tmp_path / "77777.avsc")
    resolver = wire.SchemaResolver(RUBIN, schema_dir=str(tmp_path), packaged=False)
    assert resolver.known_ids() == [77777]
    assert resolver.schema(77777)["name"] == "lsst.v10_0.alert"
    with pytest.raises(FinkError, match="no such folder"):
        wire.SchemaResolver(RUBIN, schema_dir=str(tmp_path / "missing"))


def test_a_schema_that_is_not_a_rubin_alert_is_unknown(tmp_path):
    (tmp_path / "lsst.v10_0.alert.avsc").write_text(json.dumps(
        {"type": "record", "name": "lsst.v10_0.alert", "fields": [{"name": "x", "type": "int"}]}))
    resolver = wire.SchemaResolver(RUBIN, schema_dir=str(tmp_path), packaged=False)
    with pytest.raises(AlertDecodeError, match="not a rubin alert"):
        resolver.schema(1000)


def test_the_union_layout_keeps_every_field_of_every_version():
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, LongType, StringType, StructField
    from pyspark.sql.types import StructType as S

    from fink.stages.decoding import union_type
    from fink.survey.avro import SchemaError

    def st(*fields):
        return S([StructField(n, t) for n, t in fields])

    newest = st(("diaSourceId", LongType()), ("diaSource", st(("flux", DoubleType()), ("band", StringType()))),
                ("prv", ArrayType(st(("flux", DoubleType())))))
    oldest = st(("alertId", LongType()), ("diaSource", st(("flux", FloatType()), ("old", IntegerType()))),
                ("prv", ArrayType(st(("flux", FloatType()), ("snr", FloatType())))))
    union = union_type([newest, oldest])
    assert union.fieldNames() == ["diaSourceId", "diaSource", "prv", "alertId"]  # newest first, then the rest
    assert union["diaSource"].dataType == st(("flux", DoubleType()), ("band", StringType()), ("old", IntegerType()))
    assert union["prv"].dataType.elementType.fieldNames() == ["flux", "snr"]
    assert union_type([newest]) == newest
    with pytest.raises(SchemaError, match=r"field alert\.diaSource\.band: .*no single type"):
        union_type([newest, st(("diaSource", st(("band", IntegerType()),)))])

def test_the_newest_version_is_already_in_the_union_layout_when_older_ones_add_nothing():
    """Decoded non-null fields keep their nullability: the newest version is written as it was
    decoded, without re-laying out every alert's history arrays (a per-element SQL transform)."""
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, LongType, StructField
    from pyspark.sql.types import StructType as S

    from fink.stages.decoding import _same, union_type

    item = S([StructField("jd", DoubleType(), False), StructField("mag", FloatType(), True)])
    newest = S([StructField("candid", LongType(), False), StructField("prv", ArrayType(item, False), True)])
    older = S([StructField("candid", LongType(), False),
               StructField("prv", ArrayType(S([StructField("jd", DoubleType(), True)]), True), True)])
    union = union_type([newest, older])
    assert not union["candid"].nullable  # non-null in every version
    assert union["prv"].dataType.containsNull and union["prv"].dataType.elementType["jd"].nullable
    assert _same(newest, union_type([newest, S([StructField("candid", LongType(), True)])]))
    assert _same(newest, union) and not _same(older, union)
    assert not _same(union, newest)  # a nullable field does not fit a non-null one

