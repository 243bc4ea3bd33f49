"""Light curves of the simulated populations, in apparent magnitude per band.

Each model draws its parameters once per object from the object's own random generator,
then answers ``mag(t, fid)`` for any time, so successive alerts of one object agree.

Notes
-----
The shapes are the usual phenomenological ones: a Bazin rise-and-fall for supernovae
(faster decline in g than in r, as supernovae redden), a saw-tooth pulsation for RR
Lyrae-like stars, a damped random walk for AGN. They are plausible, not fitted: good
enough to exercise features, classifiers and filters with known answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

G, R = 1, 2  # ZTF filter ids

CLASSES = ("snia", "sncc", "varstar", "agn", "sso", "bogus")


def _bazin(t: np.ndarray, t0: float, rise: float, fall: float) -> np.ndarray:
    """Normalised Bazin profile, 1 at its maximum."""
    x = np.asarray(t, dtype=float) - t0
    f = np.exp(-x / fall) / (1.0 + np.exp(-x / rise))
    # maximum of the profile, where d/dt = 0: x* = rise * ln(fall / rise - 1)
    xs = rise * np.log(max(fall / rise - 1.0, 1e-6))
    fmax = np.exp(-xs / fall) / (1.0 + np.exp(-xs / rise))
    return f / fmax


@dataclass
class LightCurve:
    """A model of one object's brightness; ``mag`` returns NaN where it is not visible."""

    kind: str
    params: dict = field(default_factory=dict)
    ref_mag: dict = field(default_factory=dict)  # reference (template) magnitude per band, if any

    def mag(self, t: np.ndarray, fid: int) -> np.ndarray:
        p, t = self.params, np.asarray(t, dtype=float)
        if self.kind in ("snia", "sncc"):
            fall = p["fall_g"] if fid == G else p["fall_r"]
            flux = _bazin(t, p["t0"], p["rise"], fall)
            with np.errstate(divide="ignore"):
                return p["peak"] + (p["color"] if fid == R else 0.0) - 2.5 * np.log10(flux)
        if self.kind == "varstar":
            phase = ((t - p["epoch"]) / p["period"]) % 1.0
            # fast rise (10% of the period), slow linear decline: RR Lyrae-like saw-tooth
            shape = np.where(phase < 0.1, phase / 0.1, 1.0 - (phase - 0.1) / 0.9)
            amp = p["amp"] * (1.0 if fid == G else 0.7)
            return p["mean"] + (p["color"] if fid == R else 0.0) + amp * (0.5 - shape)
        if self.kind == "agn":
            return p["walk"](t) + (p["color"] if fid == R else 0.0)
        if self.kind in ("sso", "bogus"):
            return np.full_like(t, p["mag"] + (p.get("color", 0.0) if fid == R else 0.0))
        raise ValueError(f"unknown light-curve kind {self.kind!r}")


def _damped_random_walk(rng: np.random.Generator, mean: float, sigma: float, tau: float,
                        t_start: float, t_end: float, step: float = 0.25):
    """An Ornstein-Uhlenbeck process sampled on a grid, interpolated in between."""
    grid = np.arange(t_start, t_end + step, step)
    x = np.empty_like(grid)
    x[0] = rng.normal(0.0, sigma)
    a = np.exp(-step / tau)
    noise = rng.normal(0.0, sigma * np.sqrt(1 - a * a), len(grid))
    for i in range(1, len(grid)):
        x[i] = a * x[i - 1] + noise[i]
    values = mean + x

    def walk(t):
        return np.interp(t, grid, values)

    return walk


def draw(kind: str, rng: np.random.Generator, t_night: float, history_days: float) -> LightCurve:
    """Draw a light curve of class ``kind`` visible around ``t_night`` (JD)."""
    if kind == "snia":
        params = {"t0": t_night + rng.uniform(-25.0, 5.0), "rise": rng.uniform(2.5, 4.5),
                  "fall_g": rng.uniform(15.0, 22.0), "fall_r": rng.uniform(25.0, 35.0),
                  "peak": rng.uniform(16.8, 19.2), "color": rng.uniform(-0.1, 0.1)}
        return LightCurve(kind, params)
    if kind == "sncc":
        params = {"t0": t_night + rng.uniform(-35.0, 3.0), "rise": rng.uniform(1.0, 2.5),
                  "fall_g": rng.uniform(30.0, 50.0), "fall_r": rng.uniform(60.0, 100.0),
                  "peak": rng.uniform(17.5, 19.5), "color": rng.uniform(-0.2, 0.0)}
        return LightCurve(kind, params)
    if kind == "varstar":
        mean = rng.uniform(14.5, 17.5)
        params = {"period": rng.uniform(0.4, 0.75), "epoch": t_night - rng.uniform(0, 1),
                  "amp": rng.uniform(0.5, 1.0), "mean": mean, "color": rng.uniform(-0.3, 0.1)}
        return LightCurve(kind, params, {G: mean, R: mean + params["color"]})
    if kind == "agn":
        mean, color = rng.uniform(17.5, 19.0), rng.uniform(-0.3, -0.1)
        walk = _damped_random_walk(rng, mean, rng.uniform(0.25, 0.45), rng.uniform(30.0, 200.0),
                                   t_night - history_days - 1, t_night + 1)
        return LightCurve(kind, {"walk": walk, "color": color}, {G: mean, R: mean + color})
    if kind == "sso":
        return LightCurve(kind, {"mag": rng.uniform(17.5, 20.0), "color": rng.uniform(-0.5, -0.3)})
    if kind == "bogus":
        return LightCurve(kind, {"mag": rng.uniform(18.5, 20.3)})
    raise ValueError(f"unknown class {kind!r} (known: {', '.join(CLASSES)})")
