"""First-class scratch models built from `tunelab.nn` blocks, plus a registry, a builder and save/load.

Every model's `forward(input_ids, attention_mask=None, labels=None, ...)` returns a `ModelOutput`:
- classifiers (`RNNClassifier`, `TransformerClassifier`): logits (B, num_labels), loss = cross entropy;
- language models (`GPT`, `EncoderDecoderTransformer`): logits (B, T, V), loss = token cross entropy
  ignoring label IGNORE_INDEX (-100, `tunelab.data.tokens`).

Conventions shared by all of them:
- `attention_mask` (B, T) is Hugging Face's: 1 at real tokens, 0 at padding. Classifiers and the seq2seq
  encoder fall back to `input_ids != pad_token_id` when it is omitted; GPT then treats every token as real.
- Token embeddings start at N(0, 1/C) and are multiplied by √C on input (Vaswani et al.), so tokens and
  the sinusoidal/learned position encodings start at the same unit scale, while a tied output layer
  (logits = h·Eᵀ) starts with unit-scale logits.
- Each model keeps its constructor arguments in `self.config` and its registry name in `self.scratch_kind`,
  which is all `save_scratch_model` needs to write a checkpoint that `load_scratch_model` can rebuild.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tunelab.data.tokens import IGNORE_INDEX
from tunelab.nn.positions import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from tunelab.nn.rnn import GRU, LSTM, RNN
from tunelab.nn.transformer import TransformerDecoder, TransformerEncoder

POSITIONS = ("sinusoidal", "learned", "rotary")
ROTARY_BASE = 10000.0


@dataclass
class ModelOutput:
    """What every scratch model returns: the loss (when labels were given) and the logits."""

    loss: Tensor | None
    logits: Tensor


# ----------------------------------------------------------------------------------------- shared pieces

class Embeddings(nn.Module):
    """Token embedding × √C plus an absolute position encoding (none for rotary), then dropout."""

    def __init__(self, vocab_size: int, hidden_size: int, max_position: int, position: str, dropout: float):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"unknown position encoding '{position}'; known: {', '.join(POSITIONS)}")
        self.token = nn.Embedding(vocab_size, hidden_size)
        nn.init.normal_(self.token.weight, std=hidden_size ** -0.5)
        self.scale = math.sqrt(hidden_size)
        absolute = {"sinusoidal": SinusoidalPositionalEncoding, "learned": LearnedPositionalEmbedding}
        # rotary positions live inside attention (MultiHeadAttention(rotary_base=...)), not here
        self.position = absolute[position](hidden_size, max_position) if position in absolute else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: Tensor) -> Tensor:
        x = self.token(input_ids) * self.scale  # (B, T, C)
        if self.position is not None:
            x = x + self.position(input_ids.size(1))  # (T, C) broadcast over the batch
        return self.dropout(x)


def _real_tokens(input_ids: Tensor, attention_mask: Tensor | None, pad_token_id: int | None) -> Tensor | None:
    """(B, T) bool, True at real tokens; None when there is no way to tell (no mask, no pad id)."""
    if attention_mask is not None:
        return attention_mask.bool()
    return None if pad_token_id is None else input_ids != pad_token_id


def _padding(real: Tensor | None) -> Tensor | None:
    """The attention layers' key_padding_mask (True = pad) from a real-token mask."""
    return None if real is None else ~real


def _classification_loss(logits: Tensor, labels: Tensor | None) -> Tensor | None:
    return None if labels is None else F.cross_entropy(logits, labels)


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross entropy: the logits at position t are scored against labels[t + 1].

    `labels` are given unshifted (Hugging Face style, usually a copy of input_ids with -100 at the
    positions to ignore); labels[0] is never a target since nothing comes before it.
    """
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def _sequence_loss(logits: Tensor, labels: Tensor | None) -> Tensor | None:
    """Cross entropy of aligned logits (B, T, V) and labels (B, T) (seq2seq: the decoder is pre-shifted)."""
    if labels is None:
        return None
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while generating, then back to whichever mode the caller had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _next_token(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Pick one token per row from logits (B, V): argmax at temperature 0, else sample (top-k if given)."""
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,)
    logits = logits / temperature
    if top_k is not None:
        kth_best = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(-1)  # (B,)


# ------------------------------------------------------------------------------------------- classifiers

RECURRENT = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


class RNNClassifier(nn.Module):
    """Embedding -> RNN/LSTM/GRU stack -> pooled -> dropout -> linear `classifier`.

    Pooling: the top layer's final hidden state of each direction, concatenated (B, D*H). Padded steps
    never touch the state (see `tunelab.nn.rnn`), so these are the states after each sequence's last real
    token (forward) and first real token (backward), whatever the padding.
    """

    def __init__(self, kind: str, vocab_size: int, num_labels: int, embed_dim: int = 128,
                 hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True,
                 dropout: float = 0.1, pad_token_id: int = 0):
        super().__init__()
        if kind not in RECURRENT:
            raise ValueError(f"unknown recurrent kind '{kind}'; known: {', '.join(RECURRENT)}")
        self.config = dict(kind=kind, vocab_size=vocab_size, num_labels=num_labels, embed_dim=embed_dim,
                           hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                           dropout=dropout, pad_token_id=pad_token_id)
        self.scratch_kind = kind
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = RECURRENT[kind](embed_dim, hidden_size, num_layers=num_layers, dropout=dropout,
                                   bidirectional=bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size * self.rnn.num_directions, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        real = _real_tokens(input_ids, attention_mask, self.config["pad_token_id"])  # (B, T)
        x = self.dropout(self.embedding(input_ids))  # (B, T, E)
        _, h_n = self.rnn(x, mask=real)  # (L*D, B, H); LSTM gives (h_n, c_n)
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n
        top = h_n[-self.rnn.num_directions:]  # (D, B, H): the last layer's directions
        pooled = top.transpose(0, 1).flatten(1)  # (B, D*H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        return ModelOutput(_classification_loss(logits, labels), logits)


class TransformerClassifier(nn.Module):
    """Embeddings -> Transformer encoder -> mean over real tokens -> dropout -> linear `classifier`.

    Mean pooling (not a CLS token) so that no special token is needed from the tokenizer; padding is
    masked out of attention and of the mean, so appending pad tokens leaves the logits unchanged.
    `ffn_size=None` means 4 × hidden_size.
    """

    scratch_kind = "transformer"

    def __init__(self, vocab_size: int, num_labels: int, hidden_size: int = 128, num_layers: int = 2,
                 num_heads: int = 4, ffn_size: int | None = None, max_position: int = 512,
                 dropout: float = 0.1, position: str = "learned", norm_first: bool = True,
                 pad_token_id: int = 0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, num_labels=num_labels, hidden_size=hidden_size,
                           num_layers=num_layers, num_heads=num_heads, ffn_size=ffn_size,
                           max_position=max_position, dropout=dropout, position=position,
                           norm_first=norm_first, pad_token_id=pad_token_id)
        self.embeddings = Embeddings(vocab_size, hidden_size, max_position, position, dropout)
        self.encoder = TransformerEncoder(num_layers, hidden_size, num_heads, ffn_size or 4 * hidden_size,
                                          dropout, "gelu", norm_first,
                                          rotary_base=ROTARY_BASE if position == "rotary" else None)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        real = _real_tokens(input_ids, attention_mask, self.config["pad_token_id"])  # (B, T)
        x = self.encoder(self.embeddings(input_ids), key_padding_mask=~real)  # (B, T, C)
        weights = real.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        return ModelOutput(_classification_loss(logits, labels), logits)


# ------------------------------------------------------------------------------------- language models

class GPT(nn.Module):
    """Decoder-only Transformer LM (pre-norm, GELU): causal self attention + padding mask -> `lm_head`.

    `tie_embeddings` shares the token embedding matrix with `lm_head.weight` (Press & Wolf 2017).
    `ffn_size=None` means 4 × hidden_size.
    """

    scratch_kind = "gpt"

    def __init__(self, vocab_size: int, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                 ffn_size: int | None = None, max_position: int = 512, dropout: float = 0.1,
                 position: str = "learned", tie_embeddings: bool = True):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, ffn_size=ffn_size, max_position=max_position,
                           dropout=dropout, position=position, tie_embeddings=tie_embeddings)
        self.embeddings = Embeddings(vocab_size, hidden_size, max_position, position, dropout)
        self.decoder = TransformerEncoder(num_layers, hidden_size, num_heads, ffn_size or 4 * hidden_size,
                                          dropout, "gelu", norm_first=True,
                                          rotary_base=ROTARY_BASE if position == "rotary" else None)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embeddings.token.weight

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        """input_ids (B, T); labels (B, T) unshifted (the model shifts them); logits (B, T, V)."""
        real = _real_tokens(input_ids, attention_mask, pad_token_id=None)
        x = self.decoder(self.embeddings(input_ids), key_padding_mask=_padding(real), causal=True)
        logits = self.lm_head(x)  # (B, T, V)
        return ModelOutput(None if labels is None else causal_lm_loss(logits, labels), logits)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, eos_token_id: int | None = None) -> Tensor:
        """Continue prompts (B, T) by up to max_new_tokens; returns prompt + continuation (B, T + n).

        The prompts of a batch must have the same length (no padding). temperature 0 is greedy. Once a
        row has produced `eos_token_id` it keeps producing it; generation stops when every row has.
        The context is cropped to the last `max_position` tokens; dropout is off while generating.
        """
        ids = input_ids
        done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)  # (B,)
        with _eval_mode(self):
            for _ in range(max_new_tokens):
                logits = self(ids[:, -self.config["max_position"]:]).logits[:, -1]  # (B, V)
                token = _next_token(logits, temperature, top_k)  # (B,)
                if eos_token_id is not None:
                    token = token.masked_fill(done, eos_token_id)
                    done |= token == eos_token_id
                ids = torch.cat([ids, token[:, None]], dim=1)
                if done.all():
                    break
        return ids


class EncoderDecoderTransformer(nn.Module):
    """Encoder-decoder Transformer (seq2seq) with one embedding table shared by encoder, decoder and head.

    Labels follow Hugging Face seq2seq models: `labels` (B, T) are the target tokens aligned with the
    decoder outputs, and when `decoder_input_ids` is omitted it is `labels` shifted right behind
    `decoder_start_token_id` (-100 replaced by `pad_token_id`). `ffn_size=None` means 4 × hidden_size.
    """

    scratch_kind = "seq2seq"

    def __init__(self, vocab_size: int, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                 ffn_size: int | None = None, max_position: int = 512, dropout: float = 0.1,
                 position: str = "learned", norm_first: bool = True, tie_embeddings: bool = True,
                 pad_token_id: int = 0, decoder_start_token_id: int = 0):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, ffn_size=ffn_size, max_position=max_position,
                           dropout=dropout, position=position, norm_first=norm_first,
                           tie_embeddings=tie_embeddings, pad_token_id=pad_token_id,
                           decoder_start_token_id=decoder_start_token_id)
        rotary = ROTARY_BASE if position == "rotary" else None
        ffn = ffn_size or 4 * hidden_size
        self.embeddings = Embeddings(vocab_size, hidden_size, max_position, position, dropout)
        self.encoder = TransformerEncoder(num_layers, hidden_size, num_heads, ffn, dropout, "gelu", norm_first,
                                          rotary_base=rotary)
        self.decoder = TransformerDecoder(num_layers, hidden_size, num_heads, ffn, dropout, "gelu", norm_first,
                                          rotary_base=rotary)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embeddings.token.weight

    def shift_right(self, labels: Tensor) -> Tensor:
        """Decoder inputs from labels (B, T): start token, then labels[:, :-1], with -100 -> pad."""
        start = labels.new_full((labels.size(0), 1), self.config["decoder_start_token_id"])
        shifted = torch.cat([start, labels[:, :-1]], dim=1)  # (B, T)
        return shifted.masked_fill(shifted == IGNORE_INDEX, self.config["pad_token_id"])

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Source (B, S) -> (memory (B, S, C), memory key padding mask (B, S) or None)."""
        padding = _padding(_real_tokens(input_ids, attention_mask, self.config["pad_token_id"]))
        return self.encoder(self.embeddings(input_ids), key_padding_mask=padding), padding

    def decode(self, decoder_input_ids: Tensor, memory: Tensor, memory_padding: Tensor | None,
               decoder_attention_mask: Tensor | None = None) -> Tensor:
        """Target prefix (B, T) attending causally to itself and fully to memory -> logits (B, T, V)."""
        # No pad-id fallback here: the decoder start token is usually the pad token itself.
        padding = _padding(_real_tokens(decoder_input_ids, decoder_attention_mask, pad_token_id=None))
        x = self.decoder(self.embeddings(decoder_input_ids), memory, key_padding_mask=padding,
                         memory_key_padding_mask=memory_padding, causal=True)
        return self.lm_head(x)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                decoder_input_ids: Tensor | None = None, decoder_attention_mask: Tensor | None = None,
                labels: Tensor | None = None) -> ModelOutput:
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("EncoderDecoderTransformer needs decoder_input_ids or labels")
            decoder_input_ids = self.shift_right(labels)
        memory, memory_padding = self.encode(input_ids, attention_mask)
        logits = self.decode(decoder_input_ids, memory, memory_padding, decoder_attention_mask)
        return ModelOutput(_sequence_loss(logits, labels), logits)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, max_new_tokens: int = 32,
                 eos_token_id: int | None = None, no_repeat_ngram_size: int = 0) -> Tensor:
        """Greedy decoding; returns the generated tokens (B, n) without the decoder start token.

        Rows that produced `eos_token_id` keep producing it; decoding stops when every row has.
        `no_repeat_ngram_size` n > 0 never picks a token that would repeat an n-gram of the row's decoder
        sequence (start token included, as Hugging Face counts it).
        """
        with _eval_mode(self):
            memory, memory_padding = self.encode(input_ids, attention_mask)
            ids = input_ids.new_full((input_ids.size(0), 1), self.config["decoder_start_token_id"])
            done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)  # (B,)
            for _ in range(max_new_tokens):
                logits = self.decode(ids, memory, memory_padding)[:, -1]  # (B, V)
                if no_repeat_ngram_size > 0:
                    logits = logits.masked_fill(banned_ngram_tokens(ids, no_repeat_ngram_size, logits.size(-1)),
                                                float("-inf"))
                token = logits.argmax(dim=-1)  # (B,)
                if eos_token_id is not None:
                    token = token.masked_fill(done, eos_token_id)
                    done |= token == eos_token_id
                ids = torch.cat([ids, token[:, None]], dim=1)
                if done.all():
                    break
        return ids[:, 1:]

    @torch.no_grad()
    def beam_search(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, num_beams: int,
                    max_new_tokens: int, eos_token_id: int, length_penalty: float = 1.0,
                    no_repeat_ngram_size: int = 0) -> tuple[list[list[int]], Tensor]:
        """Batched beam search; returns the best hypothesis per row (tokens after the start token, EOS kept
        where it was produced) and its score (B,), the summed token log-probabilities / length ** length_penalty.

        The bookkeeping follows Hugging Face's default beam search (`early_stopping=False`), so the same
        settings mean the same thing on both kinds of model: each step ranks the 2K best continuations of the
        K beams; an EOS continuation ranked among the first K becomes a finished hypothesis (its length counts
        the EOS); the K best others go on. A row stops collecting once it holds K finished hypotheses and its
        best running beam, scored at the current length, is no better than the worst of them; at
        max_new_tokens the K best continuations finish. With num_beams=1 this is exactly greedy decoding.
        The whole prefix is decoded again at every step (no key/value cache): fine for small models.
        """
        B, K, V = input_ids.size(0), num_beams, self.config["vocab_size"]
        if not 1 <= K <= V // 2:
            raise ValueError(f"num_beams must be between 1 and vocab_size // 2 ({V // 2}); got {num_beams}")
        with _eval_mode(self):
            memory, memory_padding = self.encode(input_ids, attention_mask)  # (B, S, C), (B, S)
            memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, C): row b's beams are rows b*K .. b*K+K-1
            if memory_padding is not None:
                memory_padding = memory_padding.repeat_interleave(K, dim=0)
            beams = _Beams(B, K, max_new_tokens, self.config["decoder_start_token_id"], memory.device)
            for step in range(max_new_tokens):
                prefix = beams.running[:, :, :step + 1].flatten(0, 1)  # (B*K, step+1)
                log_probs = self.decode(prefix, memory, memory_padding)[:, -1].float().log_softmax(dim=-1)
                if no_repeat_ngram_size > 0:
                    log_probs = log_probs.masked_fill(banned_ngram_tokens(prefix, no_repeat_ngram_size, V),
                                                      float("-inf"))
                beams.advance(log_probs.view(B, K, V), step, eos_token_id, length_penalty,
                              last=step == max_new_tokens - 1)
                if not beams.open.any():
                    break
        return beams.best()


def banned_ngram_tokens(prefix: Tensor, n: int, vocab_size: int) -> Tensor:
    """(N, V) bool, True at the tokens that would repeat an n-gram of `prefix` (N, T) as the next token.

    Hugging Face's `no_repeat_ngram_size`: the last n-1 tokens of a row are looked up among the row's earlier
    n-grams, and each matching n-gram's last token is banned (n=1 bans every token seen).
    """
    N, T = prefix.shape
    banned = torch.zeros(N, vocab_size, dtype=torch.long, device=prefix.device)
    if T < n:
        return banned.bool()
    windows = prefix.unfold(1, n, 1)  # (N, T-n+1, n): every n-gram of the row
    tail = prefix[:, T - n + 1:]  # (N, n-1): what the next token would complete
    match = (windows[:, :, :-1] == tail[:, None]).all(dim=-1)  # (N, T-n+1)
    return banned.scatter_add_(1, windows[:, :, -1], match.long()) > 0  # duplicates add up, hence not scatter_


class _Beams:
    """The state of a batched beam search: K running and K finished hypotheses per row (see `beam_search`).

    Scores are float32; a missing hypothesis scores -inf. Sequences are (B, K, 1 + max_new_tokens) with the
    decoder start token in column 0.
    """

    def __init__(self, batch: int, beams: int, max_new_tokens: int, start_id: int, device: torch.device):
        self.K = beams
        self.running = torch.full((batch, beams, 1 + max_new_tokens), start_id, dtype=torch.long, device=device)
        # only beam 0 is live at first, so the K beams do not start as K copies of one hypothesis
        self.running_scores = torch.full((batch, beams), float("-inf"), device=device)
        self.running_scores[:, 0] = 0.0
        self.finished = self.running.clone()
        self.finished_scores = torch.full((batch, beams), float("-inf"), device=device)  # length-penalised
        self.finished_lengths = torch.zeros((batch, beams), dtype=torch.long, device=device)
        self.filled = torch.zeros((batch, beams), dtype=torch.bool, device=device)
        self.open = torch.ones(batch, dtype=torch.bool, device=device)  # rows still collecting hypotheses

    def advance(self, log_probs: Tensor, step: int, eos_id: int, length_penalty: float, last: bool) -> None:
        """One decoding step from log_probs (B, K, V) of the next token of each running beam."""
        B, K, V = log_probs.shape
        totals = (self.running_scores[:, :, None] + log_probs).view(B, K * V)
        scores, index = totals.topk(2 * K, dim=1)  # (B, 2K), best first
        beam, token = index // V, index % V
        candidates = self.running.gather(1, beam[:, :, None].expand(-1, -1, self.running.size(2))).clone()
        candidates[:, :, step + 1] = token  # (B, 2K, 1 + max_new_tokens)
        ends = torch.ones_like(token, dtype=torch.bool) if last else token == eos_id  # (B, 2K)

        going_on = scores.masked_fill(ends, float("-inf")).topk(K, dim=1).indices  # (B, K)
        self.running = candidates.gather(1, going_on[:, :, None].expand_as(self.running))
        self.running_scores = scores.masked_fill(ends, float("-inf")).gather(1, going_on)

        top_k = torch.arange(2 * K, device=scores.device) < K  # only the first K ranks may finish
        finishing = ends & top_k & self.open[:, None]  # (B, 2K)
        length = step + 1  # generated tokens, EOS included
        penalised = (scores / length ** length_penalty).masked_fill(~finishing, float("-inf"))
        self._keep_best_finished(candidates, penalised, finishing, length)

        # Hugging Face's early-stop heuristic: the best running beam scored at today's length cannot win
        worst = self.finished_scores.min(dim=1).values  # (B,)
        hopeless = self.filled.all(dim=1) & (self.running_scores[:, 0] / length ** length_penalty <= worst)
        self.open &= ~hopeless

    def _keep_best_finished(self, candidates: Tensor, penalised: Tensor, finishing: Tensor, length: int) -> None:
        """Merge the newly finished candidates (B, 2K) into the K best finished hypotheses per row."""
        scores = torch.cat([self.finished_scores, penalised], dim=1)  # (B, 3K)
        keep = scores.topk(self.K, dim=1).indices  # (B, K), best first
        self.finished_scores = scores.gather(1, keep)
        sequences = torch.cat([self.finished, candidates], dim=1)
        self.finished = sequences.gather(1, keep[:, :, None].expand_as(self.finished))
        lengths = torch.cat([self.finished_lengths, torch.full_like(penalised, length, dtype=torch.long)], dim=1)
        self.finished_lengths = lengths.gather(1, keep)
        self.filled = torch.cat([self.filled, finishing], dim=1).gather(1, keep)

    def best(self) -> tuple[list[list[int]], Tensor]:
        """The best finished hypothesis of each row (tokens after the start token) and its score (B,)."""
        tokens = [row[1:1 + n].tolist() for row, n in zip(self.finished[:, 0], self.finished_lengths[:, 0])]
        return tokens, self.finished_scores[:, 0]


# --------------------------------------------------------------------------------- registry, save, load

MODELS: dict[str, type[nn.Module]] = {
    "rnn": RNNClassifier, "lstm": RNNClassifier, "gru": RNNClassifier,
    "transformer": TransformerClassifier, "gpt": GPT, "seq2seq": EncoderDecoderTransformer,
}
SCRATCH_KINDS = frozenset(MODELS)
CLASSIFIER_KINDS = frozenset({"rnn", "lstm", "gru", "transformer"})
CONFIG_NAME, WEIGHTS_NAME = "scratch_config.json", "model.safetensors"


def _fixed_arguments(kind: str, vocab_size: int, num_labels: int | None) -> dict[str, object]:
    """The arguments the builder sets itself, after checking num_labels fits the kind."""
    fixed: dict[str, object] = {"vocab_size": vocab_size}
    if MODELS[kind] is RNNClassifier:
        fixed["kind"] = kind
    if kind in CLASSIFIER_KINDS:
        if num_labels is None or num_labels < 1:
            raise ValueError(f"scratch model '{kind}' is a classifier and needs num_labels >= 1; got {num_labels}")
        fixed["num_labels"] = num_labels
    elif num_labels is not None:
        raise ValueError(f"scratch model '{kind}' is a language model and takes no num_labels; "
                         f"got {num_labels}, pass num_labels=None")
    return fixed


def build_scratch_model(kind: str, vocab_size: int, num_labels: int | None = None, **sizes: object) -> nn.Module:
    """A freshly initialised scratch model of `kind` (one of SCRATCH_KINDS).

    `sizes` are the model class's other constructor arguments (hidden_size, num_layers, ...); an unknown
    one is an error that lists the allowed names.
    """
    if kind not in MODELS:
        raise ValueError(f"unknown scratch model '{kind}'; known: {', '.join(sorted(SCRATCH_KINDS))}")
    fixed = _fixed_arguments(kind, vocab_size, num_labels)
    allowed = [name for name in inspect.signature(MODELS[kind]).parameters if name not in fixed]
    unknown = sorted(set(sizes) - set(allowed))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(map(repr, unknown))} for scratch model '{kind}'; "
                         f"allowed: {', '.join(allowed)}")
    return MODELS[kind](**fixed, **sizes)


def _unaliased_state_dict(model: nn.Module) -> tuple[dict[str, Tensor], set[str]]:
    """The state dict without tied aliases (safetensors refuses shared memory) and the dropped names.

    The first name of each shared tensor is kept; the constructor re-ties the others on load.
    """
    kept: dict[str, Tensor] = {}
    seen: set[tuple[int, torch.Size]] = set()
    dropped: set[str] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape)
        if key in seen:
            dropped.add(name)
            continue
        seen.add(key)
        kept[name] = tensor.contiguous()
    return kept, dropped


def save_scratch_model(model: nn.Module, directory: str | Path) -> Path:
    """Write `model.safetensors` and `scratch_config.json` (kind + constructor arguments) to directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, _ = _unaliased_state_dict(model)
    save_file(tensors, str(directory / WEIGHTS_NAME))
    config = {"kind": model.scratch_kind, **model.config}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def load_scratch_model(directory: str | Path) -> nn.Module:
    """Rebuild a model written by `save_scratch_model` (on the CPU, in training mode like a fresh one)."""
    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; is it a folder written by save_scratch_model?")
    model = build_scratch_model(**json.loads((directory / CONFIG_NAME).read_text()))
    _, aliases = _unaliased_state_dict(model)
    missing, unexpected = model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=False)
    missing = sorted(set(missing) - aliases)  # tied aliases were re-tied by the constructor
    if missing or unexpected:
        raise ValueError(f"{directory / WEIGHTS_NAME} does not fit {CONFIG_NAME}: missing {missing}, "
                         f"unexpected {sorted(unexpected)}")
    return model
