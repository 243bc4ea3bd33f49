"""Generated code: none for the session's expressions by default (they are evaluated by Spark's
interpreted classes); with code generation turned on, a micro-batch's code is compiled once, not
again at every batch."""

from __future__ import annotations

import pytest

CODEGEN = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}


@pytest.fixture
def wide_batch(spark):
    from pyspark.sql import functions as F

    compiled = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    wide = spark.range(50).select(*[(F.col("id") * k).alias(f"c{k}") for k in range(120)])

    def batch(clock):
        return wide.select("*", clock().alias("t")).where("c1 >= 0").collect()

    return compiled, batch


def test_the_session_s_expressions_are_interpreted_and_compile_nothing(spark, wide_batch):
    from pyspark.sql import functions as F

    compiled, batch = wide_batch
    assert {k: spark.conf.get(k) for k in CODEGEN} == {"spark.sql.codegen.wholeStage": "false",
                                                        "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
    before = compiled.getCount()
    for _ in range(2):  # a literal new at every batch, which generated code would inline
        rows = batch(F.current_timestamp)
    assert compiled.getCount() == before and len(rows) == 50 and rows[0].c2 == 0 and rows[7].c3 == 21


def test_with_codegen_on_a_projection_stamped_with_the_clock_is_compiled_once_for_every_batch(spark, wide_batch):
    from pyspark.sql import functions as F

    from fink.runtime.metrics import now

    compiled, batch = wide_batch
    saved = {k: spark.conf.get(k) for k in CODEGEN}
    for key, value in CODEGEN.items():
        spark.conf.set(key, value)
    try:
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
    finally:
        for key, value in saved.items():
            spark.conf.set(key, value)
