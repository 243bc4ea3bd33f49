"""User filters: which alerts go to which distribution topic."""

from fink.filters.filter_api import AlertFilter, FilterError, alert_filter, apply_filters, load_filters

__all__ = ["AlertFilter", "FilterError", "alert_filter", "apply_filters", "load_filters"]
