# %% [markdown]
# # Reading a distribution topic
#
# What a user of the broker does: connect to a topic they were granted, read its alerts,
# plot a light curve and the cutouts, and scan the alerts one by one, saving the good ones.
# The messages are schemaless Avro keyed by their schema, so the Fink community client
# (`fink-client`) reads the same topics; this notebook uses `fink.client`.
#
# Credentials: the operator creates the user (`fink users add alice`, `fink users grant
# alice fink_early_snia`) and hands over the password file; it is read from
# `$FINK_CLIENT_PASSWORD` or that file, never typed here. Without `user`, the notebook reads
# through the broker's internal listener, as the operator.
#
# * **reads**: the topics of `topics`
# * **writes**: the saved alerts under `save_to`

# %% tags=["parameters"]
topics: list = ["fink_early_snia"]  # topics to read
user: str = ""  # your user name on the SASL listener, "" for the internal listener (operator)
password_file: str = ""  # where your password is, "" means $FINK_CLIENT_PASSWORD or the operator's copy
group_id: str = "notebook-client"  # consumer group (yours start with "<user>-"; added if missing)
max_alerts: int = 50  # alerts to read
idle: float = 10.0  # stop reading after this many seconds without an alert
save_to: str = "saved_alerts"  # where the scanner saves alerts

# %%
from fink.client import AlertStream

with AlertStream(topics, group_id=group_id if not user or group_id.startswith(f"{user}-") else f"{user}-{group_id}",
                 user=user or None, password_file=password_file or None) as stream:
    received = list(stream.alerts(limit=max_alerts, idle=idle))
    # topics may send different fields: with one topic, the scanner saves alerts as Avro, else as JSON
    schema = stream.schema(topics[0]) if len(topics) == 1 else None
alerts = [a for _, a in received]
print(f"{len(alerts)} alerts from {sorted({t for t, _ in received})}")

# %% [markdown]
# ## As a table

# %%
import pandas as pd

cols = ["objectId", "candid", "snia_prob", "cdsxmatch", "roid"]
table = pd.DataFrame([{c: a.get(c) for c in cols} | {"magpsf": a["candidate"]["magpsf"]} for a in alerts])
table.head(10)

# %% [markdown]
# ## One alert: light curve (with upper limits) and cutouts

# %%
import matplotlib.pyplot as plt

from fink.client import plot_alert

if alerts:
    best = max(alerts, key=lambda a: a.get("snia_prob") or 0)
    plot_alert(best)
    plt.show()

# %% [markdown]
# ## Scan: previous / next / save

# %%
from IPython.display import display

from fink.client.scanner import Scanner

scanner = Scanner(alerts, save_to, schema)
display(scanner.widget)
