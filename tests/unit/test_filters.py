"""The filter API and the Avro schema of distributed alerts, without Spark's JVM."""

import io
import sys
import types
from datetime import UTC, datetime

import fastavro
import numpy as np
import pandas as pd
import pytest
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from fink.filters import FilterError, alert_filter, load_filters
from fink.filters import builtin as builtin_filters
from fink.science import module
from fink.science.science_api import run_module
from fink.survey.avro import SchemaError, avro_schema


@pytest.fixture
def user_filters(monkeypatch):
    mod = types.ModuleType("userfilters")

    @alert_filter(inputs=["candidate.magpsf"])
    def faint(mag, *, limit: float = 19.0):
        return mag > limit

    @module(inputs=["candidate.magpsf"], outputs={"x": "double"})
    def not_a_filter(mag):
        return mag

    mod.faint, mod.not_a_filter = faint, not_a_filter
    monkeypatch.setitem(sys.modules, "userfilters", mod)
    return mod


def test_a_filter_loads_per_topic_with_its_parameters(user_filters):
    loaded = load_filters({"faint.stars": "userfilters:faint", "fainter": "userfilters:faint"},
                          {"fainter": {"limit": 20.0}})
    assert [f.topic for f in loaded] == ["faint.stars", "fainter"]
    assert [f.module.key for f in loaded] == ["faint_stars", "fainter"]  # metric-safe names
    mags = pd.Series([18.0, 19.5, 20.5])
    outs = [run_module(f.module, [mags]) for f in loaded]
    assert outs[0]["_sel0"].tolist() == [False, True, True]
    assert outs[1]["_sel1"].tolist() == [False, False, True]


@pytest.mark.parametrize("filters, params, message", [
    ({"t": "nowhere.filters:f"}, None, "cannot import 'nowhere.filters'"),
    ({"t": "userfilters:missing"}, None, "has no attribute 'missing'"),
    ({"t": "userfilters:not_a_filter"}, None, "is not declared with @fink.filters.alert_filter"),
    ({"bad topic!": "userfilters:faint"}, None, "is not a valid Kafka topic name"),
    ({"t_schema": "userfilters:faint"}, None, "not ending in '_schema'"),
    ({"t": "userfilters:faint"}, {"u": {"limit": 1}}, "topic 'u', which has no filter"),
    ({"t": "userfilters:faint"}, {"t": {"cut": 1}}, "unknown parameter 'cut'"),
])
def test_loading_errors_name_the_filter_and_topic(user_filters, filters, params, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace("@", "@")):
        load_filters(filters, params)


def test_a_science_module_path_is_not_taken_for_a_filter():
    with pytest.raises(FilterError, match="not declared with @fink.filters.alert_filter"):
        load_filters({"t": "fink.science.modules.sso:solar_system"})


def test_a_wrong_declaration_is_refused_as_a_filter():
    with pytest.raises(FilterError, match="filter .*declares 2 input"):
        @alert_filter(inputs=["a", "b"])
        def one(a):
            return a


def test_builtin_filters_answer_by_hand():
    assert builtin_filters.early_snia(pd.Series([0.9, 0.9, 0.2, np.nan]), pd.Series([3, 40, 3, 3])).tolist() == \
        [True, False, False, False]
    assert builtin_filters.solar_system(pd.Series([3, 0, 2])).tolist() == [True, False, False]
    assert builtin_filters.catalogued(pd.Series(["RRLyr", None]), types=()).tolist() == [True, False]
    assert builtin_filters.catalogued(pd.Series(["RRLyr", "QSO"]), types=("QSO",)).tolist() == [False, True]


ALERT = StructType([
    StructField("objectId", StringType()),
    StructField("candid", LongType(), nullable=False),
    StructField("candidate", StructType([StructField("magpsf", FloatType()), StructField("fid", IntegerType())])),
    StructField("prv_candidates", ArrayType(StructType([StructField("magpsf", FloatType())]))),
    StructField("cutoutScience", StructType([StructField("stampData", BinaryType())])),
    StructField("fink_modules", MapType(StringType(), StringType())),
    StructField("processingEnd", TimestampType()),
    StructField("snia_prob", DoubleType()),
])


def test_the_avro_schema_of_an_alert_round_trips_through_fastavro():
    schema = avro_schema(ALERT)
    parsed = fastavro.parse_schema(schema)  # names unique, types valid
    record = {"objectId": "ZTF1", "candid": 7, "candidate": {"magpsf": 18.5, "fid": 1},
              "prv_candidates": [{"magpsf": None}, {"magpsf": 19.25}, None],
              "cutoutScience": {"stampData": b"\x1f\x8bfits"}, "fink_modules": {"m": "1.0"},
              "processingEnd": datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC), "snia_prob": None}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    assert fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), parsed) == record
    # every field may be null, for readers of alerts with missing values
    assert all(f["type"][0] == "null" and f["default"] is None for f in schema["fields"])
    assert schema["fields"][6]["type"][1] == {"type": "long", "logicalType": "timestamp-micros"}


def test_a_type_without_avro_counterpart_is_named():
    with pytest.raises(SchemaError, match="column 'alert_price': no Avro type for Spark type decimal"):
        avro_schema(StructType([StructField("price", DecimalType(10, 2))]))


def test_the_outbox_is_under_a_local_checkpoint_and_reads_back_a_few_rows_at_a_time(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fink.stages.distribution_sink import _outbox, read_outbox

    assert _outbox(str(tmp_path / "ck"), 7) == tmp_path / "ck" / "outbox" / "7"
    assert _outbox(f"file://{tmp_path}/ck", 7) == tmp_path / "ck" / "outbox" / "7"
    assert _outbox("hdfs://namenode:8020/fink/ck", 7) is None  # Python cannot read it: through the driver
    folder = tmp_path / "ck" / "outbox" / "7"
    folder.mkdir(parents=True)
    values = [bytes([i % 256]) * (1000 + i) for i in range(300)]
    for part in range(2):  # as Spark writes them: part files, plus files that are not Parquet
        chunk = slice(part * 150, (part + 1) * 150)
        pq.write_table(pa.table({"_k": pa.array([i % 3 for i in range(300)][chunk], pa.int32()),
                                 "value": pa.array(values[chunk], pa.binary())}), folder / f"part-{part}.parquet")
    (folder / "_SUCCESS").write_text("")
    got = list(read_outbox(folder, rows_per_read=7))
    assert got == [(i % 3, v) for i, v in enumerate(values)]
