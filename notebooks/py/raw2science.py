# %% [markdown]
# # raw2science: quality cuts and science modules
#
# Reads the raw archive as a stream of new Parquet files (what stream2raw writes), drops the
# alerts failing the quality cuts (counted per cut), runs the science modules in order
# (light-curve features, SN Ia classifier, solar-system flag, catalogue cross-match, and any
# module of yours), and writes the science archive by night, exactly once, with provenance
# (module versions; ingest, processing start and end times).
#
# * **reads**: `<data_dir>/raw` (or `raw_path`)
# * **writes**: `<data_dir>/science`, checkpoint `<data_dir>/checkpoints/raw2science`
# * **headless**: `fink start raw2science -c conf/local.yaml [--simulator]`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
survey: str = "ztf"  # ztf | rubin | a survey description file: the raw layout, default cuts, built-in modules
cuts: dict = {}  # name: SQL condition an alert must meet; {} means the survey's (ZTF: nbad, rb, fid)
modules: list = ["builtin"]  # dotted paths, applied in order; "builtin" is the survey's built-in modules
module_params: dict = {"crossmatch": {"catalogue_path": "../datasim/sample_night/catalogue.csv", "radius_arcsec": 1.5}}  # keyword parameters per module (by path or function name)
fail_on_module_error: bool = False  # stop on a module error instead of null columns and an error count
max_files_per_trigger: int = 0  # raw files per micro-batch, 0 means all new files
files_per_batch: int = 1  # Parquet files per night and micro-batch
raw_path: str = ""  # "" means <data_dir>/raw
science_path: str = ""  # "" means <data_dir>/science
checkpoint: str = ""  # "" means <data_dir>/checkpoints/raw2science
trigger: str = "availableNow"  # availableNow (catch up, then stop) | "<N> seconds"
duration: float = 600.0  # upper bound of the run, seconds
simulator: bool = False  # first archive the bundled sample night (simulator to Kafka, then stream2raw)
topic: str = "ztf_20261127_programid1"  # the topic the simulator fills (with simulator only)
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
from fink.config import FinkConfig
from fink.stages.raw2science import Raw2ScienceConfig

cfg = FinkConfig.from_namespace(globals())
stage = Raw2ScienceConfig.from_namespace(globals())
paths = stage.paths(cfg)
if trigger != "availableNow" and not trigger.endswith("seconds"):
    raise ValueError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")
science_modules = stage.load_modules()  # a missing module or a wrong declaration fails here, by name
print(f"{paths['raw']} -> {paths['science']}; cuts {list(stage.quality_cuts())}; modules {[m.key for m in science_modules]}")

# %% [markdown]
# ## Session (and, with `simulator`, a raw archive of the sample night)

# %%
from fink.runtime import streaming
from fink.runtime.monitor import QueryMonitor
from fink.runtime.session import get_spark
from fink.stages import raw2science

spark = get_spark(cfg, app_name="fink-raw2science")
streaming.stop_active(spark)  # a re-run of this cell must not leave a second query behind
if simulator:
    from fink.sim.simulator import SimulatorConfig, replay
    from fink.stages import stream2raw

    sample = stage.description().simulator["sample"]  # the bundled night, in the survey's format
    sent = replay(SimulatorConfig(source=sample, survey=stage.survey, topic=topic), cfg.kafka_bootstrap,
                  progress=False)
    raw_stage = stream2raw.Stream2RawConfig(topic=topic, raw_path=raw_path, survey=stage.survey)
    raw_run = streaming.run_until([streaming.start(stream2raw.build(spark, raw_stage, cfg).trigger(availableNow=True),
                                                   stream2raw.QUERY_NAME)], duration=duration, stop_file=stop_file)
    print(f"simulator: {sent['alerts']} alerts -> raw archive:",
          stream2raw.reconcile(spark, raw_run.progress[stream2raw.QUERY_NAME], raw_stage.paths(cfg)["raw"]))

# %% [markdown]
# ## Source, cuts, modules, writer; start, watch live, end within `duration`

# %%
writer = raw2science.build(spark, stage, cfg)
writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)
monitor = QueryMonitor("raw2science")  # input and processed rows/s, batch time
query = streaming.start(writer, raw2science.QUERY_NAME)
result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=2.0, on_poll=monitor)
progress = result.progress[raw2science.QUERY_NAME]
totals = raw2science.reconcile(spark, progress, paths["science"])
print(f"ended: {result.reason} after {result.seconds:.1f} s")
if not totals["balanced"]:
    raise RuntimeError(f"alerts != kept + rejected, or kept != written: {totals}")
{k: v for k, v in totals.items() if k != "modules"}

# %% [markdown]
# ## Summary: where the alerts went, what each module cost

# %%
import json

import matplotlib.pyplot as plt

from fink.config import fink_home

fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
reasons = {"kept": totals["kept"], **{f"cut: {k}": v for k, v in totals["reasons"].items()}}
axes[0].barh(list(reasons), list(reasons.values()), color=["tab:green"] + ["tab:red"] * len(totals["reasons"]))
axes[0].set_xlabel("alerts")
costs = {k: 1000 * v["seconds"] / max(totals["kept"], 1) for k, v in totals["modules"].items()}
axes[1].barh(list(costs), list(costs.values()))
axes[1].set_xlabel("ms per alert (worker time)")
for name, m in totals["modules"].items():
    if m["errors"]:
        print(f"module {name}: {m['errors']} alerts without values: {m['error']}")
fig.suptitle(f"raw2science: {totals['alerts']} alerts, {totals['kept']} kept")
fig.tight_layout()
report = fink_home() / "reports" / "raw2science"
report.mkdir(parents=True, exist_ok=True)
fig.savefig(report / "summary.png", dpi=100)
plt.show()
summary = {"stopped_because": result.reason, **totals, **paths}
(report / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
summary

# %% [markdown]
# ## The most likely SN Ia of the run, and the known objects

# %%
try:
    science = raw2science.read_science(spark, paths["science"])
    cols = ["objectId", "candid", "snia_prob", "roid", "xm_type", "lc_amplitude_r", "lc_observation_count_r"]
    top = science.select(*[c for c in cols if c in science.columns])
    if "snia_prob" in top.columns:
        top = top.orderBy(top["snia_prob"].desc_nulls_last())
    top = top.limit(10).toPandas()
    top.to_csv(report / "top_candidates.csv", index=False)
    display(top)
except Exception as exc:  # an empty archive has no Parquet file yet
    print(f"no science archive yet: {exc.__class__.__name__}")
streaming.stop_active(spark)
