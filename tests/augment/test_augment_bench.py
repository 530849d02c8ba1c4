"""The bench part `augment` (bench/augment_bench.py) without training: both sides of a point get the same
steps and the example's settings, a point whose sides differ stops the part, and results.md's section is
rendered from stored figures alone."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import augment_bench  # noqa: E402
import record  # noqa: E402


def test_both_sides_take_the_same_steps_with_the_examples_settings(tmp_path):
    import run

    from tunelab.config import config_from_dict, load_config
    from tunelab.tasks import task_for

    assert "augment" in run.ALL_PARTS and run.HEADINGS["augment"] == "## Augmentation"
    j = augment_bench.job(smoke=False, fast_bf16=False)
    assert [p["n"] for p in j["points"]] == [50, 100, 200, 400] and j["copies"] == 4
    example = load_config(Path(__file__).resolve().parents[2] / "examples" / "bbc-news.yaml")
    plain, aug = (config_from_dict(augment_bench.run_config(j, tmp_path, 50, 1, a)) for a in (False, True))
    assert task_for(plain).check_config(plain) == [] and task_for(aug).check_config(aug) == []
    # 2 epochs of 50 x (1 + 4) records in batches of 16: 2 x 16 steps, on both sides
    assert plain.train.max_steps == aug.train.max_steps == augment_bench.steps_of(50, j) == 32
    assert (plain.data.augment.copies, aug.data.augment.copies, aug.data.augment.rate) == (0, 4, 0.1)
    assert aug.data.augment.seed is None and plain.train.seed == aug.train.seed == 1  # the edits follow the seed
    assert (plain.data.limit, plain.data.val_fraction, plain.data.test) == (50, 0.0, str(tmp_path / "test.jsonl"))
    assert (plain.model, plain.method) == (example.model, example.method)
    keys = ("batch_size", "lr", "optimizer", "weight_decay", "scheduler", "warmup_ratio", "max_grad_norm")
    assert {k: getattr(plain.train, k) for k in keys} == {k: getattr(example.train, k) for k in keys}


def test_the_added_copies_are_read_from_the_augment_log_line():
    lines = ["data.limit: using 50 training records",
             "data.augment: added 198 edited copies of 50 training records (synonym 50, insert 49, swap 51, "
             "delete 48, seed 1, rate 0.1); 2 not added: equal to their record or an earlier copy"]
    assert augment_bench.added_of(lines) == {"synonym": 50, "insert": 49, "swap": 51, "delete": 48}
    assert augment_bench.added_of(lines[:1]) == {}


def result(n, seed, augmented, correct, f1, examples=None, steps=32):
    added = {"synonym": examples - n} if augmented else {}
    return {"n": n, "seed": seed, "augmented": augmented, "steps": steps, "train_seconds": 10.0, "wall_seconds": 30.0,
            "train_examples": examples or n, "test_examples": len(correct), "accuracy": sum(correct) / len(correct),
            "f1_macro": f1, "augment_log": [], "added": added, "test_correct": correct}


RUNS = [result(50, 42, False, [1, 0, 0, 0, 1, 0, 1, 0], 0.30),
        result(50, 42, True, [1, 1, 1, 1, 1, 1, 1, 0], 0.85, 250),
        result(50, 1, False, [0, 0, 0, 0, 1, 1, 0, 0], 0.20), result(50, 1, True, [1, 1, 1, 1, 1, 1, 0, 1], 0.80, 248),
        result(50, 2, False, [0, 1, 0, 0, 1, 0, 1, 0], 0.35), result(50, 2, True, [1, 1, 1, 1, 1, 1, 1, 1], 0.95, 250),
        result(100, 42, False, [1, 1, 1, 1, 0, 1, 1, 0], 0.70, steps=63),
        result(100, 42, True, [1, 1, 1, 0, 1, 1, 1, 0], 0.72, 500, steps=63)]


def test_a_point_whose_sides_differ_stops_the_part():
    augment_bench.check_pairs(RUNS)
    other_steps = [*RUNS[:7], {**RUNS[7], "steps": 64}]
    with pytest.raises(SystemExit, match="the sides of n=100 seed=42 differ in steps or test articles: 63/8 vs 64/8"):
        augment_bench.check_pairs(other_steps)
    unaugmented = [*RUNS[:7], {**RUNS[7], "added": {}, "train_examples": 100}]
    with pytest.raises(SystemExit, match="n=100 seed=42 augmented=True: trained on 100 examples, expected 100"):
        augment_bench.check_pairs(unaugmented)


def augment_record() -> dict:
    machine = {"cpu": "Test CPU", "cores": 2, "threads": 2, "avx512_bf16": True, "amx": False, "fast_bf16": True,
               "torch": "2.13.0", "python": "3.11"}
    j = {**augment_bench.job(False, True), "points": [{"n": 50, "seeds": [42, 1, 2]}, {"n": 100, "seeds": [42]}]}
    return {"part": "augment", "smoke": False, "job": j, "started": "2026-11-26T22:00:00Z",
            "finished": "2026-11-26T22:20:00Z", "load_before": [0.1, 0, 0], "load_after": [2.0, 0, 0],
            "machine": machine, "cpu_flags": {"avx2": True, "avx512_bf16": True, "amx_bf16": False},
            "data": {"train": {"records": 1780}, "test": {"records": 223}, "validation_held_out": 222},
            "runs": RUNS, "plot": "augment-x.png", "file": "bench/out/augment-x.json"}


def test_the_section_renders_the_stored_figures():
    text = "\n".join(augment_bench.markdown(augment_record()))
    # 50 articles: accuracy .375 / .25 / .375 plain, .875 / .875 / 1 augmented: +0.5, +0.625, +0.625. Per article,
    # the seeds' mean difference is 2/3 2/3 1 1 0 2/3 0 2/3: SD 0.3883 / sqrt(8) = 0.1373; all up, 0.5833 > 2 SE
    assert ("| 50 | 3 | 32 | 249 (248-250) | 0.3333 (0.2500-0.3750) | 0.9167 (0.8750-1.0000) | +0.5833 (+0.500, "
            "+0.625, +0.625) | 0.1373 | 0.2833 (0.2000-0.3500) | 0.8667 (0.8000-0.9500) | +0.5833 |") in text
    # 100 articles, one seed: 0.75 both; per article 0 0 0 -1 1 0 0 0: SD 0.5345 / sqrt(8) = 0.1890
    assert "| 100 | 1 | 63 | 500 | 0.7500 | 0.7500 | +0.0000 (+0.000) | 0.1890 | 0.7000 | 0.7200 | +0.0200 |" in text
    assert ("- 50 articles: augmentation +58.3 points of test accuracy over 3 seed(s), resolved: every seed moved "
            "the same way and the mean is over 2 SE.") in text
    assert ("- 100 articles: augmentation +0.0 points of test accuracy over 1 seed(s), too few seeds to call either "
            "way.") in text
    # the same figures with seed 2's difference turned around: not resolved
    flipped = [*RUNS[:4], {**RUNS[4], "accuracy": 0.5}, {**RUNS[5], "accuracy": 0.25}, *RUNS[6:]]
    assert "over 3 seed(s), not resolved: no claim either way." in "\n".join(
        augment_bench.markdown({**augment_record(), "runs": flipped}))
    assert "a pool of 1,780; tested on the same 223 articles" in text and "its 222 validation articles" in text
    assert "passes 10 times over its articles" in text and "`data.augment.copies: 4`, rate 0.1" in text
    assert "Copies: 998 of the 1,000 asked for were added (synonym 998, insert 0, swap 0, delete 0)" in text
    assert "CPU flags: avx2, avx512_bf16." in text and "Test CPU, 2 cores" in text and "22:00:00Z" in text
    assert "![test accuracy against training articles](out/augment-x.png)" in text
    assert "Wall time of the 8 runs: 4.0 minutes." in text


def test_the_section_is_rendered_into_results(tmp_path, monkeypatch):
    import results

    rec = augment_record()
    rec.pop("file")
    (tmp_path / "augment-20261126T220000Z.json").write_text(json.dumps({**rec, "complete": True}))
    monkeypatch.setattr(record, "OUT", tmp_path)
    text = results.render(False, {})
    assert text.count("## Augmentation: a learning curve on BBC News") == 1
    assert augment_bench.markdown({**rec, "file": "bench/out/augment-20261126T220000Z.json"})[4] in text
