"""Every shipped causal-LM example config loads, and its sample data file (if any) encodes."""
from __future__ import annotations

from pathlib import Path

from tunelab.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_causal_examples_load():
    configs = [load_config(p) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    # scratch: causal_lm configs belong to `tunelab pretrain`, tested with it
    causal = [c for c in configs if c.task == "causal_lm" and not c.model.name.startswith("scratch:")]
    assert len(causal) == 2
    for cfg in causal:
        assert cfg.train.early_stopping.metric in ("loss", "perplexity")
        if not cfg.data.train.startswith("builtin:"):
            assert (ROOT / cfg.data.train).is_file(), cfg.data.train


def test_sample_data_encodes_as_alpaca(tok):
    from tunelab.data.encoding import encode_records
    from tunelab.data.formats import detect_format
    from tunelab.data.sources import load_records

    records = load_records(str(ROOT / "examples" / "data" / "tiny-instructions.jsonl"))
    assert detect_format(records, "x") == "alpaca" and len(records) == 72
    data = encode_records(tok, records, "alpaca", max_length=256, train_on_prompt=False, source="x")
    assert len(data) == 72 and data.truncated == 0
