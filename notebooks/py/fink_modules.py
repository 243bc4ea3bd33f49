# %% [markdown]
# # Fink's own science modules and filters, unchanged
#
# The Fink community's science modules (`fink-science`) and filters (`fink-filters`) run
# here as they are: a module is called exactly as Fink calls it (its history-plus-current
# arrays built from the alert, its settings passed as Fink passes them, its outputs under
# Fink's names), and a filter's arguments are found among the alert's columns the way Fink
# finds them; its topic is named as Fink names it (`fink_vra_ztf`). This notebook tries a
# module and a filter on a few alerts without Spark, compares them with the values Fink
# stored in alerts it distributed (when you have some), then runs them in the stream.
# `docs/fink.md` says which of Fink's modules and filters run here, and why the others do not.
#
# Needs the `fink` extra: `pip install -e '.[fink]'` (or `pip install 'fink-broker-nb[fink]'`).
#
# * **reads**: `../datasim/sample_night` (the bundled night), `fink_alerts` (alerts Fink distributed, optional)
# * **writes**: Kafka `topic` (the sample night) and the Fink topics of `filters`; `<data_dir>/fink_modules`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings
data_dir: str = ""  # archive root, "" means $FINK_HOME/data (this notebook writes under fink_modules/)
log_level: str = "WARN"  # Spark log level in this notebook
sample: str = "../datasim/sample_night"  # the alerts to try things on
fink_alerts: str = "../../shared/datasim/ztf/fink-client_datatest/ztf/part-3-305711.avro"  # alerts Fink distributed ("" to skip)
modules: list = ["fink.science.modules.features:lightcurve_features", "fink.science.modules.classifier:snia_classifier", "fink.science.modules.xmatch:crossmatch", "fink:roid", "fink:nalerthist", "fink:lc_features", "fink:magnitude_rate"]  # raw2science's modules: the built-in ones, Fink's roid for the solar-system one, three more of Fink's
filters: list = ["sso_ztf_candidates", "sso_fink_candidates", "vra", "fast_riser_candidates"]  # Fink livestream filters: each to its Fink topic
topic: str = ""  # the survey topic the sample night is published to ("" for a new one)

# %% [markdown]
# ## A module and a filter on a few alerts, without Spark
#
# `alert_series` gives each input as the stream gives it to a module (Spark's types: a
# history field is one array per alert); `run_module` is what each Spark worker runs per batch.

# %%
from pathlib import Path

import fastavro

from fink.filters import community_filters
from fink.science import alert_columns, community_modules
from fink.science.science_api import load_module, run_module

with open(Path(sample) / "alerts.avro", "rb") as f:
    reader = fastavro.reader(f)
    schema, alerts = reader.writer_schema, [a for _, a in zip(range(200), reader, strict=False)]

nalerthist = load_module("fink:nalerthist")
print(nalerthist.name, nalerthist.version, "reads", nalerthist.inputs, "writes", nalerthist.outputs)
out = run_module(nalerthist, alert_columns.alert_series(alerts, nalerthist.inputs, schema))
print(f"{len(out)} alerts, error: {out['_error'].iloc[0]}; detections in each alert's history:")
out["nalerthist"].value_counts().sort_index().head(10)

# %% [markdown]
# A Fink filter's arguments are column names; `bind` finds them among the alert's columns
# (and the names Fink adds: `cmagpsfc`, ...) as Fink does. Fink's filters also read what Fink's
# modules compute (`roid`, `cdsxmatch`): here, the outputs of `modules` (Fink's `roid_catcher`
# among them), and the survey's `fink_names` (`cdsxmatch` is the cross-match's `xm_type`).

# %%
import pandas as pd

from fink.filters.filter_api import load_filters
from fink.science.science_api import load_modules, run_chain
from fink.survey.description import load as load_survey

ztf = load_survey("ztf")
chain = load_modules(modules, {"crossmatch": {"catalogue_path": str(Path(sample) / "catalogue.csv")}})
paths = list(dict.fromkeys(c for m in chain for c in m.inputs if alert_columns.avro_has(schema, c)))
ours = run_chain(chain, dict(zip(paths, alert_columns.alert_series(alerts, paths, schema), strict=True)))
names = alert_columns.avro_names(schema) + list(ours.columns)
counts = {}
for topic_name, path in community_filters.livestream(filters).items():
    f = community_filters.bind(load_filters({topic_name: path})[0], names,
                          lambda p: alert_columns.avro_has(schema, p) or p in ours, ztf.fink_columns())
    columns = [ours[c] if c in ours else alert_columns.alert_series(alerts, [c], schema)[0] for c in f.module.inputs]
    counts[topic_name] = {"reads": ", ".join(f.module.inputs), "selected": int(f.module.func(*columns).sum())}
pd.DataFrame(counts).T

# %% [markdown]
# ## Against Fink's own values
#
# Alerts Fink distributed carry the values Fink's modules gave them. The same modules, run
# here, on the same alerts (fink-client's test alerts: `fink_alerts`):

# %%
if fink_alerts and Path(fink_alerts).exists():
    with open(fink_alerts, "rb") as f:
        reader = fastavro.reader(f)
        fschema, falerts = reader.writer_schema, list(reader)
    rows = []
    for name in ["roid", "nalerthist", "lc_features", "mangrove", "gcvs", "blazar_stats"]:
        m = load_module(f"fink:{name}")
        got = run_module(m, alert_columns.alert_series(falerts, m.inputs, fschema))
        for column in m.outputs:
            equal = sum(community_modules.same_value(x, a[column]) for x, a in zip(got[column], falerts, strict=True))
            rows.append({"module": m.name, "column": column, "equal to Fink's": f"{equal}/{len(falerts)}"})
    comparison = pd.DataFrame(rows)
else:
    comparison = pd.DataFrame()
    print(f"no alerts from Fink at {fink_alerts!r}: skipped (fink-client's datatest/ztf/*.avro would do)")
comparison

# %% [markdown]
# ## In the stream
#
# The same modules and filters, configured as the stages' parameters, in the one-pass
# pipeline: raw2science runs Fink's modules with the built-in ones in its one Arrow UDF,
# distribution sends each filter's selection to its Fink topic, and the archive keeps Fink's
# columns (structs and maps included). The sample night is published to a topic first.

# %%
import uuid

from fink.config import FinkConfig
from fink.sim.simulator import SimulatorConfig, replay
from fink.stages import pipeline

cfg = FinkConfig.from_namespace(globals())
run_id = uuid.uuid4().hex[:8]
topic = topic or f"ztf_fink_modules_{run_id}"
root = cfg.data_uri("fink_modules", run_id)  # a folder, or a URI Spark understands
settings = {
    "stream2raw": {"raw_path": f"{root}/raw", "quarantine_path": f"{root}/quarantine",
                   "checkpoint": f"{root}/checkpoints/stream2raw"},
    "raw2science": {"modules": modules,
                    "module_params": {"crossmatch": {"catalogue_path": str(Path(sample) / "catalogue.csv")}},
                    "raw_path": f"{root}/raw", "science_path": f"{root}/science",
                    "checkpoint": f"{root}/checkpoints/raw2science"},
    "distribution": {"filters": community_filters.livestream(filters), "science_path": f"{root}/science",
                     "checkpoint": f"{root}/checkpoints/distribution"},
    "archive": {"table": f"fink_modules_{run_id}", "modules": modules, "science_path": f"{root}/science",
                "checkpoint": f"{root}/checkpoints/archive"},
}
plan = pipeline.configure(["stream2raw", "raw2science", "distribution", "archive"], topic, settings, "ztf")
sent = replay(SimulatorConfig(source=sample, survey="ztf", topic=topic), cfg.kafka_bootstrap, progress=False)
print(f"{sent['alerts']} alerts published to {topic}; Fink topics: {', '.join(settings['distribution']['filters'])}")

# %%
from fink.io import kafka
from fink.runtime import streaming
from fink.runtime.session import get_spark

spark = get_spark(cfg, app_name="fink-modules")
streaming.stop_active(spark)
before = {t: kafka.end_offsets(cfg.kafka_bootstrap, t) for t in settings["distribution"]["filters"]
          if t in kafka.topics(cfg.kafka_bootstrap)}
writer = pipeline.one_pass(spark, plan, cfg, "availableNow")
result = streaming.run_until([streaming.start(writer, pipeline.ONE_PASS)], duration=600, poll=2.0)
totals = {s.name: pipeline.reconcile(spark, s, writer.fink_sink.reports.get(s.query_name, []), cfg) for s in plan}
unbalanced = [name for name, t in totals.items() if not t["balanced"]]
if unbalanced:
    raise RuntimeError(f"the accounts of {unbalanced} do not balance: {totals}")
pd.DataFrame(pipeline.flow(totals)).T

# %% [markdown]
# What each Fink topic received in this run, read back with the users' client (`fink.client`):

# %%
from confluent_kafka import Consumer, TopicPartition

from fink.client.consumer import decode

consumer = Consumer(kafka.client_config(cfg.kafka_bootstrap, **{"group.id": f"fink-modules-{run_id}",
                                                                "enable.auto.commit": False,
                                                                "isolation.level": "read_committed"}))
received = {}
topics = totals["distribution"]["topics"]
for t in settings["distribution"]["filters"]:  # from where each topic ended before this run
    consumer.assign([TopicPartition(t, p, before.get(t, {}).get(p, 0))
                     for p in kafka.end_offsets(cfg.kafka_bootstrap, t)])
    received[t] = []
    # until what the filter selected came (then 0.5 s for any extra copy), or 3 s of silence
    while (msg := consumer.poll(3.0 if len(received[t]) < topics[t]["selected"] else 0.5)) is not None:
        if not msg.error():
            received[t].append(decode(msg.key(), msg.value()))
consumer.close()
summary = pd.DataFrame({t: {"selected": topics[t]["selected"], "received": len(received[t]),
                            "with Fink's nalerthist": sum(a.get("nalerthist") is not None for a in received[t])}
                        for t in received}).T
if (summary["selected"] != summary["received"]).any():
    raise RuntimeError(f"a Fink topic did not receive what its filter selected: {summary}")
summary

# %%
import matplotlib.pyplot as plt

from fink.stages.raw2science import read_science

science = read_science(spark, f"{root}/science")  # the raw columns joined to what raw2science added
print("Fink's columns in the science archive:", [c for c in science.columns if c in
                                                 ("nalerthist", "lc_features_g", "lc_features_r", "mag_rate")])
frame = science.select("nalerthist", "lc_features_r.amplitude", "mag_rate").toPandas()
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].hist(frame["nalerthist"].dropna(), bins=30)
axes[0].set_xlabel("nalerthist (fink-science)")
axes[1].hist(frame["amplitude"].dropna(), bins=30)
axes[1].set_xlabel("lc_features_r.amplitude")
axes[0].set_ylabel("alerts")
axes[2].barh(summary.index, summary["received"])
axes[2].set_xlabel("alerts received in this run")
axes[2].tick_params(axis="y", labelsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# The HBase archive keeps Fink's columns as they are (structs and maps too): an object's
# alerts read back with the users' client equal the science archive's.

# %%
from fink.client.explorer import Archive

fink_columns = ["candid", "roid", "nalerthist", "lc_features_r", "jd_first_real_det"]
stored = science.select(*fink_columns, "objectId").toPandas()
busiest = stored["objectId"].value_counts().index[0]
with Archive(hbase_thrift, settings["archive"]["table"]) as archive:
    back = archive.alerts(busiest, columns=fink_columns)
mine = stored[stored["objectId"] == busiest].set_index("candid").sort_index()
back = back.set_index("candid").sort_index()
same = [all(community_modules.same_value(a, b) for a, b in zip(mine[c], back[c], strict=True)) for c in fink_columns[1:]]
if len(back) != len(mine) or not all(same):
    raise RuntimeError(f"{busiest}: the archive's Fink columns differ from the science archive's")
back[fink_columns[1:]].head()

# %%
streaming.stop_active(spark)
