"""Scratch models: shapes, masking invariants, position-encoding properties, the builder and save/load."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tunelab.nn import (
    GPT, SCRATCH_KINDS, EncoderDecoderTransformer, ModelOutput, MultiHeadAttention, RotaryEmbedding,
    build_scratch_model, load_scratch_model, save_scratch_model, sinusoidal_table,
)

VOCAB, LABELS, PAD = 23, 3, 0
SIZES = {
    "rnn": dict(embed_dim=8, hidden_size=8, num_layers=2),
    "lstm": dict(embed_dim=8, hidden_size=8, num_layers=2),
    "gru": dict(embed_dim=8, hidden_size=8, num_layers=2),
    "transformer": dict(hidden_size=16, num_layers=2, num_heads=2, ffn_size=32, max_position=32),
    "gpt": dict(hidden_size=16, num_layers=2, num_heads=2, ffn_size=32, max_position=32),
    "seq2seq": dict(hidden_size=16, num_layers=2, num_heads=2, ffn_size=32, max_position=32),
}
CLASSIFIERS = ("rnn", "lstm", "gru", "transformer")


def build(kind: str, **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    num_labels = LABELS if kind in CLASSIFIERS else None
    return build_scratch_model(kind, VOCAB, num_labels, **{**SIZES[kind], **overrides}).eval()


def tokens(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))  # no pad tokens


def run(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None) -> ModelOutput:
    """forward for any kind; seq2seq decodes the source itself as the target."""
    if isinstance(model, EncoderDecoderTransformer):
        return model(ids, mask, decoder_input_ids=ids, decoder_attention_mask=mask, labels=labels)
    return model(ids, mask, labels=labels)


# ----------------------------------------------------------------------------------- shapes and losses

def test_registry_covers_every_kind() -> None:
    assert SCRATCH_KINDS == {"rnn", "lstm", "gru", "transformer", "gpt", "seq2seq"} == set(SIZES)


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_shapes_and_loss(kind: str) -> None:
    model = build(kind)
    ids = tokens(3, 7)
    labels = torch.tensor([0, 2, 1]) if kind in CLASSIFIERS else ids
    out = run(model, ids, labels=labels)
    expected = (3, LABELS) if kind in CLASSIFIERS else (3, 7, VOCAB)
    assert out.logits.shape == expected
    assert out.loss is not None and out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert run(model, ids).loss is None


def test_causal_lm_loss_shifts_and_ignores() -> None:
    model = build("gpt")
    ids = tokens(2, 6)
    logits = model(ids).logits
    labels = ids.clone()
    labels[0, 3] = -100
    # by hand: logits at t predict labels[t + 1]; the ignored target drops out of the mean
    rows = [(b, t) for b in range(2) for t in range(5) if labels[b, t + 1] != -100]
    by_hand = torch.stack([-logits[b, t].log_softmax(-1)[labels[b, t + 1]] for b, t in rows]).mean()
    torch.testing.assert_close(model(ids, labels=labels).loss, by_hand)


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rotary"])
def test_seq2seq_labels_are_shifted_into_decoder_inputs(position: str) -> None:
    model = build("seq2seq", position=position)
    src, tgt = tokens(2, 5), tokens(2, 4, seed=2)
    explicit = model(src, decoder_input_ids=model.shift_right(tgt), labels=tgt)
    implicit = model(src, labels=tgt)
    torch.testing.assert_close(implicit.logits, explicit.logits)
    assert model.shift_right(tgt)[:, 0].eq(model.config["decoder_start_token_id"]).all()


# ------------------------------------------------------------------------------------------- masking

@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rotary"])
def test_gpt_cannot_see_the_future(position: str) -> None:
    model = build("gpt", position=position)
    ids = tokens(2, 8)
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] % (VOCAB - 1)) + 1  # a different real token at position 5
    before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=0, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_seq2seq_decoder_cannot_see_the_future() -> None:
    model = build("seq2seq")
    src, tgt = tokens(2, 6), tokens(2, 7, seed=2)
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] % (VOCAB - 1)) + 1
    before = model(src, decoder_input_ids=tgt).logits
    after = model(src, decoder_input_ids=changed).logits
    torch.testing.assert_close(before[:, :4], after[:, :4], atol=0, rtol=0)
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def right_pad(ids: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids with `extra` pad tokens appended, and the matching attention mask."""
    padded = torch.cat([ids, torch.full((ids.size(0), extra), PAD)], dim=1)
    return padded, (padded != PAD).long()


@pytest.mark.parametrize("kind,overrides", [
    ("rnn", {}), ("lstm", {}), ("gru", {}), ("lstm", dict(bidirectional=False)),
    ("transformer", dict(position="sinusoidal")), ("transformer", dict(position="learned")),
    ("transformer", dict(position="rotary")), ("transformer", dict(norm_first=False)),
])
def test_classifier_ignores_appended_padding(kind: str, overrides: dict) -> None:
    model = build(kind, **overrides)
    ids = tokens(3, 6)
    ids[1, 4:] = PAD  # rows of different true lengths
    reference = model(ids).logits
    padded, mask = right_pad(ids, 5)
    torch.testing.assert_close(model(padded, mask).logits, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model(padded).logits, reference, atol=1e-6, rtol=1e-5)  # mask from pad id


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_rnn_classifier_ignores_left_padding_too(kind: str) -> None:
    model = build(kind)
    ids = tokens(2, 5)
    left = torch.cat([torch.full((2, 3), PAD), ids], dim=1)
    torch.testing.assert_close(model(left).logits, model(ids).logits, atol=1e-6, rtol=1e-5)


def test_gpt_ignores_appended_padding() -> None:
    model = build("gpt")
    ids = tokens(2, 6)
    padded, mask = right_pad(ids, 4)
    torch.testing.assert_close(model(padded, mask).logits[:, :6], model(ids).logits, atol=1e-6, rtol=1e-5)


def test_query_that_sees_no_key_outputs_zeros_not_nan() -> None:
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 4, 8)
    padding = torch.tensor([[True, True, False, False]])  # left padding under a causal mask
    out, weights = attention(x, key_padding_mask=padding, causal=True, need_weights=True)
    assert torch.isfinite(out).all()
    assert weights[0, :2].eq(0).all()  # the two pad queries attend to nothing
    torch.testing.assert_close(weights[0, 2:].sum(-1), torch.ones(2))


# --------------------------------------------------------------------------------- position encodings

def test_sinusoidal_table_values() -> None:
    table = sinusoidal_table(50, 6)
    assert table.shape == (50, 6) and table.abs().max() <= 1.0
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    rate = 10000 ** (-2 / 6)  # the second frequency pair
    torch.testing.assert_close(table[7, 2:4], torch.tensor([math.sin(7 * rate), math.cos(7 * rate)]))
    assert sinusoidal_table(4, 5).shape == (4, 5)  # odd widths work


def test_sinusoidal_offset_is_a_fixed_rotation() -> None:
    """PE[pos + k] = R_k PE[pos] for one block-rotation R_k independent of pos (why it encodes offsets)."""
    dim, k = 8, 5
    table = sinusoidal_table(40, dim)
    angles = k * 10000 ** (-torch.arange(0, dim, 2) / dim)  # (C/2,)
    cos, sin = angles.cos(), angles.sin()
    s, c = table[:-k, 0::2], table[:-k, 1::2]  # sin and cos columns at pos
    shifted = torch.stack([s * cos + c * sin, c * cos - s * sin], dim=-1).flatten(1)  # sin/cos at pos + k
    torch.testing.assert_close(shifted, table[k:], atol=1e-5, rtol=1e-5)


def test_rotary_dot_product_depends_only_on_offset() -> None:
    torch.manual_seed(0)
    rotary = RotaryEmbedding(8)
    q, k = torch.randn(1, 8), torch.randn(1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        return (rotary(q, torch.tensor([m])) * rotary(k, torch.tensor([n]))).sum()

    for m, n in [(3, 1), (0, 7), (10, 10)]:
        for shift in (1, 5, 40):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(1, 3))  # but the offset itself matters
    torch.testing.assert_close(rotary(q).norm(), q.norm())  # a rotation keeps lengths


def test_rotary_needs_even_head_dim() -> None:
    with pytest.raises(ValueError, match="even head dimension"):
        RotaryEmbedding(7)


def test_learned_positions_refuse_long_inputs() -> None:
    model = build("transformer", max_position=8)
    with pytest.raises(ValueError, match="exceeds max_position=8"):
        model(tokens(1, 9))


# ------------------------------------------------------------------------------------------ generation

def test_gpt_generate_greedy_sampling_and_eos() -> None:
    model = build("gpt")
    prompt = tokens(2, 4)
    greedy = model.generate(prompt, max_new_tokens=5)
    assert greedy.shape == (2, 9) and torch.equal(greedy[:, :4], prompt)
    assert torch.equal(model.generate(prompt, 5, temperature=1.0, top_k=1), greedy)  # top-1 sampling is greedy
    sampled = model.generate(prompt, 5, temperature=1.0)
    assert sampled.shape == (2, 9) and sampled.max() < VOCAB
    first = greedy[:, 4]
    stopped = model.generate(prompt[:1], 5, eos_token_id=int(first[0]))
    assert stopped.shape == (1, 5)  # stopped right after producing eos


def test_generate_restores_training_mode() -> None:
    model = build("gpt").train()
    model.generate(tokens(1, 3), 2)
    assert model.training


def test_seq2seq_generate() -> None:
    model = build("seq2seq")
    out = model.generate(tokens(2, 5), max_new_tokens=4)
    assert out.shape == (2, 4) and out.max() < VOCAB


# --------------------------------------------------------------------------------- builder, save/load

def test_builder_errors_say_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="unknown scratch model 'cnn'; known: gpt, gru, lstm, rnn, seq2seq"):
        build_scratch_model("cnn", VOCAB, 2)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) 'hiden_size'.*allowed: .*hidden_size"):
        build_scratch_model("gpt", VOCAB, None, hiden_size=8)
    with pytest.raises(ValueError, match="needs num_labels"):
        build_scratch_model("lstm", VOCAB, None)
    with pytest.raises(ValueError, match="takes no num_labels"):
        build_scratch_model("gpt", VOCAB, 2)
    with pytest.raises(ValueError, match="unknown position encoding 'alibi'"):
        build_scratch_model("transformer", VOCAB, 2, position="alibi")


@pytest.mark.parametrize("kind", sorted(SIZES))
def test_save_load_round_trip(kind: str, tmp_path: Path) -> None:
    model = build(kind, dropout=0.0)
    ids = tokens(2, 6)
    save_scratch_model(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.safetensors", "scratch_config.json"}
    config = json.loads((tmp_path / "scratch_config.json").read_text())
    assert config == {"kind": kind, **model.config}
    loaded = load_scratch_model(tmp_path).eval()
    assert type(loaded) is type(model)
    assert torch.equal(run(loaded, ids).logits, run(model, ids).logits)


@pytest.mark.parametrize("cls", [GPT, EncoderDecoderTransformer])
def test_tied_embeddings_stay_tied_after_loading(cls: type, tmp_path: Path) -> None:
    save_scratch_model(cls(VOCAB, hidden_size=8, num_heads=2, num_layers=1), tmp_path)
    loaded = load_scratch_model(tmp_path)
    assert loaded.lm_head.weight is loaded.embeddings.token.weight


def test_untied_gpt_keeps_its_own_head(tmp_path: Path) -> None:
    model = build("gpt", tie_embeddings=False)
    save_scratch_model(model, tmp_path)
    loaded = load_scratch_model(tmp_path)
    assert loaded.lm_head.weight is not loaded.embeddings.token.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_load_from_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="has no scratch_config.json"):
        load_scratch_model(tmp_path)



def test_load_refuses_weights_of_another_model(tmp_path: Path) -> None:
    save_scratch_model(build("gpt"), tmp_path / "gpt")
    save_scratch_model(build("lstm"), tmp_path / "lstm")
    (tmp_path / "gpt" / "model.safetensors").write_bytes((tmp_path / "lstm" / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="does not fit scratch_config.json: missing"):
        load_scratch_model(tmp_path / "gpt")
