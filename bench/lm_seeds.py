"""Final validation loss of the LoRA bench over several seeds: tunelab and Trainer + peft, both in bf16.

The bench's single run compares one LoRA initialisation, one batch order and one stream of dropout masks
per tool, and those move the validation loss of a 6-step run by about 0.01. Here the data split stays the
bench's (seed 42) and only those three vary with the seed, so the means compare the training itself.

    python bench/lm_seeds.py                  # seeds 42 1 2 3 4, writes its section into bench/results.md
    python bench/lm_seeds.py --seeds 42 1
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

HEADING = "## Instruction tuning: validation loss over seeds"


def split_of_42(config):
    """lm_config, but with the data split of seed 42 whatever the training seed."""
    def make(*args, **kwargs):
        cfg = config(*args, **kwargs)
        cfg.train.seed = 42
        return cfg
    return make


def tunelab_side(seed: int) -> float:
    import torch

    import causal
    from tunelab.run import train
    from tunelab.tasks.causal_lm import CausalLMJob

    class Job(CausalLMJob):
        def prepare(self):
            super().prepare()  # split, tokenizer, model and LoRA of seed 42
            torch.manual_seed(seed)
            for name, p in self.model.named_parameters():
                if "lora_A" in name:  # peft's own initialisation of A (B starts at zero)
                    torch.nn.init.kaiming_uniform_(p.data, a=math.sqrt(5))
            self.cfg.train.seed = seed  # batch order and dropout masks

    cfg = split_of_42(causal.lm_config)(str(HERE / "out" / f"seed-{seed}"), "bf16")
    run_dir = train(cfg, overwrite=True, show_progress=False, log=lambda m: None, job_factory=Job)
    return json.loads((run_dir / "eval.json").read_text())["best_validation"]["loss"]


def trainer_side(seed: int) -> float:
    import causal

    causal.lm_config = split_of_42(causal.lm_config)
    causal.LM_JOB["seed"] = seed  # LoRA initialisation, batch order and dropout masks
    return causal.run_trainer_lm(bf16=True)["val_loss"]


def child(side: str, seed: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--side", side, "--seeds", str(seed)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{side} seed {seed} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def section(seeds: list[int], res: dict[str, list[float]]) -> str:
    from causal import LM_JOB

    rows = ["| seed | " + " | ".join(str(s) for s in seeds) + " | mean | sd |",
            "|---" * (len(seeds) + 3) + "|"]
    for name, losses in res.items():
        rows.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in losses)
                    + f" | {statistics.mean(losses):.4f} | {statistics.stdev(losses):.4f} |")
    diff = statistics.mean(res["tunelab"]) - statistics.mean(res["Trainer + peft"])
    return "\n".join([
        HEADING, "",
        f"`python bench/lm_seeds.py`: the LoRA job above ({LM_JOB['limit']} conversations, 1 epoch), both tools "
        "in bf16, the data split of seed 42 throughout; the seed sets the LoRA initialisation, the batch order "
        "and the dropout masks. Final validation loss (same function for both):", "",
        *rows, "",
        f"Mean difference tunelab - Trainer: {diff:+.4f}.", ""])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4])
    ap.add_argument("--side", choices=["tunelab", "trainer"])
    args = ap.parse_args()
    if args.side:
        print((tunelab_side if args.side == "tunelab" else trainer_side)(args.seeds[0]))
        return
    res: dict[str, list[float]] = {"tunelab": [], "Trainer + peft": []}
    for seed in args.seeds:
        res["tunelab"].append(child("tunelab", seed))
        res["Trainer + peft"].append(child("trainer", seed))
        print(seed, res["tunelab"][-1], res["Trainer + peft"][-1], flush=True)
    text = section(args.seeds, res)
    print(text)
    results = HERE / "results.md"
    old = results.read_text() if results.is_file() else "# tunelab benchmark\n"
    if HEADING in old:  # replace the previous section (up to the next heading)
        head, rest = old.split(HEADING, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else "\n"
        old = head.rstrip("\n") + "\n\n" + text + tail
    else:
        old = old.rstrip("\n") + "\n\n" + text
    results.write_text(old.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
