"""What runs beside a query in the driver: the metrics listener (progress handed over as JSON)
and a one-pass batch's finishes on threads of their own (with the query thread's Spark properties,
their jobs named for their step and batch)."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_the_listener_stores_each_progress_report_as_the_query_gives_it(spark, tmp_path):
    from fink.runtime import metrics

    rec = metrics.Recorder(metrics.Store(tmp_path / "metrics.db"), "listener-probe", "probe")
    rec.store.begin_run(rec.run, rec.service)
    listener = metrics._listener_class()(rec)
    spark.streams.addListener(listener)
    try:
        query = (spark.readStream.format("rate-micro-batch").option("rowsPerBatch", 7).load()
                 .writeStream.format("noop").queryName("listener_probe").trigger(processingTime="200 milliseconds")
                 .start())
        try:
            deadline = time.monotonic() + 60
            while len(query.recentProgress) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            query.stop()
        given = {p["batchId"]: p for p in query.recentProgress}
        deadline = time.monotonic() + 30  # the listener's events come asynchronously
        while len(rec.store.batches(runs=[rec.run])) < len(given) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        spark.streams.removeListener(listener)
    stored = rec.store.batches(runs=[rec.run])
    assert len(given) >= 3 and sorted(stored["batch"]) == sorted(given)
    assert set(stored["query"]) == {"listener_probe"}
    for row in stored.itertuples():
        assert row.input_rows == given[row.batch]["numInputRows"] == 7
        assert row.duration_s == given[row.batch]["durationMs"]["triggerExecution"] / 1000


def test_a_batchs_finishes_run_on_threads_with_the_query_threads_spark_properties(spark):
    import threading

    from fink.stages.step import OnePass, Output, Step, report

    seen = []

    def step(name, reads, writes):
        def run(frame, batch_id, rows):
            def finish():
                n = frame.count()  # a Spark job from the finish's thread
                seen.append((name, threading.current_thread().name,
                             spark.sparkContext.getLocalProperty("fink.probe"), n,
                             spark.sparkContext.getLocalProperty("spark.job.description")))
                return report(name, batch_id, n, {"alerts": n}, None, 0.0)

            return Output(frame, 5, None, [], finish)

        return Step(name, reads, writes, run)

    spark.sparkContext.setLocalProperty("fink.probe", "batch 3")
    try:
        OnePass([step("raw", "kafka", "raw"), step("science", "raw", "science")])(spark.range(5), 3)
    finally:
        spark.sparkContext.setLocalProperty("fink.probe", None)
    assert sorted((n, p, c) for n, _, p, c, _ in seen) == [("raw", "batch 3", 5), ("science", "batch 3", 5)]
    assert all(t.startswith("fink-finish") for _, t, _, _, _ in seen)
    # their jobs are named for the step and the batch (the Spark UI's description), and the
    # query thread's name is taken back when the batch ends
    assert {(n, d) for n, _, _, _, d in seen} == {("raw", "raw, batch 3: archives and counts"),
                                                  ("science", "science, batch 3: archives and counts")}
    assert spark.sparkContext.getLocalProperty("spark.job.description") is None
