# %% [markdown]
# # pipeline: the four stages in one pass
#
# stream2raw, raw2science, distribution and archive in one Spark session. By default
# (`mode = "one-pass"`) one streaming query reads the survey's topic once, and each
# micro-batch goes through every stage in memory: decoded once, archived raw, cut, given the
# modules' values, archived as science, sent to each filter's topic in one Kafka transaction,
# written to HBase. No stage waits for the files of the one before: an alert reaches its
# users about a trigger after it entered. Each stage's settings are the parameters of its
# notebook, given here as a mapping per stage.
#
# With `mode = "queries"` the stages run as four streaming queries of the session, with the
# checkpoints of their own notebooks (`stream2raw.ipynb`, ...): with a `"<N> seconds"`
# trigger side by side, with `availableNow` one after the other, each catching up with the
# files the one before wrote.
#
# * **reads**: Kafka `topic`
# * **writes**: `<data_dir>/raw`, `quarantine`, `science`, the distribution topics, the HBase tables
# * **headless**: `fink start pipeline -c conf/local.yaml [--simulator]`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
topic: str = "ztf_20261127_programid1"  # the survey topic stream2raw reads
survey: str = "ztf"  # ztf | rubin | a survey description file: every stage's (unless its settings name one)
stages: list = ["stream2raw", "raw2science", "distribution", "archive"]  # which stages run here
stream2raw: dict = {}  # stream2raw's parameters (see stream2raw.ipynb), e.g. {"max_offsets_per_trigger": 5000}
raw2science: dict = {"modules": ["builtin"], "module_params": {"crossmatch": {"catalogue_path": "../datasim/sample_night/catalogue.csv", "radius_arcsec": 1.5}}}  # raw2science's parameters (see raw2science.ipynb), by default its notebook's modules
distribution: dict = {}  # distribution's parameters (see distribution.ipynb), e.g. {"filters": {...}}
archive: dict = {}  # archive's parameters (see archive.ipynb), e.g. {"table": "ztf_alerts"}
mode: str = "one-pass"  # one-pass (one query, each batch through every stage) | queries (one query per stage)
trigger: str = "availableNow"  # availableNow (catch up, then stop) | "<N> seconds" (keep running)
duration: float = 600.0  # upper bound of the run, seconds
simulator: bool = False  # publish the bundled sample night to the topic first (fink start --simulator)
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
from fink.config import FinkConfig
from fink.stages import pipeline

cfg = FinkConfig.from_namespace(globals())
settings = {"stream2raw": stream2raw, "raw2science": raw2science, "distribution": distribution, "archive": archive}
plan = pipeline.configure(stages, topic, settings, survey)  # an unknown stage or parameter fails here, by name
for name, where in pipeline.paths(plan, cfg).items():
    print(f"{name:13s} {where}")

# %%
if simulator:
    from fink.sim.simulator import SimulatorConfig, replay
    from fink.survey import description as surveys

    sample = surveys.load(survey).simulator["sample"]  # the bundled night, in the survey's format
    sent = replay(SimulatorConfig(source=sample, survey=survey, topic=pipeline.input_topic(plan, topic)),
                  cfg.kafka_bootstrap, progress=False)
    print(f"simulator: {sent['alerts']} alerts published to {sent['topic']}")

# %% [markdown]
# ## Session and writers (filters, modules, topics and tables are loaded here)

# %%
from fink.runtime import streaming
from fink.runtime.session import get_spark

spark = get_spark(pipeline.realtime_master(plan, cfg), app_name="fink-pipeline")  # slots for a real-time lane
streaming.stop_active(spark)  # a re-run of this cell must not leave queries behind
if mode == "one-pass":
    writer = pipeline.one_pass(spark, plan, cfg, trigger)
elif mode == "queries":
    pipeline.build(spark, plan, cfg, trigger)
else:
    raise ValueError(f"mode must be 'one-pass' or 'queries', got {mode!r}")
lane = pipeline.realtime_lane(spark, plan, cfg)  # None unless a filter asks for lane: realtime
print(f"built ({mode}):", ", ".join(s.name for s in plan), "+ real-time lane" if lane else "")

# %% [markdown]
# ## Start, watch live, and end within `duration`

# %%
import time

from fink.runtime.monitor import QueryMonitor

monitor = QueryMonitor("pipeline")  # per query: input and processed rows/s, batch time, lag
progress, reasons, t0 = {}, {}, time.monotonic()
fast = [streaming.start(lane, "realtime")] if lane else []  # runs beside the micro-batch pass until it ends
if mode == "one-pass":  # one query; each stage's account of each batch is kept by the query's sink
    query = streaming.start(writer, pipeline.ONE_PASS)
    result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=2.0, on_poll=monitor,
                                 watch=fast)
    progress = writer.fink_sink.reports
    reasons = {s.name: result.reason for s in plan}
else:
    waves = [[s] for s in plan] if trigger == "availableNow" else [plan]  # one after the other, or side by side
    for wave in waves:
        left = duration - (time.monotonic() - t0)
        if left <= 0:
            break
        queries = [streaming.start(s.writer, s.query_name) for s in wave]
        result = streaming.run_until(queries, duration=left, stop_file=stop_file, poll=2.0, on_poll=monitor,
                                     watch=fast)
        progress.update(result.progress)
        reasons.update({s.name: result.reason for s in wave})
        if result.reason == "stop-file":
            break
for q in fast:  # the lane ends with the pass (its offsets since its last batch are sent again on restart)
    q.stop()
print(f"ended after {time.monotonic() - t0:.1f} s: {reasons}")

# %% [markdown]
# ## Accounts: every alert in each stage processed or set aside with its reason

# %%
import pandas as pd

totals = {s.name: pipeline.reconcile(spark, s, progress.get(s.query_name, []), cfg) for s in plan}
flow = pd.DataFrame(pipeline.flow(totals)).T.fillna(0).astype(int)
unbalanced = [name for name, t in totals.items() if not t["balanced"]]
if unbalanced:
    raise RuntimeError(f"the accounts of {unbalanced} do not balance: {totals}")
flow

# %% [markdown]
# ## Summary

# %%
import matplotlib.pyplot as plt
import numpy as np

counts = pipeline.flow(totals)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
stages = list(counts)
x = np.arange(len(stages))  # alerts in and out of each stage: one group a stage, however many batches ran
axes[0].bar(x - 0.2, [counts[s]["in"] for s in stages], 0.4, label="in")
axes[0].bar(x + 0.2, [counts[s]["out"] for s in stages], 0.4, label="out")
axes[0].set_xticks(x, stages, fontsize=8)
axes[0].set_ylabel("alerts")
axes[0].legend(fontsize=8)
durations = {name: [p["durationMs"].get("triggerExecution", 0) / 1000 for p in reports if p.get("numInputRows")]
             for name, reports in progress.items()}
durations = {name: d for name, d in durations.items() if d}
if durations:  # each stage's batch durations: a box for many batches, a line for one
    axes[1].boxplot(list(durations.values()), showfliers=True)
    axes[1].set_xticks(range(1, len(durations) + 1), [f"{n}\n({len(d)} batches)" for n, d in durations.items()],
                       fontsize=8)
axes[1].set_ylabel("batch duration (s)")
fig.tight_layout()
plt.show()

summary = {"stopped_because": reasons, "flow": pipeline.flow(totals)}
summary

# %%
streaming.stop_active(spark)
