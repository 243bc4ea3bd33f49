# %% [markdown]
# # checkstream: watch a Kafka topic
#
# Consumes any topic from a chosen offset and shows, live, the counts, the rate, the lag and the
# latest alerts (object and alert ids, time, band, brightness). A message that is not an alert is
# counted under its reason (empty, not Avro, truncated, unknown schema, missing identifiers,
# oversized, duplicate) and never stops the watch.
#
# * **reads**: Kafka topic `topic` at `kafka_bootstrap` (it only reads; it commits nothing)
# * **headless**: `fink start checkstream -c conf/local.yaml`; in a terminal: `fink checkstream <topic>`

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
topic: str = "ztf_20261127_programid1"  # topic to watch (the simulator's default)
survey: str = "ztf"  # ztf | rubin | a survey description file: how to decode the messages
start: str = "earliest"  # earliest | latest | an offset for every partition
max_messages: int = 0  # stop after this many messages, 0 means no limit
idle: float = 15.0  # stop after this many seconds without a message, 0 means never
duration: float = 120.0  # upper bound of the watch, seconds
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
import threading

from fink.config import FinkConfig
from fink.ops.checkstream import watch
from fink.runtime.streaming import stop_requested

cfg = FinkConfig.from_namespace(globals())
first = int(start) if start.lstrip("-").isdigit() else start
print(f"watching {topic} on {cfg.kafka_bootstrap} from {first}")

# %% [markdown]
# ## Live view
#
# The watch runs in a thread and assigns the widget's value at each update, so this cell returns
# at once and the view keeps changing (widget callbacks cannot run while a cell blocks). A plain
# display updated in place carries the same text into the executed notebook of a headless run.

# %%
import html

import ipywidgets as widgets
from IPython.display import display

from fink.runtime.monitor import Background

view = widgets.HTML(value="<pre>waiting for the first messages...</pre>")
display(view)
fallback = display("waiting for the first messages...", display_id=True)
finished = threading.Event()


def update(stats):
    text = stats.text()
    view.value = f"<pre>{html.escape(text)}</pre>"
    fallback.update(text)


worker = Background(lambda: watch(cfg.kafka_bootstrap, topic, start=first, max_messages=max_messages, idle=idle,
                                  duration=duration, on_update=update, survey=survey,
                                  stop=lambda: finished.is_set() or stop_requested(stop_file)), "checkstream")

# %% [markdown]
# ## Bounded wait

# %%
worker.join(timeout=duration + 30)
finished.set()
stats = worker.join(timeout=30)  # raises what the watch raised
summary = stats.summary()
summary

# %% [markdown]
# ## Summary

# %%
import matplotlib.pyplot as plt
import pandas as pd

latest = pd.DataFrame(list(stats.latest))
display(latest)
for partition, offset, reason, detail in stats.examples:
    print(f"partition {partition} offset {offset}: {reason} ({detail})")

counts = {"alerts": stats.alerts, **stats.rejected}
fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(list(counts), list(counts.values()), color=["tab:blue"] + ["tab:red"] * len(stats.rejected))
ax.set_xlabel("messages")
ax.set_title(f"{topic}: {stats.messages} messages, lag {stats.lag}")
plt.show()
