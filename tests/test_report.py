"""The report's training curves: every series is visible, a run with one evaluation included."""
from __future__ import annotations

import math

import pytest

from tunelab.evaluate import report


@pytest.fixture
def drawn(monkeypatch):
    """Figures `curves_figure` draws, kept open instead of turned into PNG tags."""
    figures = []
    monkeypatch.setattr(report, "inline_png", lambda fig: figures.append(fig) or "<img>")
    yield figures
    import matplotlib.pyplot as plt

    for fig in figures:
        plt.close(fig)


def _series(fig) -> dict[str, object]:
    """Each drawn data line by label ("train loss", "validation loss", or the metric panel's "metric")."""
    loss_ax, metric_ax = fig.axes
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    lines.update({"metric": line for line in metric_ax.get_lines()})
    return lines


def _visible(line) -> bool:
    """A line is visible if it has a segment to draw (2+ points and a line style) or a marker of some size."""
    has_segment = len(line.get_xdata()) >= 2 and line.get_linestyle() not in ("None", "", " ")
    has_marker = line.get_marker() not in (None, "None", "", " ") and line.get_markersize() > 0
    return line.get_visible() and (has_segment or has_marker)


def test_one_point_series_are_drawn_as_markers(drawn):
    history = [{"kind": "train", "step": 1, "loss": 1.1},
               {"kind": "eval", "step": 1, "loss": 1.05, "accuracy": 0.4}]
    report.curves_figure(history, "accuracy")
    lines = _series(drawn[0])
    assert set(lines) == {"train loss", "validation loss", "metric"}
    for label, line in lines.items():
        assert len(line.get_xdata()) == 1 and _visible(line), f"{label}: a lone point drawn invisibly"
    lo, hi = drawn[0].axes[0].get_xlim()
    assert lo <= 0 and hi >= 2  # the one step sits inside the frame, not on a zoomed 0.96..1.04 axis


def test_long_series_are_plain_lines_and_short_ones_have_markers(drawn):
    history = ([{"kind": "train", "step": s, "loss": math.exp(-s / 400)} for s in range(10, 2001, 10)]
               + [{"kind": "eval", "step": s, "loss": 0.5, "accuracy": 0.9} for s in (500, 1000, 2000)])
    report.curves_figure(history, "accuracy")
    lines = _series(drawn[0])
    assert lines["train loss"].get_marker() in (None, "None", "")  # 200 points: markers would be a smear
    assert lines["validation loss"].get_marker() == "o" and lines["metric"].get_marker() == "o"
    assert all(_visible(line) for line in lines.values())


def test_metric_panel_without_validation_says_so(drawn):
    report.curves_figure([{"kind": "train", "step": 1, "loss": 1.1}], "accuracy")
    assert [t.get_text() for t in drawn[0].axes[1].texts] == ["no validation data"]  # not an empty frame


def test_report_page_inlines_the_curves(tmp_path):
    out = tmp_path / "report.html"
    report.write_report(out, title="t", config_text="task: x", history=[{"kind": "train", "step": 1, "loss": 1.1}],
                        metric="accuracy", test_metrics={}, sections=[], notes=[])
    assert out.read_text().count("data:image/png;base64,") == 1
