"""The retrieval task from the command line: train / validate / eval / predict on a tiny config, and user
mistakes as one line with exit code 2."""
from __future__ import annotations

import json

import pytest

from retrieval_data import coded_pairs
from tunelab.cli import main


@pytest.fixture(scope="module")
def files(tiny_bert, tmp_path_factory, helpers):
    folder = tmp_path_factory.mktemp("retrieval-cli")
    helpers.write_jsonl(folder / "pairs.jsonl", coded_pairs(80))
    helpers.write_jsonl(folder / "held.jsonl", [{"q": r["query"], "p": r["positive"]} for r in coded_pairs(30, seed=7)])
    (folder / "tiny.yaml").write_text(f"""task: retrieval
model: {{name: {tiny_bert}, max_length: 16}}
data: {{train: {folder / 'pairs.jsonl'}, val_fraction: 0.1, test_fraction: 0.2}}
retrieval: {{temperature: 0.1}}
train: {{max_steps: 3, batch_size: 16, lr: 3.0e-3, warmup_steps: 0, seed: 0, device: cpu, precision: fp32}}
""", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def run_dir(files):
    out = files / "run"
    assert main(["train", str(files / "tiny.yaml"), "--output-dir", str(out)]) == 0
    return out


def test_train_validate_eval_and_predict(files, run_dir, capsys):
    assert main(["validate", str(files / "tiny.yaml")]) == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("recall@1 ") and "(n=16, 16 passages); untuned: recall@1 " in line and "; BM25: " in line
    assert main(["eval", str(run_dir), "--data", str(files / "held.jsonl"), "data.query_field=q",
                 "data.positive_field=p"]) == 0
    saved = json.loads((run_dir / "eval-held.json").read_text())
    assert saved["n"] == 30 and {"base", "bm25"} <= set(saved) and saved["bm25"]["recall@10"] == 0.0
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--text", "goal team win", "--text", "bread"]) == 0
    rows = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["query"] for r in rows] == ["goal team win", "bread"]
    assert len(rows[0]["embedding"]) == 32 and sum(v * v for v in rows[0]["embedding"]) == pytest.approx(1.0)
    assert main(["predict", str(run_dir), "--input", str(files / "held.jsonl"), "--output",
                 str(files / "vectors.jsonl"), "data.query_field=q"]) == 0
    out = [json.loads(r) for r in (files / "vectors.jsonl").read_text().splitlines()]
    assert len(out) == 30 and set(out[0]) == {"q", "p", "embedding"}


@pytest.mark.parametrize("argv, expected", [
    (["eval", "RUN", "--data", "HELD"], "held.jsonl:1: record 1: field 'query' is missing; every record needs it: "
                                        "fix the record or set data.query_field to the field holding that text "
                                        "(fields here: q, p)"),
    (["predict", "RUN", "--text", "x", "--text-field", "body"],
     "predict: data.text_field=\"body\": a retrieval run reads data.query_field (predict embeds it)"),
    (["train", "CFG", "model.name=scratch:transformer"],
     "model.name: 'scratch:transformer': retrieval fine-tunes a pretrained Hugging Face encoder"),
    (["train", "CFG", "retrieval.temperature=0"], "retrieval.temperature: got 0.0; must be > 0"),
])
def test_mistakes_are_one_line_and_exit_code_2(argv, expected, files, run_dir, capsys, tmp_path):
    names = {"RUN": str(run_dir), "HELD": str(files / "held.jsonl"), "CFG": str(files / "tiny.yaml")}
    argv = [names.get(a, a) for a in argv] + (["--output-dir", str(tmp_path / "x")] if argv[0] == "train" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
