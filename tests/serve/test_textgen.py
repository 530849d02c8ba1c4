"""tunelab.serve.textgen without a server: incremental decoding on the real SmolLM2 tokenizer (characters whose
bytes span tokens), stop strings held back and cut, the token budget, seeded sampling, and stopping within a
token, on the tiny random Llama of tests/causal."""
from __future__ import annotations

import pytest
import torch
from scripted import smollm2_tokenizer

from tunelab.serve.errors import ApiError
from tunelab.serve.textgen import Params, SeededSampler, TextStream, generate, token_budget

TEXT = "Hi there! 😀 日本語 ok."
# SmolLM2's byte-level BPE: the emoji is 'ĠðŁĺ' + 'Ģ', 日 is 'Ġæ' + 'Ĺ' + '¥', 語 is 'è' + 'ª' + 'ŀ'
DELTAS = ["Hi", " there", "!", " 😀", " 日", "本", "語", " ok", "."]


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


def stream_text(tok, text: str, stop=()) -> tuple[list[str], TextStream]:
    """Push `text`'s tokens one by one; the non-empty deltas (the final flush included)."""
    stream = TextStream(tok, stop)
    deltas = [stream.push(i) for i in tok(text, add_special_tokens=False)["input_ids"]] + [stream.finish()]
    return [d for d in deltas if d], stream


def test_characters_split_across_tokens_are_held_until_whole(tok):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == 14  # 5 tokens hold partial characters
    stream = TextStream(tok)
    out = [stream.push(i) for i in ids]
    assert out == ["Hi", " there", "!", "", " 😀", "", "", " 日", "本", "", "", "語", " ok", "."]
    assert [d for d in out if d] == DELTAS
    assert stream.finish() == ""
    assert "".join(out) == tok.decode(ids, skip_special_tokens=True) == TEXT


@pytest.mark.parametrize("text", ["Café 你好 🎉 naïve", "🇫🇷 flag, 👩‍💻 coder", "Ελληνικά ☃ ∑ x²"])
def test_deltas_are_whole_characters_and_add_up_to_the_decode(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    deltas, _ = stream_text(tok, text)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_are_skipped_as_decode_skips_them(tok):
    ids = tok("Hi there", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = TextStream(tok)
    assert "".join(stream.push(i) for i in ids) + stream.finish() == "Hi there"


def test_a_partial_character_at_the_end_is_written_as_decode_writes_it(tok):
    """Generation cut after 'ĠðŁĺ' (max_tokens): the rest is the decode's own text, U+FFFD included."""
    ids = tok(TEXT, add_special_tokens=False)["input_ids"][:4]
    stream = TextStream(tok)
    assert [stream.push(i) for i in ids] == ["Hi", " there", "!", ""]
    assert stream.finish() == " \ufffd" and stream.sent == tok.decode(ids)


def test_a_wordpiece_tokenizer_that_cleans_up_spaces_loses_no_text():
    # decode's clean-up (" ' s" -> "'s") rewrote text already sent; the stream held everything after it, then
    # dropped it at the end
    from transformers import AutoTokenizer

    from tunelab.models.registry import resolve_model

    wordpiece = AutoTokenizer.from_pretrained(str(resolve_model("builtin:minilm-l6")))
    wordpiece.clean_up_tokenization_spaces = True
    ids = wordpiece("it ' s a dog , i do n ' t know", add_special_tokens=False)["input_ids"]
    stream = TextStream(wordpiece)
    text = "".join([stream.push(i) for i in ids] + [stream.finish()])
    assert text == wordpiece.decode(ids, clean_up_tokenization_spaces=False) == "it ' s a dog, i do n ' t know"


def test_stop_string_split_across_deltas_is_held_back_then_cut(tok):
    """'語 o' starts in the token '語' and ends in ' ok': '語' is held back, then nothing of it is sent."""
    deltas, stream = stream_text(tok, TEXT, stop=["語 o"])
    assert deltas == ["Hi", " there", "!", " 😀", " 日", "本"]
    assert stream.stopped and stream.sent == "Hi there! 😀 日本"


def test_a_held_back_possible_stop_is_released_when_it_is_not_one(tok):
    """'!' could start '!!': held until ' 😀' completes, then sent with it."""
    deltas, stream = stream_text(tok, TEXT, stop=["!!"])
    assert deltas == ["Hi", " there", "! 😀", " 日", "本", "語", " ok", "."]
    assert not stream.stopped and "".join(deltas) == TEXT


def test_the_earliest_of_several_stop_strings_cuts(tok):
    deltas, stream = stream_text(tok, TEXT, stop=["ok", " 日本", "😀"])
    assert "".join(deltas) == "Hi there! " and stream.stopped
    assert stream.push(tok("more", add_special_tokens=False)["input_ids"][0]) == ""  # nothing after a stop


def test_a_stop_string_at_the_very_start_sends_nothing(tok):
    deltas, stream = stream_text(tok, TEXT, stop=["Hi"])
    assert deltas == [] and stream.stopped


@pytest.mark.parametrize("prompt, requested, cap, context, expected", [
    (10, None, 512, 2048, 512),  # the server's cap is the default
    (10, 20, 512, 2048, 20),
    (10, 5000, 512, 2048, 512),  # capped by the server
    (2000, 100, 512, 2048, 48),  # capped by the context left
    (2047, None, 512, 2048, 1),
    (10, 100, 512, None, 100),  # no stated context
])
def test_token_budget(prompt, requested, cap, context, expected):
    assert token_budget(prompt, requested, cap, context) == expected


def test_a_prompt_that_fills_the_context_is_refused_in_openais_words():
    with pytest.raises(ApiError) as e:
        token_budget(2048, 10, 512, 2048, "prompt")
    assert (e.value.status, e.value.param, e.value.code) == (400, "prompt", "context_length_exceeded")
    assert e.value.message.startswith("This model's maximum context length is 2048 tokens; your prompt resulted "
                                      "in 2048 tokens")


# ------------------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def tiny():
    """The tiny random Llama with the character tokenizer (tests/causal/causal_tiny.py)."""
    from causal_tiny import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    return make_model(len(tokenizer), seed=0).eval(), tokenizer


def prompt_of(tokenizer) -> list[int]:
    return tokenizer("Tell me something.", add_special_tokens=False)["input_ids"]


def test_greedy_equals_transformers_generate(tiny):
    model, tokenizer = tiny
    prompt, deltas = prompt_of(tokenizer), []
    g = generate(model, tokenizer, prompt, Params(max_tokens=12), on_text=deltas.append)
    ids = torch.tensor([prompt])
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)[0, len(prompt):]
    assert g.text == "".join(deltas) == tokenizer.decode(ref, skip_special_tokens=True)
    assert (g.prompt_tokens, g.completion_tokens) == (len(prompt), len(ref))
    assert g.finish_reason == ("stop" if ref[-1] == tokenizer.eos_token_id else "length")


def test_the_same_seed_gives_the_same_text_whatever_the_global_rng(tiny):
    model, tokenizer = tiny
    params = Params(max_tokens=16, temperature=1.0, seed=7)
    torch.manual_seed(1)
    first = generate(model, tokenizer, prompt_of(tokenizer), params).text
    torch.manual_seed(2)
    again = generate(model, tokenizer, prompt_of(tokenizer), params).text
    other = generate(model, tokenizer, prompt_of(tokenizer), Params(max_tokens=16, temperature=1.0, seed=8)).text
    greedy = generate(model, tokenizer, prompt_of(tokenizer), Params(max_tokens=16)).text
    assert first == again
    assert other != first and greedy != first  # 16 draws over ~100 characters: a coincidence is out of reach


def test_seeded_sampler_keeps_only_the_drawn_token_and_obeys_top_k():
    scores = torch.tensor([[5.0, 4.0, 3.0, -1.0, -2.0]])
    drawn = {int(SeededSampler(2.0, top_k=2, seed=s)(None, scores.clone()).argmax()) for s in range(40)}
    assert drawn == {0, 1}  # top-k 2: only the two best, and both come up over 40 seeds
    out = SeededSampler(1.0, seed=3)(None, scores.clone())
    assert torch.isfinite(out).sum() == 1 and out.max() == 0


def test_generation_stops_within_one_token_once_stopped(tiny):
    model, tokenizer = tiny
    asked = []

    def stopped() -> bool:  # the job is cancelled while the third token is generated
        asked.append(1)
        return len(asked) >= 3

    g = generate(model, tokenizer, prompt_of(tokenizer), Params(max_tokens=50, temperature=1.0, seed=0),
                 stopped=stopped)
    assert (g.finish_reason, g.completion_tokens, len(asked)) == ("cancelled", 3, 3)


def test_a_temperature_below_1e_5_decodes_greedily(tiny):
    """Dividing the logits by 1e-300 overflows them to inf (sampling from nan); such a temperature is greedy."""
    model, tokenizer = tiny
    greedy = generate(model, tokenizer, prompt_of(tokenizer), Params(max_tokens=16)).text
    for temperature in (1e-300, 9e-6):
        tiny_t = Params(max_tokens=16, temperature=temperature, seed=3)
        assert generate(model, tokenizer, prompt_of(tokenizer), tiny_t).text == greedy


def test_a_seed_maps_into_torchs_range_modulo_2_to_the_64():
    """OpenAI's seed is an int64; torch's generator takes 0 .. 2**64 - 1: -1 is 2**64 - 1."""
    scores = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))

    def draws(seed: int) -> list[int]:
        sampler = SeededSampler(1.0, seed=seed)
        return [int(sampler(None, scores.clone()).argmax()) for _ in range(8)]

    assert SeededSampler(1.0, seed=-1).seed == 2**64 - 1 and SeededSampler(1.0, seed=-2**63).seed == 2**63
    assert draws(-1) == draws(2**64 - 1) and draws(-1) != draws(1)
