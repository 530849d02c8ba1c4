"""Explanations as people read them: coloured terminal text, one self-contained HTML page, JSONL rows.

Every word is shaded on one diverging scale: red for a word that speaks for the target, blue for one that
speaks against it, the intensity |score| / max |score| of that text (scores of different texts are not on a
common scale: IG's sum to a probability difference, LIME's are regression weights). Light on imports: the
CLI's parser imports this module's callers, and nothing here needs torch.

The page holds no script and fetches nothing (inline CSS, images as data: URIs), so it can be mailed or
opened from a disk with no network.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Iterable

from tunelab.explain import Explanation, Span

FOR_RGB = (214, 39, 40)  # red: the word raises the target's probability
AGAINST_RGB = (31, 119, 180)  # blue: it lowers it
MAX_ALPHA = 0.85  # the strongest word is shaded at 85%: its letters stay readable on the colour


def strength(score: float, top: float) -> float:
    """|score| / top in [0, 1] (0 when every score is 0)."""
    return min(abs(score) / top, 1.0) if top > 0 else 0.0


def shade(score: float, top: float) -> tuple[int, int, int]:
    """The background of a word: white blended toward red (for) or blue (against) by its strength."""
    a = MAX_ALPHA * strength(score, top)
    base = FOR_RGB if score >= 0 else AGAINST_RGB
    return tuple(round(255 * (1 - a) + c * a) for c in base)  # type: ignore[return-value]


def top_score(spans: Iterable[Span]) -> float:
    return max((abs(s.score) for s in spans), default=0.0)


def pieces(text: str, words: list[Span]) -> Iterable[tuple[str, Span | None]]:
    """The text cut into (piece, word or None): every character once, in order, the words at their offsets.

    What lies between words (spaces, punctuation the tokenizer dropped) comes back with None, so the text
    reads as written. Overlapping or out-of-order spans are skipped rather than duplicating characters.
    """
    at = 0
    for w in sorted(words, key=lambda s: s.start):
        if w.start < at or w.end > len(text) or w.end <= w.start:  # overlapping, outside, or of no width
            continue
        if w.start > at:
            yield text[at:w.start], None
        yield text[w.start:w.end], w
        at = w.end
    if at < len(text):
        yield text[at:], None


def settings_line(expl: Explanation) -> str:
    """'ig: steps=50; baseline=...': the method and its settings as used."""
    parts = [f"{k}={v}" for k, v in expl.settings.items() if k != "method"]
    return f"{expl.method}: {'; '.join(parts)}" if parts else expl.method


def summary_lines(expl: Explanation) -> list[str]:
    """The prediction, the target and its probability, the method, IG's delta: one fact per line."""
    lines = [f"prediction: {expl.prediction}",
             f"target: {expl.target}  probability {expl.probability:.4f}",
             f"method: {settings_line(expl)}"]
    if expl.delta is not None:
        lines.append(f"convergence delta: {expl.delta:+.2e} (sum of attributions - (F(x) - F(baseline)))")
    return lines


# ---------------------------------------------------------------------------------------------
# The terminal


def ansi_text(expl: Explanation, colour: bool) -> str:
    """The text with each word shaded (24-bit ANSI background) or, without colour, as `word(+0.42)`."""
    top = top_score(expl.words)
    out = []
    for piece, word in pieces(expl.text, expl.words):
        if word is None:
            out.append(piece)
        elif colour:
            r, g, b = shade(word.score, top)
            fg = "97" if strength(word.score, top) > 0.6 else "30"  # white letters on the darkest shades
            out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[{fg}m{piece}\x1b[0m")
        else:
            out.append(f"{piece}({word.score:+.2f})")
    return "".join(out)


def terminal(expl: Explanation, colour: bool) -> str:
    """What `tunelab explain --text` prints: the shaded text, then the summary lines."""
    legend = ["(red: for the target, blue: against; stronger colour, larger |score|)"] if colour else []
    return "\n".join([ansi_text(expl, colour), *legend, *summary_lines(expl)])


# ---------------------------------------------------------------------------------------------
# HTML

STYLE = """
.ex{border:1px solid #ddd;border-radius:6px;padding:.8em 1em;margin:1em 0}
.words{font-size:1.05em;white-space:pre-wrap;line-height:1.9}
.words span{padding:.1em .05em;border-radius:3px}
.facts{color:#444;font-size:.9em;margin:.4em 0 0}
.facts b{color:#222}
.legend{display:flex;align-items:center;gap:.6em;font-size:.85em;color:#444}
.bar{width:240px;height:14px;border:1px solid #bbb;border-radius:3px}
table.m{border-collapse:collapse;font-size:.85em}
table.m td,table.m th{border:1px solid #ddd;padding:2px 6px;text-align:center}
table.m th{font-weight:normal;background:#f6f6f6}
.ex img{max-width:100%}
.maps{display:flex;flex-wrap:wrap;gap:.5em;margin-top:.5em}
.maps img{width:32%;min-width:280px;height:auto}
"""
"""The rules of the explanation blocks (the report embeds them with its own page style)."""
PAGE_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.5}"
              + STYLE)


def _rgb(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


def legend_html() -> str:
    """The scale: blue (against) through white to red (for)."""
    left, right = _rgb(shade(-1, 1)), _rgb(shade(1, 1))
    return (f'<div class="legend"><span>against the target</span><div class="bar" style="background:'
            f'linear-gradient(to right,{left},#ffffff,{right})"></div><span>for the target</span>'
            "<span>(intensity: |score| / largest |score| of that text; hover a word for its score)</span></div>")


def words_html(text: str, words: list[Span]) -> str:
    """The text as HTML with each word shaded by its score and its exact score as a hover title."""
    top = top_score(words)
    out = []
    for piece, word in pieces(text, words):
        if word is None:
            out.append(html.escape(piece))
            continue
        colour = "#fff" if strength(word.score, top) > 0.6 else "#111"
        out.append(f'<span style="background:{_rgb(shade(word.score, top))};color:{colour}" '
                   f'title="{html.escape(word.text)}: {word.score:+.6f}">{html.escape(piece)}</span>')
    return f'<div class="words">{"".join(out)}</div>'


def facts_html(expl: Explanation) -> str:
    """Prediction, target, probability, method and settings, delta: one line of facts."""
    facts = [f"<b>prediction</b> {html.escape(str(expl.prediction))}",
             f"<b>target</b> {html.escape(str(expl.target))} (probability {expl.probability:.4f})",
             f"<b>method</b> {html.escape(settings_line(expl))}"]
    if expl.delta is not None:
        facts.append(f"<b>convergence delta</b> {expl.delta:+.2e}")
    return f'<p class="facts">{" · ".join(facts)}</p>'


def explanation_html(expl: Explanation, heading: str = "", images: list[bytes] = ()) -> str:
    """One explanation as an HTML block (no page around it): the report reuses it."""
    head = f"<h3>{html.escape(heading)}</h3>" if heading else ""
    return (f'<section class="ex">{head}{words_html(expl.text, expl.words)}{facts_html(expl)}'
            f"{maps_html(images)}</section>")


def maps_html(images: list[bytes]) -> str:
    """Attention-map PNGs side by side (data: URIs), or nothing."""
    return f'<div class="maps">{"".join(png_tag(png) for png in images)}</div>' if images else ""


def png_tag(png: bytes, alt: str = "attention map") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def matrix_html(rows: list[str], columns: list[str], values: list[list[float]], caption: str) -> str:
    """A table of rows x columns (e.g. generated tokens x prompt tokens) shaded per row like the words."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for name, row in zip(rows, values):
        top = max((abs(v) for v in row), default=0.0)
        cells = "".join(f'<td style="background:{_rgb(shade(v, top))}" title="{v:+.6f}">{v:+.3f}</td>' for v in row)
        body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return (f'<table class="m"><caption>{html.escape(caption)}</caption><tr><th></th>{head}</tr>'
            f'{"".join(body)}</table>')


def page(title: str, blocks: list[str], notes: list[str] = ()) -> str:
    """A whole self-contained page: the legend, then the blocks (explanations, matrices)."""
    intro = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro}{legend_html()}"
            f"{''.join(blocks)}</body></html>")


def write_page(path: str | Path, title: str, blocks: list[str], notes: list[str] = ()) -> None:
    """Write the page atomically (a reader never sees half of it)."""
    from tunelab.io import atomic_write_text

    atomic_write_text(path, page(title, blocks, notes))


def read_part(expl: Explanation) -> Explanation:
    """The explanation with its text cut after the last scored word (the model read no further: a long text
    is truncated to model.max_length), marked with an ellipsis."""
    from dataclasses import replace

    end = max((w.end for w in expl.words), default=len(expl.text))
    return expl if end >= len(expl.text.rstrip()) else replace(expl, text=expl.text[:end] + " …")


def examples_html(shown: list[tuple[str, Explanation]], missing: list[str], seconds: float) -> str:
    """The report's "Explained test examples" section: its own style rules, the legend, one block each."""
    intro = ("Integrated gradients toward the predicted label; each text is shown up to where the model stopped "
             f"reading (model.max_length). {len(shown)} explained in {seconds:.1f} s. "
             "`tunelab explain RUN_DIR --text ...` explains any text, by any method.")
    notes = "".join(f"<p>{html.escape(m)}</p>" for m in missing)
    blocks = "".join(explanation_html(read_part(e), heading) for heading, e in shown)
    return f"<style>{STYLE}</style><p>{html.escape(intro)}</p>{legend_html()}{blocks}{notes}"


# ---------------------------------------------------------------------------------------------
# JSONL


def jsonl_row(record: dict, expl: Explanation, offsets_in: str | None = None) -> dict:
    """The input record (fields starting with '_' dropped) plus the explanation's fields.

    `words` (per word) and `tokens` (per sub-token, as the model read them) hold character offsets into the
    explained text: text[start:end] == word (or token). That text is the record's field `offsets_in` when
    given (an extractive QA record's passage, not its question).
    """
    row = {k: v for k, v in record.items() if not k.startswith("_")}
    row.update(prediction=expl.prediction, target=expl.target, probability=round(expl.probability, 6),
               method=expl.method, settings=expl.settings, delta=expl.delta)
    if offsets_in is not None:
        row["offsets_in"] = offsets_in
    row.update(words=[{"word": w.text, "start": w.start, "end": w.end, "score": round(w.score, 6)}
                      for w in expl.words],
               tokens=[{"token": t.text, "start": t.start, "end": t.end, "score": round(t.score, 6)}
                       for t in expl.tokens])
    return row


# ---------------------------------------------------------------------------------------------
# Causal LMs: generated tokens x prompt tokens (tunelab.explain.generative.GenerationExplanation)

TABLE_COLUMNS = 8  # prompt tokens shown in the terminal table: the ones with the largest total |score|


def _token_label(span: Span) -> str:
    return span.text if span.text.strip() else "␣"  # a token of white space alone shows as a visible space


def generation_table(g, columns: int = TABLE_COLUMNS) -> str:
    """Generated tokens (rows) x the prompt tokens with the largest total |score| (columns, in prompt order)."""
    n = len(g.prompt_tokens)
    weight = [sum(abs(row[j]) for row in g.scores) for j in range(n)]
    shown = sorted(sorted(range(n), key=lambda j: -weight[j])[:columns])
    heads = [_token_label(g.prompt_tokens[j])[:10] for j in shown]
    width = max([8, *(len(h) + 1 for h in heads)])
    first = max([9, *(len(repr(t)) + 1 for t in g.generated_tokens)])
    lines = ["".ljust(first) + "".join(h.rjust(width) for h in heads)]
    for token, row in zip(g.generated_tokens, g.scores):
        lines.append(repr(token).ljust(first) + "".join(f"{row[j]:+.3f}".rjust(width) for j in shown))
    if len(shown) < n:
        lines.append(f"({len(shown)} of {n} prompt tokens shown: the largest total |score|; --output x.html has all)")
    return "\n".join(lines)


def generation_summary(g) -> list[str]:
    parts = [f"{k}={v}" for k, v in g.settings.items()]
    return [f"generated: {g.generated!r}", f"method: {g.method}: {'; '.join(parts)}",
            f"scores: change of each generated token's log-probability; {g.seconds:.1f} s"]


def generation_terminal(g, colour: bool) -> str:
    """The prompt shaded by each token's total score, the generated text, the table, the method."""
    prompt = Explanation(g.prompt, g.method, None, None, 0.0, words=g.prompt_tokens)
    return "\n".join([ansi_text(prompt, colour), *generation_summary(g), generation_table(g)])


def generation_html(g, heading: str = "", images: list[bytes] = ()) -> str:
    """The prompt shaded by total score, the facts and the whole matrix, as one block."""
    head = f"<h3>{html.escape(heading)}</h3>" if heading else ""
    facts = " · ".join(html.escape(line) for line in generation_summary(g))
    matrix = matrix_html([repr(t) for t in g.generated_tokens], [_token_label(t) for t in g.prompt_tokens],
                         g.scores, "rows: generated tokens; columns: prompt tokens; shading per row")
    return (f'<section class="ex">{head}{words_html(g.prompt, g.prompt_tokens)}<p class="facts">{facts}</p>'
            f"{matrix}{maps_html(images)}</section>")


def generation_row(record: dict, g) -> dict:
    """The input record plus the generated text, the method, and per prompt token its offsets, total score
    and its score toward each generated token (`scores[i][j]`: generated token i, prompt token j)."""
    row = {k: v for k, v in record.items() if not k.startswith("_")}
    row.update(generated=g.generated, method=g.method, settings=g.settings,
               words=[{"word": t.text, "start": t.start, "end": t.end, "score": round(t.score, 6)}
                      for t in g.prompt_tokens],
               generated_tokens=g.generated_tokens, scores=[[round(v, 6) for v in r] for r in g.scores])
    return row
