"""Cells of notebooks/distribution.ipynb and notebooks/client.ipynb (see tools/nbbuild.py)."""

from nbbuild import COMMON_PARAMETERS

NOTEBOOKS: dict[str, list[tuple]] = {}

NOTEBOOKS["notebooks/distribution.ipynb"] = [
("md", """
# distribution: user filters to Kafka topics

Reads the science archive as a stream of new Parquet files (what raw2science writes), runs
every filter in one pass per micro-batch, and sends each selected alert to its filter's
topic as schemaless Avro keyed by its schema (the Fink client's format), in one Kafka
transaction per batch: after a crash and restart no alert reaches a topic twice.
Topics (and their `_schema` topics) are created with their partitions and retention before
the first write. Users read them on the SASL listener with the grants of `fink users`.

* **reads**: `<data_dir>/science` (or `science_path`)
* **writes**: one Kafka topic per filter, checkpoint `<data_dir>/checkpoints/distribution`
* **headless**: `fink start distribution -c conf/local.yaml [--simulator]`
"""),
("code", COMMON_PARAMETERS + '''
survey: str = "ztf"  # ztf | rubin | a survey description file: the science layout, the default filters
filters: dict = {}  # topic: filter (dotted path); {} means the survey's (ZTF: fink_early_snia, fink_sso, fink_catalogued)
filter_params: dict = {}  # topic: keyword parameters of its filter
topic_options: dict = {"fink_catalogued": {"cutouts": False}}  # topic: {"cutouts": false} and/or {"fields": [...]} (Rubin: {})
partitions: int = 1  # partitions of each topic created
retention_ms: int = 604800000  # retention of each topic created (7 days)
max_files_per_trigger: int = 8  # science files per micro-batch, 0 means all new files
science_path: str = ""  # "" means <data_dir>/science (Rubin: <data_dir>/rubin/science)
checkpoint: str = ""  # "" means <data_dir>/checkpoints/distribution
trigger: str = "availableNow"  # availableNow (catch up, then stop) | "<N> seconds"
duration: float = 600.0  # upper bound of the run, seconds
simulator: bool = False  # first fill the science archive with the bundled sample night (simulator, stream2raw, raw2science)
topic: str = "ztf_20261127_programid1"  # the topic the simulator fills (with simulator only)
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run
''', ["parameters"]),
("code", """
from fink.config import FinkConfig
from fink.stages.distribution import DistributionConfig

cfg = FinkConfig.from_namespace(globals())
stage = DistributionConfig.from_namespace(globals())
paths = stage.paths(cfg)
if trigger != "availableNow" and not trigger.endswith("seconds"):
    raise ValueError(f"trigger must be 'availableNow' or '<N> seconds', got {trigger!r}")
user_filters = stage.load_filters()  # a missing filter or a wrong declaration fails here, by name
print(f"{paths['science']} -> topics {[f.topic for f in user_filters]}")
"""),
("md", "## Session (and, with `simulator`, a science archive of the sample night)"),
("code", """
from fink import streaming
from fink.monitor import QueryMonitor
from fink.session import get_spark
from fink.stages import distribution

spark = get_spark(cfg, app_name="fink-distribution")
streaming.stop_active(spark)  # a re-run of this cell must not leave a second query behind
if simulator:
    from fink.stages.raw2science import fill_from_simulator

    filled = fill_from_simulator(spark, cfg, topic, science_path, duration, stop_file, survey=stage.survey)
    print(f"simulator: {filled['alerts']} alerts -> raw -> science archive {filled['science']}")
"""),
("md", "## Source, filters, writer; start, watch the alerts out per topic, end within `duration`"),
("code", """
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
        for name, n in (counts or {}).items():
            out[name] += n
    per_topic.update(pd.DataFrame({"alerts out": out}))

query = streaming.start(writer, distribution.QUERY_NAME)
result = streaming.run_until([query], duration=duration, stop_file=stop_file, poll=2.0, on_poll=watch)
totals = distribution.reconcile(result.progress[distribution.QUERY_NAME], sink)  # waits for the last transaction
watch([])
print(f"ended: {result.reason} after {result.seconds:.1f} s")
if not totals["balanced"]:
    raise RuntimeError(f"a topic did not receive what its filter selected: {totals}")
{k: v for k, v in totals.items() if k != "filters"}
"""),
("md", "## Summary: alerts per topic, filter costs and errors"),
("code", """
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
"""),
]

NOTEBOOKS["notebooks/client.ipynb"] = [
("md", """
# Reading a distribution topic

What a user of the broker does: connect to a topic they were granted, read its alerts,
plot a light curve and the cutouts, and scan the alerts one by one, saving the good ones.
The messages are schemaless Avro keyed by their schema, so the Fink community client
(`fink-client`) reads the same topics; this notebook uses `fink.client`.

Credentials: the operator creates the user (`fink users add alice`, `fink users grant
alice fink_early_snia`) and hands over the password file; it is read from
`$FINK_CLIENT_PASSWORD` or that file, never typed here. Without `user`, the notebook reads
through the broker's internal listener, as the operator.

* **reads**: the topics of `topics`
* **writes**: the saved alerts under `save_to`
"""),
("code", '''
topics: list = ["fink_early_snia"]  # topics to read
user: str = ""  # your user name on the SASL listener, "" for the internal listener (operator)
password_file: str = ""  # where your password is, "" means $FINK_CLIENT_PASSWORD or the operator's copy
group_id: str = "notebook-client"  # consumer group (yours start with "<user>-"; added if missing)
max_alerts: int = 50  # alerts to read
idle: float = 10.0  # stop reading after this many seconds without an alert
save_to: str = "saved_alerts"  # where the scanner saves alerts
''', ["parameters"]),
("code", """
from fink.client import AlertStream

with AlertStream(topics, group_id=group_id if not user or group_id.startswith(f"{user}-") else f"{user}-{group_id}",
                 user=user or None, password_file=password_file or None) as stream:
    received = list(stream.alerts(limit=max_alerts, idle=idle))
    # topics may send different fields: with one topic, the scanner saves alerts as Avro, else as JSON
    schema = stream.schema(topics[0]) if len(topics) == 1 else None
alerts = [a for _, a in received]
print(f"{len(alerts)} alerts from {sorted({t for t, _ in received})}")
"""),
("md", "## As a table"),
("code", """
import pandas as pd

cols = ["objectId", "candid", "snia_prob", "cdsxmatch", "roid"]
table = pd.DataFrame([{c: a.get(c) for c in cols} | {"magpsf": a["candidate"]["magpsf"]} for a in alerts])
table.head(10)
"""),
("md", "## One alert: light curve (with upper limits) and cutouts"),
("code", """
import matplotlib.pyplot as plt

from fink.client import plot_alert

if alerts:
    best = max(alerts, key=lambda a: a.get("snia_prob") or 0)
    plot_alert(best)
    plt.show()
"""),
("md", "## Scan: previous / next / save"),
("code", """
from IPython.display import display

from fink.client.scanner import Scanner

scanner = Scanner(alerts, save_to, schema)
display(scanner.widget)
"""),
]
