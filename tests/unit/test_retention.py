"""What runs leave behind is bounded: run folders, the metrics store, the services' logs
(issue 21, item 8)."""

import time

from fink.ops import runner
from fink.runtime import metrics


def test_old_runs_and_their_batches_are_forgotten_recent_ones_kept(tmp_path):
    store = metrics.Store(tmp_path / "metrics.db")
    now = time.time()
    for run, started, ended in (("old", now - 40 * 86400, now - 39 * 86400), ("recent", now - 3600, now - 60),
                                ("live", now - 50 * 86400, None)):
        store.begin_run(run, "stream2raw", started=started)
        if ended:
            store.end_run(run, "finished")
            with store._db() as db:
                db.execute("UPDATE runs SET ended = ? WHERE run = ?", (ended, run))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now - 120))
        store.add_progress(run, {"name": "stream2raw", "batchId": 0, "timestamp": stamp,
                                 "numInputRows": 1, "durationMs": {}})
    with store._db() as db:  # a batch of the long run, 45 days ago
        db.execute("UPDATE progress SET time = ? WHERE run = 'live'", (now - 45 * 86400,))
    assert store.prune(30) >= 3  # before, nothing was ever deleted
    assert {r["run"] for r in store.runs()} == {"recent", "live"}
    assert set(store.batches()["run"]) == {"recent"}


def test_a_new_run_retires_the_oldest_run_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RUNS_KEPT", 3)
    folders = tmp_path / "runs" / "stream2raw"
    for k in range(6):
        (folders / f"20261201-00000{k}").mkdir(parents=True)
    runner._retire(tmp_path, "stream2raw")
    assert sorted(p.name for p in folders.iterdir()) == ["20261201-000004", "20261201-000005"]  # + the new one
