"""Spark's Kafka source (the pinned connector) into Parquet: rows equal what was produced."""

import pytest

from fink.io import kafka
from fink.runtime import streaming
from fink.sim import sample

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def test_session_has_the_connectors_and_no_network_packages(spark):
    import pyspark

    conf = spark.sparkContext.getConf()
    jars = conf.get("spark.jars").split(",")
    assert any(j.endswith(f"spark-sql-kafka-0-10_2.13-{pyspark.__version__}.jar") for j in jars)
    assert any(j.endswith(f"spark-avro_2.13-{pyspark.__version__}.jar") for j in jars)
    assert not conf.contains("spark.jars.packages")
    assert conf.get("spark.driver.bindAddress") == "127.0.0.1"
    # the Avro connector is really loaded: from_avro/to_avro round-trip in the JVM
    from pyspark.sql.avro.functions import from_avro, to_avro

    schema = '{"type":"record","name":"r","fields":[{"name":"x","type":"long"}]}'
    df = spark.range(3).selectExpr("struct(id as x) as s")
    back = df.select(from_avro(to_avro("s", schema), schema).alias("s")).select("s.x").collect()
    assert [r.x for r in back] == [0, 1, 2]


def test_streaming_query_reads_kafka_and_writes_parquet_exactly(fresh_spark, kafka_bootstrap, topic, tmp_path):
    spark = fresh_spark
    kafka.ensure_topic(kafka_bootstrap, topic, partitions=2)
    records = sample.smoke_records(120, seed=7)
    values = [sample.to_container(r) for r in records]
    keys = [r["objectId"].encode() for r in records]
    assert kafka.produce(kafka_bootstrap, topic, values, keys=keys) == 120

    def run():
        writer = (spark.readStream.format("kafka").options(**kafka.spark_options(kafka_bootstrap))
                  .option("subscribe", topic).option("startingOffsets", "earliest")
                  .option("maxOffsetsPerTrigger", 50).load()
                  .select("key", "value", "topic", "partition", "offset")
                  .writeStream.format("parquet").option("path", str(tmp_path / "out"))
                  .option("checkpointLocation", str(tmp_path / "ckpt")).trigger(availableNow=True))
        return streaming.run_until([streaming.start(writer, f"t_{topic}")], duration=120, poll=0.5)

    result = run()
    assert result.reason == "finished"
    rows = spark.read.parquet(str(tmp_path / "out")).collect()
    assert len(rows) == 120
    assert sorted((bytes(r.key), bytes(r.value)) for r in rows) == sorted(zip(keys, values, strict=True))
    assert [sample.from_container(bytes(r.value)) for r in sorted(rows, key=lambda r: sample.from_container(
        bytes(r.value))["candid"])] == sorted(records, key=lambda r: r["candid"])
    assert {r.topic for r in rows} == {topic}
    # maxOffsetsPerTrigger=50 over 120 messages: at least 3 micro-batches
    assert len(result.progress[f"t_{topic}"]) >= 3

    # a restart from the checkpoint reads only what is new: nothing duplicated
    assert kafka.produce(kafka_bootstrap, topic, values[:10], keys=keys[:10]) == 10
    run()
    assert spark.read.parquet(str(tmp_path / "out")).count() == 130
