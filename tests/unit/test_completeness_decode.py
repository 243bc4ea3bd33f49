"""The completeness report's exposure of a message: ZTF's (jd, field, rcid), Rubin's visit."""

from pathlib import Path

import pytest

from fink.ops import completeness
from fink.sim import NightConfig, generate_night
from fink.sim import rubin_alerts as rubin_sim
from fink.sim.simulator import SimulatorConfig, load_messages
from fink.survey import description as surveys
from fink.survey import wire

SAMPLE = Path(__file__).resolve().parents[2] / "datasim" / "sample_night"


@pytest.mark.parametrize("name", ["ztf", "rubin"])
def test_a_message_is_placed_on_its_exposure_or_set_apart(name):
    survey = surveys.load(name)
    if name == "ztf":
        messages = load_messages(SimulatorConfig(source=str(SAMPLE)))[:40]
    else:
        night = generate_night(NightConfig(n_objects=10, seed=3, cutouts=False))
        messages = list(rubin_sim.wire_messages(night, survey.simulator["versions"][-1]))[:40]
    decode = wire.decoder(survey)
    alerts = [decode(m).alert for m in messages]
    nights = {completeness._night_of(survey, a) for a in alerts}
    assert len(nights) == 1
    (night_name,) = nights
    got = completeness._decoded(survey, [*messages, b"not an alert", None], night_name)
    want = [tuple(surveys.get_path(a, p) for p in survey.exposure) for a in alerts]
    assert got == [*want, (), ()]
    assert all(e and all(v is not None for v in e) for e in want)
    assert completeness.exposure_names(survey) == (["jd", "field", "rcid"] if name == "ztf" else ["visit"])
    assert completeness._decoded(survey, messages[:3], "19991231") == [None, None, None]  # another night's
