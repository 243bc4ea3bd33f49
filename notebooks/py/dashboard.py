# %% [markdown]
# # dashboard: the broker's services, live, and the night's report
#
# Reads the metrics store that every stage writes while it runs (`$FINK_HOME/metrics/metrics.db`,
# one row per micro-batch: alerts in, rates, batch time, Kafka lag, latency percentiles, and what
# the stage's sink did with the batch). It does not touch Spark, Kafka or HBase, so it can run
# beside the stages, or after them on a finished night.
#
# * **live**: one panel per running service (as `fink show`), the night's table of alerts in and
#   out of each stage, and plots of rates and latency, refreshed every `refresh` seconds for
#   `duration` seconds (in JupyterLab set `duration` to the length of your shift)
# * **report**: `summary.json`, `batches.csv`, `rates.png`, `latency.png` in `report_dir`; run
#   headless (`fink start dashboard -c conf/local.yaml`), the executed notebook is also saved as
#   HTML beside it

# %% tags=["parameters"]
kafka_bootstrap: str = "127.0.0.1:9092"  # Kafka bootstrap servers, host:port[,host:port]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
spark_master: str = "local[2]"  # local[N] | spark://host:7077 | yarn | k8s://...
spark_conf: dict = {}  # extra Spark settings, e.g. {"spark.executor.memory": "4g"}
data_dir: str = ""  # archive root, "" means $FINK_HOME/data
log_level: str = "WARN"  # Spark log level in this notebook
night: str = ""  # YYYYMMDD (UTC) to show and report, "" means today
services: list = []  # show only these services, [] means every one
runs: list = []  # report only these runs (as stored by `fink start`), [] means every run of the night
refresh: float = 5.0  # seconds between two updates of the live view
duration: float = 0.0  # seconds of live updates, 0 means one update then the report
metrics_db: str = ""  # "" means $FINK_HOME/metrics/metrics.db
report_dir: str = ""  # "" means $FINK_HOME/reports/dashboard/<night>
completeness_night: str = ""  # the alerts' night whose `fink report night` to draw, "" means night
stop_file: str = ""  # set by `fink start`, `fink stop` creates it to end the run

# %%
from pathlib import Path

from fink.config import fink_home
from fink.ops import dashboard
from fink.runtime import metrics

store = metrics.Store(metrics_db or None)
since, until, night_name = dashboard.night_window(night)
out_dir = Path(report_dir) if report_dir else fink_home() / "reports" / "dashboard" / night_name
print(f"metrics: {store.path}; night {night_name}; report: {out_dir}")

# %% [markdown]
# ## Live view
#
# The refresh runs in a thread, so this cell returns at once and you can keep working while the
# panels change. Colours: green processing, blue waiting for data, orange starting, purple stopping.

# %%
from fink.runtime.monitor import Background

board = dashboard.Dashboard(store, night=night, services=services)
display(board)
worker = Background(lambda: board.run(duration, refresh=refresh, stop_file=stop_file), "dashboard")

# %% [markdown]
# ## Bounded wait, then the night's report

# %%
updates = worker.join(timeout=duration + 120)  # raises what the live view raised
report = dashboard.write_report(store, out_dir, night=night, services=services, runs=runs or None,
                                completeness_night=completeness_night)
print(f"{updates or 0} live updates; report of {report['batches']} batches in {out_dir}")

# %% [markdown]
# ### Alerts in and out of each stage, and their latency (seconds since the alert entered Kafka)

# %%
import pandas as pd

pd.DataFrame(report["stages"]).T

# %% [markdown]
# ### Runs of the night

# %%
pd.DataFrame(report["runs"])

# %% [markdown]
# ### Rates, batch times and latency over the night

# %%
from IPython.display import Image

for name in ("rates", "latency"):
    display(Image(filename=str(out_dir / f"{name}.png")))

# %% [markdown]
# ### Completeness per exposure
#
# Once `fink report night YYYYMMDD` has counted the night's alerts per exposure (published,
# quarantined, ingested, kept, sent per topic, archived), the report draws them cumulated in time
# order, the exposures that do not balance in red, with what went missing.

# %%
if "completeness" in report:
    print(report["completeness"])
    display(Image(filename=str(out_dir / "completeness.png")))
else:
    print(f"no completeness report of night {completeness_night or night_name} yet: "
          f"run `fink report night {completeness_night or night_name}`")
