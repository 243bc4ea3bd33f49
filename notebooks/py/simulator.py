# %% [markdown]
# # Simulator: replay alerts into Kafka in ZTF's wire format
#
# Publishes alerts to a Kafka topic the way ZTF does (one Avro container file per message, topic
# `ztf_YYYYMMDD_programid1`), from the bundled sample night, the generator, a folder of `.avro`
# files (a downloaded night, `../shared/datasim/ztf/...`) or a ZTF tarball. Paces them (steady
# rate, or a burst every 39 s like survey visits), optionally injects malformed messages, and
# reports the rate it achieved.
#
# * **reads**: `source`; **writes**: Kafka topic `topic` at `kafka_bootstrap`
# * **headless**: `fink start simulator -c conf/local.yaml`, or
#   `papermill notebooks/simulator.ipynb out.ipynb -f conf/local.yaml -p rate 50`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
source: str = "../datasim/sample_night"  # generator | folder of .avro | .avro file | .tar.gz
survey: str = "ztf"  # ztf | rubin | a survey description file: what the generator writes, the topic naming
topic: str = ""  # "" means the survey's topic of the night (ztf_<night>_programid1, lsst_<night>)
night: str = "20261127"  # night of the generator (and of the default topic name), YYYYMMDD
seed: int = 42  # seed of the generator
n_objects: int = 120  # objects drawn by the generator
schema_version: str = ""  # schema the generator writes ("": ZTF 4.02, Rubin 10.0): ZTF 4.02 | 3.3, Rubin 7.4 to 11.1
rate: float = 0.0  # steady alerts/s, 0 means as fast as possible
burst: int = 0  # if > 0: this many alerts every visit_seconds (survey-like visits)
visit_seconds: float = 39.0  # time between two bursts
count: int = 0  # stop after this many alerts, 0 means the whole source
duration: float = 300.0  # stop after this many seconds, 0 means no limit
loop: bool = False  # start the source again when it runs out
fresh_ids: bool = True  # with loop, new candids on each pass (else the broker sees duplicates)
faults: dict = {}  # fraction of malformed messages per kind, e.g. {"truncated": 0.05, "empty": 0.01}
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
import json

from fink.config import FinkConfig
from fink.runtime import metrics
from fink.runtime.streaming import stop_requested
from fink.sim.simulator import SimulatorConfig, load_messages, replay

cfg = FinkConfig.from_namespace(globals())
sim = SimulatorConfig.from_namespace(globals())
print(f"{sim.source} -> {sim.topic_name} on {cfg.kafka_bootstrap}")

# %% [markdown]
# ## Load (or generate and encode) the alerts

# %%
messages = load_messages(sim, progress=True)
print(f"{len(messages)} alerts ready, {sum(map(len, messages)) / 1e6:.1f} MB")

# %% [markdown]
# ## Publish

# %%
report = replay(sim, cfg.kafka_bootstrap, messages=messages, progress=True,
                stop=lambda: stop_requested(stop_file))
metrics.process_recorder("simulator").note("simulator", 0, report)  # for the dashboard and `fink demo`
print(json.dumps(report, indent=1))

# %% [markdown]
# ## What was sent

# %%
import matplotlib.pyplot as plt
import numpy as np

from fink.ops.checkstream import jd_to_iso
from fink.survey.avro import decode_container

alerts = [decode_container(m).alert for m in messages[: report["alerts"] or len(messages)]]
jd = np.array([a["candidate"]["jd"] for a in alerts])
mag = np.array([a["candidate"]["magpsf"] for a in alerts])
fid = np.array([a["candidate"]["fid"] for a in alerts])
fig, ax = plt.subplots(figsize=(7, 3.5))
for band, colour in ((1, "tab:green"), (2, "tab:red")):
    sel = fid == band
    ax.scatter((jd[sel] - jd.min()) * 24, mag[sel], s=8, color=colour, label="gr"[band - 1])
ax.invert_yaxis()
ax.set_xlabel(f"hours since {jd_to_iso(jd.min())} UTC")
ax.set_ylabel("magpsf")
ax.legend(title="band")
ax.set_title(f"{report['alerts']} alerts to {report['topic']} at {report['alerts_per_s']} alerts/s")
plt.show()
