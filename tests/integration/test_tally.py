"""A step's counts (:class:`fink.stages.step.Tally`): observed by the job that reads the batch
anyway, equal to an aggregation of their own, and counted by a job only when nothing read it."""

from __future__ import annotations

import pytest


@pytest.fixture
def batch(spark):
    from pyspark.sql import functions as F

    rows = spark.range(0, 500, numPartitions=3).select(
        F.col("id"), F.when(F.col("id") % 7 == 0, "cut").alias("reason"), (F.col("id") % 10).cast("double").alias("x"))
    return rows


def _exprs():
    from pyspark.sql import functions as F

    from fink.stages.step import count_where

    return [F.count(F.lit(1)).alias("alerts"), count_where(F.col("reason").isNull()).alias("kept"),
            F.percentile_approx("x", [0.5, 0.9], 1000).alias("_q")]


def _jobs(spark) -> int:
    """The id of the last job Spark ran (ids grow by one with every job)."""
    return max(spark.sparkContext.statusTracker().getJobIdsForGroup(None) or [-1])


def test_the_job_that_reads_the_rows_counts_them_and_none_runs_for_the_tally(spark, batch):
    from pyspark.sql import functions as F

    from fink.stages.step import Tally

    expected = batch.agg(*_exprs()).first().asDict()
    tally = Tally("test", *_exprs())
    kept = tally.on(batch).where(F.col("reason").isNull()).select("id").collect()  # the batch's own job
    before = _jobs(spark)
    values = tally.values()
    assert _jobs(spark) == before  # no job of its own
    assert values == expected and values["alerts"] == 500 and values["kept"] == len(kept) == 500 - 72


def test_rows_counted_as_a_cache_they_feed_is_built_by_a_later_action(spark, batch):
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from fink.stages.step import Tally

    tally = Tally("cached", *_exprs())
    science = tally.on(batch).where(F.col("reason").isNull()).persist(StorageLevel.MEMORY_AND_DISK_DESER)
    try:
        assert science.select(F.sum("id")).first()[0] == sum(i for i in range(500) if i % 7)  # builds the cache
        before = _jobs(spark)
        values = tally.values()
        assert _jobs(spark) == before  # observed as the cache was built
        assert values == batch.agg(*_exprs()).first().asDict() and values["alerts"] == 500
    finally:
        science.unpersist()


def test_rows_nothing_read_are_counted_by_a_job_of_their_own(spark, batch, monkeypatch):
    from fink.stages.step import Tally

    monkeypatch.setattr(Tally, "WAIT_S", 0.2)
    tally = Tally("unread", *_exprs())
    tally.on(batch)
    before = _jobs(spark)
    values = tally.values()
    assert _jobs(spark) > before  # counted now
    assert values == batch.agg(*_exprs()).first().asDict() and values["kept"] == 428


def test_values_before_on_is_an_error():
    from fink.stages.step import Tally

    with pytest.raises(RuntimeError, match="before on"):
        Tally("nothing").values()


def test_an_action_whose_plan_dropped_the_observation_leaves_the_count_to_a_job(spark, batch):
    """Spark completes an observation with an empty row when the action's plan held it but did not
    run it (here the optimizer drops a filter that keeps nothing, and what it observed)."""
    from pyspark.sql import functions as F

    from fink.stages.step import Tally

    tally = Tally("dropped", *_exprs())
    assert tally.on(batch).where(F.lit(False)).collect() == []
    assert tally.values() == batch.agg(*_exprs()).first().asDict()


def test_rows_not_to_observe_are_counted_by_a_job(spark, batch):
    from fink.stages.step import Tally

    tally = Tally("plain", *_exprs())
    assert tally.on(batch, observe=False) is batch
    batch.collect()
    before = _jobs(spark)
    assert tally.values()["kept"] == 428 and _jobs(spark) > before
