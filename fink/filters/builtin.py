"""Filters shipped with the broker, on the built-in science modules' columns.

They double as examples: each is a plain function over named columns with a decorator.
"""

from __future__ import annotations

import pandas as pd

from fink.filters.filter_api import alert_filter


@alert_filter(inputs=["snia_prob", "candidate.ndethist"], version="1.0")
def early_snia(prob: pd.Series, ndethist: pd.Series, *, threshold: float = 0.5, max_detections: int = 20
               ) -> pd.Series:
    """Young SN Ia candidates: the classifier's probability above ``threshold``, few detections yet."""
    return (prob > threshold) & (ndethist <= max_detections)


@alert_filter(inputs=["snia_prob", "prvDiaSources.diaSourceId"], version="1.0")
def early_snia_rubin(prob: pd.Series, previous: pd.Series, *, threshold: float = 0.5, max_detections: int = 20
                     ) -> pd.Series:
    """:func:`early_snia` on Rubin alerts: the detections are the alert and its ``prvDiaSources``."""
    detections = previous.map(lambda p: 1 + (len(p) if p is not None else 0))
    return (prob > threshold) & (detections <= max_detections)


@alert_filter(inputs=["roid"], version="1.0")
def solar_system(roid: pd.Series) -> pd.Series:
    """Alerts associated with a known solar-system object (``roid`` 3)."""
    return roid == 3


@alert_filter(inputs=["xm_type"], version="1.0")
def catalogued(xm_type: pd.Series, *, types: tuple = ()) -> pd.Series:
    """Alerts matched in the cross-match catalogue (of one of ``types`` if given)."""
    return xm_type.isin(list(types)) if types else xm_type.notna()


@alert_filter(inputs=["candidate.magpsf"], version="1.0")
def bright(magpsf: pd.Series, *, limit: float = 18.0) -> pd.Series:
    """Alerts brighter than ``limit`` (magnitude)."""
    return magpsf < limit


@alert_filter(inputs=["brokerIngestTimestamp"], version="1.0")
def everything(ingested: pd.Series) -> pd.Series:
    """Every alert, whatever its survey (a full copy of the stream; benchmarks measure with it)."""
    return pd.Series(True, index=ingested.index)
