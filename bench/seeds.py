"""The bench's quality figures over several seeds: tunelab and the Trainer, both in bf16.

A single bench run compares one initialisation of the new weights (LoRA's A, or the classification head),
one batch order and one stream of dropout masks per tool. Those moved the LoRA validation loss of a 6-step
run (48 conversations) by about 0.01, and the MiniLM test accuracy by a few articles. Here the data split
stays the bench's (seed 42) and only those three vary with the seed, so the means compare the training.

    python bench/seeds.py --part lm                # seeds 42 1 2; writes its section into bench/results.md
    python bench/seeds.py --part classification --seeds 42 1 2 3
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

HEADINGS = {"lm": "## Instruction tuning: validation loss over seeds",
            "classification": "## Classification: test accuracy over seeds"}


def split_of_42(config):
    """A bench config function, but with the data split of seed 42 whatever the training seed."""
    def make(*args, **kwargs):
        cfg = config(*args, **kwargs)
        cfg.train.seed = 42
        return cfg
    return make


def reseeded(job_class, seed: int):
    """The task's job: prepared (split, model, new weights) as with seed 42, then the new weights drawn
    again from `seed`, and `seed` for the batch order and the dropout masks."""
    import torch

    class Job(job_class):
        def prepare(self):
            super().prepare()
            torch.manual_seed(seed)
            for name, p in self.model.named_parameters():
                if "lora_A" in name:  # peft's own initialisation of A (B starts at zero)
                    torch.nn.init.kaiming_uniform_(p.data, a=math.sqrt(5))
                elif name.startswith("classifier.") and name.endswith("weight"):  # BERT's head initialisation
                    torch.nn.init.normal_(p.data, std=0.02)
            self.cfg.train.seed = seed
    return Job


def tunelab_side(part: str, seed: int) -> float:
    from tunelab.run import train

    if part == "lm":
        import causal
        from tunelab.tasks.causal_lm import CausalLMJob

        config, job, key = causal.lm_config, CausalLMJob, ("best_validation", "loss")
    else:
        import run
        from tunelab.tasks.classification import ClassificationJob

        config, job, key = run.tunelab_config, ClassificationJob, ("test", "accuracy")
    cfg = split_of_42(config)(str(HERE / "out" / f"seed-{part}-{seed}"), "bf16")
    run_dir = train(cfg, overwrite=True, show_progress=False, log=lambda m: None, job_factory=reseeded(job, seed))
    result = json.loads((run_dir / "eval.json").read_text())
    return result[key[0]][key[1]]


def trainer_side(part: str, seed: int) -> float:
    if part == "lm":
        import causal

        causal.lm_config = split_of_42(causal.lm_config)
        causal.LM_JOB["seed"] = seed  # LoRA initialisation, batch order and dropout masks
        return causal.run_trainer_lm(bf16=True)["val_loss"]
    import run

    run.tunelab_config = split_of_42(run.tunelab_config)
    run.JOB["seed"] = seed  # head initialisation, batch order and dropout masks
    return run.run_trainer(bf16=True)["accuracy"]


def child(part: str, side: str, seed: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--part", part, "--side", side, "--seeds", str(seed)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{side} seed {seed} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def section(part: str, seeds: list[int], res: dict[str, list[float]]) -> str:
    import record
    from causal import LM_JOB
    from run import JOB, MARKER

    rows = ["| seed | " + " | ".join(str(s) for s in seeds) + " | mean | sd |",
            "|---" * (len(seeds) + 3) + "|"]
    for name, losses in res.items():
        rows.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in losses)
                    + f" | {statistics.mean(losses):.4f} | {statistics.stdev(losses):.4f} |")
    names = list(res)
    diff = statistics.mean(res[names[0]]) - statistics.mean(res[names[1]])
    if part == "lm":
        what = (f"the LoRA job above ({LM_JOB['limit']} conversations, 1 epoch); the seed sets the LoRA "
                "initialisation, the batch order and the dropout masks. Final validation loss (same function "
                "for both)")
    else:
        what = (f"the MiniLM job above ({JOB['limit']} articles, {JOB['epochs']} epochs); the seed sets the "
                "classification head's initialisation, the batch order and the dropout masks. Test accuracy "
                "on the same 223 articles")
    return "\n".join([
        HEADINGS[part], MARKER, "",
        f"`python bench/seeds.py --part {part}`: {what}, both tools in bf16, the data split of seed 42 "
        "throughout; the Trainer with tunelab's optimizer, schedule and best-by-validation checkpoint "
        f"(bench/fair.py). Written {record.utc_now()} on {record.describe_machine(record.machine())}.", "",
        *rows, "",
        f"Mean difference tunelab - Trainer: {diff:+.4f}.", ""])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=list(HEADINGS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    ap.add_argument("--side", choices=["tunelab", "trainer"])
    args = ap.parse_args()
    if args.side:
        print((tunelab_side if args.side == "tunelab" else trainer_side)(args.part, args.seeds[0]))
        return
    names = ("tunelab", "Trainer + peft" if args.part == "lm" else "HF Trainer")
    res: dict[str, list[float]] = {name: [] for name in names}
    for seed in args.seeds:
        for name, side in zip(names, ("tunelab", "trainer")):
            res[name].append(child(args.part, side, seed))
        print(seed, *(res[n][-1] for n in names), flush=True)
    text = section(args.part, args.seeds, res)
    print(text)
    heading = HEADINGS[args.part]
    results = HERE / "results.md"
    old = results.read_text() if results.is_file() else "# tunelab benchmark\n"
    if heading in old:  # replace the previous section (up to the next heading)
        head, rest = old.split(heading, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else "\n"
        old = head.rstrip("\n") + "\n\n" + text + tail
    else:
        old = old.rstrip("\n") + "\n\n" + text
    results.write_text(old.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
