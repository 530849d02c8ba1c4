"""The benchmark's fairness machinery (bench/fair.py), its arithmetic (bench/record.py) and its rendering
(bench/results.py), on tiny random models: the Trainer side gets tunelab's exact learning rates, its time
excludes evaluation, it tests the best checkpoint, and results.md is a pure function of stored figures."""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import fair  # noqa: E402
import record  # noqa: E402


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3))


def items(n: int = 20, length: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (n, length), generator=g).tolist()
    return [{"input_ids": x, "attention_mask": [1] * length, "labels": i % 3} for i, x in enumerate(ids)]


def trainer(model, data, tmp_path, callbacks, epochs=1, batch=4, **optim):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=epochs, per_device_train_batch_size=batch,
                             save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
                             dataloader_num_workers=0, seed=0, **({} if optim else {"learning_rate": 1e-3,
                                                                                      "warmup_steps": 2}))
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks,
                   optimizers=fair.tunelab_optimizers(model, **optim) if optim else (None, None))


def test_trainer_steps_at_tunelab_learning_rates(tmp_path):
    """The Trainer side's per-step rates are exactly tunelab's lr_factor schedule, first warmup step included
    (the Trainer's own schedule starts at 0, which `same_lrs` reports)."""
    from tunelab.train.optim import lr_factor

    total, warmup = fair.tunelab_steps(5, 1, 0.4)  # 20 items / batch 4
    assert (total, warmup) == (5, 2)
    expected = [1e-3 * lr_factor(s, total, warmup, "linear") for s in range(total)]
    timer = fair.StepTimer()
    trainer(tiny_bert(), items(), tmp_path, [timer], lr=1e-3, weight_decay=0.0, total=total, warmup=warmup).train()
    assert fair.same_lrs(timer.lrs, expected) is None
    assert timer.lrs[0] == pytest.approx(5e-4)

    own = fair.StepTimer()  # what the bench used before: the Trainer's schedule with the same warmup
    trainer(tiny_bert(), items(), tmp_path / "own", [own]).train()
    assert own.lrs[0] == 0.0
    assert fair.same_lrs(own.lrs, expected) == f"step 1: lr 0.0 vs {expected[0]!r}"


def test_step_timer_leaves_out_evaluation(tmp_path):
    """Time between on_step_begin and on_step_end only: a 0.4 s evaluation at each epoch end is not counted,
    while the Trainer's train_runtime counts it."""
    class SlowEval(fair.TrainerCallback):
        def on_epoch_end(self, *args, **kwargs):
            time.sleep(0.4)

    timer = fair.StepTimer()
    out = trainer(tiny_bert(), items(8), tmp_path, [timer, SlowEval()], epochs=2, lr=1e-3, weight_decay=0.0,
                  total=4, warmup=0).train()
    assert len(timer.lrs) == 4
    assert out.metrics["train_runtime"] > 0.8
    assert timer.seconds < out.metrics["train_runtime"] - 0.7


def test_best_by_validation_restores_the_best_epoch(tmp_path):
    """Scores 0.9 then 0.5 (higher is better): the weights after training are those of the first epoch."""
    model = tiny_bert()
    scores, seen = iter([0.9, 0.5]), []

    def evaluate(m):
        seen.append(copy.deepcopy(m.state_dict()))
        return next(scores)

    best = fair.BestByValidation(evaluate, minimise=False)
    trainer(model, items(8), tmp_path, [best], epochs=2, lr=1e-2, weight_decay=0.0, total=4, warmup=0).train()
    assert best.best_step == 2 and [s for s, _ in best.history] == [2, 4]
    after = model.state_dict()
    assert all(torch.equal(after[k], seen[0][k]) for k in after)
    assert not all(torch.equal(after[k], seen[1][k]) for k in after)


def test_check_same_job_stops_on_different_schedules():
    import run

    runs = [{"side": s, "result": {"lrs": lrs, "train_tokens": 100}}
            for s, lrs in (("tunelab-fp32", [5e-4, 1e-3]), ("trainer-fp32", [0.0, 1e-3]))]
    with pytest.raises(SystemExit, match="learning-rate schedules differ: tunelab-fp32 vs trainer-fp32: step 1"):
        run.check_same_job(runs)
    runs[1]["result"]["lrs"] = [5e-4, 1e-3]
    run.check_same_job(runs)
    runs[1]["result"]["train_tokens"] = 99
    with pytest.raises(SystemExit, match="trained tokens differ"):
        run.check_same_job(runs)


def test_tunelab_lrs_needs_every_step(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps({"kind": "train", "step": s, "lr": 0.1 * s}) for s in (1, 2, 3))
                   + "\n" + json.dumps({"kind": "eval", "step": 3, "loss": 1.0}) + "\n")
    assert fair.tunelab_lrs(log) == [0.1, 0.2, pytest.approx(0.3)]
    log.write_text(json.dumps({"kind": "train", "step": 10, "lr": 0.1}) + "\n")
    with pytest.raises(SystemExit, match="log_every: 1"):
        fair.tunelab_lrs(log)


def test_ratio_standard_error_over_examples():
    mean, se = record.ratio_se([1.0, 2.0, 3.0], [1, 1, 1])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    # per-token mean 10/5 = 2; residuals s - 2c = 0, 2, -2 -> sqrt(8 / 6) / (5 / 3)
    mean, se = record.ratio_se([2.0, 4.0, 4.0], [1, 1, 3])
    assert mean == 2.0 and se == pytest.approx(math.sqrt(8 / 6) / (5 / 3))


def test_training_flops_formula():
    params = {"body": 10, "head": 100, "adapter": 2}
    # full, bidirectional: 6*10*4 + 6*100*1 + 12*1*2*16
    assert record.training_flops(params, [(4, 1)], layers=1, hidden=2, full=True, causal=False) == 240 + 600 + 384
    # LoRA, causal: 4*10*4 + 6*2*4 + 4*100*1 + 6*1*2*16
    assert record.training_flops(params, [(4, 1)], layers=1, hidden=2, full=False, causal=True) == 160 + 48 + 400 + 192


def test_matmul_params_by_role():
    """A tiny Llama with LoRA: adapter = peft's trainable count, head = the vocabulary projection, body = the
    decoder's linear layers (embeddings are no matrix product)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    per_layer = 16 * 16 * 2 + 16 * 8 * 2 + 3 * 16 * 32  # q, o; k, v (one 8-wide kv head); gate, up, down
    assert record.matmul_params(model) == {"body": 2 * per_layer, "head": 64 * 16, "adapter": 0}
    lora = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    counts = record.matmul_params(lora)
    assert counts["adapter"] == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert (counts["body"], counts["head"]) == (2 * per_layer, 64 * 16)


def stored_classification(out: Path) -> None:
    """A stored two-side, two-repeat classification measurement, as bench/run.py writes it."""
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "avx512_bf16": False, "amx": False,
               "fast_bf16": False, "torch": "2.13.0", "python": "3.11"}
    data = {"epochs": 1, "train_examples": 4, "train_tokens": 40, "validation_examples": 2,
            "validation_tokens": 20, "test_examples": 4, "test_tokens": 40}
    runs = []
    for r, side, tps, correct in ((0, "tunelab-fp32", 200.0, [1, 1, 1, 0]), (0, "trainer-fp32", 100.0, [1, 0, 1, 0]),
                                  (1, "trainer-fp32", 110.0, [1, 0, 1, 0]), (1, "tunelab-fp32", 190.0, [1, 1, 1, 0])):
        runs.append({"side": side, "repeat": r, "started": f"2026-01-0{r + 1}T10:00:00Z",
                     "finished": f"2026-01-0{r + 1}T10:05:00Z", "load_before": [0.5, 0.5, 0.5],
                     "load_after": [1.0, 0.6, 0.5], "machine": machine,
                     "result": {"tokens_per_s": tps, "train_seconds": 40 / tps, "train_tokens": 40, "steps": 1,
                                "best_step": 1, "lrs": [1e-4], "accuracy": sum(correct) / 4, "f1_macro": 0.5,
                                "test_correct": correct, "peak_rss_mb": 1000.0, "precision": "fp32",
                                "model_flops": 4e9, "data": data}})
    peak = {"fp32_gflops": 100.0, "bf16_gflops": 1.0}
    rec = {"part": "classification", "smoke": False, "job": {"limit": 4, "max_length": 16, "epochs": 1,
           "batch_size": 4, "lr": 1e-4, "weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0,
           "seed": 42}, "sides": ["tunelab-fp32", "trainer-fp32"], "repeats": 2, "machine": machine,
           "peak": [peak, {**peak, "fp32_gflops": 80.0}], "runs": runs, "complete": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "classification-20260101T100000Z.json").write_text(json.dumps(rec))


def test_results_come_from_stored_figures_only(tmp_path, monkeypatch):
    """Rendering twice gives the same text with the stored dates (never today's); the figures are medians
    and ranges of the stored runs; a section kept from an older results.md is labelled as old."""
    import results

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    stored_classification(tmp_path / "out")
    old = {"lm": "## Instruction tuning: old\n\nold text\n"}
    first = results.render(False, old)
    time.sleep(1.1)
    assert results.render(False, old) == first
    assert "Measured 2026-01-01T10:00:00Z to 2026-01-02T10:05:00Z (UTC) on Test CPU" in first
    assert time.strftime("%Y-%m-%d") not in first
    assert "| real tokens/s | 195 (190-200) | 105 (100-110) |" in first
    assert "- both fp32: tunelab **1.86x** (per round 1.73-2.00x)" in first
    assert "| MFU (% of its precision's peak) | 19.5 (19.0-20.0) | 10.5 (10.0-11.0) |" in first
    assert "test accuracy, fp32: tunelab - Trainer = +0.2500 ± 0.2500" in first and "**not resolved**" in first
    assert "## Instruction tuning: old\n\n> **Old method, measured 2026-11-23, not re-run" in first


# ---------------------------------------------------------------------------------------------
# The checkpoint and distributed parts

MACHINE = {"cpu": "Test CPU", "cores": 2, "threads": 2, "avx512_bf16": False, "amx": False, "fast_bf16": False,
           "torch": "2.13.0", "python": "3.11"}


def store(out: Path, part: str, job: dict, sides: list[str], results: dict[str, list[dict]],
          extra: dict | None = None) -> None:
    """A complete stored measurement as bench/run.py's `measure` writes it: `results[side]` by repeat, the
    sides interleaved (A B, B A)."""
    runs = []
    for r in range(len(next(iter(results.values())))):
        for side in sides if r % 2 == 0 else sides[::-1]:
            runs.append({"side": side, "repeat": r, "started": f"2026-02-0{r + 1}T10:00:00Z",
                         "finished": f"2026-02-0{r + 1}T10:05:00Z", "load_before": [0.5, 0.5, 0.5],
                         "load_after": [1.0, 0.6, 0.5], "machine": MACHINE, "result": results[side][r]})
    peak = {"fp32_gflops": 100.0, "bf16_gflops": 1.0}
    rec = {"part": part, "smoke": False, "job": job, "sides": sides, "repeats": len(runs) // len(sides),
           "machine": MACHINE, "peak": [peak, peak], "runs": runs, "complete": True, **(extra or {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{part}-20260201T100000Z.json").write_text(json.dumps(rec))


def ckpt_result(job: str, every, loop_seconds: float, saves: list[float]) -> dict:
    """One checkpoint-part run: each save takes `s` seconds, the whole checkpoint s + 0.5."""
    mb = {"minilm": (91e6, 182e6), "lm": (20e6, 40e6)}[job]
    return {"job_name": job, "checkpoint_every": every, "tokens_per_s": 100.0, "train_seconds": 5.0,
            "train_tokens": 500, "steps": 30, "lrs": [1e-4] * 30, "evaluations": 2, "loop_seconds": loop_seconds,
            "trainable_params": 22_720_000 if job == "minilm" else 4_880_000, "precision": "fp32",
            "peak_rss_mb": 900.0,
            "checkpoints": [{"step": 15 * (i + 1), "save_seconds": s, "checkpoint_seconds": s + 0.5,
                             "disk_bytes": int(sum(mb) + 1e6),
                             "files": {"weights.safetensors": int(mb[0]), "training.pt": int(mb[1])}}
                            for i, s in enumerate(saves)]}


def test_checkpoint_section_from_stored_figures(tmp_path, monkeypatch):
    """Per checkpoint: median (range) of every checkpoint's seconds and size; overhead: the medians' ratio of
    loop time with and without checkpoints, each round's, and the checkpoints' own share of their run."""
    import checkpoint
    import results

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    res = {"ckpt-minilm-default": [ckpt_result("minilm", None, 11.0, [1.0, 2.0]),
                                   ckpt_result("minilm", None, 12.5, [1.0, 1.0])],
           "ckpt-minilm-off": [ckpt_result("minilm", 0, 10.0, []), ckpt_result("minilm", 0, 10.0, [])],
           "ckpt-lm-default": [ckpt_result("lm", None, 8.0, [0.2]), ckpt_result("lm", None, 8.0, [0.3])],
           "ckpt-lm-off": [ckpt_result("lm", 0, 8.0, []), ckpt_result("lm", 0, 7.5, [])]}
    store(tmp_path / "out", "checkpoint", {k: dict(v) for k, v in checkpoint.JOBS.items()}, list(res), res)
    text = results.render(False, {})
    section = text[text.index("## Checkpoint cost"):]
    assert "| | MiniLM-L6 full fine-tuning | SmolLM2-135M LoRA |" in section
    assert "| MB per checkpoint on disk | 274.0 | 61.0 |" in section
    assert "| of which weights / optimizer state (MB) | 91.0 / 182.0 | 20.0 / 40.0 |" in section
    assert "| seconds per checkpoint: `Checkpoints.save` | 1.00 (1.00-2.00) | 0.25 (0.20-0.30) |" in section
    assert "| seconds per checkpoint: snapshot + save | 1.50 (1.50-2.50) | 0.75 (0.70-0.80) |" in section
    # minilm: medians 11.75 vs 10 -> +17.5%; rounds +10% and +25%; lm: 8 vs 7.75 -> +3.2%, rounds 0 and +6.7%
    assert ("| **overhead of the default, % of the loop without checkpoints** | **+17.5%** (per round +10.0 to "
            "+25.0%) | **+3.2%** (per round +0.0 to +6.7%) |") in section
    # minilm: (1.5 + 2.5) / 11 = 36.4%, (1.5 + 1.5) / 12.5 = 24.0%
    assert "| checkpoint seconds / loop seconds, same run (%) | 30.2 (24.0-36.4) | 9.4 (8.8-10.0) |" in section
    assert "| checkpoints per run (default) | 2 | 1 |" in section
    assert "Measured 2026-02-01T10:00:00Z to 2026-02-02T10:05:00Z (UTC) on Test CPU" in section
    assert "MFU" not in section


def ddp_result(side: str, tps: float, losses: list[float], sha: str = "a") -> dict:
    lay = {"ddp-2x1": (2, 1), "single-1x2": (1, 2)}[side]
    return {"tokens_per_s": tps, "train_seconds": 4000 / tps, "train_tokens": 4000, "steps": 2, "lrs": [1e-4, 5e-5],
            "losses": losses, "wall_seconds": 30.0, "command_seconds": 40.0, "weights": f"{side}.safetensors",
            "weights_sha256": sha, "processes": lay[0], "threads": lay[1]}


def test_distributed_section_from_stored_figures(tmp_path, monkeypatch):
    import distributed
    import results

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    res = {"ddp-2x1": [ddp_result("ddp-2x1", 300.0, [1.6, 1.5]), ddp_result("ddp-2x1", 280.0, [1.6, 1.5], "b")],
           "single-1x2": [ddp_result("single-1x2", 200.0, [1.6, 1.5]), ddp_result("single-1x2", 210.0, [1.6, 1.5])]}
    eq = {"weights_max_abs": 3.0e-7, "weights_worst": "classifier.weight", "weights_scale": 2.5, "tensors": 103,
          "params": 22_720_000, "losses_max_abs": 1.2e-6, "losses_compared": 2,
          "same_weights_every_repeat": {"ddp-2x1": False, "single-1x2": True}}
    store(tmp_path / "out", "distributed", dict(distributed.JOB), list(res), res, {"equivalence": eq})
    section = results.render(False, {}).split("## Distributed data parallel")[1]
    assert "| | DDP, 2 processes x 1 thread | 1 process x 2 threads |" in section
    assert "| real tokens/s | 290 (280-300) | 205 (200-210) |" in section
    assert "- DDP over one process: **1.41x** tokens/s (per round 1.33-1.50x)" in section
    assert "differ by at most **3.00e-07** (in `classifier.weight`; 22.72M weights in 103 tensors" in section
    assert "the losses logged at 2 steps differ by at most **1.20e-06**" in section
    assert "- bit-identical final weights in every repeat: 1 process x 2 threads" in section
    b = distributed.JOB["batch_size"]
    assert f"{b} per process x 2 against {2 * b} in one" in section


def test_equivalence_compares_the_last_run_of_each_side(tmp_path):
    """Largest absolute differences of weights (and where) and of logged losses, from the sides' last runs."""
    import distributed
    from safetensors.torch import save_file

    save_file({"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.5, -3.0]])}, str(tmp_path / "ddp.st"))
    save_file({"a": torch.tensor([1.0, 2.25]), "b": torch.tensor([[0.5, -3.0]])}, str(tmp_path / "one.st"))
    runs = [{"side": "ddp-2x1", "result": {**ddp_result("ddp-2x1", 1.0, [9.0, 9.0], "x"), "weights": "gone"}},
            {"side": "single-1x2", "result": ddp_result("single-1x2", 1.0, [1.0, 2.0], "y")},
            {"side": "ddp-2x1", "result": {**ddp_result("ddp-2x1", 1.0, [1.5, 2.0], "x"),
                                           "weights": str(tmp_path / "ddp.st")}},
            {"side": "single-1x2", "result": {**ddp_result("single-1x2", 1.0, [1.0, 2.0], "y"),
                                              "weights": str(tmp_path / "one.st")}}]
    eq = distributed.equivalence({"runs": runs})
    assert (eq["weights_max_abs"], eq["weights_worst"], eq["weights_scale"]) == (0.25, "a", 3.0)
    assert (eq["losses_max_abs"], eq["losses_compared"], eq["params"]) == (0.5, 2, 4)
    assert eq["same_weights_every_repeat"] == {"ddp-2x1": True, "single-1x2": True}


def test_distributed_sides_share_the_global_batch_and_load_strictly(tmp_path):
    """The DDP side: b per process under torchrun with 1 thread each; the single side: 2b with 2 threads;
    otherwise the same job (both configs go through tunelab's strict loader)."""
    import distributed
    from tunelab.config import config_from_dict

    ddp, one = (distributed.side_config(s, tmp_path / s) for s in ("ddp-2x1", "single-1x2"))
    assert ddp["train"]["batch_size"] * 2 == one["train"]["batch_size"] == 2 * distributed.JOB["batch_size"]
    assert (ddp["train"]["threads"], one["train"]["threads"], ddp["train"]["distributed"]) == (1, 2, "ddp")
    def same(c: dict) -> dict:
        return {k: v for k, v in c["train"].items() if k not in ("batch_size", "threads", "distributed")}

    assert same(ddp) == same(one) and ddp["model"] == one["model"] and ddp["model"]["dropout"] == 0.0
    assert config_from_dict(ddp).train.precision == config_from_dict(one).train.precision == "fp32"
    cmd, env = distributed.command("ddp-2x1", Path("c.yaml"))
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "tunelab",
                       "train", "c.yaml", "--overwrite", "--no-progress"] and env["OMP_NUM_THREADS"] == "1"
    cmd, env = distributed.command("single-1x2", Path("c.yaml"))
    assert cmd[1:4] == ["-m", "tunelab", "train"] and env["OMP_NUM_THREADS"] == "2"


def test_a_failed_launch_is_a_clear_message_and_a_hung_one_is_stopped():
    """tunelab's one-line error comes first even when a long report follows; a command past its time limit is
    stopped with the processes it started (a child holding the output pipe would otherwise block)."""
    import distributed

    noisy = "print('error: train.distributed: no'); [print('report', i) for i in range(100)]; raise SystemExit(2)"
    with pytest.raises(SystemExit, match=r"side: exit 2: .*\nerror: train.distributed: no\n\.\.\.\n"):
        distributed.launch([sys.executable, "-c", noisy], None, 60, "side")
    hang = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('started', flush=True); time.sleep(60)")
    t0 = time.monotonic()
    with pytest.raises(SystemExit, match=r"side: stopped after 2 s .*\nstarted"):
        distributed.launch([sys.executable, "-c", hang], None, 2, "side")
    assert time.monotonic() - t0 < 20


def test_checkpoint_hooks_time_every_checkpoint_the_loop_writes(make_config):
    """With checkpoint_every null the hooks see one save per evaluation (the last step's included), each
    sized on disk; with 0 none; the loop is timed once; the originals are back afterwards."""
    import checkpoint
    from tunelab.run import train
    from tunelab.train import checkpoint as ckpt
    from tunelab.train import loop

    originals = (ckpt.Checkpoints.save, loop._checkpoint, loop.train_loop)
    for every in (None, 0):
        saves, loop_seconds = [], []
        cfg = make_config({"train.max_steps": 4, "train.eval_every": 2, "train.checkpoint_every": every})
        with checkpoint.timed_checkpoints(saves, loop_seconds):
            run_dir = train(cfg, overwrite=True, show_progress=False, log=lambda m: None)
        evals = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "eval"]
        assert [s["step"] for s in saves] == (evals if every is None else [])
        assert len(loop_seconds) == 1 and loop_seconds[0] > sum(s["checkpoint_seconds"] for s in saves)
        for s in saves:
            assert s["checkpoint_seconds"] >= s["save_seconds"] > 0
            assert {"weights.safetensors", "training.pt", "complete.json"} <= set(s["files"])
            assert s["disk_bytes"] >= s["files"]["weights.safetensors"] + s["files"]["training.pt"]
    assert evals == [2, 4]
    assert (ckpt.Checkpoints.save, loop._checkpoint, loop.train_loop) == originals


def test_check_same_job_compares_runs_of_one_job_only():
    import run

    def result(job, lrs):
        return {"side": f"ckpt-{job}-x", "result": {"job_name": job, "lrs": lrs, "train_tokens": 10}}

    run.check_same_job([result("minilm", [1.0]), result("lm", [2.0, 2.0]), result("minilm", [1.0])])
    with pytest.raises(SystemExit, match="learning-rate schedules differ: ckpt-lm-x vs ckpt-lm-x: 1 steps vs 2"):
        run.check_same_job([result("minilm", [1.0]), result("lm", [2.0]), result("lm", [2.0, 2.0])])


# ---------------------------------------------------------------------------------------------
# The seq2seq part

def s2s_result(side: str, tps: float, outputs: list[str], chrf: float) -> dict:
    """One seq2seq-part run: 4 steps over 8 pairs of 10 tokens each, tested on two pairs."""
    import translation as seq2seq

    model, direction, _ = seq2seq.parse_side(side)
    return {"job_name": f"{model}-{direction}", "tokens_per_s": tps, "pairs_per_s": tps / 10, "train_seconds": 80 / tps,
            "train_tokens": 80, "steps": 4, "lrs": [1e-4] * 4, "lr": 1e-4, "trainable_params": 2_500_000,
            "family": "decoder" if model == "smollm" else "encoder-decoder", "peak_rss_mb": 900.0,
            "data": {"train_pairs": 8, "train_examples": 8, "train_tokens": 80, "train_target_tokens": 40,
                     "train_truncated": 0, "test_pairs": 2, "vocabulary": 400},
            "chrf": chrf, "bleu": chrf / 2, "test_loss": 2.5, "generated": 2,
            "signatures": {"chrf": "nrefs:1|chrf-sig", "bleu": "nrefs:1|bleu-sig"},
            "outputs": outputs, "references": ["Datei nicht gefunden", "Speicher voll"]}


def test_seq2seq_section_from_stored_figures(tmp_path, monkeypatch):
    """One column per side with medians (ranges) of the speeds; tunelab over Seq2SeqTrainer as a ratio of
    medians with each round's; the sentence-level chrF difference paired over the same test pairs."""
    import results
    import translation as seq2seq

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    refs = ["Datei nicht gefunden", "Speicher voll"]
    res = {side: [s2s_result(side, 100.0, refs, 50.0), s2s_result(side, 120.0, refs, 50.0)]
           for side in seq2seq.SIDES}
    # tunelab's MiniLM: right on both test pairs (sentence chrF 100, 100); the Trainer's: one right, one
    # empty (100, 0): differences 0 and 100, mean 50, SE stdev/sqrt(2) = 50
    res["s2s-minilm-de-en"] = [s2s_result("s2s-minilm-de-en", t, refs, 80.0) for t in (300.0, 330.0)]
    res["s2s-trainer-minilm-de-en"] = [s2s_result("s2s-trainer-minilm-de-en", t, [refs[0], ""], c)
                                       for t, c in ((150.0, 40.0), (100.0, 41.0))]
    store(tmp_path / "out", "seq2seq", seq2seq.job(), list(res), res)
    section = results.render(False, {}).split("## Translation")[1]
    assert ("| | scratch Transformer (tunelab), de -> en | scratch Transformer (tunelab), en -> de | MiniLM enc-dec "
            "(tunelab), de -> en | MiniLM enc-dec (Seq2SeqTrainer), de -> en | SmolLM2-135M LoRA (tunelab), de -> en "
            "| SmolLM2-135M LoRA (tunelab), en -> de |") in section
    assert "| tokens/s | 110 (100-120) | 110 (100-120) | 315 (300-330) | 125 (100-150) | 110 (100-120) |" in section
    assert "| **test chrF** | 50.00 | 50.00 | 80.00 | 40.50 (40.00-41.00) | 50.00 | 50.00 |" in section
    assert ("| model family | encoder-decoder | encoder-decoder | encoder-decoder | encoder-decoder | decoder | "
            "decoder |") in section
    # medians 315 / 125 = 2.52; rounds 300/150 = 2.00 and 330/100 = 3.30
    assert "tunelab over Seq2SeqTrainer: **2.52x** tokens/s (per round 2.00-3.30x); test chrF 80.00" in section
    assert "tunelab - Seq2SeqTrainer = +50.00 ± 50.00 (SE, paired over the same 2 test pairs): **not resolved**" \
        in section
    assert "test chrF varied across repeats for MiniLM enc-dec (Seq2SeqTrainer), de -> en" in section
    assert "**German -> English only**" in section and "chrF `nrefs:1|chrf-sig`" in section
    assert "(3 encoder and 3 decoder layers, hidden 256, 4 heads, learned positions, dropout 0.1)" in section
    assert "LoRA r=16 alpha=32 dropout 0.05 on all-linear" in section
    assert "Measured 2026-02-01T10:00:00Z to 2026-02-02T10:05:00Z (UTC) on Test CPU" in section


def test_seq2seq_sides_share_one_budget_and_load_strictly(tmp_path):
    """Every side's config passes tunelab's strict loader and differs from the others only in model, method,
    learning rate and direction; the Trainer side prepares the MiniLM side's very config."""
    import run
    import translation as seq2seq

    assert run.PARTS["seq2seq"] == seq2seq.SIDES and "seq2seq" in run.ALL_PARTS
    assert [seq2seq.parse_side(s) for s in ("s2s-trainer-minilm-de-en", "s2s-smollm-en-de")] == [
        ("minilm", "de-en", True), ("smollm", "en-de", False)]
    configs = {}
    for side in seq2seq.SIDES:
        model, direction, _ = seq2seq.parse_side(side)
        tokenizer = tmp_path if model == "scratch" else None
        configs[side] = seq2seq.side_config(model, direction, tmp_path / side, tokenizer)
    budget = {(c.train.batch_size, c.train.epochs, c.train.max_steps, c.model.max_length, c.data.limit,
               c.data.max_chars, c.data.val_fraction, c.data.test_fraction, c.train.seed, c.train.precision,
               c.train.group_by_length, c.generate.num_beams, c.generate.max_new_tokens) for c in configs.values()}
    assert len(budget) == 1 and next(iter(budget))[9:11] == ("fp32", "never")
    assert {c.data.direction for s, c in configs.items() if s.endswith("de-en")} == {"to_english"}
    assert {c.data.direction for s, c in configs.items() if s.endswith("en-de")} == {"from_english"}
    assert configs["s2s-minilm-de-en"].model == configs["s2s-trainer-minilm-de-en"].model
    assert configs["s2s-minilm-de-en"].train.lr == configs["s2s-trainer-minilm-de-en"].train.lr
    assert not any(s.startswith("s2s-minilm-en") or "trainer-minilm-en" in s for s in seq2seq.SIDES)


def test_seq2seq_budget_check_names_the_sides_that_differ():
    import translation as seq2seq

    def run_of(side, steps, pairs):
        return {"side": side, "result": {"steps": steps, "data": {"train_examples": pairs}}}

    seq2seq.check_budget([run_of("s2s-minilm-de-en", 4, 8), run_of("s2s-smollm-en-de", 4, 9)])
    with pytest.raises(SystemExit, match="budgets differ: s2s-minilm-de-en 4 steps vs s2s-smollm-de-en 5"):
        seq2seq.check_budget([run_of("s2s-minilm-de-en", 4, 8), run_of("s2s-smollm-de-en", 5, 8)])
    with pytest.raises(SystemExit, match="de-en: the sides trained different numbers of pairs"):
        seq2seq.check_budget([run_of("s2s-minilm-de-en", 4, 8), run_of("s2s-smollm-de-en", 4, 7)])


# ---------------------------------------------------------------------------------------------
# The qa and retrieval parts (bench/answering.py)

def qa_result(side: str, tps: float, f1: list[float]) -> dict:
    """One qa-part run: 2 steps over 4 windows of 10 tokens, tested on len(f1) questions (EM = F1 here)."""
    n = len(f1)
    return {"tokens_per_s": tps, "train_seconds": 40 / tps, "train_tokens": 40, "steps": 2, "lrs": [1e-4, 5e-5],
            "precision": side.rsplit("-", 1)[1], "peak_rss_mb": 1000.0, "model_flops": 4e9,
            "params": {"body": 10_617_600, "head": 0, "adapter": 0},
            "data": {"train_questions": 2, "train_unanswerable": 1, "train_windows": 4, "train_tokens": 40,
                     "test_questions": n, "test_unanswerable": 1, "test_windows": 2 * n, "test_tokens": 20 * n},
            "exact_match": sum(f1) / n, "f1": sum(f1) / n, "has_answer_exact_match": sum(f1[1:]) / (n - 1),
            "has_answer_f1": sum(f1[1:]) / (n - 1), "no_answer_exact_match": f1[0], "no_answer_f1": f1[0], "n": n,
            "test_em": f1, "test_f1": f1, "test_span_f1": f1[1:], "has_answer_span_f1": sum(f1[1:]) / (n - 1)}


def test_qa_section_from_stored_figures(tmp_path, monkeypatch):
    """One column per side, medians (ranges); tunelab over Trainer per precision as ratios of medians with
    each round's; the per-question F1 difference paired over the same test questions."""
    import answering
    import results

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    res = {"qa-tunelab-fp32": [qa_result("qa-tunelab-fp32", t, [1.0, 1.0, 1.0, 0.0]) for t in (200.0, 220.0)],
           "qa-tunelab-bf16": [qa_result("qa-tunelab-bf16", t, [1.0, 1.0, 1.0, 0.0]) for t in (400.0, 400.0)],
           "qa-trainer-fp32": [qa_result("qa-trainer-fp32", t, [1.0, 0.0, 1.0, 0.0]) for t in (100.0, 110.0)],
           "qa-trainer-bf16": [qa_result("qa-trainer-bf16", t, f) for t, f in
                               ((250.0, [1.0, 1.0, 1.0, 0.0]), (150.0, [1.0, 1.0, 0.0, 0.0]))]}
    store(tmp_path / "out", "qa", answering.job("qa"), list(res), res)
    section = results.render(False, {}).split("## Extractive QA")[1]
    assert "| | tunelab fp32 | tunelab bf16 | HF Trainer fp32 | HF Trainer bf16 |" in section
    assert "| real tokens/s | 210 (200-220) | 400 | 105 (100-110) | 200 (150-250) |" in section
    # MFU: 4e9 FLOPs over 40/200 s = 20 GFLOP/s against the fp32 peak 100 -> 20%; bf16 against 1 GFLOP/s
    assert "| MFU (% of its precision's peak) | 21.0 (20.0-22.0) | 4000.0 | 10.5 (10.0-11.0) |" in section
    assert "| **test F1** | 0.7500 | 0.7500 | 0.5000 | 0.6250 (0.5000-0.7500) |" in section
    # fp32: medians 210 / 105 = 2.00, rounds 2.00 and 2.00; bf16: 400 / 200, rounds 1.60 and 2.67
    assert "- both fp32: tunelab **2.00x** tokens/s (per round 2.00-2.00x)" in section
    assert "- both bf16: tunelab **2.00x** tokens/s (per round 1.60-2.67x)" in section
    assert "(tunelab bf16, Trainer fp32): tunelab **3.81x**" in section
    # fp32 differences 0, 1, 0, 0: mean 0.25, SE stdev/sqrt(4) = 0.25
    assert "- test F1, fp32: tunelab - Trainer = +0.2500 ± 0.2500 (SE, paired over the same 4 questions): " \
           "**not resolved**" in section
    assert "- test F1, bf16: tunelab - Trainer = +0.0000 ± 0.0000 (SE, paired over the same 4 questions): the same " \
           "on every question" in section
    assert "| test, questions with an answer: F1 of the best span (no-answer rule set aside) | 0.6667 | 0.6667 | " \
           "0.3333 | 0.5000 (0.3333-0.6667) |" in section
    # best spans of the 3 questions with an answer: fp32 differences 1, 0, 0 -> +0.3333 ± 0.3333
    assert "- best-span F1, fp32: tunelab - Trainer = +0.3333 ± 0.3333 (SE, paired over the same 3 questions with " \
           "an answer)" in section
    assert "varied across repeats for HF Trainer bf16" in section
    assert "Data: 2 training questions (1 unanswerable) in 4 windows of at most 384 tokens sharing 128" in section
    assert "Measured 2026-02-01T10:00:00Z to 2026-02-02T10:05:00Z (UTC) on Test CPU" in section


def retrieval_results(build: float, hnsw_recall: float) -> dict[str, dict]:
    rankers = {name: {"recall@1": r1, "recall@5": 0.9, "recall@10": 0.95, "mrr@10": r1 + 0.05, "n": 210,
                      "passages": 209} for name, r1 in (("bm25", 0.5), ("base", 0.6), ("tuned", 0.7))}
    finetune = {"job_name": "finetune", "tokens_per_s": build * 10, "train_seconds": 60.0, "train_tokens": 1000,
                "steps": 25, "lrs": [3e-5] * 25, "best_step": 25, "wall_seconds": 90.0, "peak_rss_mb": 1200.0,
                "precision": "fp32", "rankers": rankers,
                "data": {"train_pairs": 800, "validation_pairs": 211, "test_pairs": 210}}
    index = {"job_name": "index", "tokens_per_s": build * 100, "train_tokens": 0, "lrs": [], "documents": 223,
             "passages": 1100, "passage_tokens": 120_000,
             "build_seconds": {"exact": 1100 / build, "hnsw": 1200 / build},
             "build_passages_per_s": {"exact": build, "hnsw": build * 11 / 12}, "queries": 2225, "embed_qps": 300.0,
             "exact_batch_qps": 5000.0, "exact_single_qps": 2000.0, "hnsw_batch_qps": 6000.0,
             "hnsw_single_qps": 2500.0, "query_qps": 50.0, "queries_one_by_one": 300,
             "hnsw_recall_at_10": hnsw_recall, "hnsw_exact_top10_share": 0.9, "peak_rss_mb": 700.0}
    return {"retrieval-finetune": finetune, "retrieval-index": index}


def test_retrieval_section_from_stored_figures(tmp_path, monkeypatch):
    """The three rankers' test metrics from the fine-tuning run; the index's build and search speeds as
    medians (ranges) and the HNSW recall; the note compares the measured embedding and search speeds."""
    import answering
    import results

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    runs = [retrieval_results(20.0, 0.99), retrieval_results(24.0, 0.98)]
    res = {side: [r[side] for r in runs] for side in answering.RETRIEVAL_SIDES}
    store(tmp_path / "out", "retrieval", answering.job("retrieval"), list(res), res)
    section = results.render(False, {}).split("## Retrieval")[1]
    assert "| BM25 (rank_bm25 Okapi, whole articles) | 0.5000 | 0.9000 | 0.9500 | 0.5500 |" in section
    assert "| MiniLM-L6, untuned | 0.6000 | 0.9000 | 0.9500 | 0.6500 |" in section
    assert "| MiniLM-L6 fine-tuned by tunelab | 0.7000 | 0.9000 | 0.9500 | 0.7500 |" in section
    assert "800 training pairs (data.limit 800), 1 epoch = 25 steps of 32" in section
    assert "each of its 210 headlines ranked against all 209 test articles" in section
    assert "identical in every repeat (2 runs)" in section
    assert "| build, exact: passages/s | 22.0 (20.0-24.0) |" in section
    assert "| build with the HNSW graph (--approximate hnsw): passages/s | 20.2 (18.3-22.0) |" in section
    assert "| **HNSW recall@10 against exact search** | 0.9850 (0.9800-0.9900) |" in section
    assert "At 1,100 vectors embedding a query (300/s batched) costs more than searching exactly (2000/s one " \
           "by one); HNSW search runs at 1.25x" in section


def test_qa_sides_share_one_job_and_load_strictly(tmp_path):
    """The qa configs pass tunelab's strict loader and differ only in precision; the Trainer side prepares
    the fp32 config (its bf16 is the Trainer's own autocast); bf16 sides drop out on a CPU without it."""
    import answering
    import run

    assert run.PARTS["qa"] == answering.QA_SIDES and run.PARTS["retrieval"] == answering.RETRIEVAL_SIDES
    assert {"qa", "retrieval"} <= set(run.ALL_PARTS)
    assert run.sides_of("qa", fast_bf16=False) == ["qa-tunelab-fp32", "qa-trainer-fp32"]
    fp32, bf16 = (answering.qa_config(p, tmp_path / p) for p in ("fp32", "bf16"))
    assert (fp32.train.precision, bf16.train.precision) == ("fp32", "bf16")
    bf16.train.precision, bf16.output_dir = "fp32", fp32.output_dir
    assert bf16 == fp32
    assert (fp32.task, fp32.data.val_fraction, fp32.qa.no_answer_threshold, fp32.train.group_by_length) == (
        "extractive_qa", 0.0, 0.0, "never")
    tuned = answering.finetune_config(tmp_path / "r")
    assert (tuned.task, tuned.data.train, tuned.train.precision) == ("retrieval", "builtin:bbc-headlines", "fp32")


def test_kept_predictions_pairs_each_question_and_restores_scores():
    """Inside the context tunelab's test scoring is unchanged and each question's (prediction, golds) is
    kept; a margin above the threshold 0 is "no answer"; afterwards the module's own function is back."""
    import answering
    from tunelab.tasks import extractive_qa

    original = extractive_qa.scores
    answers = [extractive_qa.Answer("£1bn", 0, 4, 5.0, 1.0), extractive_qa.Answer("Warner", 5, 11, 1.0, 3.0)]
    records = [{"answers": ["£1bn"]}, {"answers": []}]
    kept: list = []
    with answering.kept_predictions(kept):
        metrics, _ = extractive_qa.scores(answers, records, 0.0, 0.5)
    assert kept == [("£1bn", ["£1bn"], "£1bn"), ("", [], "Warner")]
    assert (metrics["exact_match"], metrics["no_answer_exact_match"]) == (1.0, 1.0)
    assert extractive_qa.scores is original


def test_hnsw_recall_is_the_share_of_the_exact_top_k_it_finds():
    """Query 1: HNSW finds a of the exact {a, b} (0.5); query 2: both (1.0): recall 0.75, whole top k 1 of 2.
    A one-query call is timed as well as the batch (the index sees both forms)."""
    from types import SimpleNamespace

    import answering

    class Fake:
        def __init__(self, tops):
            self.tops, self.calls = tops, []

        def search(self, vectors, k):
            self.calls.append(len(vectors))
            rows = self.tops if len(vectors) == len(self.tops) else self.tops[:len(vectors)]
            return [[SimpleNamespace(passage_id=p) for p in row[:k]] for row in rows]

    exact, hnsw = Fake([["a", "b"], ["c", "d"]]), Fake([["a", "x"], ["d", "c"]])
    out = answering.search_speeds(exact, hnsw, torch.zeros(2, 4).numpy(), 2)
    assert (out["hnsw_recall_at_10"], out["hnsw_exact_top10_share"]) == (0.75, 0.5)
    assert exact.calls == [1, 2, 1, 1] and out["exact_batch_qps"] > 0 and out["hnsw_single_qps"] > 0


# ---------------------------------------------------------------------------------------------
# The ner part (bench/tagging_bench.py)

# Per test sentence [gold entities, predicted, exactly right]: tunelab G 6, P 5, TP 3 (F1 6/11); the Trainer
# misses the second sentence's entity (TP 2, F1 4/11).
TUNELAB_COUNTS = [[2, 2, 2], [1, 1, 1], [2, 2, 0], [1, 0, 0]]
TRAINER_COUNTS = [[2, 2, 2], [1, 1, 0], [2, 2, 0], [1, 0, 0]]


def ner_result(side: str, tps: float, counts: list[list[int]], head: str = "abc") -> dict:
    """One ner-part run: 2 steps over 4 windows of 10 tokens, tested on len(counts) sentences."""
    g, p, tp = (sum(c[i] for c in counts) for i in range(3))
    return {"tokens_per_s": tps, "train_seconds": 40 / tps, "train_tokens": 40, "steps": 2, "lrs": [1e-4, 5e-5],
            "precision": side.rsplit("-", 1)[1], "peak_rss_mb": 1000.0, "model_flops": 4e9, "initial_head": head,
            "params": {"body": 10_617_600, "head": 0, "adapter": 0},
            "data": {"train_sentences": 4, "train_words": 30, "train_windows": 4, "train_tokens": 40,
                     "train_labelled": 30, "test_sentences": len(counts), "test_words": 20, "test_windows": 4,
                     "test_tokens": 30, "test_labelled": 20, "labels": 11},
            "entity_f1": 2 * tp / (g + p), "entity_precision": tp / p, "entity_recall": tp / g,
            "token_accuracy": 0.9, "n": len(counts), "entities": g, "per_type_f1": {"PER": 1.0},
            "test_counts": counts}


def test_ner_section_from_stored_figures(tmp_path, monkeypatch):
    """One column per side, medians (ranges); tunelab over Trainer as ratios of medians with each round's; the
    entity F1 difference paired over the same test sentences; whether every run began from one head."""
    import results
    import tagging_bench

    monkeypatch.setattr(record, "OUT", tmp_path / "out")
    res = {"ner-tunelab-fp32": [ner_result("ner-tunelab-fp32", t, TUNELAB_COUNTS) for t in (200.0, 220.0)],
           "ner-tunelab-bf16": [ner_result("ner-tunelab-bf16", t, TUNELAB_COUNTS) for t in (400.0, 400.0)],
           "ner-trainer-fp32": [ner_result("ner-trainer-fp32", t, TRAINER_COUNTS) for t in (100.0, 110.0)],
           "ner-trainer-bf16": [ner_result("ner-trainer-bf16", t, c) for t, c in
                                ((250.0, TUNELAB_COUNTS), (150.0, TRAINER_COUNTS))]}
    store(tmp_path / "out", "ner", tagging_bench.job(), list(res), res)
    section = results.render(False, {}).split("## Named-entity recognition")[1]
    assert "| | tunelab fp32 | tunelab bf16 | HF Trainer fp32 | HF Trainer bf16 |" in section
    assert "| real tokens/s | 210 (200-220) | 400 | 105 (100-110) | 200 (150-250) |" in section
    assert "| MFU (% of its precision's peak) | 21.0 (20.0-22.0) | 4000.0 | 10.5 (10.0-11.0) |" in section
    assert "| **test entity F1** (seqeval strict IOB2) | 0.5455 | 0.5455 | 0.3636 | 0.4545 (0.3636-0.5455) |" \
        in section
    assert "- both fp32: tunelab **2.00x** tokens/s (per round 2.00-2.00x)" in section
    assert "- both bf16: tunelab **2.00x** tokens/s (per round 1.60-2.67x)" in section
    assert "(tunelab bf16, Trainer fp32): tunelab **3.81x**" in section
    # 2/11 = 0.1818; linearised SE by hand: u = (2 dTP_i - 2/11 d_i) / 2.75 over d = 4, 2, 4, 1 -> 0.2038
    assert "- test entity F1, fp32: tunelab - Trainer = +0.1818 ± 0.2038 (SE, paired over the same 4 " \
           "sentences): **not resolved**" in section
    assert "- test entity F1, bf16: tunelab - Trainer = +0.0000 ± 0.0000 (SE, paired over the same 4 sentences): " \
           "the same entities in every sentence" in section
    assert "varied across repeats for HF Trainer bf16" in section
    assert "every run started from the same initial token head (fingerprint of its weights abc)" in section
    assert "Data: 4 training sentences (30 words, data.limit 1200) in 4 windows of at most 128 tokens, 40 real " \
           "tokens of which 30 carry a label; 11 IOB2 tags; 1 epoch = 2 steps of 16" in section
    assert "Measured 2026-02-01T10:00:00Z to 2026-02-02T10:05:00Z (UTC) on Test CPU" in section
    res["ner-trainer-bf16"][1]["initial_head"] = "def"
    store(tmp_path / "out", "ner", tagging_bench.job(), list(res), res)
    assert "**the runs started from 2 different token heads**" in results.render(False, {})


def test_ner_sentence_counts_are_strict_and_sum_to_tunelabs_f1():
    """A predicted entity opened by I- is none in strict IOB2 (only the LOC counts); the counts' F1 is the one
    tunelab's ner_metrics reports for the same tags."""
    import tagging_bench
    from tunelab.evaluate.ner_metrics import ner_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    counts = tagging_bench.sentence_counts(gold, pred)
    assert counts == [[2, 1, 1], [1, 1, 0]]
    assert tagging_bench.f1_of(counts) == pytest.approx(0.4) == ner_metrics(gold, pred)["entity_f1"]


def test_ner_f1_difference_and_its_standard_error():
    """Identical sides: 0 ± 0. Otherwise the linearised SE of the ratio of sums, worked by hand (see the
    section test); one sentence has no SE."""
    import tagging_bench

    assert tagging_bench.f1_difference(TUNELAB_COUNTS, TUNELAB_COUNTS) == (0.0, 0.0)
    d, se = tagging_bench.f1_difference(TUNELAB_COUNTS, TRAINER_COUNTS)
    assert d == pytest.approx(2 / 11)
    u = [(2 * t - 2 / 11 * n) / 2.75 for t, n in zip((0, 1, 0, 0), (4, 2, 4, 1))]
    assert se == pytest.approx(math.sqrt(sum(x * x for x in u) / 12)) and se == pytest.approx(0.20378, abs=1e-5)
    assert math.isnan(tagging_bench.f1_difference([[1, 1, 1]], [[1, 1, 0]])[1])


def test_ner_kept_tags_pairs_each_sentence_and_restores_scores():
    """Inside the context the job's scoring is unchanged and each sentence's (gold, predicted) tags are kept;
    afterwards the module's own function is back."""
    from types import SimpleNamespace

    import tagging_bench
    from tunelab.tasks import token_classification

    original = token_classification.scores
    split = SimpleNamespace(records=[{"tags": ["B-PER", "O"]}, {"tags": ["O"]}])
    tagged = SimpleNamespace(tags=[["B-PER", "O"], ["B-LOC"]], loss=0.5)
    kept: list = []
    with tagging_bench.kept_tags(kept):
        metrics = token_classification.scores(split, tagged)
    assert kept == [(["B-PER", "O"], ["B-PER", "O"]), (["O"], ["B-LOC"])]
    assert (metrics["entity_precision"], metrics["entity_recall"], metrics["loss"]) == (0.5, 1.0, 0.5)
    assert token_classification.scores is original


def test_ner_sides_share_one_job_and_load_strictly(tmp_path):
    """The ner configs pass tunelab's strict loader and differ only in precision; the Trainer side prepares
    the fp32 config (its bf16 is the Trainer's own autocast); bf16 sides drop out on a CPU without it."""
    import run
    import tagging_bench

    assert run.PARTS["ner"] == tagging_bench.SIDES and "ner" in run.ALL_PARTS
    assert run.sides_of("ner", fast_bf16=False) == ["ner-tunelab-fp32", "ner-trainer-fp32"]
    assert run.job_of("ner") == tagging_bench.NER_JOB
    fp32, bf16 = (tagging_bench.ner_config(p, tmp_path / p) for p in ("fp32", "bf16"))
    assert (fp32.train.precision, bf16.train.precision) == ("fp32", "bf16")
    bf16.train.precision, bf16.output_dir = "fp32", fp32.output_dir
    assert bf16 == fp32
    assert (fp32.task, fp32.data.train, fp32.data.val_fraction, fp32.train.group_by_length, fp32.train.log_every) \
        == ("token_classification", "builtin:ner-synthetic", 0.0, "never", 1)


def test_ner_precisions_agree_compares_each_tools_sentences():
    """tunelab's bf16 run found what its fp32 run found in every sentence; the Trainer's differs in one."""
    import tagging_bench

    res = {"ner-tunelab-fp32": [ner_result("ner-tunelab-fp32", 1.0, TUNELAB_COUNTS)],
           "ner-tunelab-bf16": [ner_result("ner-tunelab-bf16", 1.0, TUNELAB_COUNTS)],
           "ner-trainer-fp32": [ner_result("ner-trainer-fp32", 1.0, TUNELAB_COUNTS)],
           "ner-trainer-bf16": [ner_result("ner-trainer-bf16", 1.0, TRAINER_COUNTS)]}
    assert tagging_bench.precisions_agree(res) == [
        "- tunelab: bf16 and fp32 training gave the same entity counts in every test sentence",
        "- the Trainer: bf16 and fp32 training gave different entity counts in 1 of 4 test sentences"]
    assert tagging_bench.precisions_agree({k: v for k, v in res.items() if k.endswith("fp32")}) == []


# ---------------------------------------------------------------------------------------------
# The compress part (bench/tradeoff.py)


def test_compress_part_jobs_pass_tunelabs_checks(tmp_path):
    """Every variant's options are a valid `tunelab compress` request with the part's one retraining budget;
    the teacher and student configs pass the strict loader and differ only in method (and output_dir)."""
    import run
    import tradeoff
    from tunelab.cli import build_parser
    from tunelab.cli.compress import request_of
    from tunelab.compress.pipeline import check_request
    from tunelab.config import config_from_dict

    assert "compress" in run.ALL_PARTS and run.HEADINGS["compress"] == "## Compression trade-off"
    j = tradeoff.job(smoke=False, fast_bf16=False)
    assert (j["teacher"]["precision"], j["retrain_steps"]) == ("fp32", 200)
    parser = build_parser()
    for name, options in j["variants"].items():
        req = request_of(parser.parse_args(["compress", str(tmp_path), *options, "--name", name]))
        check_request(req)
        assert req.retrain_steps == (200 if "retrain" in name else None), name
        assert (req.quantize is not None) == ("int8" in name), name
    teacher = config_from_dict(tradeoff.run_config(j, tmp_path / "t", {"name": "full"}))
    student = config_from_dict(tradeoff.run_config(j, tmp_path / "s", {
        "name": "distill", "teacher": str(tmp_path / "t"), **tradeoff.DISTILL, "student_layers": [0, 2, 4]}))
    assert (teacher.data, teacher.train, teacher.model) == (student.data, student.train, student.model)
    assert (teacher.data.limit, teacher.train.epochs, teacher.model.max_length) == (1500, 3, 128)
    smoke = tradeoff.job(smoke=True, fast_bf16=True)
    assert (smoke["teacher"]["limit"], smoke["retrain_steps"], smoke["teacher"]["precision"]) == (120, 4, "bf16")


def compress_record() -> dict:
    """A stored compress measurement with hand-set figures."""
    import tradeoff

    def row(variant, params, mb, lat, thr, f1, acc, kept, sparsity=None):
        return {"variant": variant, "parameters": params, "file_mb": mb, "latency_ms": lat, "throughput": thr,
                "value": f1, "accuracy": acc, "retained_percent": kept, "sparsity": sparsity, "test_examples": 223}

    rows = [row("base", 22_700_000, 90.9, 10.0, 100.0, 0.96, 0.97, 100.0),
            row("int8-dynamic", 22_700_000, 40.0, 5.0, 170.0, 0.95, 0.96, 98.96),
            row("magnitude-50+retrain", 22_700_000, 90.9, 10.2, 99.0, 0.94, 0.95, 97.92, 0.5)]
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "avx512_bf16": False, "amx": False,
               "fast_bf16": False, "torch": "2.13.0", "python": "3.11"}
    cmd = {"seconds": 61.0, "steps": 282, "best_step": 282}
    return {"part": "compress", "smoke": False, "job": tradeoff.job(False, False),
            "started": "2026-11-26T17:00:00Z", "finished": "2026-11-26T17:15:00Z", "load_before": [0.1, 0, 0],
            "load_after": [1.9, 0, 0], "machine": machine, "plot": "compress-x.png", "file": "bench/out/compress-x.json",
            "commands": {"teacher": cmd, "int8-dynamic": {"seconds": 12.4}, "student-3L-distilled": cmd},
            "report": {"flags": {"avx2": True, "avx512_vnni": False}, "threads": 2, "rows": rows}}


def test_compress_section_renders_stored_figures():
    """The section is the stored rows: speed-ups and % against the first row, sparsity shown, flags and
    threads stated, the plot linked, every command's wall time."""
    import tradeoff

    text = "\n".join(tradeoff.markdown(compress_record()))
    assert "| int8-dynamic | int8 weights and int8 matrix products (activations quantized per batch) | 22.70M | " \
           "40.0 | 5.00 | 170.0 | 2.00x / 1.70x | 0.9500 | 0.9600 | 99.0 |" in text
    assert "| magnitude-50+retrain | " in text and "22.70M (50% zeros) | 90.9 | 10.20 | 99.0 | 0.98x / 0.99x |" in text
    assert "CPU flags: avx2." in text and "--threads 2` on the teacher's 223 test articles" in text
    assert "![latency against test F1](out/compress-x.png)" in text and "Test CPU, 2 cores" in text
    assert "teacher 61 s; int8-dynamic 12 s; student-3L-distilled 61 s." in text
    assert "1500 training articles" in text and "3 epoch(s) = 282 steps of 16" in text and "fp32" in text
    assert "- Resolution: 223 test articles, one article = 0.0045 of accuracy; the binomial SE of the teacher's " \
           "accuracy is ± 0.0114, so differences under about 0.023 are not resolved." in text
    assert "Over 100%" not in text and "What distillation added" not in text  # no variant above 100%, no students


# ---------------------------------------------------------------------------------------------
# The explain part (bench/explain_bench.py)


def test_explain_part_job_is_the_example_run_and_the_commands_defaults(tmp_path):
    """The part's run is examples/bbc-news.yaml (same data, model, training) and its settings are `tunelab
    explain`'s defaults, over every method; the smoke job is tiny."""
    import inspect

    import explain_bench
    import run
    from tunelab.config import config_from_dict, load_config
    from tunelab.explain import METHODS
    from tunelab.explain.attribute import explain_text

    assert "explain" in run.ALL_PARTS and run.HEADINGS["explain"] == "## Explanations"
    j = explain_bench.job(smoke=False, fast_bf16=False)
    cfg = config_from_dict(explain_bench.run_config(j, tmp_path / "r"))
    example = load_config(Path(__file__).resolve().parent.parent / "examples" / "bbc-news.yaml")
    assert (cfg.data, cfg.model, cfg.method) == (example.data, example.model, example.method)
    assert {k: v for k, v in vars(cfg.train).items() if k != "precision"} == \
        {k: v for k, v in vars(example.train).items() if k != "precision"}
    defaults = {k: p.default for k, p in inspect.signature(explain_text).parameters.items()}
    assert {k: j["eval"][k] for k in ("steps", "window", "samples", "seed")} == \
        {k: defaults[k] for k in ("steps", "window", "samples", "seed")}
    assert j["eval"]["methods"] == list(METHODS) and j["eval"]["n"] == 80 and j["threads"] == 2
    assert explain_bench.settings_of("attention", j["eval"]) == {}
    smoke = explain_bench.job(smoke=True, fast_bf16=True)
    assert (smoke["run"]["limit"], smoke["run"]["precision"], smoke["eval"]["n"]) == (48, "bf16", 3)


def explain_record() -> dict:
    """A stored explain measurement with hand-set figures: 4 articles, two methods."""
    import explain_bench

    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "avx512_bf16": False, "amx": False,
               "fast_bf16": False, "torch": "2.13.0", "python": "3.11"}
    articles = [{"tokens": t, "target": "sport", "label": lab, "probability": p, "random_aopc": r,
                 "random_curve": [p, p]} for t, lab, p, r in ((128, "sport", 0.9, 0.01), (100, "sport", 0.8, 0.03),
                                                             (128, "tech", 0.7, 0.02), (60, "sport", 0.95, 0.0))]
    methods = {"ig": {"aopc": [0.31, 0.43, 0.22, 0.40], "seconds": [4.0, 5.0, 6.0, 3.0],
                      "delta": [0.001, -0.004, 0.002, 0.0005],
                      "settings": {"method": "ig", "steps": 50, "truncated_at": 700, "baseline": "pad"},
                      "curve": [0.84, 0.5]},
               "attention": {"aopc": [0.02, 0.01, 0.04, 0.0], "seconds": [0.5, 0.7, 0.6, 0.4], "delta": [],
                             "settings": {"method": "attention", "scores": "attention rollout (not one)"},
                             "curve": [0.84, 0.8]}}
    measure = {"data": "builtin:bbc-news (test split)", "n": 4, "fractions": [0.0, 0.5], "random_draws": 5,
               "threads": 2, "articles": articles, "methods": methods, "random_curve": [0.84, 0.82],
               "peak_rss_mb": 900.0, "wall_seconds": 300.0}
    return {"part": "explain", "smoke": False, "job": explain_bench.job(False, False),
            "started": "2026-11-26T18:00:00Z", "finished": "2026-11-26T18:14:00Z", "load_before": [0.2, 0, 0],
            "load_after": [2.1, 0, 0], "machine": machine, "cpu_flags": {"avx2": True, "avx512f": False},
            "train": {"seconds": 170.0, "steps": 76, "test": {"f1_macro": 0.95}}, "measure": measure,
            "plot": "explain-x.png", "file": "bench/out/explain-x.json"}


def test_explain_section_renders_stored_figures():
    """The table is the stored per-article figures: mean AOPCs, the paired difference and its SE, articles above
    random, median seconds with the range; the reading says what is resolved; flags, date and plot are there."""
    import explain_bench

    text = "\n".join(explain_bench.markdown(explain_record()))
    # ig: AOPC mean 0.34, random 0.015; differences 0.30 0.40 0.20 0.40 -> +0.3250, SD 0.0957 / 2 = 0.0479
    assert "| ig | steps 50 | 0.3400 | 0.0150 | +0.3250 ± 0.0479 | 4/4 | 4.50 (3.00-6.00) |" in text
    # attention: differences 0.01 -0.02 0.02 0 -> +0.0025, SD 0.0171 / 2 = 0.0085
    assert "| attention | attention rollout | 0.0175 | 0.0150 | +0.0025 ± 0.0085 | 2/4 | 0.55 (0.40-0.70) |" in text
    # ig over attention: differences 0.29 0.42 0.18 0.40: +0.3225, SD 0.1109 / 2 = 0.0554
    assert "- Highest AOPC: ig; its lead over attention is +0.3225 ± 0.0554 (paired over the articles): resolved" \
        in text
    assert "- Not resolved above random deletion: attention." in text
    assert "median 0.0015, largest 0.004 (F = " in text
    assert "- The explained articles: 4, 3 predicted right; 60-128 tokens (median 114)" in text
    assert "CPU flags: avx2." in text and "Test CPU, 2 cores" in text and "2026-11-26T18:00:00Z" in text
    assert "600 training articles, max_length 128, 2 epoch(s) = 76 steps of 16, fp32" in text
    assert "test F1 macro 0.9500" in text and "![mean deletion curves](out/explain-x.png)" in text
    assert "training 170 s, explanations and curves 300 s (peak RSS 900 MB)" in text


def test_explain_section_is_rendered_into_results(tmp_path, monkeypatch):
    """results.md takes the newest complete stored explain measurement, under its own heading."""
    import explain_bench
    import results

    rec = explain_record()
    rec.pop("file")
    (tmp_path / "explain-20261126T180000Z.json").write_text(json.dumps({**rec, "complete": True}))
    monkeypatch.setattr(record, "OUT", tmp_path)
    text = results.render(False, {})
    assert text.count("## Explanations: faithfulness on the BBC News MiniLM run") == 1
    assert explain_bench.markdown({**rec, "file": "bench/out/explain-20261126T180000Z.json"})[0] in text
