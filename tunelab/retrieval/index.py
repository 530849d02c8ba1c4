"""The vector index behind `tunelab index build / add / query` and `tunelab ask --index`.

An index is a folder:
  index.json      format version, the encoder (name, fingerprint, pooling, max_length), dimension, counts,
                  chunking settings, search kind
  vectors.npy     (N, H) float32 unit vectors, row i = passage i
  passages.jsonl  one passage per line: passage_id, doc_id, start, end, text (= document[start:end])
  hnsw.faiss      the approximate kind only: a faiss HNSW graph over the same vectors

Search is by inner product of unit vectors (cosine). Exact search uses faiss (IndexFlatIP) where it is
installed and numpy otherwise, with one ranking rule: higher score first, equal scores in passage order.
The approximate kind (`hnsw`) needs faiss. Every write goes to a staged folder swapped in whole, so a crash
leaves the old index as it was.
"""
from __future__ import annotations

import contextlib

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tunelab.errors import TunelabError

FORMAT = "tunelab-index"
VERSION = 1
SEARCH_KINDS = ("exact", "hnsw")
HNSW_M = 32  # graph neighbours per node: faiss' usual setting for ~100-1000-d vectors
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64  # candidates kept while searching (raised to k when k is larger)


@dataclass(frozen=True)
class Hit:
    """One retrieved passage: `text == document[start:end]`, score = cosine similarity, rank from 1."""

    passage_id: str
    doc_id: str
    text: str
    score: float
    rank: int
    start: int
    end: int


@dataclass(frozen=True)
class BuildStats:
    documents: int
    empty: int  # documents without text, skipped
    skipped: int  # documents already in the index (add --skip-existing)
    passages: int
    seconds: float


def faiss_or_none():
    """The faiss module, or None where it is not installed (exact search then runs on numpy)."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


# ---------------------------------------------------------------------------------------------
# The loaded index


@dataclass
class Index:
    """A loaded index: `meta` (index.json), `vectors` (N, H), `passages` (N dicts). Search with `search`
    (vectors) or `query` (texts, embedded with the index's own encoder, loaded on first use)."""

    path: Path
    meta: dict
    vectors: np.ndarray
    passages: list[dict]
    graph: Any = field(default=None, repr=False)  # the faiss HNSW graph (hnsw kind; read on first search)
    _searcher: Any = field(default=None, repr=False)
    _encoder: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def kind(self) -> str:
        return self.meta["search"]

    def search(self, vectors: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """The k best passages for each of the (Q, H) unit vectors; fewer where the index holds fewer."""
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.vectors.shape[1]))
        k = min(int(k), len(self))
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        if self._searcher is None:
            self._searcher = _searcher(self)
        with _threads_for(len(vectors)):
            scores, ids = self._searcher(vectors, k)  # (Q, k) each; id -1 = no result (HNSW may find fewer)
        return [self._hits(row_scores, row_ids) for row_scores, row_ids in zip(scores, ids)]

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        found = sorted((-float(s), int(i)) for s, i in zip(scores, ids) if i >= 0)  # equal scores: passage order
        return [Hit(p["passage_id"], p["doc_id"], p["text"], -neg, rank, p["start"], p["end"])
                for rank, (neg, i) in enumerate(found, start=1) for p in [self.passages[i]]]

    def query(self, texts: list[str], k: int = 5, encoder=None, desc: str | None = None) -> list[list[Hit]]:
        """The k best passages for each text. `encoder` (tunelab.retrieval.embed.Encoder) must be the one the
        index was built with (same fingerprint); default: load it from the reference index.json records."""
        if encoder is not None:
            self.check_encoder(encoder)
            self._encoder = encoder
        return self.search(self.encoder().embed(list(texts), desc=desc), k)

    def encoder(self):
        """The encoder this index was built with (loaded once; refused if its weights changed since)."""
        if self._encoder is None:
            from tunelab.retrieval.embed import load_encoder

            recorded = self.meta["encoder"]
            path = recorded.get("path")
            encoder = load_encoder(path if path and Path(path).exists() else recorded["name"])
            self.check_encoder(encoder)
            self._encoder = encoder
        return self._encoder

    def check_encoder(self, encoder) -> None:
        """Refuse an encoder other than the index's own (another model, or the same one changed)."""
        recorded = self.meta["encoder"]
        if encoder.fingerprint != recorded["fingerprint"]:
            raise TunelabError(f"{self.path} was built with encoder {recorded['name']} (fingerprint "
                               f"{recorded['fingerprint']}); {encoder.name} is another (fingerprint "
                               f"{encoder.fingerprint}): query with the index's own encoder, or build an index "
                               f"with {encoder.name}")


FEW_QUERIES = 16  # searches of fewer queries than this run on one faiss thread


@contextlib.contextmanager
def _threads_for(queries: int):
    """One faiss (OpenMP) thread for a search of a few queries, restored after it.

    A single query over 10,000 passages is a few million multiply-adds: a second thread gains nothing, and on
    a busy 2-core machine its OpenMP barrier made single-query exact search 10-20x slower (37 against 645
    queries/s, measured here). Batches of many queries keep faiss' own thread count.
    """
    faiss = faiss_or_none()
    if faiss is None or queries >= FEW_QUERIES:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _searcher(index: Index) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    """A function (Q, H) vectors, k -> (scores, ids), each (Q, k), for the index's search kind."""
    faiss = faiss_or_none()
    if index.kind == "hnsw":
        if faiss is None:
            raise _needs_faiss(f"{index.path} is an approximate (hnsw) index")
        if index.graph is None:
            index.graph = faiss.read_index(str(index.path / "hnsw.faiss"))
        graph = index.graph

        def search_hnsw(q: np.ndarray, k: int):
            graph.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
            return graph.search(q, k)

        return search_hnsw
    if faiss is None:
        return lambda q, k: numpy_search(index.vectors, q, k)
    flat = faiss.IndexFlatIP(index.vectors.shape[1])
    flat.add(index.vectors)

    def search_flat(q: np.ndarray, k: int):
        # faiss breaks a tie at the k-th place either way: fetch a few more, then rank as numpy_search does
        scores, ids = flat.search(q, min(k + TIE_MARGIN, len(index)))
        order = np.lexsort((ids, -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    return search_flat


TIE_MARGIN = 16  # extra results fetched from faiss so that ties at the k-th place rank in passage order


def numpy_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: (Q, k) scores and ids, higher first, equal scores in passage order."""
    scores = queries @ vectors.T  # (Q, N)
    k = min(k, vectors.shape[0])
    out_scores = np.zeros((len(queries), k), dtype=scores.dtype)
    out_ids = np.zeros((len(queries), k), dtype=np.int64)
    for q, row in enumerate(scores):
        kth = np.partition(row, len(row) - k)[len(row) - k]  # the k-th largest score
        candidates = np.flatnonzero(row >= kth)  # every passage tied with it too, not an arbitrary few
        order = np.lexsort((candidates, -row[candidates]))[:k]  # by score descending, then by id
        out_ids[q] = candidates[order]
        out_scores[q] = row[out_ids[q]]
    return out_scores, out_ids


def _needs_faiss(what: str) -> TunelabError:
    return TunelabError(f"{what}, which needs faiss (not installed here): pip install faiss-cpu, or use exact "
                        "search (build without --approximate)")


# ---------------------------------------------------------------------------------------------
# Reading and writing the folder


def is_index(path: str | Path) -> bool:
    """True for a folder holding an index.json of this format (what load_index reads)."""
    try:
        return json.loads((Path(path) / "index.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_index(path: str | Path) -> Index:
    """Load the index folder at `path`; one clear error if it is missing, not an index, or damaged."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TunelabError(f"index {path} does not exist; build one with `tunelab index build --corpus DOCS "
                           f"--output {path}`")
    if not (path / "index.json").is_file():
        raise TunelabError(f"{path} is not a tunelab index (no index.json); give the --output folder of "
                           "`tunelab index build`")
    meta = _read_meta(path)
    try:
        vectors = np.load(path / "vectors.npy", allow_pickle=False)
        lines = (path / "passages.jsonl").read_text(encoding="utf-8").split("\n")
        passages = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as e:
        raise _corrupt(path, f"cannot read its vectors or passages ({e})") from None
    if vectors.dtype != np.float32 or vectors.shape != (meta["passages"], meta["dimension"]) \
            or len(passages) != meta["passages"]:
        raise _corrupt(path, f"index.json counts {meta['passages']} passages of dimension {meta['dimension']}, "
                             f"the files hold vectors {vectors.shape} {vectors.dtype} and {len(passages)} passages")
    if meta["search"] == "hnsw" and not (path / "hnsw.faiss").is_file():
        raise _corrupt(path, "it is an approximate (hnsw) index without its hnsw.faiss")
    return Index(path, meta, vectors, passages)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise _corrupt(path, f"index.json is not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TunelabError(f"{path} is not a tunelab index (its index.json is something else); give the "
                           "--output folder of `tunelab index build`")
    if meta.get("version") != VERSION:
        raise TunelabError(f"{path} is an index of format version {meta.get('version')}; this tunelab reads "
                           f"version {VERSION}: build it again with `tunelab index build`")
    missing = [k for k in ("encoder", "dimension", "passages", "documents", "chunking", "search") if k not in meta]
    if missing:
        raise _corrupt(path, f"index.json lacks {', '.join(missing)}")
    return meta


def _corrupt(path: Path, why: str) -> TunelabError:
    return TunelabError(f"index {path} is damaged: {why}; build it again with `tunelab index build ... "
                        "--overwrite`")


def _write(folder: Path, meta: dict, vectors: np.ndarray, passages: list[dict], graph=None) -> None:
    """The index files into `folder` (a staging folder: it is swapped in whole afterwards)."""
    with open(folder / "vectors.npy", "wb") as f:
        np.save(f, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    with open(folder / "passages.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in passages)
    if graph is not None:
        faiss_or_none().write_index(graph, str(folder / "hnsw.faiss"))
    (folder / "index.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _hnsw_graph(vectors: np.ndarray, graph=None):
    """A faiss HNSW graph (inner product) with `vectors` added; `graph`: an existing one to add them to."""
    faiss = faiss_or_none()
    if graph is None:
        graph = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    if len(vectors):
        graph.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return graph


# ---------------------------------------------------------------------------------------------
# Build and add


def build_index(corpus: str | Path, output: str | Path, encoder=None, *, chunk_size: int = 128,
                overlap: int = 32, approximate: str | None = None, batch_size: int = 32,
                text_field: str = "text", id_field: str = "id", overwrite: bool = False,
                desc: str | None = "embed") -> tuple[Index, BuildStats]:
    """Chunk the documents of `corpus`, embed the passages with `encoder` (tunelab.retrieval.embed.Encoder;
    default the built-in MiniLM) and write the index folder `output`.

    `approximate="hnsw"` adds a faiss HNSW graph (needs faiss). An existing `output` is replaced only with
    `overwrite`, and only if it is an index (never another folder).
    """
    from tunelab.retrieval.chunking import check_chunking, chunk_documents, read_documents
    from tunelab.retrieval.embed import load_encoder

    output = Path(output).expanduser()
    check_output(output, overwrite)
    if approximate not in (None, "hnsw"):
        raise TunelabError(f"--approximate {approximate!r}: the approximate kind is hnsw")
    if approximate and faiss_or_none() is None:
        raise _needs_faiss("--approximate hnsw builds a faiss HNSW graph")
    encoder = encoder or load_encoder()
    started = time.perf_counter()  # reading, chunking, embedding, writing: passages/s, not model loading
    check_chunking(chunk_size, overlap, encoder.tokenizer, encoder.max_length)  # before reading a large corpus
    documents = read_documents(corpus, text_field=text_field, id_field=id_field)
    passages, empty = chunk_documents(documents, encoder.tokenizer, chunk_size, overlap, encoder.max_length)
    if not passages:
        raise TunelabError(f"--corpus {corpus}: all {len(documents)} documents are empty; nothing to index")
    vectors = encoder.embed([p.text for p in passages], desc=desc, batch_size=batch_size)
    meta = {"format": FORMAT, "version": VERSION, "encoder": _encoder_meta(encoder),
            "dimension": int(vectors.shape[1]), "documents": len(documents) - empty, "passages": len(passages),
            "chunking": {"chunk_size": chunk_size, "overlap": overlap}, "search": approximate or "exact"}
    if approximate:
        meta["hnsw"] = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
    rows = [p.as_dict() for p in passages]
    graph = _hnsw_graph(vectors) if approximate else None
    _commit(output, meta, vectors, rows, graph)
    stats = BuildStats(len(documents), empty, 0, len(passages), time.perf_counter() - started)
    return Index(output, meta, vectors, rows, graph=graph, _encoder=encoder), stats


def _encoder_meta(encoder) -> dict:
    """What index.json records of the encoder: the reference as given and, for a folder, its absolute path
    (so a query from another working directory finds it)."""
    meta = {"name": encoder.name, "fingerprint": encoder.fingerprint, "pooling": encoder.pooling,
            "max_length": encoder.max_length}
    if Path(encoder.name).expanduser().exists():
        meta["path"] = str(Path(encoder.name).expanduser().resolve())
    return meta


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an --output that is a file, a folder that is not an index, or an index without `overwrite`."""
    if output.exists() and not output.is_dir():
        raise TunelabError(f"--output {output} is a file; give a folder for the index")
    if output.is_dir() and any(output.iterdir()):
        if not is_index(output):
            raise TunelabError(f"--output {output} is a folder that is not a tunelab index; it is never replaced: "
                               "give a new folder")
        if not overwrite:
            raise TunelabError(f"--output {output} already holds an index; add --overwrite to replace it, or "
                               f"`tunelab index add {output} --corpus MORE` to add documents to it")


def _commit(output: Path, meta: dict, vectors: np.ndarray, passages: list[dict], graph) -> None:
    from tunelab.io import staged_dir

    with staged_dir(output) as tmp:
        _write(tmp, meta, vectors, passages, graph)


def add_to_index(path: str | Path, corpus: str | Path, encoder=None, *, skip_existing: bool = False,
                 batch_size: int = 32, text_field: str = "text", id_field: str = "id",
                 desc: str | None = "embed") -> tuple[Index, BuildStats]:
    """Add the documents of `corpus` to the index at `path`, embedding only them, with the index's own
    chunking; the result equals an index built from all documents at once.

    A document id already in the index is an error, or with `skip_existing` skipped and counted. `encoder`
    must be the index's own (default: loaded from what index.json records).
    """
    from tunelab.retrieval.chunking import chunk_documents, read_documents

    index = load_index(path)
    if index.kind == "hnsw" and faiss_or_none() is None:
        raise _needs_faiss(f"{index.path} is an approximate (hnsw) index")
    if encoder is not None:
        index.check_encoder(encoder)
    encoder = encoder or index.encoder()
    started = time.perf_counter()  # as in build_index: reading, chunking, embedding, writing; not model loading
    documents = read_documents(corpus, text_field=text_field, id_field=id_field)
    known = {p["doc_id"] for p in index.passages}
    new = [d for d in documents if d.doc_id not in known]
    if len(new) < len(documents) and not skip_existing:
        clash = [d.doc_id for d in documents if d.doc_id in known]
        raise TunelabError(f"--corpus {corpus}: {len(clash)} document ids are already in {index.path} (e.g. "
                           f"{', '.join(clash[:3])}); add --skip-existing to skip them, or rename them")
    chunking = index.meta["chunking"]
    passages, empty = chunk_documents(new, encoder.tokenizer, chunk_size=chunking["chunk_size"],
                                      overlap=chunking["overlap"], max_length=encoder.max_length)
    vectors = encoder.embed([p.text for p in passages], desc=desc, batch_size=batch_size)
    vectors = vectors.reshape(len(passages), index.vectors.shape[1])  # (0, H) when nothing is new
    all_vectors = np.concatenate([index.vectors, vectors])
    rows = index.passages + [p.as_dict() for p in passages]
    meta = {**index.meta, "documents": index.meta["documents"] + len(new) - empty, "passages": len(rows)}
    graph = None
    if index.kind == "hnsw":  # the saved graph grows: only the new vectors are inserted
        graph = _hnsw_graph(vectors, faiss_or_none().read_index(str(index.path / "hnsw.faiss")))
    _commit(index.path, meta, all_vectors, rows, graph)
    stats = BuildStats(len(new), empty, len(documents) - len(new), len(passages), time.perf_counter() - started)
    return Index(index.path, meta, all_vectors, rows, graph=graph, _encoder=encoder), stats
