# %% [markdown]
# # Exploring the archive in HBase
#
# What a user does with the enriched archive: list its nights and classes, take the latest
# alerts of a class, draw an object's whole light curve (every alert's history merged, each
# point once, upper limits or forced photometry included) and its cutouts, and search a cone
# of sky. Every query goes through the HBase Thrift gateway with `fink.client.explorer.Archive`
# and returns a pandas DataFrame with the columns and types of the science archive. The
# survey (ZTF or Rubin) is recognised from the table's columns: `archive.identify` gives any
# alert's `object_id`, `alert_id`, `jd`, `ra` and `dec` whatever the survey calls them.
#
# * **reads**: the tables written by `archive.ipynb` (`<table>`, `<table>_class|pixel|night`)

# %% tags=["parameters"]
hbase_thrift: str = "127.0.0.1:9090"  # HBase Thrift gateway, host:port
table: str = "ztf_alerts"  # the archive's main table (Rubin's: "rubin_alerts")
tag: str = "early_snia"  # class whose latest alerts are listed
limit: int = 10  # how many of them
object_id: str = ""  # object to draw, "" means the object with the most alerts among them
radius_arcsec: float = 1800.0  # cone search radius around that object

# %%
import pandas as pd

from fink.client.explorer import Archive

archive = Archive(hbase_thrift, table)
print(f"{table} ({archive.survey.name}): {sum(archive.nights().values())} alerts")
pd.DataFrame({"alerts": archive.nights()}).rename_axis("night")

# %% [markdown]
# ## Classes, and the latest alerts of one

# %%
print(archive.tags())
added = [c for c in ("snia_prob", "roid", "xm_type") if c in archive.layout.schema.names]
latest = archive.identify(archive.latest(tag, limit=limit, columns=archive.key_columns + added))
latest[["object_id", "alert_id", "jd", "ra", "dec", *added]]

# %% [markdown]
# ## One object: its light curve from every alert, and the cutouts of its latest alert

# %%
import matplotlib.pyplot as plt

if not object_id and len(latest):
    object_id = str(latest["object_id"].value_counts().index[0])
if object_id:
    lc = archive.light_curve(object_id)
    print(f"{object_id}: {len(archive.alerts(object_id, columns=archive.key_columns[:1]))} alerts, "
          f"{int(lc['detected'].sum())} detections, {int((~lc['detected']).sum())} upper limits or forced points")
    archive.plot_lightcurve(object_id)
    archive.plot_cutouts(object_id)
    plt.show()

# %% [markdown]
# ## Cone search around it (HEALPix pixel index, then the exact separation)

# %%
from IPython.display import display

if object_id:
    centre = archive.identify(archive.alerts(object_id, columns=archive.key_columns)).iloc[-1]
    around = archive.identify(archive.cone(centre["ra"], centre["dec"], radius_arcsec, columns=archive.key_columns))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(around["ra"], around["dec"], c=around["separation_arcsec"], s=12)
    ax.scatter([centre["ra"]], [centre["dec"]], marker="+", s=200, color="red")
    ax.set_xlabel("ra (deg)")
    ax.set_ylabel("dec (deg)")
    ax.set_title(f"{len(around)} alerts within {radius_arcsec:.0f} arcsec")
    plt.show()
    display(around[["object_id", "alert_id", "separation_arcsec"]].head(10))
archive.close()
