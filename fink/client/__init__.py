"""The user's side: read distribution topics, plot light curves and cutouts, scan alerts."""

from fink.client.consumer import AlertStream, ClientError, decode
from fink.client.plots import plot_alert, plot_cutouts, plot_lightcurve

__all__ = ["AlertStream", "ClientError", "decode", "plot_alert", "plot_cutouts", "plot_lightcurve"]
