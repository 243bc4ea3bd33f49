# %% [markdown]
# # Smoke run: Kafka → Spark Structured Streaming → Parquet
#
# Checks the platform end to end on this machine: publishes a small deterministic set of
# alerts (Avro container files, one alert per message, as ZTF does) to a Kafka topic, reads the
# topic with Spark's Kafka source, writes the messages with their Kafka metadata to Parquet
# (exactly once, through a checkpoint), then reads the Parquet back and decodes every alert.
# A fresh archive starts at this run's first alert; a re-run resumes from the checkpoint, so
# the archive grows by exactly what was published since.
#
# * **reads**: Kafka topic `topic` at `kafka_bootstrap`
# * **writes**: `<data_dir>/smoke/raw` (Parquet) and its checkpoint; a summary (`summary.json`) and a
#   figure (`magnitudes.png`) in `$FINK_HOME/reports/smoke/`
# * **headless**: `fink start smoke -c conf/local.yaml`, or
#   `papermill notebooks/smoke.ipynb out.ipynb -f conf/local.yaml`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
topic: str = "fink_smoke"  # topic the smoke alerts are published to and read from
n_alerts: int = 200  # alerts published by this run
seed: int = 42  # seed of the deterministic alerts
duration: float = 180.0  # upper bound of the streaming run, seconds
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
import json
import time

import fink
from fink.config import FinkConfig, fink_home
from fink.io import kafka
from fink.runtime import streaming
from fink.sim import sample

cfg = FinkConfig.from_namespace(globals())
raw_path, checkpoint = cfg.data_uri("smoke", "raw"), cfg.data_uri("smoke", "checkpoint")
report = fink_home() / "reports" / "smoke"
report.mkdir(parents=True, exist_ok=True)
print(f"fink {fink.__version__}: Kafka {cfg.kafka_bootstrap}, Spark {cfg.spark_master}, archive {raw_path}")

# %% [markdown]
# ## Publish the alerts

# %%
kafka.ensure_topic(cfg.kafka_bootstrap, topic)
# where this run's alerts begin: a fresh archive starts here, an existing one resumes from its checkpoint
offsets_before = kafka.end_offsets(cfg.kafka_bootstrap, topic)
records = sample.smoke_records(n_alerts, seed=seed)
t0 = time.perf_counter()
sent = kafka.produce(cfg.kafka_bootstrap, topic, (sample.to_container(r) for r in records))
print(f"published {sent} alerts to {topic!r} in {time.perf_counter() - t0:.2f} s")

# %% [markdown]
# ## Spark session and the streaming query

# %%
from pyspark.errors import AnalysisException
from pyspark.sql import functions as F

from fink.runtime.monitor import QueryMonitor
from fink.runtime.session import get_spark

spark = get_spark(cfg, app_name="fink-smoke")
streaming.stop_active(spark)  # a re-run of this cell must not leave a second query behind

source = (spark.readStream.format("kafka")
          .options(**kafka.spark_options(cfg.kafka_bootstrap))
          .option("subscribe", topic)
          .option("startingOffsets", kafka.starting_offsets_json(topic, offsets_before))
          .option("failOnDataLoss", "false")
          .load())
rows = source.select("topic", "partition", "offset", "timestamp", "value",
                     F.current_timestamp().alias("ingest_time"))
writer = (rows.writeStream.format("parquet")
          .option("path", raw_path)
          .option("checkpointLocation", checkpoint)
          .trigger(availableNow=True))

# %%
try:
    before = spark.read.parquet(raw_path).count()
except AnalysisException:  # first run: no archive yet
    before = 0
monitor = QueryMonitor("smoke: Kafka -> Parquet")  # a live table, kept in the executed notebook
query = streaming.start(writer, "smoke_kafka_to_parquet")
result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=1.0, on_poll=monitor)
print(f"query ended: {result.reason} after {result.seconds:.1f} s")

# %% [markdown]
# ## What the query did

# %%
import matplotlib.pyplot as plt

archived = spark.read.parquet(raw_path)
total = archived.count()
new = total - before
decoded = [sample.from_container(bytes(r.value)) for r in archived.select("value").collect()]
wanted = {r["candid"] for r in records}
found = {d["candid"] for d in decoded}
batches = result.progress.get("smoke_kafka_to_parquet", [])
summary = {
    "topic": topic,
    "published": sent,
    "archived_this_run": new,
    # the checkpoint resumes where the last run stopped: messages others published since count too
    "archived_from_other_publishers": new - sent,
    "archive_total": total,
    "published_alerts_found_in_archive": len(wanted & found),
    "batches": len(batches),
    "input_rows": sum(b.get("numInputRows", 0) for b in batches),
    "parquet": raw_path,
    "stopped_because": result.reason,
}
(report / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))

fig, ax = plt.subplots(figsize=(6, 3.5))
for fid, colour in ((1, "tab:green"), (2, "tab:red")):
    ax.hist([d["magpsf"] for d in decoded if d["fid"] == fid], bins=20, alpha=0.6, color=colour,
            label="g" if fid == 1 else "r")
ax.set_xlabel("magpsf")
ax.set_ylabel("alerts")
ax.legend(title="band")
ax.set_title(f"{total} alerts archived from Kafka to Parquet")
fig.savefig(report / "magnitudes.png", dpi=100, bbox_inches="tight")

# %%
streaming.stop_active(spark)
if summary["published_alerts_found_in_archive"] != sent:
    raise RuntimeError(f"only {summary['published_alerts_found_in_archive']} of {sent} published alerts archived")
