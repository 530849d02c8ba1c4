"""The built-in pieces together, as the bench uses them: MiniLM and BM25 on BBC headline -> article pairs
(builtin:bbc-headlines), measured with `evaluate_encoder` / `evaluate_bm25` (one short real-model test)."""
from __future__ import annotations

import time


def test_minilm_and_bm25_find_bbc_articles_from_their_headlines():
    import torch

    from tunelab.config import ModelConfig
    from tunelab.data.sources import load_records
    from tunelab.tasks.retrieval import Pairs, evaluate_bm25, evaluate_encoder, load_pretrained_encoder

    records = load_records("builtin:bbc-headlines")[::20]  # 107 pairs across the five topics
    pairs = Pairs([r["query"] for r in records], [r["positive"] for r in records], None, "builtin:bbc-headlines")
    t0 = time.perf_counter()
    model, tokenizer = load_pretrained_encoder(ModelConfig(name="builtin:minilm-l6"))
    with torch.no_grad():
        dense = evaluate_encoder(model, tokenizer, pairs, max_length=128)
    bm25 = evaluate_bm25(pairs)
    keys = ["recall@1", "recall@5", "recall@10", "mrr@10"]
    assert dense["n"] == bm25["n"] == 107
    assert [round(dense[k], 4) for k in keys] == [0.9252, 0.9907, 0.9907, 0.9564]  # the untuned sentence encoder
    assert [round(bm25[k], 4) for k in keys] == [0.8879, 0.972, 0.9813, 0.9241]  # whole articles, no length limit
    assert time.perf_counter() - t0 < 30
