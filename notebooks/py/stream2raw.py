# %% [markdown]
# # stream2raw: the survey stream into the raw archive
#
# Reads the survey's Kafka topic(s) with Spark's Kafka source, decodes every alert in the JVM
# (ZTF schemas 3.1 to 4.02, mixed, each message an Avro container file; or Rubin schemas 7.0
# onwards in the Confluent wire format, with `survey = "rubin"`), adds the ingest
# metadata, and archives the alerts as Parquet partitioned by observing night, exactly once.
# Messages that are not alerts go to the quarantine table with their reason and bytes; every
# micro-batch reconciles (messages = archived + quarantined) in the query's metrics.
#
# * **reads**: Kafka `topic` (or `topic_pattern`) at `kafka_bootstrap`
# * **writes**: `<data_dir>/raw` (alerts), `<data_dir>/quarantine`, checkpoint `<data_dir>/checkpoints/stream2raw`
# * **headless**: `fink start stream2raw -c conf/local.yaml [--simulator]`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
topic: str = "ztf_20261127_programid1"  # topic(s) to read, comma-separated (or use topic_pattern)
topic_pattern: str = ""  # a regular expression of topics, e.g. ztf_.*_programid1
survey: str = "ztf"  # ztf | rubin | a survey description file (what the messages are, see fink/data/surveys)
schema_registry_url: str = ""  # wire-format surveys: a Confluent-compatible schema registry, if any
schema_dir: str = ""  # wire-format surveys: a folder of .avsc files read before the packaged schemas
starting_offsets: str = "earliest"  # earliest | latest | Spark's JSON offsets (first start only)
max_offsets_per_trigger: int = 20000  # upper bound of messages per micro-batch
files_per_batch: int = 1  # Parquet files per night and micro-batch
raw_path: str = ""  # "" means <data_dir>/raw
quarantine_path: str = ""  # "" means <data_dir>/quarantine
checkpoint: str = ""  # "" means <data_dir>/checkpoints/stream2raw
trigger: str = "availableNow"  # availableNow (catch up, then stop) | "<N> seconds"
duration: float = 600.0  # upper bound of the run, seconds
simulator: bool = False  # publish the bundled sample night to the topic first (fink start --simulator)
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
from fink.config import FinkConfig
from fink.stages.stream2raw import Stream2RawConfig

cfg = FinkConfig.from_namespace(globals())
stage = Stream2RawConfig.from_namespace(globals())
paths = stage.paths(cfg)
if trigger != "availableNow" and not trigger.endswith("seconds"):
    raise ValueError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")
print(f"{stage.topic or stage.topic_pattern} on {cfg.kafka_bootstrap} -> {paths}")

# %%
if simulator:
    from fink.sim.simulator import SimulatorConfig, replay

    sample = stage.description().simulator["sample"]  # the bundled night, in the survey's format
    sent = replay(SimulatorConfig(source=sample, survey=stage.survey, topic=stage.topic.split(",")[0]),
                  cfg.kafka_bootstrap, progress=False)
    print(f"simulator: {sent['alerts']} alerts published to {sent['topic']}")

# %% [markdown]
# ## Session, source, transform, writer

# %%
from fink.runtime import streaming
from fink.runtime.monitor import QueryMonitor
from fink.runtime.session import get_spark
from fink.stages import stream2raw

spark = get_spark(cfg, app_name="fink-stream2raw")
streaming.stop_active(spark)  # a re-run of this cell must not leave a second query behind
writer = stream2raw.build(spark, stage, cfg)
writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)

# %% [markdown]
# ## Start, watch live, and end within `duration`

# %%
monitor = QueryMonitor("stream2raw")  # input and processed rows/s, batch time, lag, quarantined
query = streaming.start(writer, stream2raw.QUERY_NAME)
result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=2.0, on_poll=monitor)
progress = result.progress[stream2raw.QUERY_NAME]
unread = stream2raw.unread(spark, stage, cfg.kafka_bootstrap, paths["checkpoint"])  # what Kafka still holds for it
totals = stream2raw.reconcile(spark, progress, paths["raw"], unread)
print(f"ended: {result.reason} after {result.seconds:.1f} s: {totals}")
if not totals["balanced"]:
    raise RuntimeError(totals.get("problem") or f"messages read != archived + quarantined: {totals}")

# %% [markdown]
# ## Summary

# %%
import matplotlib.pyplot as plt

from fink.runtime.monitor import batch_summary

fig = batch_summary(progress, f"stream2raw: {totals['archived']} archived, {totals['quarantined']} quarantined "
                              f"{totals['reasons'] or ''}", count="messages")
plt.show()

summary = {"stopped_because": result.reason, "batches": len(progress), **totals, **paths}
summary

# %%
try:
    raw = stream2raw.read_raw(spark, paths["raw"])
    display(raw.groupBy("night").count().orderBy("night").toPandas())
except Exception as exc:  # an empty archive has no Parquet file yet
    print(f"no raw archive yet: {exc.__class__.__name__}")
streaming.stop_active(spark)
