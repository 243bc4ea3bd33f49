"""The stage notebooks' summary figure reads the same for one micro-batch as for a hundred
(issue 22, item 5): bars over whole batch numbers, never a degenerate axis."""

import matplotlib

matplotlib.use("Agg")

from fink.runtime.monitor import batch_summary  # noqa: E402


def report(batch, rows, ms):
    return {"batchId": batch, "numInputRows": rows, "durationMs": {"triggerExecution": ms}}


def test_one_batch_is_one_bar_on_a_real_axis():
    fig = batch_summary([report(0, 229, 7000), report(1, 0, 10)], "one batch")
    rows, seconds = fig.axes
    assert len(rows.patches) == 1 and rows.patches[0].get_height() == 229
    low, high = rows.get_xlim()
    assert high - low >= 1 and low < 0 < high  # not a point on an axis of width zero
    assert all(float(t).is_integer() for t in rows.get_xticks() if low <= t <= high)
    assert seconds.get_ylim()[1] > 7.0 and "229 in 1 batch" in rows.get_title()


def test_a_hundred_batches_keep_whole_ticks_and_a_readable_count():
    fig = batch_summary([report(b, 100, 500) for b in range(100)], "a hundred")
    rows, _ = fig.axes
    assert len(rows.patches) == 100
    ticks = [t for t in rows.get_xticks() if rows.get_xlim()[0] <= t <= rows.get_xlim()[1]]
    assert len(ticks) <= 11 and all(float(t).is_integer() for t in ticks)
    assert "10000 in 100 batches" in rows.get_title()


def test_a_run_that_read_nothing_says_so():
    fig = batch_summary([report(0, 0, 5)], "nothing")
    assert any("no micro-batch read anything" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_the_dashboard_redraws_its_figures_in_its_output_widget(night_metrics, monkeypatch):
    import matplotlib.pyplot as plt

    from fink.ops import dashboard
    from fink.runtime import metrics

    monkeypatch.setattr(dashboard.runner, "running", lambda *a, **k: [])  # no service of this machine's
    store = metrics.Store(night_metrics)
    board = dashboard.Dashboard(store, night="20261128")
    board.update(plots=True)
    board.update(plots=True)  # a redraw replaces the figures, it does not add to them
    expected = len(dashboard.figures(dashboard.batches_of(store, "20261128")))
    plt.close("all")
    assert expected >= 2
    assert [o["output_type"] for o in board.plots.outputs] == ["display_data"] * expected
    assert all("Figure" in o["data"]["text/plain"] for o in board.plots.outputs)
