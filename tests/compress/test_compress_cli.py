"""`tunelab compress` end to end on tiny runs: the result is a run (eval / predict / chat take it), the steps
run in one order, retraining keeps the compressed shapes and zeros, user mistakes are one line with exit code
2, and --report measures every variant."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunelab.cli import main

ROOT = Path(__file__).resolve().parents[2]
# tiny BERT: hidden 32, 2 heads of 16, FFN 64, 2 layers. Half the heads and FFN neurons of a layer hold
# q/k/v 3 x (16 x 32 + 16), their 16 input columns of the output projection (32 x 16),
# 32 FFN rows with bias (32 x 32 + 32) and their 32 down-projection columns (32 x 32).
REMOVED_PER_LAYER = 3 * (16 * 32 + 16) + 32 * 16 + (32 * 32 + 32) + 32 * 32
assert REMOVED_PER_LAYER == 4176


def tiny_run(helpers, tiny_bert, data_dir, folder: Path, overrides: dict | None = None) -> Path:
    cfg = helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", folder,
                              {"train.precision": "fp32", "train.max_steps": 6, **(overrides or {})})
    return helpers.train_quietly(cfg)


@pytest.fixture(scope="module")
def base_run(tiny_bert, data_dir, tmp_path_factory, helpers) -> Path:
    return tiny_run(helpers, tiny_bert, data_dir, tmp_path_factory.mktemp("base") / "run")


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    """A copy of the base run without its results, so a test's results do not meet another test's."""
    return Path(shutil.copytree(base_run, tmp_path / "run", ignore=shutil.ignore_patterns("compressed")))


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def predictions(run_dir: Path, capsys) -> list[dict]:
    code, out, _ = cli(capsys, "predict", run_dir, "--text", "goal team match win", "--text", "soup bread rice")
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


def probabilities(model, tokenizer, texts: list[str], labels: list[str]) -> list[dict]:
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = torch.softmax(model(**{k: enc[k] for k in ("input_ids", "attention_mask")}).logits, -1)
    return [dict(zip(labels, p.tolist())) for p in probs]


def in_memory(run_dir: Path, steps: list[dict]):
    """The run's model compressed by `steps` in memory, as the pipeline does it (no retraining)."""
    from tunelab.compress.pipeline import load_full_model
    from tunelab.compress.store import _op_function

    model, tokenizer, run = load_full_model(run_dir, lambda *_: None)
    for step in steps:
        _op_function(step, run_dir)(model, step, weights=True)
    return model.eval(), tokenizer, run.meta["labels"]


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# Structured pruning + retraining, in a real process


def test_structured_prune_and_retrain_is_a_run_that_eval_and_predict_take(base_run, capsys):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "compress", str(base_run), "--prune", "structured",
                           "--sparsity", "0.5", "--retrain-steps", "3", "--no-progress", "train.precision=fp32"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    target = base_run / "compressed" / "structured-50+retrain-3"
    assert f"written to {target}" in proc.stdout
    assert "% of the run's" in proc.stdout

    from tunelab.resume import marker_status
    from tunelab.runs import is_run

    assert is_run(target) and marker_status(target) == "finished"
    assert [r["step"] for r in _train_records(target)] == [1, 2, 3]
    record = json.loads((target / "compress.json").read_text())
    assert record["parameters"]["before"] - record["parameters"]["after"] == 2 * REMOVED_PER_LAYER
    assert [s["op"] for s in record["steps"]] == ["prune_structured"]
    assert all(len(layer["heads"]) == 1 and len(layer["ffn"]) == 32 for layer in record["steps"][0]["layers"])
    assert record["file_size"]["after"] < record["file_size"]["before"]
    assert record["retained_percent"] is not None

    # eval prints what eval.json holds
    from tunelab.tasks.classification import metrics_line

    code, out, _ = cli(capsys, "eval", target)
    assert code == 0
    assert out.splitlines()[0] == metrics_line(json.loads((target / "eval.json").read_text())["test"])

    # the same pruning without retraining: same shapes, other weights (retraining moved them)
    code, _, err = cli(capsys, "compress", base_run, "--prune", "structured", "--sparsity", "0.5", "--name", "pruned")
    assert code == 0, err
    pruned, retrained = weights(base_run / "compressed" / "pruned" / "model"), weights(target / "model")
    assert json.loads((base_run / "compressed" / "pruned" / "compress.json").read_text())["steps"] == record["steps"]
    assert {k: v.shape for k, v in pruned.items()} == {k: v.shape for k, v in retrained.items()}
    assert pruned["bert.encoder.layer.0.attention.self.query.weight"].shape == (16, 32)
    assert pruned["bert.encoder.layer.0.intermediate.dense.weight"].shape == (32, 32)
    moved = [k for k in pruned if not torch.equal(pruned[k], retrained[k])]
    assert "bert.encoder.layer.0.attention.self.query.weight" in moved and "classifier.weight" in moved

    # predict on the untrained result equals the pipeline's model in memory
    model, tokenizer, labels = in_memory(base_run, record["steps"])
    expected = probabilities(model, tokenizer, ["goal team match win", "soup bread rice"], labels)
    for row, probs in zip(predictions(base_run / "compressed" / "pruned", capsys), expected):
        assert row["scores"] == pytest.approx(probs, abs=1e-5)


def _train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


# ---------------------------------------------------------------------------------------------
# The other steps


def test_magnitude_pruning_keeps_its_zeros_through_retraining(run_copy, capsys):
    from tunelab.compress.prune import sparsity_of
    from tunelab.compress.store import load_compressed

    code, out, err = cli(capsys, "compress", run_copy, "--prune", "magnitude", "--sparsity", "0.3",
                         "--retrain-steps", "3", "--no-progress")
    assert code == 0, err
    target = run_copy / "compressed" / "magnitude-30+retrain-3"
    record = json.loads((target / "compress.json").read_text())
    assert record["sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert record["parameters"]["before"] == record["parameters"]["after"]  # zeros, not fewer weights
    model, _ = load_compressed(target / "model")
    assert sparsity_of(model) == pytest.approx(record["sparsity"], abs=1e-6)
    assert [r["step"] for r in _train_records(target)] == [1, 2, 3]
    code, _, err = cli(capsys, "compress", run_copy, "--prune", "magnitude", "--sparsity", "0.3")
    assert code == 0, err
    untrained = weights(run_copy / "compressed" / "magnitude-30" / "model")
    retrained = weights(target / "model")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(untrained[name] == 0, retrained[name] == 0)  # the same zeros ...
    assert not torch.equal(untrained[name], retrained[name])  # ... and the other weights moved


def test_low_rank_and_int8_together_whatever_the_option_order(run_copy, capsys):
    code, out, err = cli(capsys, "compress", run_copy, "--quantize", "int8-dynamic", "--low-rank", "4")
    assert code == 0, err
    target = run_copy / "compressed" / "lowrank-r4+int8-dynamic"
    steps = json.loads((target / "compress.json").read_text())["steps"]
    assert [s["op"] for s in steps] == ["low_rank", "quantize"]
    assert json.loads((target / "model" / "compression.json").read_text())["steps"] == steps
    model, tokenizer, labels = in_memory(run_copy, steps)
    expected = probabilities(model, tokenizer, ["goal team match win", "soup bread rice"], labels)
    for row, probs in zip(predictions(target, capsys), expected):
        assert row["scores"] == pytest.approx(probs, abs=1e-5)
    code, out, _ = cli(capsys, "eval", target)
    assert code == 0 and out.startswith("accuracy ")


def test_steps_run_prune_low_rank_retrain_int8_in_that_order(run_copy, capsys):
    code, _, err = cli(capsys, "compress", run_copy, "--quantize", "int8-weight-only", "--retrain-steps", "2",
                       "--low-rank", "8", "--sparsity", "0.5", "--prune", "structured", "--no-progress",
                       "train.lr=1e-4")
    assert code == 0, err
    target = run_copy / "compressed" / "structured-50+lowrank-r8+retrain-2+int8-weight-only"
    record = json.loads((target / "compress.json").read_text())
    assert [s["op"] for s in record["steps"]] == ["prune_structured", "low_rank", "quantize"]
    assert list(record["seconds"]) == ["load", "importance", "prune", "low_rank", "retrain", "quantize",
                                       "save_and_test"]
    import yaml

    cfg = yaml.safe_load((target / "config.yaml").read_text())
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["max_steps"] == 2 and cfg["method"]["name"] == "full"
    assert cfg["output_dir"] == str(target)
    eval_json = json.loads((target / "eval.json").read_text())
    assert eval_json["steps"] == 2 and "f1_macro" in eval_json["test"]


def test_resume_trains_a_compressed_run_further_in_its_shapes(run_copy, capsys):
    from tunelab.compress.pipeline import plan_path, resume_compressed

    code, _, err = cli(capsys, "compress", run_copy, "--low-rank", "4", "--retrain-steps", "2", "--quantize",
                       "int8-weight-only", "--no-progress")
    assert code == 0, err
    target = run_copy / "compressed" / "lowrank-r4+retrain-2+int8-weight-only"
    before = json.loads((target / "compress.json").read_text())
    assert not plan_path(target).exists()
    assert resume_compressed(target, ["train.max_steps=4"], show_progress=False, log=lambda *_: None)
    assert [r["step"] for r in _train_records(target)] == [1, 2, 3, 4]
    after = json.loads((target / "compress.json").read_text())
    assert after["steps"] == before["steps"]  # rebuilt from the stored steps, int8 again at the end
    assert after["parameters"] == before["parameters"]
    assert json.loads((target / "eval.json").read_text())["steps"] == 4
    assert not resume_compressed(run_copy, [], show_progress=False)  # the base run is no compressed run


def test_an_interrupted_retraining_resumes_with_its_zeros(run_copy, capsys, monkeypatch):
    import signal

    import tunelab.tasks.classification as classification
    from tunelab.compress.pipeline import plan_path, resume_compressed

    real, calls = classification.loss_sum, []

    def loss_then_sigterm(*args, **kwargs):  # SIGTERM during the 2nd retraining step: checkpoint, then stop
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(classification, "loss_sum", loss_then_sigterm)
    code, _, _ = cli(capsys, "compress", run_copy, "--prune", "magnitude", "--sparsity", "0.3", "--retrain-steps",
                     "4", "--no-progress", "train.checkpoint_every=1")
    monkeypatch.setattr(classification, "loss_sum", real)
    target = run_copy / "compressed" / "magnitude-30+retrain-4"
    assert code == 128 + signal.SIGTERM and plan_path(target).is_file() and not (target / "model").exists()
    code, _, err = cli(capsys, "compress", run_copy, "--prune", "magnitude", "--sparsity", "0.3", "--retrain-steps",
                       "4")
    assert code == 2 and "holds an unfinished retraining; go on with `tunelab resume" in err
    assert resume_compressed(target, [], show_progress=False, log=lambda *_: None)
    assert [r["step"] for r in _train_records(target)] == [1, 2, 3, 4]
    assert json.loads((target / "compress.json").read_text())["sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert not plan_path(target).exists()


def test_a_lora_run_is_merged_then_compressed(tiny_bert, data_dir, tmp_path, helpers, capsys):
    run = tiny_run(helpers, tiny_bert, data_dir, tmp_path / "lora", {"method.name": "lora", "method.r": 4})
    code, _, err = cli(capsys, "compress", run, "--prune", "structured", "--sparsity", "0.5", "--retrain-steps",
                       "2", "--no-progress")
    assert code == 0, err
    target = run / "compressed" / "structured-50+retrain-2"
    assert not (target / "model" / "adapter_config.json").exists() and not (target / "base").exists()
    record = json.loads((target / "compress.json").read_text())
    # the merged model: the LoRA factors are gone, then half of every layer's heads and FFN
    from tunelab.compress.pipeline import load_full_model

    merged, _, _ = load_full_model(run, lambda *_: None)
    assert record["parameters"]["before"] == sum(p.numel() for p in merged.parameters())
    assert record["parameters"]["before"] - record["parameters"]["after"] == 2 * REMOVED_PER_LAYER
    assert len(predictions(target, capsys)) == 2


def test_a_causal_lm_result_takes_eval_predict_and_chat(tmp_path, capsys, helpers):
    sys.path.insert(0, str(ROOT / "tests" / "causal"))
    from causal_helpers import alpaca_records
    from causal_tiny import write_tiny_model

    from tunelab.config import config_from_dict

    model_dir = write_tiny_model(tmp_path / "llama")
    data = helpers.write_jsonl(tmp_path / "alpaca.jsonl", alpaca_records(40))
    cfg = config_from_dict({
        "task": "causal_lm", "model": {"name": str(model_dir), "max_length": 128}, "data": {"train": str(data)},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "device": "cpu", "precision": "fp32",
                  "early_stopping": {"metric": "loss"}},
        "generate": {"max_new_tokens": 4, "samples_in_eval": 0}, "output_dir": str(tmp_path / "run")})
    run = helpers.train_quietly(cfg)
    code, out, err = cli(capsys, "compress", run, "--prune", "structured", "--sparsity", "0.5", "--retrain-steps",
                         "2", "--quantize", "int8-dynamic", "--no-progress")
    assert code == 0, err
    target = run / "compressed" / "structured-50+retrain-2+int8-dynamic"
    record = json.loads((target / "compress.json").read_text())
    assert record["metric"] == "loss" and record["retained_percent"] == pytest.approx(
        100 * record["base_metric"] / record["metric_value"], abs=0.01)  # lower is better: base / result
    # grouped-query attention (4 query heads on 2 key/value heads): one query head of each pair stays
    assert all(len(layer["heads"]) == 2 for layer in record["steps"][0]["layers"])
    assert (target / "data_format.json").read_text() == (run / "data_format.json").read_text()
    code, out, _ = cli(capsys, "eval", target)
    assert code == 0 and "\nloss " in out
    code, out, _ = cli(capsys, "predict", target, "--text", "Add 1 and 2.")
    assert code == 0 and "generated" in json.loads(out)

    from tunelab.tasks.causal_lm import chat_model

    model, tokenizer, gen, _ = chat_model(str(target), [])
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Add 1 and 2."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


# ---------------------------------------------------------------------------------------------
# Mistakes: one line, exit code 2, nothing loaded or written


@pytest.mark.parametrize("argv, expected", [
    (["--sparsity", "1.5", "--prune", "structured"], "--sparsity: 1.5 is outside (0, 1)"),
    (["--sparsity", "0.5"], "--sparsity applies to pruning; add --prune"),
    (["--prune", "magnitude"], "--prune magnitude needs --sparsity"),
    (["--low-rank", "4", "--low-rank-energy", "0.9"], "--low-rank and --low-rank-energy exclude each other"),
    (["--retrain-steps", "3", "--quantize", "int8-dynamic"], "--retrain-steps retrains after pruning or low rank"),
    ([], "nothing to do"),
    (["--quantize", "int8-dynamic", "train.lr=1e-4"], "train.lr=1e-4 applies to the retraining"),
    (["--low-rank", "4", "--retrain-steps", "2", "model.name=x"], "only train.* settings"),
    (["--compare", "elsewhere"], "add --report"),
])
def test_option_mistakes_exit_2_in_one_line(base_run, capsys, argv, expected):
    code, _, err = cli(capsys, "compress", base_run, *argv)
    assert code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_not_a_run_exits_2(tmp_path, capsys):
    code, _, err = cli(capsys, "compress", tmp_path, "--quantize", "int8-dynamic")
    assert code == 2 and "is not a finished tunelab run" in err and err.count("\n") == 1


def test_an_existing_result_is_kept_without_overwrite(run_copy, capsys):
    assert cli(capsys, "compress", run_copy, "--quantize", "int8-dynamic", "--name", "q")[0] == 0
    target = run_copy / "compressed" / "q"
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    code, _, err = cli(capsys, "compress", run_copy, "--low-rank", "4", "--name", "q")
    assert code == 2 and "already exists; pass --overwrite" in err and err.count("\n") == 1
    assert {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    code, _, err = cli(capsys, "compress", run_copy, "--low-rank", "4", "--name", "q", "--overwrite")
    assert code == 0, err
    assert [s["op"] for s in json.loads((target / "compress.json").read_text())["steps"]] == ["low_rank"]
    assert not [p for p in (run_copy / "compressed").iterdir() if p.name.startswith(".")]  # no staging left


def test_structured_pruning_of_a_scratch_model_exits_2(tiny_bert, data_dir, tmp_path, helpers, capsys):
    run = tiny_run(helpers, tiny_bert, data_dir, tmp_path / "scratch",
                   {"model.name": "scratch:lstm", "model.tokenizer": str(tiny_bert), "model.layers": 1,
                    "model.hidden_size": 16, "train.max_steps": 1})
    code, _, err = cli(capsys, "compress", run, "--prune", "structured", "--sparsity", "0.5")
    assert code == 2 and "scratch model" in err and err.count("\n") == 1
    assert not (run / "compressed").exists()


# ---------------------------------------------------------------------------------------------
# The trade-off table


def test_report_measures_every_variant_on_the_same_test_split(run_copy, tiny_bert, data_dir, tmp_path, helpers,
                                                               capsys):
    assert cli(capsys, "compress", run_copy, "--quantize", "int8-dynamic")[0] == 0
    assert cli(capsys, "compress", run_copy, "--prune", "magnitude", "--sparsity", "0.4")[0] == 0
    other = tiny_run(helpers, tiny_bert, data_dir, tmp_path / "other", {"train.max_steps": 2})
    code, out, err = cli(capsys, "compress", run_copy, "--report", "--compare", other, "--threads", "1")
    assert code == 0, err
    folder = run_copy / "compressed"
    data = json.loads((folder / "tradeoff.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert list(rows) == ["base", "int8-dynamic", "magnitude-40", "other"]
    assert data["threads"] == 1 and set(data["flags"]) >= {"avx512_bf16", "amx_bf16", "avx512_vnni"}
    assert rows["base"]["retained_percent"] == 100
    base_test = json.loads((run_copy / "eval.json").read_text())["test"]
    assert rows["base"]["value"] == pytest.approx(base_test["f1_macro"], abs=1e-9)
    assert rows["base"]["test_examples"] == base_test["n"] == rows["other"]["test_examples"]
    assert rows["magnitude-40"]["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert rows["base"]["sparsity"] is None and rows["int8-dynamic"]["sparsity"] is None
    assert rows["magnitude-40"]["parameters"] == rows["base"]["parameters"]
    assert rows["int8-dynamic"]["file_mb"] < rows["base"]["file_mb"]
    for r in rows.values():
        assert r["latency_ms"] > 0 and r["throughput"] > 0
    table = (folder / "tradeoff.md").read_text()
    assert "with 1 threads" in table and "| magnitude-40 |" in table and "| 40.0% |" in table
    assert (folder / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trade-off written to" in out


def test_a_compressed_variant_is_not_compressed_again_and_an_untrained_one_has_nothing_to_resume(run_copy, capsys):
    # a variant's model/ already holds its steps: compressing it again would store only the new ones
    assert cli(capsys, "compress", run_copy, "--low-rank", "4", "--name", "lr")[0] == 0
    variant = run_copy / "compressed" / "lr"
    code, _, err = cli(capsys, "compress", variant, "--quantize", "int8-dynamic")
    assert code == 2 and "already a compressed variant; compress the base run" in err and err.count("\n") == 1
    assert not (variant / "compressed").exists()
    code, _, err = cli(capsys, "resume", variant)
    assert code == 2 and "was compressed without retraining: there is nothing to resume" in err
    assert err.count("\n") == 1
