"""Cells of the notebooks below (see tools/nbbuild.py)."""

from nbbuild import COMMON_PARAMETERS

NOTEBOOKS: dict[str, list[tuple]] = {}

NOTEBOOKS["tests/notebooks/sleeper.ipynb"] = ([
("md", "Test service: counts ticks until its stop file appears or `duration` passes; writes `ticks.txt`."),
("code", COMMON_PARAMETERS + """
simulator: bool = False  # recorded in ticks.txt
duration: float = 60.0  # upper bound, seconds
stop_file: str = ""  # polled, `fink stop` creates it
""", ["parameters"]),
("code", """
import pathlib
import time

from fink.streaming import stop_requested

marker = pathlib.Path(stop_file).with_name("ticks.txt") if stop_file else None
t0, ticks = time.monotonic(), 0
while not stop_requested(stop_file) and time.monotonic() - t0 < duration:
    ticks += 1
    if marker and ticks == 1:  # written after the first tick: a stop seen from then on finds ticks > 0
        marker.write_text("running")
    time.sleep(0.1)
reason = "stop-file" if stop_requested(stop_file) else "duration"
if marker:
    marker.write_text(f"{ticks} {reason} simulator={simulator}")
"""),
])
NOTEBOOKS["tests/notebooks/stubborn.ipynb"] = ([
("md", "Test service that never looks at its stop file: `fink stop` must force it."),
("code", """
duration: float = 600.0  # seconds it sleeps
stop_file: str = ""  # deliberately ignored
""", ["parameters"]),
("code", "import time\n\ntime.sleep(duration)"),
])
