"""`tunelab index build / add / query`: a vector index of passages (tunelab.retrieval.index). Thin: the
arguments, the lines a person reads; the work is in tunelab.retrieval."""
from __future__ import annotations

import json
import shutil
import sys

DEFAULT_MODEL = "builtin:minilm-l6"  # tunelab.retrieval.embed.DEFAULT_ENCODER, without importing torch here

GROUP_EXAMPLES = """examples:
  tunelab index build --corpus docs/ --output runs/docs-index
  tunelab index query runs/docs-index --text "Where is the Eiffel Tower?"
  tunelab index add runs/docs-index --corpus new-docs/"""

BUILD_EXAMPLES = """examples:
  tunelab index build --corpus docs/ --output runs/docs-index
  tunelab index build --corpus articles.jsonl --text-field body --id-field url --output runs/articles-index
  tunelab index build --corpus docs/ --model runs/retriever --output runs/docs-index --overwrite
  tunelab index build --corpus big.parquet --approximate hnsw --chunk-size 256 --overlap 64 --output runs/big
a folder is read recursively (.txt, .md; ids are the paths inside it); a .txt/.md file is one document;
.jsonl/.csv/.parquet files hold one document per record. --model: a model reference or a run of task
retrieval (default builtin:minilm-l6)."""

ADD_EXAMPLES = """examples:
  tunelab index add runs/docs-index --corpus new-docs/
  tunelab index add runs/docs-index --corpus articles.jsonl --text-field body --skip-existing
only the new documents are embedded, with the index's own encoder and chunking."""

QUERY_EXAMPLES = """examples:
  tunelab index query runs/docs-index --text "Where is the Eiffel Tower?"
  tunelab index query runs/docs-index --text "first question" --text "second" -k 3 --json
  tunelab index query runs/docs-index < questions.txt       (one question per line)"""


def _settings(args) -> None:
    """Checks shared by the index commands, before any model loads."""
    if getattr(args, "batch_size", 1) < 1:
        from tunelab.errors import TunelabError

        raise TunelabError(f"--batch-size: got {args.batch_size}; give 1 or more passages embedded at once")


def _progress_as_asked(command):
    """`command` with progress displays off for its own duration under --no-progress (not for the rest of a
    process that calls tunelab.cli.main more than once: tests, notebooks)."""
    def run(args) -> int:
        from tunelab.train.logging import progress_shown

        if not getattr(args, "no_progress", False):
            return command(args)
        with progress_shown(False):
            return command(args)
    return run


def _encoder(args):
    """The encoder --model names (None where it was not given: the default, or the index's own)."""
    if not getattr(args, "model", None):
        return None
    from tunelab.retrieval.embed import load_encoder

    return load_encoder(args.model)


def cmd_index_build(args) -> int:
    from pathlib import Path

    from tunelab.retrieval.chunking import check_corpus
    from tunelab.retrieval.embed import load_encoder
    from tunelab.retrieval.index import build_index, check_output

    _settings(args)
    check_output(Path(args.output).expanduser(), args.overwrite)  # before the model loads
    check_corpus(args.corpus)
    encoder = load_encoder(args.model or DEFAULT_MODEL)
    index, stats = build_index(args.corpus, args.output, encoder, chunk_size=args.chunk_size,
                               overlap=args.overlap, approximate=args.approximate, batch_size=args.batch_size,
                               text_field=args.text_field, id_field=args.id_field, overwrite=args.overwrite)
    empty = f" ({stats.empty} empty skipped)" if stats.empty else ""
    print(f"indexed {stats.documents - stats.empty} documents{empty} as {stats.passages} passages in "
          f"{stats.seconds:.2f} s ({stats.passages / max(stats.seconds, 1e-9):.1f} passages/s), "
          f"{index.kind} search; written to {index.path}")
    return 0


def cmd_index_add(args) -> int:
    from tunelab.retrieval.index import add_to_index

    _settings(args)
    index, stats = add_to_index(args.index, args.corpus, _encoder(args), skip_existing=args.skip_existing,
                                batch_size=args.batch_size, text_field=args.text_field, id_field=args.id_field)
    notes = [f"{stats.empty} empty" if stats.empty else "", f"{stats.skipped} already in the index"
             if stats.skipped else ""]
    skipped = f" ({' and '.join(n for n in notes if n)} skipped)" if any(notes) else ""
    print(f"added {stats.documents - stats.empty} documents{skipped} as {stats.passages} passages in "
          f"{stats.seconds:.2f} s ({stats.passages / max(stats.seconds, 1e-9):.1f} passages/s); {index.path} now "
          f"holds {index.meta['documents']} documents, {index.meta['passages']} passages")
    return 0


def cmd_index_query(args) -> int:
    from tunelab.errors import TunelabError
    from tunelab.retrieval.index import load_index

    if args.k < 1:
        raise TunelabError(f"-k {args.k}: give the number of passages to show, 1 or more")
    texts = args.text or _stdin_lines()
    if not texts:
        raise TunelabError("index query: give --text \"...\" (repeatable) or questions on standard input, one "
                           "per line")
    index = load_index(args.index)
    results = index.query(texts, k=args.k, encoder=_encoder(args))
    for text, hits in zip(texts, results):
        if args.json:
            row = {"query": text, "hits": [vars(h) for h in hits]}
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            _print_hits(text, hits, many=len(texts) > 1)
    sys.stdout.flush()
    return 0


def _stdin_lines() -> list[str]:
    if sys.stdin is None or sys.stdin.isatty():
        return []
    return [line.strip() for line in sys.stdin if line.strip()]


def _print_hits(text: str, hits, many: bool) -> None:
    """`rank  score  passage_id  passage` lines, the passage on one line, cut to the terminal's width."""
    if many:
        print(f"query: {text}")
    width = shutil.get_terminal_size((100, 24)).columns
    for h in hits:
        head = f"{h.rank:>2}  {h.score:6.3f}  {h.passage_id}  "
        print(head + shorten(h.text, max(width - len(head), 20)))
    if many:
        print()


def shorten(text: str, width: int) -> str:
    """`text` on one line (runs of whitespace as one space), cut to `width` characters with an ellipsis."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[:width - 1].rstrip() + "…"


def _corpus_arguments(parser) -> None:
    parser.add_argument("--corpus", required=True,
                        help="a folder of .txt/.md files, a .txt/.md file, or a .jsonl/.csv/.parquet file")
    parser.add_argument("--text-field", default="text", help="record files: the field holding the text (default text)")
    parser.add_argument("--id-field", default="id",
                        help="record files: the field holding the document id (default id; else the record number)")
    parser.add_argument("--batch-size", type=int, default=32, help="passages embedded at once (default 32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_commands(sub) -> None:
    """Register `index build`, `index add` and `index query` on the main parser's subparsers."""
    p = sub.add_parser("index", help="build and query a vector index of passages (retrieval)",
                       epilog=GROUP_EXAMPLES)
    isub = p.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")

    b = isub.add_parser("build", help="chunk documents, embed the passages, write an index", epilog=BUILD_EXAMPLES,
                        description="Cut documents into overlapping passages of tokens, embed them (mean-pooled unit "
                                    "vectors) and write an index folder; exact search by default.")
    _corpus_arguments(b)
    b.add_argument("--output", required=True, help="the index folder to write")
    b.add_argument("--model", help=f"the encoder: a model reference or a retrieval run (default {DEFAULT_MODEL})")
    b.add_argument("--chunk-size", type=int, default=128,
                   help="tokens per passage, special tokens included (default 128)")
    b.add_argument("--overlap", type=int, default=32, help="tokens shared by consecutive passages (default 32)")
    b.add_argument("--approximate", choices=("hnsw",),
                   help="also build an approximate faiss HNSW graph and search it (large corpora; needs faiss)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index at --output")
    b.set_defaults(func=_progress_as_asked(cmd_index_build))

    a = isub.add_parser("add", help="add documents to an index", epilog=ADD_EXAMPLES,
                        description="Embed new documents with the index's own encoder and chunking and add them; "
                                    "the index is replaced whole when done.")
    a.add_argument("index", help="an index folder written by `tunelab index build`")
    _corpus_arguments(a)
    a.add_argument("--model", help="check that this is the index's encoder (default: the one it records)")
    a.add_argument("--skip-existing", action="store_true",
                   help="skip documents whose id is already in the index (default: an error)")
    a.set_defaults(func=_progress_as_asked(cmd_index_add))

    q = isub.add_parser("query", help="the passages nearest to a question", epilog=QUERY_EXAMPLES,
                        description="Embed each question with the index's encoder and print the k nearest passages: "
                                    "rank, cosine score, passage id and the passage.")
    q.add_argument("index", help="an index folder written by `tunelab index build`")
    q.add_argument("--text", action="append", help="a question (repeatable; default: lines of standard input)")
    q.add_argument("-k", type=int, default=5, help="passages per question (default 5)")
    q.add_argument("--json", action="store_true", help="one JSON object per question with the full passages")
    q.add_argument("--model", help="check that this is the index's encoder (default: the one it records)")
    q.set_defaults(func=_progress_as_asked(cmd_index_query))
