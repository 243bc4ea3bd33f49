"""One-call matplotlib plots of an alert: its light curve and its three cutouts.

The light curve merges the alert's detection with its history, per band, with error bars.
A ZTF alert is drawn in magnitudes, the history's non-detections as upper limits (the
5-sigma limiting magnitude, ``diffmaglim``); a Rubin alert in difference flux (nJy), its
previous sources filled and its forced photometry open. Which one is read from the
survey description whose fields the alert has (:func:`fink.survey.description.detect`). Cutouts are
FITS stamps (gzipped for ZTF): each is shown with percentile clipping and an asinh
stretch, the usual way to see both a faint transient and a bright host.
"""

from __future__ import annotations

import gzip
import io
from typing import Any

import numpy as np

#: ZTF filter ids and their colours
BANDS = {1: ("g", "tab:green"), 2: ("r", "tab:red"), 3: ("i", "tab:orange")}
CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
MJD_OFFSET = 2400000.5


def light_curve(alert: dict[str, Any]):
    """The alert's points as a DataFrame: ``mjd``, ``fid``, ``mag``, ``err``, ``limit``, ``detected``.

    The history comes first, then the alert's own detection; the same epoch and band seen
    twice (a history that repeats a point) is kept once.
    """
    import pandas as pd

    rows = []
    for point in [*(alert.get("prv_candidates") or []), alert["candidate"]]:
        if point is None or point.get("jd") is None:
            continue
        mag = point.get("magpsf")
        rows.append({"mjd": point["jd"] - MJD_OFFSET, "fid": point.get("fid"), "mag": mag,
                     "err": point.get("sigmapsf"), "limit": point.get("diffmaglim"), "detected": mag is not None})
    lc = pd.DataFrame(rows, columns=["mjd", "fid", "mag", "err", "limit", "detected"])
    return lc.drop_duplicates(subset=["mjd", "fid"], keep="last").sort_values("mjd").reset_index(drop=True)


def plot_lightcurve(alert: dict[str, Any], ax=None, upper_limits: bool = True):
    """The alert's light curve as its survey measures it: ZTF magnitudes against MJD per band
    (error bars on detections, triangles for upper limits), Rubin fluxes (:func:`plot_fluxes`)."""
    from fink.survey import description as surveys

    desc = surveys.detect(alert)
    title = f"{desc.object_key(alert) or ''}  alert {desc.alert_key(alert) or ''}"
    if desc.photometry["kind"] == "flux":
        return plot_fluxes(flux_curve(alert, desc), ax=ax, title=title)
    return plot_points(light_curve(alert), ax=ax, upper_limits=upper_limits, title=title)


#: Rubin's bands and their colours
FLUX_BANDS = {"u": "tab:purple", "g": "tab:green", "r": "tab:red", "i": "tab:orange", "z": "tab:brown",
              "y": "black"}


def flux_curve(alert: dict[str, Any], survey=None):
    """A flux survey's points as a DataFrame: ``mjd``, ``band``, ``flux``, ``err``, ``kind``
    (``source``: the alert's and its previous detections; ``forced``: forced photometry).

    Field names come from the survey description: the time, band and photometry paths give
    the fields of each point, its ``history`` the arrays of previous sources (first) and of
    forced photometry (second).
    """
    import pandas as pd

    from fink.survey import description as surveys

    desc = survey or surveys.detect(alert)
    leaf = {k: path.rsplit(".", 1)[-1] for k, path in (("time", desc.time["path"]), ("band", desc.band),
                                                       ("flux", desc.photometry["value"]),
                                                       ("err", desc.photometry["error"]))}
    offset = float(desc.time.get("to_jd", 0.0)) - MJD_OFFSET
    current = surveys.get_path(alert, desc.time["path"].rsplit(".", 1)[0]) if "." in desc.time["path"] else alert
    groups = [("source", alert.get(desc.history[0]) if desc.history else None), ("source", [current]),
              ("forced", alert.get(desc.history[1]) if len(desc.history) > 1 else None)]
    rows = [{"mjd": p[leaf["time"]] + offset, "band": p.get(leaf["band"]), "flux": p.get(leaf["flux"]),
             "err": p.get(leaf["err"]), "kind": kind}
            for kind, points in groups for p in (points or []) if p and p.get(leaf["time"]) is not None]
    lc = pd.DataFrame(rows, columns=["mjd", "band", "flux", "err", "kind"])
    return lc.drop_duplicates(subset=["mjd", "band", "kind"], keep="last").sort_values("mjd").reset_index(drop=True)


def plot_fluxes(lc, ax=None, title: str = ""):
    """Plot a flux light curve (:func:`flux_curve`): per band, detections filled, forced photometry open."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for band, colour in FLUX_BANDS.items():
        for kind, face in (("source", colour), ("forced", "none")):
            pts = lc[(lc["band"] == band) & (lc["kind"] == kind) & lc["flux"].notna()]
            if len(pts):
                ax.errorbar(pts["mjd"], pts["flux"], yerr=pts["err"].astype(float), fmt="o", color=colour,
                            mfc=face, capsize=2, ms=5, label=f"{band} {kind} ({len(pts)})")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("MJD")
    ax.set_ylabel("difference flux (nJy)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    return ax


def plot_points(lc, ax=None, upper_limits: bool = True, title: str = ""):
    """Plot a light curve DataFrame (:func:`light_curve`, or the archive's with ZTF names
    ``magpsf``/``sigmapsf``/``diffmaglim``): per band, error bars and upper limits."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    lc = lc.rename(columns={"magpsf": "mag", "sigmapsf": "err", "diffmaglim": "limit"})
    for fid, (band, colour) in BANDS.items():
        det = lc[(lc["fid"] == fid) & lc["detected"]]
        if len(det):
            ax.errorbar(det["mjd"], det["mag"], yerr=det["err"].astype(float), fmt="o", color=colour,
                        label=f"{band} ({len(det)})", capsize=2, ms=5)
        lim = lc[(lc["fid"] == fid) & ~lc["detected"] & lc["limit"].notna()]
        if upper_limits and len(lim):
            ax.scatter(lim["mjd"], lim["limit"], marker="v", color=colour, alpha=0.35,
                       label=f"{band} upper limits ({len(lim)})")
    if len(lc) and not ax.yaxis_inverted():
        ax.invert_yaxis()  # brighter is up
    ax.set_xlabel("MJD")
    ax.set_ylabel("magnitude")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax


def cutout_image(stamp: bytes | None) -> np.ndarray | None:
    """The pixels of a gzipped (or plain) FITS stamp, or None."""
    from astropy.io import fits

    if not stamp:
        return None
    data = gzip.decompress(stamp) if stamp[:2] == b"\x1f\x8b" else stamp
    with fits.open(io.BytesIO(data), memmap=False) as hdul:
        return np.array(hdul[0].data, dtype=float)


def plot_cutouts(alert: dict[str, Any], axes=None, percentiles: tuple[float, float] = (0.5, 99.5)):
    """Science, template and difference stamps side by side (percentile clip, asinh stretch)."""
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize, ManualInterval

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    for ax, name in zip(axes, CUTOUTS, strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name.replace("cutout", ""))
        value = alert.get(name)  # ZTF: a record with the gzipped stamp; Rubin: the FITS bytes
        img = cutout_image(value.get("stampData") if isinstance(value, dict) else value)
        if img is None or not np.isfinite(img).any():
            ax.text(0.5, 0.5, "no stamp", ha="center", va="center", transform=ax.transAxes)
            continue
        lo, hi = np.nanpercentile(img, percentiles)
        norm = ImageNormalize(img, interval=ManualInterval(lo, hi if hi > lo else lo + 1), stretch=AsinhStretch())
        ax.imshow(np.nan_to_num(img, nan=lo), origin="lower", cmap="gray", norm=norm)
    return axes


def plot_alert(alert: dict[str, Any]):
    """Light curve above the three cutouts, in one figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(9, 6.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.3, 1])
    plot_lightcurve(alert, fig.add_subplot(grid[0, :]))
    plot_cutouts(alert, [fig.add_subplot(grid[1, k]) for k in range(3)])
    fig.tight_layout()
    return fig


def show_figures(out, figures) -> None:
    """Show ``figures`` (matplotlib) in the ipywidgets ``Output`` ``out`` in place of what it showed,
    in one update, and close them.

    The figures are set into the widget's state rather than captured (``with out:``,
    ``out.clear_output()``): run headless, nbclient answers a capture with comm messages it sends on
    the shell channel where it waits for the cell's reply, and under load it saw that reply only
    when its wait timed out (a client notebook's scanner cell took its papermill run's 120 s).
    """
    import matplotlib.pyplot as plt
    from IPython import get_ipython
    from IPython.core.formatters import DisplayFormatter

    # the kernel's formatters (a figure as PNG); outside IPython plain ones, without making a shell
    # (``InteractiveShell.instance()`` would: then everything after took this process for a notebook)
    shell = get_ipython()
    fmt = shell.display_formatter.format if shell is not None else DisplayFormatter().format
    shown = []
    for fig in figures:
        data, metadata = fmt(fig)
        shown.append({"output_type": "display_data", "data": data, "metadata": metadata})
        plt.close(fig)
    out.outputs = tuple(shown)
