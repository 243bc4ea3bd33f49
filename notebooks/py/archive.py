# %% [markdown]
# # archive: enriched alerts into HBase
#
# Reads the science archive as a stream of new Parquet files (what raw2science writes) and
# writes every alert, as it arrives, through the HBase Thrift gateway: the main table keyed
# `<objectId>_<jd>_<candid>` (an object's alerts contiguous, in time order; families `i`
# alert fields, `d` added values, `b` cutouts) and three index tables: by tag (class), by
# HEALPix pixel (cone search) and by night. The layout and schema are recorded in the table.
#
# A batch counts as done only when HBase has accepted all of it; while HBase or its gateway
# is down the writes are retried with backoff and the query waits. Row keys depend only on
# the alert, so a batch replayed after a crash writes the same cells.
#
# * **reads**: `<data_dir>/science` (or `science_path`)
# * **writes**: HBase tables `<table>`, `<table>_class`, `<table>_pixel`, `<table>_night`;
#   checkpoint `<data_dir>/checkpoints/archive`
# * **headless**: `fink start archive -c conf/local.yaml [--simulator]`
# * **queries**: `archive_explorer.ipynb`, or `fink.client.explorer.Archive`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
survey: str = "ztf"  # ztf | rubin | a survey description file: the science layout, row keys, default table and tags
table: str = ""  # main HBase table ("": the survey's, ztf_alerts | rubin_alerts); the indexes are <table>_class, _pixel, _night
tags: dict = {}  # tag (class): filter (dotted path); {} means the survey's (early_snia, sso, catalogued)
tag_params: dict = {}  # tag: keyword parameters of its filter
healpix_order: int = 7  # HEALPix order of the pixel index (7: 27 arcmin pixels)
modules: list = ["builtin"]  # science modules whose outputs share one cell each (d:<module>); "builtin": the survey's
pool_size: int = 4  # Thrift connections per writer task (Spark runs one task per core)
batch_size: int = 200  # rows per Thrift call
retry_for_s: float = 600.0  # how long a batch waits for an unavailable HBase before the query fails
max_files_per_trigger: int = 8  # science files per micro-batch, 0 means all new files
science_path: str = ""  # "" means <data_dir>/science
checkpoint: str = ""  # "" means <data_dir>/checkpoints/archive
trigger: str = "availableNow"  # availableNow (catch up, then stop) | "<N> seconds"
duration: float = 600.0  # upper bound of the run, seconds
simulator: bool = False  # first fill the science archive with the bundled sample night (simulator, stream2raw, raw2science)
topic: str = "ztf_20261127_programid1"  # the topic the simulator fills (with simulator only)
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
from fink.config import FinkConfig
from fink.stages.archive import ArchiveConfig

cfg = FinkConfig.from_namespace(globals())
stage = ArchiveConfig.from_namespace(globals())
paths = stage.paths(cfg)
if trigger != "availableNow" and not trigger.endswith("seconds"):
    raise ValueError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")
tag_filters = stage.load_tags()  # a missing filter or a wrong declaration fails here, by name
print(f"{paths['science']} -> HBase {cfg.hbase_thrift} table {stage.table_name()!r}, tags {[f.topic for f in tag_filters]}")

# %% [markdown]
# ## Session (and, with `simulator`, a science archive of the sample night)

# %%
from fink.runtime import streaming
from fink.runtime.monitor import QueryMonitor
from fink.runtime.session import get_spark
from fink.stages import archive

spark = get_spark(cfg, app_name="fink-archive")
streaming.stop_active(spark)  # a re-run of this cell must not leave a second query behind
if simulator:
    from fink.ops.demo import fill_from_simulator

    filled = fill_from_simulator(spark, cfg, topic, science_path, duration, stop_file, survey=stage.survey)
    print(f"simulator: {filled['alerts']} alerts -> raw -> science archive {filled['science']}")

# %% [markdown]
# ## Tables, source, writer; start, watch the rows HBase accepted, end within `duration`

# %%
import pandas as pd
from IPython.display import display

writer = archive.build(spark, stage, cfg)  # creates the tables, records the layout
sink = writer.fink_sink
writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)
monitor = QueryMonitor("archive")  # input rows/s, batch time
per_table = display(pd.DataFrame(columns=["rows written"]), display_id=True)

def watch(queries):
    if queries:
        monitor(queries)
    rows = {}
    for record in sink.written.values():
        for name, n in record["rows"].items():
            rows[name] = rows.get(name, 0) + n
    retries = sum(r["retries"] for r in sink.written.values())
    per_table.update(pd.DataFrame({"rows written": rows}).assign(**{"write retries": retries}))

query = streaming.start(writer, archive.QUERY_NAME)
result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=2.0, on_poll=watch)
watch([])
totals = archive.reconcile(result.progress[archive.QUERY_NAME], sink.written)
print(f"ended: {result.reason} after {result.seconds:.1f} s")
if not totals["balanced"]:
    raise RuntimeError(f"HBase did not accept one row per alert read: {totals}")
{k: v for k, v in totals.items() if k != "filters"}

# %% [markdown]
# ## Summary: alerts per tag, write time per batch

# %%
import json

import matplotlib.pyplot as plt

from fink.config import fink_home

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].barh(list(totals["tags"]) or ["(none)"], list(totals["tags"].values()) or [0])
axes[0].set_xlabel(f"alerts tagged (of {totals['archived']} archived)")
batches = sorted((b, r) for b, r in sink.written.items() if r["alerts"])
axes[1].bar([str(b) for b, _ in batches], [r["seconds"] for _, r in batches])
axes[1].set_xlabel("micro-batch")
axes[1].set_ylabel("seconds (collect, encode, write)")
fig.tight_layout()
report = fink_home() / "reports" / "archive"
report.mkdir(parents=True, exist_ok=True)
fig.savefig(report / "summary.png", dpi=100)
plt.show()
summary = {"stopped_because": result.reason, "table": stage.table_name(), **totals, **paths}
(report / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
streaming.stop_active(spark)
summary
