"""What a search writes in RUN_DIR after every trial (each file atomically, from the study as it stands):

- best.yaml: the best complete trial's whole config, output_dir set to RUN_DIR's sibling NAME-best, ready for
  `tunelab train` (the trial's own run is RUN_DIR/trials/NNN);
- trials.jsonl: one object per trial (number, state, value, params, the value at each evaluation, seconds, folder,
  error; an interrupted trial says which trial retried it);
- report.html: the trials table, the optimisation history and the parameter importances (fANOVA, from the
  complete trials; the page says why when they cannot be estimated), as inlined PNGs.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunelab.io import atomic_write_text


@dataclass
class SearchInfo:
    """What the outputs need to know of the search beyond its study."""

    run_dir: Path
    space: object  # tunelab.tune.space.Space
    base: dict
    metric: str
    minimise: bool
    wanted: int


def write_outputs(study, info: SearchInfo) -> None:
    """trials.jsonl, best.yaml (once a trial completed) and report.html."""
    from tunelab.tune.study import tally

    trials = study.get_trials()
    counts = tally(trials)
    rows = trial_rows(trials, info)
    atomic_write_text(info.run_dir / "trials.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    best = best_row(rows, info.minimise)
    if best is not None:
        write_best(best, info, counts.done)
    write_page(study, rows, best, counts, info)


def trial_rows(trials: list, info: SearchInfo) -> list[dict]:
    from tunelab.tune.study import ERROR, trial_folder

    retried_as = {n: t.number for t in trials for n in t.system_attrs.get("retry_history", [])}
    rows = []
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "params": info.space.values(t.params), "evaluations": dict(sorted(t.intermediate_values.items())),
               "seconds": round(seconds, 1) if seconds is not None else None,
               "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
               "folder": str(trial_folder(Path("."), t.number))}
        if t.state.name == "PRUNED" and row["evaluations"]:
            row["value"] = list(row["evaluations"].values())[-1]  # where it stood when it was stopped
        if ERROR in t.user_attrs:
            row["error"] = t.user_attrs[ERROR]
        if "failed_trial" in t.system_attrs:
            row["retry_of"] = t.system_attrs["retry_history"][-1]
        if t.number in retried_as:  # its time is until it was found interrupted: no duration of its own
            row.update(interrupted=True, retried_as=retried_as[t.number], seconds=None)
        rows.append(row)
    return rows


def best_row(rows: list[dict], minimise: bool) -> dict | None:
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if not complete:
        return None
    return min(complete, key=lambda r: (r["value"] if minimise else -r["value"], r["number"]))


def write_best(best: dict, info: SearchInfo, done: int) -> None:
    """best.yaml; `done`: the trials that ended on their own (as --trials counts them: no interrupted ones)."""
    from tunelab.config import dump_config
    from tunelab.tune.trial import trial_config

    cfg = trial_config(info.base, best["params"], best_folder(info.run_dir))
    header = (f"# The best of {done} trials of the search in {info.run_dir}: trial {best['number']}, validation "
              f"{info.metric} {best['value']:.4f}.\n# Train it: tunelab train {info.run_dir / 'best.yaml'}   "
              f"(the trial's own run: {info.run_dir / best['folder']})\n")
    atomic_write_text(info.run_dir / "best.yaml", header + dump_config(cfg))


def best_folder(run_dir: Path) -> Path:
    """Where best.yaml trains: RUN_DIR's sibling NAME-best, spelled as RUN_DIR is (relative stays relative)
    unless RUN_DIR ends in `.` or `..`, which name no sibling."""
    from tunelab.tune.study import search_name

    name = search_name(run_dir)
    parent = run_dir.parent if run_dir.name == name else Path(os.path.abspath(run_dir)).parent
    return parent / f"{name}-best"


# ---------------------------------------------------------------------------------------------
# report.html


def write_page(study, rows: list[dict], best: dict | None, counts, info: SearchInfo) -> None:
    import yaml

    from tunelab.evaluate.report import html_page
    from tunelab.tune.study import search_name

    direction = "minimised" if info.minimise else "maximised"
    summary = (f"{counts.done} of {info.wanted} trials done ({counts.words()}"
               + (f", {counts.running} running" if counts.running else "")
               + (f", {counts.waiting} queued" if counts.waiting else "")
               + f"). Objective: the best validation {info.metric} of each run ({direction}).")
    if best is not None:
        summary += (f" Best: trial {best['number']} with {best['value']:.4f}; its config is best.yaml, its run "
                    f"{best['folder']}.")
    weights, why_not = importances(study, info)
    shown = {key: {k: v for k, v in entry.items() if v is not None} for key, entry in info.space.spec().items()}
    title = f"tunelab search: {search_name(info.run_dir)}"
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>",
            "<h2>Trials</h2>", trials_table(rows, best, info),
            "<h2>Optimisation history</h2>", history_figure(rows, info.metric, info.minimise),
            "<h2>Parameter importances</h2>",
            f"<p>fANOVA over the {counts.complete} complete trials: how much of the spread of their values each "
            "key explains (a rough estimate from a few trials).</p>" + importance_figure(weights) if weights
            else f"<p>{html.escape(why_not)}</p>",
            "<h2>Search space</h2>", f"<pre>{html.escape(yaml.safe_dump(shown, sort_keys=False))}</pre>",
            "<details><summary>Base config (every trial's config before the searched keys are set)</summary>",
            f"<pre>{html.escape(yaml.safe_dump(info.base, sort_keys=False))}</pre></details>"]
    # wider, smaller table text: the trials table has a column per searched key
    style = ("body{max-width:1200px}table{font-size:14px}tr.best{background:#e8f5e9}td.n{text-align:right}"
             "summary{cursor:pointer;margin:1em 0;font-weight:bold}")
    atomic_write_text(info.run_dir / "report.html", html_page(title, "".join(body), style))


def _cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif value is None:
        text = ""
    else:
        text = value if isinstance(value, str) else json.dumps(value)
    return f"<td class=n>{html.escape(text)}</td>" if isinstance(value, (int, float)) else \
        f"<td>{html.escape(text)}</td>"


def _state(row: dict) -> str:
    if row.get("interrupted"):
        return f"interrupted (retried as {row['retried_as']})"
    state = row["state"].lower()
    return f"{state} (retry of {row['retry_of']})" if "retry_of" in row else state


def trials_table(rows: list[dict], best: dict | None, info: SearchInfo) -> str:
    keys = [p.key for p in info.space.params]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["trial", "state", info.metric, *keys, "evaluations", "seconds", "folder / error"])
    lines = []
    for r in rows:
        where = r.get("error") or r["folder"]
        cells = [_cell(r["number"]), f"<td>{html.escape(_state(r))}</td>", _cell(r["value"]),
                 *(_cell(r["params"].get(k)) for k in keys), _cell(len(r["evaluations"])), _cell(r["seconds"]),
                 f"<td>{html.escape(where)}</td>"]
        mark = " class=best" if best is not None and r["number"] == best["number"] else ""
        lines.append(f"<tr{mark}>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def history_figure(rows: list[dict], metric: str, minimise: bool) -> str:
    """Left: each trial's value (pruned ones where they stopped) and the best so far; right: the value at each
    evaluation of every trial, pruned ones dashed."""
    from matplotlib.ticker import MaxNLocator

    from tunelab.evaluate.report import inline_png, pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    complete = [(r["number"], r["value"]) for r in rows if r["state"] == "COMPLETE"]
    pruned = [(r["number"], r["value"]) for r in rows if r["state"] == "PRUNED" and r["value"] is not None]
    if complete:
        left.scatter(*zip(*complete), color="tab:blue", label="complete", zorder=3)
        best, line = None, []
        for number, value in complete:
            best = value if best is None else (min if minimise else max)(best, value)
            line.append((number, best))
        left.step(*zip(*line), where="post", color="tab:red", label="best so far")
    if pruned:
        left.scatter(*zip(*pruned), color="tab:gray", marker="x", label="pruned (where it stopped)", zorder=3)
    if not complete and not pruned:
        left.text(0.5, 0.5, "no trial has a value yet", ha="center", va="center", transform=left.transAxes)
    else:
        left.legend(fontsize="small", framealpha=0.6)
    left.set_xlabel("trial"), left.set_title(f"validation {metric} of each trial")
    curves = [r for r in rows if r["evaluations"]]
    for r in curves:
        style = {"linestyle": "--", "alpha": 0.7} if r["state"] == "PRUNED" else {}
        right.plot(*zip(*sorted(r["evaluations"].items())), marker="o", markersize=3, label=f"trial {r['number']}",
                   **style)
    if 0 < len(curves) <= 12:  # more would hide the curves
        right.legend(fontsize="small", framealpha=0.6)
    right.set_xlabel("evaluation"), right.set_title(f"validation {metric} at each evaluation (pruned: dashed)")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return inline_png(fig)


def importances(study, info: SearchInfo) -> tuple[dict | None, str]:
    """(fANOVA importances of the searched keys, None) or (None, why they cannot be estimated)."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(info.space.params) < 2:
        return None, "One key is searched: there is nothing to weigh it against."
    if len(complete) < 2:
        return None, (f"Importances need at least 2 complete trials with different values; the search has "
                      f"{len(complete)} so far.")
    if len({json.dumps(t.params, sort_keys=True) for t in complete}) < 2 or len({t.value for t in complete}) < 2:
        return None, "The complete trials do not differ (in their values or their results): no importance to estimate."
    try:
        weights = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError) as e:
        return None, f"Importances could not be estimated from {len(complete)} complete trials ({e})."
    return {k: float(v) for k, v in weights.items()}, ""


def importance_figure(weights: dict[str, float]) -> str:
    from tunelab.evaluate.report import inline_png, pyplot

    plt = pyplot()
    names = list(weights)[::-1]  # the most important on top
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)))
    ax.barh(names, [weights[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(weights[n], i, f" {weights[n]:.2f}", va="center")
    ax.set_xlim(0, 1.1), ax.set_xlabel("share of the variance of the value (fANOVA)")
    return inline_png(fig)
