"""Alert data for the broker: a deterministic ZTF-like night and malformed messages (the
generator), the simulator that replays a night to Kafka, real nights downloaded.

Notes
-----
The generator's names are re-exported lazily: :mod:`fink.sim.download` needs nothing but
the standard library (``datasim/download_ztf_alert_data.sh`` runs it with any Python 3),
and importing this package must not pull numpy and astropy in for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fink.sim.generator import Night, NightConfig, conform, generate_night

__all__ = ["Night", "NightConfig", "conform", "generate_night"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fink.sim import generator

        return getattr(generator, name)
    raise AttributeError(f"module 'fink.sim' has no attribute {name!r}")
