"""Simulated alert streams: a deterministic ZTF-like night and malformed messages."""

from fink.datasim.generator import Night, NightConfig, conform, generate_night

__all__ = ["Night", "NightConfig", "conform", "generate_night"]
