"""`tunelab tokenizer train`: a BPE or WordPiece tokenizer trained on your text, for scratch models.

The `tokenizers` library does the training; the result is wrapped as a transformers
`PreTrainedTokenizerFast` and saved with `save_pretrained`, so `AutoTokenizer.from_pretrained(DIR)` and
`model.tokenizer: DIR` read it. Two kinds:
- bpe: byte-level BPE (GPT-2 style: any text encodes, no unknown tokens), special tokens <pad> <unk> <s>
  </s>; nothing is added around a text (`</s>` separates documents when pretraining).
- wordpiece: BERT style, special tokens [PAD] [UNK] [CLS] [SEP] [MASK]; each text becomes [CLS] ... [SEP].

Reproducibility: BPE training is deterministic. The WordPiece trainer numbers its "##" sub-word symbols in
hash order, so its ids change from run to run; they are renumbered here in a fixed order (the same vocabulary
always gets the same ids). Its tie-breaks between equally frequent merges follow those ids too, so on a tiny,
tie-heavy corpus two runs can still learn slightly different vocabularies; on real text they agree.

The corpora it reads are those `tunelab pretrain` takes (tunelab.data.corpus.corpus_documents).
"""
from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import TunelabError

KINDS = ("bpe", "wordpiece")
SPECIAL_TOKENS = {"bpe": ["<pad>", "<unk>", "<s>", "</s>"],
                  "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]}
BYTE_ALPHABET = 256
INFO_NAME = "tunelab_tokenizer.json"


# ------------------------------------------------------------------------------------------- training

def build_tokenizer(texts: list[str], vocab_size: int, kind: str = "bpe", lowercase: bool = False):
    """A `PreTrainedTokenizerFast` trained on `texts` (at most `vocab_size` tokens, specials included)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    check_settings(vocab_size, kind)
    if not texts:
        raise TunelabError("tokenizer train: the inputs hold no text; check --input and --text-field")
    specials = SPECIAL_TOKENS[kind]
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else []))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    if kind == "bpe":
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                       bos_token="<s>", eos_token="</s>")
    tok.model = models.WordPiece(canonical_vocab(tok.get_vocab(), specials), unk_token="[UNK]")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def canonical_vocab(vocab: dict[str, int], specials: list[str]) -> dict[str, int]:
    """The same tokens numbered in a fixed order: specials first, then by length, whole-word pieces first."""
    rest = sorted((t for t in vocab if t not in specials),
                  key=lambda t: (len(t.removeprefix("##")), t.startswith("##"), t))
    return {token: i for i, token in enumerate(specials + rest)}


def check_settings(vocab_size: int, kind: str) -> None:
    if kind not in KINDS:
        raise TunelabError(f"tokenizer train: unknown --kind {kind!r}; known: {', '.join(KINDS)}")
    smallest = len(SPECIAL_TOKENS[kind]) + (BYTE_ALPHABET if kind == "bpe" else 1)
    if vocab_size < smallest:
        why = f"{BYTE_ALPHABET} byte symbols + " if kind == "bpe" else ""
        raise TunelabError(f"tokenizer train: --vocab-size {vocab_size} is too small for {kind}; it needs at "
                           f"least {smallest} ({why}{len(SPECIAL_TOKENS[kind])} special tokens)")


def train_tokenizer(inputs: list[str], vocab_size: int, output: str | Path, kind: str = "bpe",
                    lowercase: bool = False, text_field: str = "text") -> Path:
    """Train a tokenizer on `inputs` (corpus references, see tunelab.data.corpus) and save it to `output`.

    `output` is written atomically; an existing folder is replaced only when it holds a tokenizer.
    Beside the tokenizer files, tunelab_tokenizer.json records how it was trained.
    """
    from tunelab.io import atomic_write_json, staged_dir

    check_settings(vocab_size, kind)
    if not inputs:
        raise TunelabError("tokenizer train: give at least one --input (a .txt, a folder, a .jsonl or builtin:NAME)")
    output = Path(output).expanduser()
    is_tokenizer = (output / "tokenizer.json").is_file()
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not is_tokenizer)):
        raise TunelabError(f"tokenizer train: --output {output} exists and is not a tokenizer folder; choose a "
                           "new folder (an existing tokenizer folder is replaced)")
    from tunelab.data.corpus import corpus_documents

    texts = [t for ref in inputs for t in corpus_documents(ref, text_field)]
    tokenizer = build_tokenizer(texts, vocab_size, kind, lowercase)
    with staged_dir(output) as tmp:
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / INFO_NAME, {"kind": kind, "vocab_size": len(tokenizer),
                                            "vocab_size_asked": vocab_size, "lowercase": lowercase,
                                            "inputs": list(inputs), "text_field": text_field,
                                            "documents": len(texts), "characters": sum(map(len, texts))})
    return output
