"""The metrics store (fink.runtime.metrics) and the dashboard's accounts and report (fink.ops.dashboard)."""

import json
import os
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from fink.errors import FinkError
from fink.ops import dashboard
from fink.ops.cli import _params, main
from fink.runtime import metrics


def test_flatten_reads_rates_latency_and_the_lag_of_each_topic(progress):
    report = progress("stream2raw", 3, 100, 1_800_000_000, latency=[1.5, 3.0, 4.5],
                      observed={"stream2raw": {"messages": 100, "quarantined": 2}},
                      latest={"a": {"0": 50, "1": 40}, "b": {"0": 10}},
                      end=json.dumps({"a": {"0": 45, "1": 40}, "b": {"0": 3}}))  # Spark gives either form
    row = metrics.flatten(report)
    assert row["query"] == "stream2raw" and row["batch"] == 3 and row["input_rows"] == 100
    assert row["time"] == 1_800_000_000 and row["duration_s"] == 2.0
    assert (row["latency_p50"], row["latency_p95"], row["latency_p99"]) == (1.5, 3.0, 4.5)
    assert json.loads(row["lag_topics"]) == {"a": 5, "b": 7} and row["lag"] == 12
    assert json.loads(row["observed"]) == {"stream2raw": {"messages": 100, "quarantined": 2}}  # latency apart
    # a file source has no offsets per topic: the lag is Spark's own figure, or none
    bare = metrics.flatten(progress("raw2science", 0, 0, 1_800_000_000))
    assert bare["lag"] == 7 and bare["lag_topics"] is None and bare["latency_p50"] is None


def test_the_store_keeps_runs_batches_notes_and_idle_times(tmp_path, progress):
    store = metrics.Store(tmp_path / "m" / "metrics.db")
    assert store.runs() == [] and store.batches().empty and store.last_batch("none") is None  # before any write
    t = 1_800_000_000
    store.begin_run("r1", "stream2raw", pid=123, run_dir="/x")
    store.begin_run("r1", "other", pid=999)  # a second begin keeps the first record
    for batch in range(3):
        store.add_progress("r1", progress("stream2raw", batch, 10 * (batch + 1), t + 10 * batch, latency=[1, 2, 3]))
        store.add_note("r1", "stream2raw", batch, {"archived": 10 * (batch + 1), "quarantined": 0})
    store.add_progress("r1", progress("stream2raw", 2, 30, t + 20, latency=[1, 2, 3]))  # a replayed report
    store.idle("r1", t + 100)
    store.end_run("r1", "stopped")
    (run,) = store.runs()
    assert (run["service"], run["pid"], run["state"], run["run_dir"], run["idle"]) == ("stream2raw", 123, "stopped",
                                                                                      "/x", t + 100)
    df = store.batches()
    assert list(df["batch"]) == [0, 1, 2] and list(df["input_rows"]) == [10, 20, 30]
    assert [n["archived"] for n in df["note"]] == [10, 20, 30]
    assert df["time"].iloc[0] == pd.Timestamp(t, unit="s", tz="UTC")
    last = store.last_batch("r1")
    assert (last["batch"], last["batches"], last["rows"], last["idle"]) == (2, 3, 60, t + 100)
    assert store.batches(runs=["other"]).empty and len(store.batches(since=t + 5)) == 2
    assert [n["value"]["archived"] for n in store.notes(["r1"], "stream2raw")] == [10, 20, 30]


def test_another_process_reads_the_store_while_a_stage_writes_it(tmp_path, progress):
    path = tmp_path / "metrics.db"
    writer = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
import time
from fink.runtime import metrics
from test_helper import _progress as progress
store = metrics.Store({str(path)!r})
store.begin_run("w", "stream2raw")
for b in range(200):
    store.add_progress("w", progress("stream2raw", b, 5, 1_800_000_000 + b))
    time.sleep(0.005)  # a second of writes at least, so that the reads overlap them on a loaded machine
"""
    (tmp_path / "test_helper.py").write_text(f"import json, time\n{_source_of(progress)}")
    proc = subprocess.Popen([sys.executable, "-c", writer])
    store, seen = metrics.Store(path), []
    while proc.poll() is None:
        seen.append(len(store.batches()))  # never "database is locked": WAL readers do not wait
        time.sleep(0.01)
    assert proc.returncode == 0
    assert len(store.batches()) == 200 and seen == sorted(seen)
    assert any(0 < n < 200 for n in seen), "the reads did not overlap the writes"


def _source_of(fn) -> str:
    import inspect

    return inspect.getsource(fn)


def test_a_store_written_before_runs_had_an_idle_time_still_opens(tmp_path):
    path = tmp_path / "metrics.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (run TEXT PRIMARY KEY, service TEXT NOT NULL, pid INTEGER, host TEXT, "
                   "started REAL, ended REAL, state TEXT, error TEXT, run_dir TEXT)")
        db.execute("INSERT INTO runs (run, service) VALUES ('old', 'stream2raw')")
    store = metrics.Store(path)
    store.idle("old", 5.0)
    assert store.runs()[0]["idle"] == 5.0


def test_notes_without_a_recorder_do_nothing_and_listener_errors_never_raise(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(metrics, "_RECORDER", None)
    metrics.note("stream2raw", 0, {"archived": 1})  # no session attached: nothing, no error
    broken = metrics.Recorder(metrics.Store(tmp_path / "no" / "such" / "dir" / "x.db"), "r", "s")
    broken.store.path = tmp_path  # a folder: SQLite cannot open it
    monkeypatch.setattr(metrics, "_RECORDER", broken)
    metrics.note("stream2raw", 0, {"archived": 1})
    assert "could not record batch 0 of stream2raw" in caplog.text


def test_run_identity_comes_from_fink_start_or_the_process(monkeypatch):
    monkeypatch.setenv("FINK_SERVICE", "raw2science")
    monkeypatch.setenv("FINK_RUN", "raw2science-20261128-010203")
    assert metrics.run_identity("app") == ("raw2science", "raw2science-20261128-010203")
    monkeypatch.delenv("FINK_SERVICE")
    monkeypatch.delenv("FINK_RUN")
    service, run = metrics.run_identity("fink-archive")
    assert service == "fink-archive" and run.startswith("fink-archive-") and run.endswith(f"-{os.getpid()}")


def test_summary_accounts_each_stage_and_weights_latency_by_alerts(night_metrics):
    store = metrics.Store(night_metrics)
    s = dashboard.summary(dashboard.batches_of(store, "20261128"))
    assert list(s) == ["stream2raw", "raw2science"]  # pipeline order
    assert (s["stream2raw"]["in"], s["stream2raw"]["out"], s["stream2raw"]["quarantined"]) == (130, 129, 1)
    assert s["stream2raw"]["batches"] == 2  # the empty batch is not one
    assert s["stream2raw"]["latency_p50_s"] == 1.0  # 100 alerts at 1 s against 30 at 3 s
    assert s["stream2raw"]["latency_p95_s"] == 9.0
    assert (s["raw2science"]["in"], s["raw2science"]["out"], s["raw2science"]["rejected"]) == (129, 111, 18)
    assert s["stream2raw"]["alerts_per_s"] == pytest.approx(130 / 12, abs=0.1)  # busy from t to t+10, then 2 s
    # the night before holds only the first batch
    assert dashboard.summary(dashboard.batches_of(store, "20261127"))["stream2raw"]["in"] == 30


def test_offsets_lost_before_they_were_read_are_shown_per_stage(tmp_path, progress):
    store = metrics.Store(tmp_path / "metrics.db")
    store.begin_run("r1", "stream2raw")
    t = 1796300000.0
    for batch, lost in ((0, 0), (1, 40)):
        store.add_progress("r1", progress("stream2raw", batch, 10, t + 10 * batch,
                                          observed={"stream2raw": {"messages": 10}}))
        note = {"archived": 10, "quarantined": 0} | ({"lost": lost} if lost else {})
        store.add_note("r1", "stream2raw", batch, note)
    s = dashboard.summary(store.batches(runs=["r1"]))
    assert (s["stream2raw"]["in"], s["stream2raw"]["out"], s["stream2raw"]["lost"]) == (20, 20, 40)


def test_the_report_of_a_night_has_its_summary_table_and_plots(tmp_path, night_metrics):
    store = metrics.Store(night_metrics)
    report = dashboard.write_report(store, tmp_path / "report", night="20261128")
    assert report["night"] == "20261128" and report["published"] == 130 and report["batches"] == 5
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["stages"]["raw2science"]["out"] == 111
    assert {r["run"] for r in report["runs"]} == {"s2r", "r2s", "sim"}
    table = pd.read_csv(tmp_path / "report" / "batches.csv")
    assert len(table) == 5 and set(table["query"]) == {"stream2raw", "raw2science"}
    for name in ("rates.png", "latency.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    only = dashboard.write_report(store, tmp_path / "r2", night="20261128", runs=["r2s"])
    assert list(only["stages"]) == ["raw2science"] and only["published"] == 0
    assert not (tmp_path / "report" / "completeness.png").exists()  # no `fink report night` of that night


def test_the_report_shows_the_nights_completeness_and_its_flagged_exposures(tmp_path, night_metrics):
    from fink.ops import completeness

    rows = {(2461000.5 + k / 1000, 500, k % 64): {"published": 3, "quarantined": 0, "ingested": 3, "rejected": 1,
                                                  "kept": 2, "archived": 2, "selected:t": 1, "sent:t": 1}
            for k in range(40)}
    rows[(2461000.51, 500, 10)].update(ingested=2, rejected=1, kept=1, archived=1, _lost=1, _offsets=["s:0:7"])
    rows[(2461000.52, 500, 20)].update({"sent:t": 2})
    rows[(2461000.53, 500, 30)].update(kept=1, archived=1, _kept_rejected=0)  # passed the cuts, lost after
    rows[()] = {s: 0 for s in completeness.STEPS} | {"published": 1, "quarantined": 1}  # one that does not decode
    table = completeness._table(rows, ["jd", "field", "rcid"], ["t"])
    flagged = table[~table["balanced"]].set_index("rcid")["where"].to_dict()
    assert flagged == {10: "1 published, neither ingested nor quarantined (s:0:7)", 20: "t: 1 selected, 2 sent",
                       30: "1 passed the cuts, not in the science archive"}
    assert table["where"].iloc[-1] == "1 quarantined messages that do not decode (exposure unknown)"
    facts = completeness.summary(table)
    assert (facts["exposures"], facts["flagged"], facts["totals"]["published"]) == (40, 3, 121)
    completeness.save(table, "20261128", str(tmp_path / "checked"))
    report = dashboard.write_report(metrics.Store(night_metrics), tmp_path / "report", night="20261128",
                                    completeness_dir=tmp_path / "checked")
    assert report["completeness"]["flagged"] == 3
    assert (tmp_path / "report" / "completeness.png").read_bytes()[:4] == b"\x89PNG"


def test_fink_start_parameters_are_yaml_values():
    assert _params(["trigger=2 seconds", "duration=60", "runs=[a, b]", "empty="]) == {
        "trigger": "2 seconds", "duration": 60, "runs": ["a", "b"], "empty": ""}
    with pytest.raises(FinkError, match="expected key=value"):
        _params(["novalue"])


def test_fink_init_creates_the_folders_of_a_conf(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FINK_HOME", str(tmp_path / "home"))
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"data_dir: {tmp_path / 'archive'}\nscience_path: {tmp_path / 'elsewhere'}\n")
    assert main(["init", "-c", str(conf)]) == 0
    for folder in ("archive/raw", "archive/science", "archive/quarantine", "archive/checkpoints", "elsewhere",
                   "home/metrics", "home/reports", "home/runs"):
        assert (tmp_path / folder).is_dir(), folder
    assert main(["init", "-c", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read parameters file" in capsys.readouterr().err
