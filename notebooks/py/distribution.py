# %% [markdown]
# # distribution: user filters to Kafka topics
#
# Reads the science archive as a stream of new Parquet files (what raw2science writes), runs
# every filter in one pass per micro-batch, and sends each selected alert to its filter's
# topic as schemaless Avro keyed by its schema (the Fink client's format), in one Kafka
# transaction per batch: after a crash and restart no alert reaches a topic twice.
# Topics (and their `_schema` topics) are created with their partitions and retention before
# the first write. Users read them on the SASL listener with the grants of `fink users`.
#
# * **reads**: `<data_dir>/science` (or `science_path`)
# * **writes**: one Kafka topic per filter, checkpoint `<data_dir>/checkpoints/distribution`
# * **headless**: `fink start distribution -c conf/local.yaml [--simulator]`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
survey: str = "ztf"  # ztf | rubin | a survey description file: the science layout, the default filters
filters: dict = {}  # topic: filter (dotted path); {} means the survey's (ZTF: fink_early_snia, fink_sso, fink_catalogued)
filter_params: dict = {}  # topic: keyword parameters of its filter
topic_options: dict = {"fink_catalogued": {"cutouts": False}}  # topic: {"cutouts": false} and/or {"fields": [...]} (Rubin: {})
partitions: int = 1  # partitions of each topic created
retention_ms: int = 604800000  # retention of each topic created (7 days)
max_files_per_trigger: int = 8  # science files per micro-batch, 0 means all new files
science_path: str = ""  # "" means <data_dir>/science (Rubin: <data_dir>/rubin/science)
checkpoint: str = ""  # "" means <data_dir>/checkpoints/distribution
watchlists: str = ""  # users' watchlists (fink watchlist), read again each micro-batch: "" means $FINK_HOME/watchlists, "none" none
trigger: str = "availableNow"  # availableNow (catch up, then stop) | "<N> seconds"
duration: float = 600.0  # upper bound of the run, seconds
simulator: bool = False  # first fill the science archive with the bundled sample night (simulator, stream2raw, raw2science)
topic: str = "ztf_20261127_programid1"  # the topic the simulator fills (with simulator only)
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
from fink.config import FinkConfig
from fink.stages.distribution import DistributionConfig

cfg = FinkConfig.from_namespace(globals())
stage = DistributionConfig.from_namespace(globals())
paths = stage.paths(cfg)
if trigger != "availableNow" and not trigger.endswith("seconds"):
    raise ValueError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")
user_filters = stage.load_filters()  # a missing filter or a wrong declaration fails here, by name
print(f"{paths['science']} -> topics {[f.topic for f in user_filters]}")

# %% [markdown]
# ## Session (and, with `simulator`, a science archive of the sample night)

# %%
from fink.runtime import streaming
from fink.runtime.monitor import QueryMonitor
from fink.runtime.session import get_spark
from fink.stages import distribution

spark = get_spark(cfg, app_name="fink-distribution")
streaming.stop_active(spark)  # a re-run of this cell must not leave a second query behind
if simulator:
    from fink.ops.demo import fill_from_simulator

    filled = fill_from_simulator(spark, cfg, topic, science_path, duration, stop_file, survey=stage.survey)
    print(f"simulator: {filled['alerts']} alerts -> raw -> science archive {filled['science']}")

# %% [markdown]
# ## Source, filters, writer; start, watch the alerts out per topic, end within `duration`

# %%
import pandas as pd
from IPython.display import display

writer = distribution.build(spark, stage, cfg)  # creates the topics, publishes their schemas
sink = writer.fink_sink
writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)
monitor = QueryMonitor("distribution")  # input rows/s, batch time
per_topic = display(pd.DataFrame(columns=["alerts out"]), display_id=True)

def watch(queries):
    if queries:
        monitor(queries)
    out = {f.topic: 0 for f in user_filters}
    for counts in list(sink.delivered.values()):  # batches are delivered by another thread
        for name, n in (counts or {}).items():  # the filters' topics, and the watchlists' (fink watchlist)
            out[name] = out.get(name, 0) + n
    per_topic.update(pd.DataFrame({"alerts out": out}))

query = streaming.start(writer, distribution.QUERY_NAME)
result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=2.0, on_poll=watch)
totals = distribution.reconcile(result.progress[distribution.QUERY_NAME], sink)  # waits for the last transaction
watch([])
print(f"ended: {result.reason} after {result.seconds:.1f} s")
if not totals["balanced"]:
    raise RuntimeError(f"a topic did not receive what its filter selected: {totals}")
{k: v for k, v in totals.items() if k != "filters"}

# %% [markdown]
# ## Summary: alerts per topic, filter costs and errors

# %%
import json

import matplotlib.pyplot as plt

from fink.config import fink_home

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
names = [f.topic for f in user_filters]
labels = [f.module.key for f in user_filters]
axes[0].barh(names, [totals["topics"].get(k, {}).get("delivered", 0) for k in labels])
axes[0].set_xlabel(f"alerts delivered (of {totals['alerts']} read)")
axes[1].barh(names, [1000 * totals["filters"].get(k, {}).get("seconds", 0) / max(totals["alerts"], 1) for k in labels])
axes[1].set_xlabel("ms per alert (worker time)")
for name, f in totals["filters"].items():
    if f["errors"]:
        print(f"filter of {name}: {f['errors']} alerts not evaluated: {f['error']}")
fig.tight_layout()
report = fink_home() / "reports" / "distribution"
report.mkdir(parents=True, exist_ok=True)
fig.savefig(report / "summary.png", dpi=100)
plt.show()
summary = {"stopped_because": result.reason, **totals, **paths}
(report / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
streaming.stop_active(spark)
summary
