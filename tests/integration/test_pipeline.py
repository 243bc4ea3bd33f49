"""`fink start pipeline`: the four stages in one pass of one Spark driver, on the sample night."""

import dataclasses
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_operations import candids, consume, hbase_candids
from test_raw2science import passes

from fink.ops import dashboard
from fink.runtime import metrics
from fink.stages import raw2science as r2s

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_the_pipeline_service_runs_the_night_through_every_stage_in_one_driver(spark, hbase_thrift,
                                                                              local_pipeline_night):
    night = local_pipeline_night  # `fink start pipeline --simulator` (tests/conftest.py), also the cluster's reference
    home, data, run, bright, table = (night[k] for k in ("home", "data", "run", "bright", "table"))
    status = json.loads((Path(run.run_dir) / "status.json").read_text())
    assert status["state"] == "finished", (Path(run.run_dir) / "log.txt").read_text()[-3000:]
    raw, science = candids(data / "raw"), candids(data / "science")
    assert len(raw) == len(set(raw)) == 229
    raw_rows = pq.read_table(str(data / "raw"), columns=["candid", "candidate"]).to_pylist()
    assert sorted(science) == sorted(r["candid"] for r in raw_rows if passes(r["candidate"]))
    assert sorted(hbase_candids(hbase_thrift, table)) == sorted(science)
    # the science archive holds what raw2science added, its alerts once: read_science joins the raw ones
    stored = pq.read_table(str(data / "science")).column_names
    assert "candidate" not in stored and "cutoutScience" not in stored and "snia_prob" in stored
    assert "xm_type" in stored  # the cross-match with the notebook's catalogue ran too
    joined = r2s.read_science(spark, str(data / "science")).select("candid", "candidate", "snia_prob",
                                                                   "cutoutScience").collect()
    assert sorted(r["candid"] for r in joined) == sorted(science)
    assert all(r["cutoutScience"] is not None for r in joined)
    assert any(r["snia_prob"] is not None for r in joined)  # the science modules ran in the pipeline
    expected = sorted(r["candid"] for r in joined if r["candidate"]["magpsf"] < 18.0)
    assert sorted(consume(bright, len(expected))) == expected and expected

    # one process, one run: its four stages are in the metrics store, and they balance
    store = metrics.Store(metrics.default_path(home))
    (stored,) = [r for r in store.runs() if r["service"] == "pipeline"]
    summary = dashboard.summary(store.batches(runs=[stored["run"]]))
    assert [q for q in summary if q != "pipeline"] == ["stream2raw", "raw2science", "distribution", "archive"]
    assert (summary["stream2raw"]["in"], summary["raw2science"]["in"], summary["raw2science"]["out"]) == (
        229, 229, len(science))
    assert summary["archive"]["out"] == len(science) and summary["distribution"]["in"] == len(science)
    executed = (Path(run.run_dir) / "output.html").read_text()
    assert "raw2science" in executed and "<img" in executed


def _drop_rows(folder: Path, candid: int) -> None:
    """Rewrite the Parquet file of ``folder`` holding ``candid`` without it (a fault: the alert lost)."""
    for path in folder.glob("night=*/*.parquet"):
        table = pq.read_table(path)
        keep = [c != candid for c in table.column("candid").to_pylist()]
        if not all(keep):
            pq.write_table(table.filter(keep), path)
            path.with_name(f".{path.name}.crc").unlink(missing_ok=True)  # Hadoop's checksum of the old file
            return
    raise AssertionError(f"{candid} not in {folder}")


def test_the_completeness_report_of_the_night_balances_and_flags_the_exposures_of_injected_faults(
        spark, hbase_thrift, local_pipeline_night, tmp_path):
    import shutil
    import subprocess
    import sys

    import yaml

    from fink.config import FinkConfig, ServicesConfig
    from fink.io import hbase
    from fink.ops import completeness

    night = local_pipeline_night
    data, table, bright = night["data"], night["table"], night["bright"]
    services = ServicesConfig.load()
    fink = FinkConfig(kafka_bootstrap=services.kafka_bootstrap, hbase_thrift=services.hbase_thrift, data_dir=str(data))

    def report(cfg=fink):
        src = completeness.Sources.of(cfg, filters={bright: "fink.filters.builtin:bright"}, table=table,
                                      topics=(night["topic"],))
        return completeness.night_report(spark, "20261127", cfg, "ztf", src)

    raw_rows = pq.read_table(str(data / "raw"), columns=["candid", "candidate"]).to_pylist()
    exposure = {r["candid"]: (r["candidate"]["jd"], r["candidate"]["field"], r["candidate"]["rcid"]) for r in raw_rows}
    kept = {r["candid"] for r in raw_rows if passes(r["candidate"])}
    clean = report()
    facts = completeness.summary(clean)
    assert facts["balanced"] and facts["exposures"] == len(set(exposure.values())) == len(clean)
    totals = facts["totals"]
    assert (totals["published"], totals["ingested"], totals["quarantined"]) == (229, 229, 0)
    assert totals["kept"] == totals["archived"] == len(kept) and totals["rejected"] == 229 - len(kept)
    want_bright = sum(1 for r in raw_rows if r["candid"] in kept and r["candidate"]["magpsf"] < 18.0)
    assert totals[f"selected:{bright}"] == totals[f"sent:{bright}"] == want_bright > 0

    # the command: the same report from the deployment's parameters, as CSV
    conf = tmp_path / "deployment.yaml"
    conf.write_text(yaml.safe_dump({"data_dir": str(data), "topic": night["topic"], "archive": {"table": table},
                                    "distribution": {"filters": {bright: "fink.filters.builtin:bright"}}}))
    done = subprocess.run([sys.executable, "-m", "fink.ops.cli", "report", "night", "20261127", "-c", str(conf),
                           "--out", str(tmp_path / "csv")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(clean)} exposures, 0 flagged" in done.stdout
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "csv" / "20261127.csv"),
                                  pd.read_csv(io.StringIO(clean.to_csv(index=False))))

    # faults, on a copy of the archives: an alert lost before the raw archive (rejected by the cuts, so
    # nowhere else), a kept alert lost before the science archive, a row missing from HBase
    faulty = tmp_path / "faulty"
    for part in ("raw", "science", "quarantine"):
        if (data / part).exists():
            shutil.copytree(data / part, faulty / part)
    rejected = sorted(set(exposure) - kept)
    bright_kept = sorted(r["candid"] for r in raw_rows if r["candid"] in kept and r["candidate"]["magpsf"] < 18.0)
    lost_raw, lost_science = rejected[0], bright_kept[0]
    unarchived = sorted(kept - {lost_science})[0]
    _drop_rows(faulty / "raw", lost_raw)
    _drop_rows(faulty / "science", lost_science)
    conn = hbase.connect(*hbase_thrift)
    htable = conn.table(table)
    (row_key, cells), = [(k, c) for k, c in htable.scan() if c.get(b"i:candid") == str(unarchived).encode()]
    htable.delete(row_key)
    try:
        flagged = report(dataclasses.replace(fink, data_dir=str(faulty)))
    finally:
        htable.put(row_key, cells)
        conn.close()
    bad = flagged[~flagged["balanced"]]
    where = {(r.jd, r.field, r.rcid): r.where for r in bad.itertuples()}
    assert set(where) == {exposure[lost_raw], exposure[lost_science], exposure[unarchived]}
    assert where[exposure[lost_raw]].startswith("1 published, neither ingested nor quarantined")
    assert f"{night['topic']}:" in where[exposure[lost_raw]]  # the offset that went missing
    assert where[exposure[lost_science]] == (f"1 passed the cuts, not in the science archive; 1 in HBase, not kept; "
                                             f"{bright}: 0 selected, 1 sent")
    assert where[exposure[unarchived]] == "1 kept, not in HBase"
    assert completeness.summary(flagged)["totals"]["published"] == 229  # the lost alert still counted, from Kafka
