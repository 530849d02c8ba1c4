"""report.html: one self-contained page (figures inlined as PNG) with curves and test results; `html_page`, the
page every tunelab report is (a run's, a search's, an ensemble's), so that they look alike."""
from __future__ import annotations

import base64
import html
import io

PAGE_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
              "img{max-width:100%}pre{background:#f5f5f5;padding:1em;white-space:pre-wrap}")


def html_page(title: str, body: str, style: str = "") -> str:
    """A self-contained page: `title` (escaped here), `body` (HTML), PAGE_STYLE and then `style`, the rules
    only this page needs (later rules win, so it may also widen the page)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}{style}</style></head><body>{body}</body></html>")


def inline_png(fig) -> str:
    """A figure as an <img> with the PNG inline (a report page is one self-contained file); closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display: reports are written on servers too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS_UP_TO = 30  # a series with at most this many points gets a marker on each


def _plot_series(ax, points: list[tuple[float, float]], **style) -> None:
    """A line through `points`, with markers when there are few: a lone point has no line to draw."""
    marker = "o" if len(points) <= MARKERS_UP_TO else None
    ax.plot(*zip(*points), marker=marker, markersize=4 if len(points) > 1 else 7, **style)


def curves_figure(history: list[dict], metric: str) -> str:
    """Training loss, validation loss and the validation metric against optimizer steps (an <img> tag)."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    train = [(h["step"], h["loss"]) for h in history if h["kind"] == "train" and "loss" in h]
    evals = [h for h in history if h["kind"] == "eval"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    if train:
        _plot_series(axes[0], train, label="train loss")
    val_loss = [(h["step"], h["loss"]) for h in evals if "loss" in h]
    if val_loss:
        _plot_series(axes[0], val_loss, label="validation loss")
    axes[0].set_xlabel("step"), axes[0].set_title("loss")
    if train or val_loss:
        axes[0].legend()
    val_metric = [(h["step"], h[metric]) for h in evals if metric in h]
    if val_metric:
        _plot_series(axes[1], val_metric, color="tab:green")
    else:  # an empty frame would look like a drawing failure
        axes[1].text(0.5, 0.5, "no validation data", ha="center", va="center", transform=axes[1].transAxes)
    axes[1].set_xlabel("step"), axes[1].set_title(f"validation {metric}")
    for ax, points in ((axes[0], train + val_loss), (axes[1], val_metric)):
        steps = [x for x, _ in points]
        if steps:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # whole steps: 10, 20, 30
            if max(steps) - min(steps) < 2:  # one step: give it room, as matplotlib would otherwise zoom in
                ax.set_xlim(min(steps) - 1, max(steps) + 1)
    return inline_png(fig)


def confusion_figure(matrix: list[list[int]], labels: list[str]) -> str:
    plt = pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * n, 1.0 + 0.6 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right"), ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    top = max(max(r) for r in matrix) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, matrix[i][j], ha="center", va="center",
                    color="white" if matrix[i][j] > top / 2 else "black")
    return inline_png(fig)


def roc_figure(curves: dict[str, tuple[list, list, float]]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate"), ax.legend(fontsize=8)
    return inline_png(fig)


def _metrics_table(metrics: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None)
    per_class = metrics.get("per_class")
    if per_class:
        rows += "<tr><th colspan=2>per class</th></tr>" + "".join(
            f"<tr><td>{html.escape(lab)}</td><td>P {m['precision']:.3f} · R {m['recall']:.3f} · "
            f"F1 {m['f1']:.3f} · n {m['support']}</td></tr>" for lab, m in per_class.items())
    return f"<table>{rows}</table>"


def write_report(path, *, title: str, config_text: str, history: list[dict], metric: str, test_metrics: dict,
                 sections: list[tuple[str, str]], notes: list[str]) -> None:
    """Write the report page atomically."""
    from tunelab.io import atomic_write_text

    body = [f"<h1>{html.escape(title)}</h1>",
            "".join(f"<p>{html.escape(n)}</p>" for n in notes),
            "<h2>Training curves</h2>", curves_figure(history, metric),
            "<h2>Test metrics</h2>", _metrics_table(test_metrics) if test_metrics else "<p>no test split</p>"]
    for heading, content in sections:
        body += [f"<h2>{html.escape(heading)}</h2>", content]
    body += ["<h2>Config</h2>", f"<pre>{html.escape(config_text)}</pre>"]
    atomic_write_text(path, html_page(title, "".join(body)))


