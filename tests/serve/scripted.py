"""A scripted causal LM for serving tests: a model folder whose greedy answer is exactly a given text.

The model is a one-layer Llama with the real SmolLM2 tokenizer (builtin:smollm2-135m-instruct; the tokenizer
files alone load in a moment). Its attention output and MLP output projections are zero, so the residual
stream at each position is that token's own embedding, and the logits only depend on the current token.
Each scripted token gets its own one-hot embedding direction; lm_head's row for a token points at the
directions of the tokens it follows (with a large weight), every other row is zero. So after token a comes
token b, whatever came before: a chain. The chain starts at the last token of the chat template's generation
prompt ("\\n" after "<|im_start|>assistant"; a completion prompt ending in "\\n" starts it too), runs through
the text's tokens and ends at EOS, or goes back to the text's first token and loops for ever. A token that
appears twice would need two successors, so a text's tokens must be distinct (`write_scripted` checks).
"""
from __future__ import annotations

from pathlib import Path

SMOLLM2 = "builtin:smollm2-135m-instruct"
START = "\n"  # the last prompt token: the generation prompt ends with it
WEIGHT = 50.0  # logit of the scripted next token (the others are 0): greedy, and sampling too, pick it


def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (byte-level BPE, ChatML template), from the builtin model's folder."""
    from transformers import AutoTokenizer

    from tunelab.models.registry import resolve_model

    return AutoTokenizer.from_pretrained(str(resolve_model(SMOLLM2)))


def script_ids(tokenizer, text: str) -> list[int]:
    """The token ids the model will generate for `text` (before EOS); they must decode back to `text`."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != text:
        raise ValueError(f"{text!r} does not survive a tokenizer round trip")
    return ids


def write_scripted(folder: Path, text: str, *, loop: bool = False, context: int = 2048, tokenizer=None) -> Path:
    """A model folder whose greedy continuation of a prompt ending in "\\n" is `text` then EOS (or, with
    `loop`, `text` repeated for ever). `context` is the model's max_position_embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or smollm2_tokenizer()
    start = tokenizer(START, add_special_tokens=False)["input_ids"]
    chain = start + script_ids(tokenizer, text)
    if len(start) != 1 or len(set(chain)) != len(chain):
        raise ValueError(f"{text!r}: the scripted tokens {chain} must be distinct (and differ from the start "
                         "token): a token has one successor")
    successor = dict(zip(chain, chain[1:]))
    successor[chain[-1]] = chain[1] if loop else tokenizer.eos_token_id
    hidden = len(chain) + (len(chain) % 2)  # one direction per chain token; an even size for rotary embeddings
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=context,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm,
                     model.model.norm):
            norm.weight.fill_(1.0)
        for direction, token in enumerate(chain):
            model.model.embed_tokens.weight[token, direction] = 1.0
            model.lm_head.weight[successor[token], direction] = WEIGHT
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
