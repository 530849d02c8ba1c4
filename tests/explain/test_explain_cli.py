"""`tunelab explain` in-process on tiny runs: the terminal text (colour only on a TTY without NO_COLOR), JSONL
with the issue's fields and offsets that index the text, one self-contained HTML page, many records,
--evaluate's table, every mistake as one line with exit code 2, a causal LM's token table, and report.html's
explained test examples."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.explain import Explanation, Span
from tunelab.explain import render

TEXT = "the goal match team today news"


@pytest.fixture(scope="module")
def run_dir(tiny_bert, data_dir, tmp_path_factory, helpers) -> Path:
    """A tiny classification run (food / sport / tech keywords) with a test split."""
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path_factory.mktemp("explain") / "run",
                              {"train.max_steps": 30, "train.precision": "fp32", "train.eval_every": None})
    return helpers.train_quietly(cfg)


@pytest.fixture(scope="module")
def llama_run(llama_run_dir) -> Path:
    """The tiny Llama causal_lm run of conftest.py."""
    return llama_run_dir


def explain(capsys, *argv) -> tuple[int, str, str]:
    code = main(["explain", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# The terminal


def test_text_prints_words_prediction_and_settings_without_colour_off_a_tty(run_dir, capsys):
    code, out, _ = explain(capsys, run_dir, "--text", TEXT)
    assert code == 0 and "\x1b" not in out  # captured stdout is not a terminal
    lines = out.splitlines()
    assert re.fullmatch(r"the\([+-]\d\.\d\d\) goal\([+-]\d\.\d\d\) match\([+-]\d\.\d\d\) team\([+-]\d\.\d\d\) "
                        r"today\([+-]\d\.\d\d\) news\([+-]\d\.\d\d\)", lines[0]), lines[0]
    assert lines[1] == "prediction: sport"
    assert re.fullmatch(r"target: sport  probability 0\.\d{4}", lines[2])
    assert lines[3].startswith("method: ig: steps=50; baseline=the pad token")
    assert lines[4].startswith("convergence delta: ")


def test_colour_on_a_tty_unless_no_color(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    _, out, _ = explain(capsys, run_dir, "--text", TEXT, "--method", "occlusion")
    assert out.count("\x1b[48;2;") == 6 and "goal(" not in out  # one shaded background per word
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    _, out, _ = explain(capsys, run_dir, "--text", TEXT, "--method", "occlusion")
    assert "\x1b" not in out and "goal(" in out


def test_shading_is_red_for_blue_against_and_scaled_by_the_largest_score():
    expl = Explanation("up, down", "ig", "a", "a", 0.5,
                       words=[Span("up", 0, 2, 0.5), Span("down", 4, 8, -0.25)])
    assert render.shade(0.5, 0.5) == (220, 71, 72)  # the largest |score|: 85% of (214, 39, 40) over white
    assert render.shade(-0.25, 0.5) == (160, 197, 223)  # half of it, against: 42.5% of (31, 119, 180)
    assert render.shade(0.0, 0.5) == (255, 255, 255)
    assert render.ansi_text(expl, colour=False) == "up(+0.50), down(-0.25)"  # the comma kept where it was
    html = render.words_html(expl.text, expl.words)
    assert 'title="up: +0.500000"' in html and 'title="down: -0.250000"' in html and "</span>, <span" in html


# ---------------------------------------------------------------------------------------------
# Files


def test_jsonl_has_the_fields_and_offsets_that_index_the_text(run_dir, tmp_path, capsys):
    out = tmp_path / "why.jsonl"
    code, printed, _ = explain(capsys, run_dir, "--text", TEXT, "--output", out)
    assert code == 0 and printed.strip() == f"1 explanations written to {out}"
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert set(row) == {"text", "prediction", "target", "probability", "method", "settings", "delta", "offsets_in",
                        "words", "tokens"}
    assert row["text"] == TEXT and row["prediction"] == row["target"] == "sport" and row["method"] == "ig"
    assert row["settings"]["steps"] == 50 and isinstance(row["delta"], float) and 0 < row["probability"] < 1
    assert row["offsets_in"] == "text"
    assert [w["word"] for w in row["words"]] == TEXT.split()
    for w in row["words"]:
        assert set(w) == {"word", "start", "end", "score"} and TEXT[w["start"]:w["end"]] == w["word"]
    for t in row["tokens"]:  # per sub-token, as the model read them; a word's score is the sum of its tokens'
        assert set(t) == {"token", "start", "end", "score"} and TEXT[t["start"]:t["end"]] == t["token"]
    for w in row["words"]:
        inside = [t["score"] for t in row["tokens"] if w["start"] <= t["start"] < w["end"]]
        assert inside and sum(inside) == pytest.approx(w["score"], abs=1e-5)


def test_html_is_one_self_contained_page(run_dir, tmp_path, capsys):
    out, maps = tmp_path / "why.html", tmp_path / "maps"
    code, printed, _ = explain(capsys, run_dir, "--text", TEXT, "--target", "tech", "--output", out,
                               "--attention-maps", maps)
    assert code == 0 and printed.strip() == f"1 explanation written to {out}"
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.count("<html") == 1 and "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)  # nothing fetched from anywhere
    assert page.count('class="words"') == 1 and page.count("<span style=\"background:") == 6
    assert "<b>target</b> tech" in page and "<b>prediction</b> sport" in page and "convergence delta" in page
    assert len(sorted(maps.glob("*.png"))) == 4  # 2 layers x (heads, mean)
    assert page.count("data:image/png;base64,") == 2  # the mean maps embedded


def test_many_records_keep_their_fields(run_dir, tmp_path, capsys, helpers):
    records = [{"id": i, "body": t} for i, t in enumerate(["goal match", "bread soup cheese", "chip code web"])]
    inp = helpers.write_jsonl(tmp_path / "in.jsonl", records)
    code, _, _ = explain(capsys, run_dir, "--input", inp, "--text-field", "body", "--output", tmp_path / "o.jsonl",
                         "--method", "lime", "--samples", "40")
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert code == 0 and [(r["id"], r["body"]) for r in rows] == [(r["id"], r["body"]) for r in records]
    assert all(r["method"] == "lime" and r["delta"] is None and r["settings"]["samples"] == 40 for r in rows)
    code, _, _ = explain(capsys, run_dir, "--input", inp, "--text-field", "body", "--output", tmp_path / "o.html")
    page = (tmp_path / "o.html").read_text()
    assert code == 0 and page.count('<section class="ex">') == 3 and "<h3>Record 3</h3>" in page


def test_evaluate_prints_the_table_and_writes_it(run_dir, capsys):
    code, out, err = explain(capsys, run_dir, "--evaluate", "-n", "3", "--methods", "ig,attention", "--steps", "8")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["method", "AOPC", "random", "AOPC", "difference", "s/explanation"]
    assert [line.split()[0] for line in lines[1:3]] == ["ig", "attention"]
    assert lines[3].startswith("(n=3 texts;") and lines[4] == f"written to {run_dir / 'explain-faithfulness.json'}"
    saved = json.loads((run_dir / "explain-faithfulness.json").read_text())
    assert saved["n"] == 3 and [m["method"] for m in saved["methods"]] == ["ig", "attention"]
    assert "explaining 3 texts of" in err  # progress on stderr, the table alone on stdout
    code, _, err = explain(capsys, run_dir, "--evaluate", "-n", "1", "--methods", "attention")
    assert code == 2 and "add --overwrite" in err
    assert json.loads((run_dir / "explain-faithfulness.json").read_text()) == saved  # kept


# ---------------------------------------------------------------------------------------------
# Mistakes: one line, exit code 2, before any model loads where the arguments alone show them


@pytest.mark.parametrize("argv, message", [
    ([], "give either --text"),
    (["--text", "x", "--input", "f.jsonl", "--output", "o.jsonl"], "give either --text"),
    (["--text", "x", "--method", "saliency"], "unknown method 'saliency'"),
    (["--text", "x", "--target", "music"], "'music' is not a label"),
    (["--text", "x", "--output", "o.txt"], "ends in '.txt'"),
    (["--input", "f.jsonl"], "give --output"),
    (["--evaluate", "--text", "x"], "drop --text"),
    (["--evaluate", "--methods", "ig,magic"], "unknown method(s) magic"),
    (["--evaluate", "-n", "0"], "at least 1"),
    (["--text", "x", "--steps", "0"], "--steps: got 0; give a number of at least 1"),
    (["--text", "x", "--method", "occlusion", "--window", "0"], "--window: got 0"),
    (["--evaluate", "--samples", "-3"], "--samples: got -3"),
    (["--text", "Shares rose", "--context", "anything"], "only an extractive QA run reads a passage"),
    (["--input", "f.jsonl", "--output", "o.jsonl", "--context-field", "body"], "explain --context-field: only an "
                                                                                "extractive QA run"),
])
def test_mistakes_are_one_line_and_exit_2(run_dir, capsys, argv, message):
    code, out, err = explain(capsys, run_dir, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err


def test_attention_maps_folder_is_checked_before_any_explanation(run_dir, tmp_path, capsys):
    a_file = tmp_path / "maps.png"
    a_file.write_text("mine")
    code, out, err = explain(capsys, run_dir, "--text", TEXT, "--attention-maps", a_file)
    assert code == 2 and out == "" and "is a file; give a folder" in err and a_file.read_text() == "mine"
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "attention-layer01-mean.png").write_bytes(b"earlier")
    code, out, err = explain(capsys, run_dir, "--text", TEXT, "--attention-maps", folder)
    assert code == 2 and "holds earlier attention maps (attention-layer01-mean.png" in err
    assert (folder / "attention-layer01-mean.png").read_bytes() == b"earlier"
    assert explain(capsys, run_dir, "--text", TEXT, "--attention-maps", folder, "--overwrite")[0] == 0
    assert (folder / "attention-layer01-mean.png").read_bytes()[:4] == b"\x89PNG"


def test_html_escapes_the_text_and_stays_one_page(run_dir, tmp_path, capsys):
    text = 'the "goal" <script>alert(1)</script> & \'match\' </section>'
    code, _, _ = explain(capsys, run_dir, "--text", text, "--method", "occlusion", "--output", tmp_path / "x.html")
    page = (tmp_path / "x.html").read_text()
    assert code == 0 and "<script" not in page and "&lt;script&gt;alert(1)&lt;/script" in page
    assert "&lt;/section&gt;" in page  # read past model.max_length: shown, escaped, unscored
    assert page.count("<section") == page.count("</section>") == 1 and page.count("<html") == 1
    assert "&quot;goal&quot;" in page and "&amp;" in page and page.rstrip().endswith("</html>")
    import html as html_lib

    shown = re.search(r'<div class="words">(.*?)</div>', page).group(1)
    assert html_lib.unescape(re.sub(r"<[^>]+>", "", shown)) == text  # every character once, as written


# ---------------------------------------------------------------------------------------------
# Extractive QA and token classification runs


def test_qa_input_reads_the_runs_question_and_context_fields(qa_run_dir, tmp_path, capsys, helpers):
    question, context = "which colour is there ?", "the old house near the red tree was big"
    inp = helpers.write_jsonl(tmp_path / "qa.jsonl", [{"id": 1, "question": question, "context": context}])
    code, _, err = explain(capsys, qa_run_dir, "--input", inp, "--output", tmp_path / "qa-out.jsonl")
    assert code == 0, err
    (row,) = [json.loads(line) for line in (tmp_path / "qa-out.jsonl").read_text().splitlines()]
    assert row["offsets_in"] == "context" and row["target"]["text"] == "red"
    assert [w["word"] for w in row["words"]] == context.split()
    assert all(context[t["start"]:t["end"]] == t["token"] for t in row["tokens"])
    # other field names: --text-field / --context-field; a record without a passage is one line
    other = helpers.write_jsonl(tmp_path / "qa2.jsonl", [{"q": question, "passage": context}, {"q": question}])
    code, _, err = explain(capsys, qa_run_dir, "--input", other, "--output", tmp_path / "qa2-out.jsonl",
                           "--text-field", "q", "--context-field", "passage")
    assert code == 2 and "record 2: no passage in field 'passage'; give --context-field FIELD" in err
    assert len(err.strip().splitlines()) == 1


def test_target_on_a_ner_run_names_an_entity(ner_run_dir, capsys):
    code, out, err = explain(capsys, ner_run_dir, "--text", "yesterday anna flew to paris with omar", "--target",
                             "paris", "--method", "occlusion")
    assert code == 0, err
    assert re.search(r"^target: \{'text': 'paris', 'label': 'LOC'", out, re.M)
    code, out, _ = explain(capsys, ner_run_dir, "--text", "yesterday anna flew to paris with omar", "--target", "2",
                           "--method", "occlusion")
    assert code == 0 and "'text': 'omar'" in out


def test_evaluate_refuses_attention_on_a_recurrent_model_before_explaining(tiny_bert, data_dir, tmp_path, capsys,
                                                                          helpers):
    overrides = {"model.name": "scratch:lstm", "model.tokenizer": str(tiny_bert), "model.layers": 1,
                 "model.hidden_size": 16, "train.max_steps": 2, "train.precision": "fp32"}
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "lstm", overrides)
    run = helpers.train_quietly(cfg)
    capsys.readouterr()  # the training's own lines
    code, out, err = explain(capsys, run, "--evaluate", "-n", "2", "--methods", "occlusion,attention")
    assert code == 2 and out == "" and "no attention layers" in err and "occlusion: AOPC" not in err
    assert not (run / "explain-faithfulness.json").exists()


def test_an_existing_output_needs_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "keep.jsonl"
    out.write_text("mine\n")
    code, _, err = explain(capsys, run_dir, "--text", TEXT, "--output", out)
    assert code == 2 and "add --overwrite" in err and out.read_text() == "mine\n"
    assert explain(capsys, run_dir, "--text", TEXT, "--output", out, "--overwrite")[0] == 0
    assert json.loads(out.read_text())["text"] == TEXT


# ---------------------------------------------------------------------------------------------
# A causal LM run, and the report


def test_causal_lm_prints_generated_tokens_by_prompt_tokens(llama_run, tmp_path, capsys):
    code, out, _ = explain(capsys, llama_run, "--text", "Add 2 and 3.", "--max-new-tokens", "3")
    lines = out.splitlines()
    assert code == 0 and lines[1].startswith("generated: ") and lines[2].startswith("method: ablation: ")
    table = lines[4:]
    heads, prompt = table[0].split(), iter("Add 2 and 3.".replace(" ", "\u2423"))  # spaces shown as \u2423
    assert len(heads) == 8 and all(h in prompt for h in heads)  # 8 of the 12 prompt tokens, in prompt order
    assert len(table) == 1 + 3 + 1 and "8 of 12 prompt tokens shown" in table[-1]
    code, _, _ = explain(capsys, llama_run, "--text", "Add 2 and 3.", "--max-new-tokens", "3", "--output",
                         tmp_path / "g.html")
    page = (tmp_path / "g.html").read_text()
    assert code == 0 and page.count("<table class=\"m\">") == 1 and page.count("<tr>") == 1 + 3



def test_the_causal_lm_caps_are_options_the_message_names(llama_run, capsys):
    # the 12-token prompt is over a cap of 4: one line naming the flag; the flag raised, it explains
    code, _, err = explain(capsys, llama_run, "--text", "Add 2 and 3.", "--max-new-tokens", "2",
                           "--max-prompt-tokens", "4")
    assert code == 2 and "over the cap of 4" in err and "--max-prompt-tokens 12" in err and err.count("\n") == 1
    code, _, err = explain(capsys, llama_run, "--text", "Add 2 and 3.", "--max-new-tokens", "3",
                           "--max-generated-tokens", "2")
    assert code == 2 and "--max-generated-tokens 3" in err
    assert explain(capsys, llama_run, "--text", "Add 2 and 3.", "--max-new-tokens", "2",
                   "--max-prompt-tokens", "12")[0] == 0

def test_report_has_explained_test_examples(run_dir):
    page = (run_dir / "report.html").read_text()
    section = page[page.index("<h2>Explained test examples</h2>"):page.index("<h2>Config</h2>")]
    heads = re.findall(r"<h3>(right|wrong): true (\w+), predicted (\w+) \((0\.\d{3})\)</h3>", section)
    assert heads and all((kind == "right") == (true == pred) for kind, true, pred, _ in heads)
    assert [kind for kind, *_ in heads][:1] == ["right"] and len(heads) <= 2  # the most confident right (and wrong)
    from tunelab.runs import load_run
    from tunelab.tasks.classification import split_records

    run = load_run(run_dir)
    records, source = split_records(run.cfg, lambda _: None)["test"]
    rows = run.task.predict(run, records, source, lambda _: None)
    best = max(max(r["scores"].values()) for r in rows if r["prediction"] == r["label"])
    assert float(heads[0][3]) == pytest.approx(best, abs=6e-4)
    assert section.count('class="words"') == len(heads) and "steps=16" in section


def test_a_failure_inside_the_explanation_does_not_fail_the_run(tiny_bert, data_dir, tmp_path, helpers,
                                                                 monkeypatch):
    from tunelab.explain import attribute

    def broken(*args, **kwargs):
        raise RuntimeError("captum: shapes do not match")

    monkeypatch.setattr(attribute, "explain_text", broken)
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", tmp_path / "run",
                              {"train.max_steps": 2, "train.precision": "fp32"})
    page = (helpers.train_quietly(cfg) / "report.html").read_text()
    assert "<p>not explained: RuntimeError: captum: shapes do not match</p>" in page
