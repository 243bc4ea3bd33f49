"""A micro-batch's generated code is compiled once, not again at every batch."""

from __future__ import annotations


def test_a_projection_stamped_with_the_clock_is_compiled_once_for_every_batch(spark):
    from pyspark.sql import functions as F

    from fink.runtime.metrics import now

    compiled = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    wide = spark.range(50).select(*[(F.col("id") * k).alias(f"c{k}") for k in range(120)])

    def batch(clock):
        return wide.select("*", clock().alias("t")).where("c1 >= 0").collect()

    batch(now)
    before = compiled.getCount()
    rows = batch(now)  # the next batch: the same code, taken from the cache
    assert compiled.getCount() == before
    assert len(rows) == 50 and all(r.t is not None and r.t.year >= 2026 for r in rows)
    # the counter does count: current_timestamp() inlines the batch's time, new code every batch
    batch(F.current_timestamp)
    mid = compiled.getCount()
    batch(F.current_timestamp)
    assert compiled.getCount() > mid
    assert spark.conf.get("spark.sql.codegen.cache.maxEntries") == "2000"
