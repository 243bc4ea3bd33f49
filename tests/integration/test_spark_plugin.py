"""The project's Spark plugin (``fink/data/jvm/plugin``, compiled by ``make jvm``): each task
holds one SQL configuration, which ``SQLConf.get()`` gives at every call (without it Spark 4.2
builds a new one at each call, thousands an alert in ``from_avro``), and decoding is unchanged."""

from __future__ import annotations

import pytest

from fink.runtime import plugin

SAME_CONF = f"reflect('{plugin.CLASS}', 'sameConf')"


def test_make_jvm_compiled_the_plugin_from_the_package_s_sources_and_sessions_load_it(spark):
    built = plugin.jar()
    assert built is not None and built.exists(), "the plugin is not built from the current sources: run `make jvm`"
    assert spark.conf.get("spark.plugins") == plugin.CLASS
    assert str(built) in spark.conf.get("spark.jars").split(",")


def test_in_a_task_every_call_gets_the_task_s_one_configuration(spark):
    # (with the plugin off, Spark 4.2 gives a new ReadOnlySQLConf at each call: "false")
    rows = spark.range(0, 40, 1, 4).selectExpr(f"{SAME_CONF} AS same", "spark_partition_id() AS p").collect()
    assert {r.same for r in rows} == {"true"} and len({r.p for r in rows}) == 4


def test_the_task_s_configuration_holds_the_session_s_settings(spark):
    # a setting of the session reaches the tasks as before: an ANSI-off cast of a bad number is
    # null, the ANSI-on one fails the task (the configuration is the task's, not an earlier task's)
    spark.conf.set("spark.sql.ansi.enabled", "false")
    try:
        assert spark.range(1).selectExpr("CAST('x' AS INT) AS v", f"{SAME_CONF} AS same").first().asDict() == \
            {"v": None, "same": "true"}
        spark.conf.set("spark.sql.ansi.enabled", "true")
        with pytest.raises(Exception, match="CAST_INVALID_INPUT|cannot be cast"):
            spark.range(1).selectExpr("CAST(concat('x', CAST(id AS STRING)) AS INT) AS v").collect()
    finally:
        spark.conf.unset("spark.sql.ansi.enabled")
