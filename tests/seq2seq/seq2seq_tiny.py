"""A tiny random T5 with a word-level tokenizer, and copy/reverse pairs (seq2seq tests and the test matrix)."""
from __future__ import annotations

import random
from pathlib import Path

import torch

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "star", "rock"]


def reverse_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` pairs: 2-4 random words and the same words reversed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]
        out.append({"source": " ".join(words), "target": " ".join(reversed(words))})
    return out


def write_tiny_t5(folder: Path) -> Path:
    """A 2+2-layer random T5 (d_model 32) with a word-level tokenizer that ends every text with </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, num_heads=2, d_ff=64, num_layers=2,
                      num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      dropout_rate=0.0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
