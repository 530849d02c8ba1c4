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

`corpus_documents` reads the text corpora that both this command and `tunelab pretrain` take.
"""
from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import DataError, TunelabError

KINDS = ("bpe", "wordpiece")
SPECIAL_TOKENS = {"bpe": ["<pad>", "<unk>", "<s>", "</s>"],
                  "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]}
BYTE_ALPHABET = 256
INFO_NAME = "tunelab_tokenizer.json"


# ---------------------------------------------------------------------------------------------- corpora

def corpus_documents(ref: str, text_field: str = "text", log=None) -> list[str]:
    """The documents of one corpus reference, in a stable order; empty documents are dropped and counted.

    A .txt file is one document; a folder is every .txt file under it (recursively), one document each;
    builtin:NAME and record files (.jsonl .json .csv .tsv .parquet) give the `text_field` of each record.
    What is skipped is reported through `log` (default: tunelab.data.sources.default_log).
    """
    from tunelab.data.sources import load_records, missing_path_error, read_txt, report_dropped

    path = Path(ref).expanduser()
    if not ref.startswith("builtin:"):
        if not path.exists():
            raise missing_path_error(path, "give a .txt file, a folder of .txt files, a .jsonl file or "
                                           "builtin:bbc-news")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise DataError(path, "the folder holds no .txt files (searched recursively)")
            others = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.suffix != ".txt")
            report_dropped(ref, {"files that are not .txt (a corpus folder is read as its .txt files)": others}
                           if others else {}, log)
            return _non_empty(ref, [(str(f.relative_to(path)), read_txt(f)[0]["text"]) for f in files], log)
        if path.suffix.lower() == ".txt":
            return _non_empty(ref, [(path.name, read_txt(path)[0]["text"])], log)
    texts = []
    for i, record in enumerate(load_records(ref, log)):
        value = record.get(text_field)
        if not isinstance(value, str):
            fields = ", ".join(k for k in record if not k.startswith("_"))
            raise DataError(record.get("_file", ref), f"record {i + 1}: text field {text_field!r} is missing or "
                                                      f"not a string; set the text field to one of: {fields}",
                            record.get("_line"))
        line = record.get("_line")
        texts.append((f"line {line}" if line is not None else f"record {i + 1}", value))
    return _non_empty(ref, texts, log)


def _non_empty(ref: str, named: list[tuple[str, str]], log) -> list[str]:
    """The texts of (name, text) pairs that hold more than whitespace; the others are reported as dropped."""
    from tunelab.data.sources import report_dropped

    empty = [name for name, text in named if not text.strip()]
    report_dropped(ref, {"empty documents (only whitespace; nothing to learn from)": empty} if empty else {}, log)
    return [text for _, text in named if text.strip()]


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
    """Train a tokenizer on `inputs` (corpus references, see `corpus_documents`) and save it to `output`.

    `output` is written atomically; an existing folder is replaced only when it holds a tokenizer.
    Beside the tokenizer files, tunelab_tokenizer.json records how it was trained.
    """
    from tunelab.io import atomic_replace_dir, atomic_write_json, staging_dir

    check_settings(vocab_size, kind)
    if not inputs:
        raise TunelabError("tokenizer train: give at least one --input (a .txt, a folder, a .jsonl or builtin:NAME)")
    output = Path(output).expanduser()
    is_tokenizer = (output / "tokenizer.json").is_file()
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not is_tokenizer)):
        raise TunelabError(f"tokenizer train: --output {output} exists and is not a tokenizer folder; choose a "
                           "new folder (an existing tokenizer folder is replaced)")
    texts = [t for ref in inputs for t in corpus_documents(ref, text_field)]
    tokenizer = build_tokenizer(texts, vocab_size, kind, lowercase)
    tmp = staging_dir(output)
    tokenizer.save_pretrained(str(tmp))
    atomic_write_json(tmp / INFO_NAME, {"kind": kind, "vocab_size": len(tokenizer), "vocab_size_asked": vocab_size,
                                        "lowercase": lowercase, "inputs": list(inputs), "text_field": text_field,
                                        "documents": len(texts), "characters": sum(map(len, texts))})
    atomic_replace_dir(tmp, output)
    return output


# ------------------------------------------------------------------------------------------------ CLI

def cmd_tokenizer_train(args) -> int:
    out = train_tokenizer(args.input, args.vocab_size, args.output, args.kind, args.lowercase, args.text_field)
    info = json.loads((out / INFO_NAME).read_text())
    note = (f" (the corpus supported only {info['vocab_size']} of the {info['vocab_size_asked']} asked for)"
            if info["vocab_size"] < info["vocab_size_asked"] else "")
    print(f"{info['kind']} tokenizer with {info['vocab_size']} tokens{note}, trained on {info['documents']} "
          f"documents, saved to {out}")
    print(f"use it with model.tokenizer: {out}")
    return 0


def add_commands(subparsers) -> None:
    """Register `tokenizer train` on the main parser's subparsers."""
    t = subparsers.add_parser("tokenizer", help="train a tokenizer for scratch models")
    tsub = t.add_subparsers(dest="tokenizer_command", required=True, metavar="COMMAND")
    tr = tsub.add_parser("train", help="train a BPE or WordPiece tokenizer on text",
                         description="Train a tokenizer on text files, folders of .txt, .jsonl records or "
                                     "builtin:NAME, and save it where model.tokenizer can point.")
    tr.add_argument("--input", action="append", required=True,
                    help="a .txt file, a folder of .txt files, a .jsonl/.csv/.parquet file or builtin:NAME "
                         "(repeatable)")
    tr.add_argument("--vocab-size", type=int, required=True, help="tokens in the vocabulary, special ones included")
    tr.add_argument("--output", required=True, help="folder to write the tokenizer to")
    tr.add_argument("--kind", choices=KINDS, default="bpe", help="bpe (byte-level, default) or wordpiece")
    tr.add_argument("--lowercase", action="store_true", help="lowercase text before tokenising")
    tr.add_argument("--text-field", default="text", help="field holding the text in record files (default: text)")
    tr.set_defaults(func=cmd_tokenizer_train)
