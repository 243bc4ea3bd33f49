# %% [markdown]
# # Watchlists, replays and the night's completeness
#
# Three things users ask a broker for, on the archives the stages wrote:
#
# 1. **a watchlist**: your positions (with a radius) or object ids; the running distribution stage
#    sends every alert near them to your own topic (`watchlist_<user>_<name>`), from its next
#    micro-batch, without a restart (`fink watchlist add|list|remove` does the same from a shell);
# 2. **a replay**: past nights of the archives to a topic, in the live format (fink-client reads
#    it), with a progress bar; interrupted, the same call takes up where it stopped and the topic
#    ends with every selected alert once (`fink replay --nights ... --topic ...`);
# 3. **the night's completeness**: per exposure, the alerts published, quarantined, ingested, kept,
#    sent to each topic and archived, the exposures that do not balance flagged with where the
#    alerts went (`fink report night YYYYMMDD`).
#
# * **reads**: `<data_dir>` (the raw and science archives), the survey topic, the distribution
#   topics, the HBase table
# * **writes**: `$FINK_HOME/watchlists`, the replay's `topic`, `$FINK_HOME/reports/{replay,completeness}`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
night: str = "20261127"  # the night to look at (YYYYMMDD)
watchlist: str = "my_targets"  # the watchlist to register (its entries: a few of the night's objects)
owner: str = "fink"  # its owner (granted its topic when a user of the broker: fink users add)
topic: str = "replay_20261127_bright"  # the replay's topic
where: str = "candidate.magpsf < 18"  # what the replay selects (Spark SQL over the alert and science columns)
survey_topic: str = ""  # the survey topic stream2raw read, "" means the survey's topic of the night
table: str = ""  # the HBase table the archive stage wrote, "" means the survey's

# %%
from fink.config import FinkConfig
from fink.runtime.session import get_spark

cfg = FinkConfig.from_namespace(globals())
spark = get_spark(cfg, app_name="fink-replay")

# %% [markdown]
# ## A watchlist
#
# Here its entries are three of the night's objects (their first position, 2 arcsec), and one
# object id. `register` stores the list, creates its topic and grants it to its owner; a
# distribution stage running now would send their next alerts there from its next micro-batch.
# Below, what it would have sent tonight: the night's alerts matched against the list, as the
# stage matches each batch.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from fink.filters import watchlists as wl
from fink.ops import watch
from fink.stages.raw2science import Raw2ScienceConfig, read_science

science = read_science(spark, Raw2ScienceConfig().paths(cfg)["science"]).where(F.col("night") == night)
tonight = science.select("candid", "objectId", "candidate.ra", "candidate.dec", "candidate.magpsf").toPandas()
firsts = tonight.sort_values("candid").drop_duplicates("objectId")
entries = [{"name": f"target_{k}", "ra": r.ra, "dec": r.dec} for k, r in enumerate(firsts.head(3).itertuples())]
entries.append({"name": "by_id", "object_id": firsts["objectId"].iloc[3]})
print(watch.register(watchlist, entries, owner, radius_arcsec=2.0, bootstrap=kafka_bootstrap))
display(pd.DataFrame(watch.listing()))

index = wl.index(wl.load(), wl.version())
found = wl.match(index, tonight["ra"], tonight["dec"], tonight["objectId"])
found = found.assign(candid=tonight["candid"].to_numpy()[found["alert"]], topic=[index.topics[k] for k in found["list"]])
display(found[found["topic"] == wl.topic_of(owner, watchlist)][["candid", "entry", "sep_arcsec"]])

fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
ax.scatter(tonight["ra"], tonight["dec"], s=6, color="0.6", label="tonight's alerts")
mine = pd.DataFrame([e for e in entries if "ra" in e])
ax.scatter(mine["ra"], mine["dec"], s=80, facecolors="none", edgecolors="red", label=f"{watchlist} entries")
ax.set_xlabel("ra (deg)")
ax.set_ylabel("dec (deg)")
ax.legend(fontsize=8)
ax.set_title("The watchlist on tonight's sky")
plt.show()

# %% [markdown]
# ## A replay
#
# What the replay selects, per night, is counted first (a query over the archives); the replay
# then runs as a streaming query of its own over those nights, with its checkpoint named after
# the topic, the nights and the condition: run this cell again after an interruption and it
# takes up where it stopped (the bar starts at what was already sent).

# %%
from fink.stages import replay

plan = replay.ReplayConfig(nights=night, topic=topic, where=where, max_files_per_trigger=2)
account = replay.run(spark, plan, cfg)
print(replay.table(account))
print(f"{account['alerts_per_s']} alerts/s; complete: {account['complete']}; account in {replay.report_path(plan)}")

nights = sorted(account["selected"])
fig, ax = plt.subplots(figsize=(6, 2.8), constrained_layout=True)
x = np.arange(len(nights))
ax.bar(x - 0.2, [account["selected"][n] for n in nights], 0.4, label="selected")
ax.bar(x + 0.2, [account["sent"].get(n, 0) for n in nights], 0.4, label="sent")
ax.set_xticks(x, nights)
ax.set_ylabel("alerts")
ax.legend(fontsize=8)
ax.set_title(f"replay -> {topic}")
plt.show()

# %% [markdown]
# ## The night's completeness, exposure by exposure
#
# Each exposure's alerts followed from the survey topic to HBase; an exposure that does not
# balance says where its alerts went. The figure is also what the dashboard shows for the night.

# %%
from fink.ops import completeness

sources = completeness.Sources.of(cfg, table=table, topics=(survey_topic,) if survey_topic else ())
report = completeness.night_report(spark, night, cfg, "ztf", sources)
path = completeness.save(report, night)
print(completeness.summary(report), f"\nCSV: {path}")
display(report[~report["balanced"]].head(20))
completeness.figure(report, night)
plt.show()

# %%
spark.stop()
