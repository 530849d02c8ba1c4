"""bf16 mixed precision, the default (`train.precision: auto`) on CPUs that multiply bf16 natively, against fp32.

The rest of the suite forces fp32 (tests/conftest.py). Here `cpu_has_fast_bf16` is made to say yes, so `auto`
picks bf16 as it does on such a machine; bf16 autocast also runs on any x86 CPU (slowly without native
support), and these runs are tiny. Each run is compared with the same run in fp32:

- autocast is in effect: every nn.Linear output inside a training forward is bfloat16 (fp32 in the fp32 run),
  and evaluation stays in fp32;
- the loss curves agree within LOSS_TOL but are not identical (so bf16 arithmetic really ran);
- each trainable tensor's total update agrees within UPDATE_TOL (relative, in norm) and the weights stay fp32
  (the runs use SGD, so that this comparison can be tight: see UPDATE_TOL).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from causal_helpers import alpaca_records, chat_records, write_jsonl
from tunelab.config import config_from_dict

# bf16 keeps 8 significant bits: each matmul input is rounded by up to 2^-9 = 0.2% (relative), with fp32 sums.
# A loss near 4.6 (ln of the ~100-token vocabulary) then moves by a few 1e-3. Measured over these 3-step runs:
# at most 0.0033 (causal, full), 0.0005 (classification), 0.0003 (packed LoRA); 0.015 is 4.5x the largest.
LOSS_TOL = 0.015
# SGD keeps each update proportional to its gradient (AdamW would divide rounding noise in tiny gradients by
# their tiny second moments), so the updates (after - before, on fp32 master weights) differ only by the
# gradients' bf16 rounding: measured at most 1.1% of an update's norm; 5% is 4.5x that.
UPDATE_TOL = 0.05


def causal_cfg(model_dir: Path, train_file: Path, out: Path, **sections) -> object:
    cfg = {"task": "causal_lm", "model": {"name": str(model_dir), "max_length": 128},
           "data": {"train": str(train_file)}, "method": {"name": "full"},
           "train": {"max_steps": 3, "batch_size": 4, "lr": 1.0, "optimizer": "sgd", "log_every": 1, "scheduler": "constant",
                     "seed": 0, "device": "cpu", "early_stopping": {"metric": "loss"}},
           "generate": {"max_new_tokens": 4, "samples_in_eval": 0}, "output_dir": str(out)}
    for section, values in sections.items():
        cfg[section].update(values)
    return config_from_dict(cfg)


@pytest.fixture(scope="module")
def causal_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bf16-data")
    return {"alpaca": write_jsonl(folder / "alpaca.jsonl", alpaca_records(24)),
            "chat": write_jsonl(folder / "chat.jsonl", chat_records(24))}


def case_config(case: str, precision: str, out: Path, tiny_bert, data_dir, tiny_dir, causal_data, helpers):
    train = {"precision": precision}
    if case == "classification-lora":
        return helpers.tiny_config(tiny_bert, data_dir / "train.jsonl", out, {
            "method.name": "lora", "model.dropout": 0.0, "train.optimizer": "sgd", "train.lr": 1.0, "train.precision": precision})
    if case == "causal-full":
        return causal_cfg(tiny_dir, causal_data["alpaca"], out, train=train)
    assert case == "causal-lora-packed"
    return causal_cfg(tiny_dir, causal_data["chat"], out, train=train, data={"packing": True},
                      method={"name": "lora", "target_modules": "all-linear", "dropout": 0.0})


def train_and_record(cfg, helpers) -> dict:
    """Train; the logged losses, the trainable tensors before / after, and nn.Linear output dtypes by mode."""
    dtypes = {"train": set(), "eval": set()}
    original = nn.Linear.forward

    def spy(self, x):
        out = original(self, x)
        dtypes["train" if self.training else "eval"].add(out.dtype)
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.Linear, "forward", spy)
        run_dir, seen = helpers.train_and_capture(cfg)
    trainable = {n: p.detach().clone() for n, p in seen["model"].named_parameters() if p.requires_grad}
    return {"losses": [r["loss"] for r in helpers.read_metrics(run_dir, "train")], "dtypes": dtypes,
            "before": {n: seen["before"][n] for n in trainable}, "after": trainable,
            "summary": json.loads((run_dir / "eval.json").read_text())}


@pytest.mark.parametrize("case", ["classification-lora", "causal-full", "causal-lora-packed"])
def test_bf16_by_default_on_a_bf16_cpu_matches_fp32(case, monkeypatch, tmp_path, tiny_bert, data_dir, tiny_dir,
                                                     causal_data, helpers):
    monkeypatch.setattr("tunelab.train.precision.cpu_has_fast_bf16", lambda: True)
    runs = {precision: train_and_record(case_config(case, precision, tmp_path / precision, tiny_bert, data_dir,
                                                    tiny_dir, causal_data, helpers), helpers)
            for precision in ("auto", "fp32")}
    bf16, fp32 = runs["auto"], runs["fp32"]
    assert bf16["dtypes"]["train"] == {torch.bfloat16} and fp32["dtypes"]["train"] == {torch.float32}
    assert bf16["dtypes"]["eval"] == {torch.float32}
    assert len(bf16["losses"]) == len(fp32["losses"]) == 3
    gaps = [abs(a - b) for a, b in zip(bf16["losses"], fp32["losses"])]
    assert max(gaps) < LOSS_TOL and max(gaps) > 1e-6, gaps
    worst = 0.0
    for name, after in bf16["after"].items():
        assert after.dtype == torch.float32, name
        update, reference = after - bf16["before"][name], fp32["after"][name] - fp32["before"][name]
        assert torch.equal(bf16["before"][name], fp32["before"][name])
        assert reference.norm() > 0, f"{name} did not move in fp32"
        worst = max(worst, float((update - reference).norm() / reference.norm()))
    assert worst < UPDATE_TOL
