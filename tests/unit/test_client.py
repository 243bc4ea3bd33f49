"""The user client without a broker: light-curve points, cutout pixels, the scanner's save."""

import io
import json

import fastavro
import matplotlib
import numpy as np
import pytest

from fink.client import decode, plot_alert
from fink.client.plots import cutout_image, light_curve
from fink.client.scanner import Scanner, save_alert
from fink.sim.cutouts import to_fits_gz

matplotlib.use("Agg")
SCHEMA = {"type": "record", "name": "alert", "fields": [
    {"name": "objectId", "type": "string"}, {"name": "candid", "type": "long"},
    {"name": "candidate", "type": {"type": "record", "name": "c", "fields": [
        {"name": f, "type": ["null", "double"]} for f in ("jd", "magpsf", "sigmapsf", "diffmaglim")] + [
        {"name": "fid", "type": "int"}]}},
    {"name": "prv_candidates", "type": ["null", {"type": "array", "items": "c"}]},
    {"name": "cutoutScience", "type": ["null", {"type": "record", "name": "cut", "fields": [
        {"name": "stampData", "type": "bytes"}]}]}]}


def point(jd, fid, mag=None, err=None, limit=None):
    return {"jd": jd, "fid": fid, "magpsf": mag, "sigmapsf": err, "diffmaglim": limit}


@pytest.fixture
def alert():
    image = np.arange(63 * 63, dtype=float).reshape(63, 63)
    return {"objectId": "ZTF26aaaaaaa", "candid": 42, "candidate": point(2461000.5, 1, 18.0, 0.1, 20.5),
            "prv_candidates": [point(2460990.5, 2, None, None, 20.1),  # an upper limit in r
                               point(2460995.5, 1, 18.6, 0.12, 20.4),
                               point(2461000.5, 1, 18.0, 0.1, 20.5)],  # the alert itself, repeated
            "cutoutScience": {"stampData": to_fits_gz(image)}}


def test_the_light_curve_merges_history_and_detection_once(alert):
    lc = light_curve(alert)
    assert lc["mjd"].tolist() == [60990.0, 60995.0, 61000.0]
    assert lc["detected"].tolist() == [False, True, True]
    assert lc.loc[0, "limit"] == 20.1 and lc.loc[0, "fid"] == 2
    assert lc.loc[2, "mag"] == 18.0


def test_cutout_pixels_come_back_from_the_gzipped_fits(alert):
    img = cutout_image(alert["cutoutScience"]["stampData"])
    assert img.shape == (63, 63) and img[1, 0] == 63.0
    assert cutout_image(None) is None


def test_the_alert_figure_has_the_points_and_three_stamps(alert):
    fig = plot_alert(alert)
    lc_ax, *stamps = fig.axes
    assert lc_ax.yaxis_inverted()  # brighter is up
    assert sorted(t.get_text() for t in lc_ax.get_legend().get_texts()) == ["g (2)", "r upper limits (1)"]
    assert [ax.get_title() for ax in stamps] == ["Science", "Template", "Difference"]
    assert len(stamps[0].images) == 1 and len(stamps[1].images) == 0  # no template stamp: a message


def test_the_scanner_steps_and_saves_alerts_readable_as_avro(alert, tmp_path):
    second = {**alert, "candid": 43}
    scanner = Scanner([alert, second], tmp_path, SCHEMA)
    scanner.previous()
    assert scanner.index == 0
    scanner.next()
    scanner.next()
    assert scanner.index == 1  # stays on the last
    # the figure of the alert shown, and only it, is in the output widget's state (set, not captured)
    (shown,) = scanner.out.outputs
    assert shown["output_type"] == "display_data" and "Figure" in shown["data"]["text/plain"]
    path = scanner.save()
    assert path.name == "43.avro"
    assert next(fastavro.reader(io.BytesIO(path.read_bytes())))["candid"] == 43
    as_json = save_alert(alert, tmp_path / "json")
    assert json.loads(as_json.read_text())["candid"] == 42


def test_decode_reads_a_message_by_its_schema_key(alert):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(SCHEMA), alert)
    assert decode(json.dumps(SCHEMA).encode(), buf.getvalue())["cutoutScience"] == alert["cutoutScience"]
