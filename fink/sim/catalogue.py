"""A small reference catalogue for a simulated night, to cross-match against.

The catalogue knows some of the night's objects the way SIMBAD would: variable stars
(``RRLyr``) and AGN (``QSO``) at their positions, the host galaxies of supernovae (``G``,
0.3 to 1 arcsec away), plus unrelated field stars (``Star``) spread around the night's
objects. Columns ``ra``, ``dec``, ``id``, ``type``, as the cross-match module reads.
"""

from __future__ import annotations

import csv
import io

import numpy as np

TYPES = {"varstar": "RRLyr", "agn": "QSO", "snia": "G", "sncc": "G"}


def make_catalogue(truth: list[dict], seed: int = 0, field_stars: int = 5000) -> str:
    """The catalogue as CSV text, from the night's truth rows (objectId, class, ra, dec)."""
    rng = np.random.default_rng([seed, 77])
    rows = []
    for k, obj in enumerate(truth):
        kind = TYPES.get(obj["class"])
        if kind is None:
            continue
        ra, dec = float(obj["ra"]), float(obj["dec"])
        if kind == "G":  # a host galaxy, a little off the supernova
            sep, angle = rng.uniform(0.3, 1.0) / 3600, rng.uniform(0, 2 * np.pi)
            ra, dec = ra + sep * np.cos(angle) / np.cos(np.radians(dec)), dec + sep * np.sin(angle)
        rows.append((round(ra, 7), round(dec, 7), f"SIM-{kind}-{k:05d}", kind))
    centres = [(float(o["ra"]), float(o["dec"])) for o in truth]
    for k in range(field_stars if centres else 0):
        ra, dec = centres[k % len(centres)]
        star_ra = (ra + rng.normal(0, 0.05)) % 360
        star_dec = float(np.clip(dec + rng.normal(0, 0.05), -90, 90))
        rows.append((round(star_ra, 7), round(star_dec, 7), f"SIM-Star-{k:06d}", "Star"))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["ra", "dec", "id", "type"])
    writer.writerows(rows)
    return buf.getvalue()
