"""raw2science on real Spark: cuts as a direct evaluation keeps, modules applied, failures reported."""

import io
import sys
import types
import uuid

import fastavro
import pytest
from test_stream2raw import NATIVE, SAMPLE, run

from fink.config import FinkConfig
from fink.runtime import streaming
from fink.science import ScienceModuleError, module
from fink.science.modules import BUILTIN
from fink.sim.simulator import SimulatorConfig, load_messages, replay
from fink.sim.sources import read_messages
from fink.stages import raw2science as r2s
from fink.stages import stream2raw as s2r

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def science(spark, data_dir, **options):
    fink = FinkConfig(data_dir=str(data_dir))
    cfg = r2s.Raw2ScienceConfig(**options)
    query = streaming.start(r2s.build(spark, cfg, fink).trigger(availableNow=True), r2s.QUERY_NAME)
    result = streaming.run_until([query], duration=300, poll=0.5)
    paths = cfg.paths(fink)
    return paths, r2s.reconcile(spark, result.progress[r2s.QUERY_NAME], paths["science"])


@pytest.fixture(scope="module")
def sample_raw(spark, kafka_bootstrap, tmp_path_factory):
    """The sample night through stream2raw: a raw archive to start from."""
    tmp = tmp_path_factory.mktemp("sample")
    topic = f"r2s_sample_{uuid.uuid4().hex[:8]}"
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=load_messages(SimulatorConfig(source=SAMPLE)),
           progress=False)
    _, totals = run(spark, kafka_bootstrap, topic, tmp, max_offsets=60)  # several raw files
    assert totals["archived"] == 229
    return tmp


def passes(candidate):
    """Fink's default cuts, evaluated directly on a fastavro record (a null fails)."""
    nbad, rb, fid = candidate.get("nbad"), candidate.get("rb"), candidate.get("fid")
    return nbad is not None and nbad == 0 and rb is not None and rb >= 0.55 and fid != 3


def test_cuts_keep_exactly_what_a_direct_evaluation_keeps_on_real_alerts(fresh_spark, kafka_bootstrap, topic,
                                                                         tmp_path, shared_datasim):
    messages = [m for folders in NATIVE.values() for f in folders for m in read_messages(shared_datasim / "ztf" / f)]
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=messages, progress=False)
    _, raw_totals = run(fresh_spark, kafka_bootstrap, topic, tmp_path, max_offsets=500)
    records = {}
    for m in messages:  # the first copy of a candid is the one archived
        r = next(fastavro.reader(io.BytesIO(m)))
        records.setdefault(r["candid"], r)
    archived = {r.candid for r in s2r.read_raw(fresh_spark, str(tmp_path / "raw")).select("candid").collect()}
    assert archived <= set(records) and len(archived) == raw_totals["archived"] >= len(records) - 2
    records = {c: records[c] for c in archived}
    paths, totals = science(fresh_spark, tmp_path)
    kept = {r.candid for r in r2s.read_science(fresh_spark, paths["science"]).select("candid").collect()}
    assert kept == {c for c, r in records.items() if passes(r["candidate"])}
    assert 0 < len(kept) < len(records)
    assert totals["balanced"] and totals["alerts"] == len(records) and totals["written"] == len(kept)
    rejected = {}
    for r in records.values():
        c = r["candidate"]
        reason = next((name for name, ok in (("nbad", c.get("nbad") == 0), ("rb", (c.get("rb") or -1) >= 0.55),
                                               ("fid", c.get("fid") != 3)) if not ok), None)
        if reason:
            rejected[reason] = rejected.get(reason, 0) + 1
    assert totals["reasons"] == rejected


def test_builtin_modules_add_their_columns_and_provenance(fresh_spark, sample_raw, tmp_path):
    catalogue = tmp_path / "cat.csv"
    raw = s2r.read_raw(fresh_spark, str(sample_raw / "raw")).select("candidate.ra", "candidate.dec", "objectId")
    rows = raw.limit(20).collect()
    catalogue.write_text("ra,dec,id,type\n" + "".join(f"{r.ra},{r.dec},{r.objectId}-cat,Star\n" for r in rows))
    cfg = {"modules": BUILTIN, "cuts": {"keep_all": "true"},
           "module_params": {"fink.science.modules.xmatch:crossmatch": {"catalogue_path": str(catalogue)}},
           "raw_path": str(sample_raw / "raw"), "checkpoint": str(tmp_path / "ck")}
    paths, totals = science(fresh_spark, tmp_path, **cfg)
    assert totals["balanced"] and totals["written"] == totals["alerts"] == 229
    assert set(totals["modules"]) == {"lightcurve_features", "snia_classifier", "solar_system", "crossmatch"}
    assert all(m["errors"] == 0 and m["seconds"] > 0 for m in totals["modules"].values())
    out = r2s.read_science(fresh_spark, paths["science"])
    assert {"lc_amplitude_g", "lc_stetson_k_r", "snia_prob", "roid", "xm_id", "fink_modules",
                                 "processingEnd"} <= set(out.columns)
    got = {r.objectId: r.xm_id for r in out.select("objectId", "xm_id").collect()}
    assert {got[r.objectId] for r in rows} == {f"{r.objectId}-cat" for r in rows}
    late = out.filter("processingEnd < processingStart or processingStart < brokerIngestTimestamp").count()
    assert late == 0
    assert out.select("fink_modules").first()[0]["fink.science.modules.sso:solar_system"] == "1.0"


@pytest.fixture
def faulty(monkeypatch):
    from pyspark import cloudpickle

    mod = types.ModuleType("faulty_science")

    @module(inputs=["candidate.magpsf"], outputs={"fragile": "double"})
    def fragile(mag):
        raise ZeroDivisionError("no flux")

    mod.fragile = fragile
    fragile.__module__ = "faulty_science"
    monkeypatch.setitem(sys.modules, "faulty_science", mod)
    cloudpickle.register_pickle_by_value(mod)  # the Python workers cannot import it
    yield "faulty_science:fragile"
    cloudpickle.unregister_pickle_by_value(mod)


def test_a_module_that_raises_does_not_stop_the_stream_and_is_reported(fresh_spark, sample_raw, tmp_path, faulty):
    cfg = {"modules": [faulty], "cuts": {"keep_all": "true"}, "raw_path": str(sample_raw / "raw"),
           "checkpoint": str(tmp_path / "ck")}
    paths, totals = science(fresh_spark, tmp_path, **cfg)
    assert totals["balanced"] and totals["written"] == 229
    assert totals["modules"]["fragile"]["errors"] == 229
    assert totals["modules"]["fragile"]["error"] == "ZeroDivisionError: no flux"
    out = r2s.read_science(fresh_spark, paths["science"])
    assert out.filter("fragile is not null").count() == 0


def test_loading_errors_are_raised_before_anything_starts(fresh_spark, tmp_path):
    fink = FinkConfig(data_dir=str(tmp_path))
    with pytest.raises(ScienceModuleError, match="cannot import 'nosuch'"):
        r2s.build(fresh_spark, r2s.Raw2ScienceConfig(modules=["nosuch:module"]), fink)
    assert fresh_spark.streams.active == []


def test_stopped_midstream_then_restarted_the_science_archive_has_each_alert_once(fresh_spark, sample_raw, tmp_path):
    fink = FinkConfig(data_dir=str(tmp_path))
    files = list((sample_raw / "raw").rglob("*.parquet"))
    assert len(files) >= 4, f"the sample's raw archive should span several files, it has {len(files)}"
    cfg = r2s.Raw2ScienceConfig(modules=["fink.science.modules.sso:solar_system"], cuts={"keep_all": "true"},
                                max_files_per_trigger=1, raw_path=str(sample_raw / "raw"))
    query = streaming.start(r2s.build(fresh_spark, cfg, fink).trigger(processingTime="1 second"), r2s.QUERY_NAME)

    def stop_after_one(queries):
        # one file per batch, stopped once the first has rows: at most that batch and the next are written,
        # however slowly this poll runs beside other work (two files a batch once let a loaded run finish)
        if any(p.get("numInputRows") for p in queries[0].recentProgress):
            streaming.stop_at_boundary(queries[0])  # not between a batch's files and its offsets

    first = streaming.run_until([query], duration=120, poll=0.2, on_poll=stop_after_one)
    science = cfg.paths(fink)["science"]
    partial = r2s.read_science(fresh_spark, science).count()
    assert 0 < partial < 229
    query = streaming.start(r2s.build(fresh_spark, cfg, fink).trigger(availableNow=True), r2s.QUERY_NAME)
    second = streaming.run_until([query], duration=240, poll=0.5)
    out = r2s.read_science(fresh_spark, science)
    assert out.count() == out.select("candid").distinct().count() == 229
    before = r2s.reconcile(fresh_spark, first.progress[r2s.QUERY_NAME], science)
    after = r2s.reconcile(fresh_spark, second.progress[r2s.QUERY_NAME], science)
    assert before["written"] + after["written"] == 229 and after["balanced"]


def test_every_batch_of_a_query_that_just_ended_is_in_the_metrics_store(spark, sample_raw, tmp_path, monkeypatch):
    from fink.runtime import metrics

    # a recorder no listener writes to: what it holds came from run_until's catch-up alone
    rec = metrics.Recorder(metrics.Store(tmp_path / "metrics.db"), "r2s-catch-up", "raw2science")
    monkeypatch.setattr(metrics, "_RECORDER", rec)
    _, totals = science(spark, tmp_path, max_files_per_trigger=1, raw_path=str(sample_raw / "raw"),
                        checkpoint=str(tmp_path / "ck"))
    batches = rec.store.batches(runs=["r2s-catch-up"])
    assert len(batches) >= 2 and set(batches["query"]) == {r2s.QUERY_NAME}
    assert batches["input_rows"].sum() == totals["alerts"] == 229
