"""`fink start pipeline`: the four stages in one pass of one Spark driver, on the sample night."""

import json
from pathlib import Path

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
