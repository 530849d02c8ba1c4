"""Timings of the vector index for `make bench`: index build speed (passages/s), query throughput (queries/s)
of exact and approximate search, and how much of the exact top-k the approximate search finds (recall@k).

Each function returns a plain dict of numbers, so a bench can print or store it as it is.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tunelab.retrieval.index import HNSW_EF_SEARCH, HNSW_M, Index, build_index, faiss_or_none


def time_build(corpus: str | Path, output: str | Path, encoder, *, approximate: str | None = None,
               chunk_size: int = 128, overlap: int = 32, batch_size: int = 32, **read) -> tuple[Index, dict]:
    """Build (replacing) an index of `corpus` at `output`; (the index, {documents, passages, seconds,
    passages_per_s, kind}). Seconds cover reading, chunking, embedding and writing, not loading the encoder.
    `read`: text_field / id_field for record files."""
    index, stats = build_index(corpus, output, encoder, chunk_size=chunk_size, overlap=overlap,
                               approximate=approximate, batch_size=batch_size, overwrite=True, desc=None, **read)
    return index, {"documents": stats.documents - stats.empty, "passages": stats.passages,
                   "seconds": stats.seconds, "passages_per_s": stats.passages / stats.seconds, "kind": index.kind}


def time_search(index: Index, query_vectors: np.ndarray, k: int = 10, min_seconds: float = 1.0) -> dict:
    """Search throughput on (Q, H) unit vectors: one query per call (as `tunelab ask` searches) and all Q in
    one call; each repeated until `min_seconds` passed. {queries_per_s, batched_queries_per_s, kind, passages}.
    The first call (which sets up the faiss index) is not timed."""
    query_vectors = np.asarray(query_vectors, dtype=np.float32)
    index.search(query_vectors[:1], k)  # warm-up: builds the searcher

    def rate(fn, per_call: int) -> float:
        calls, started = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_seconds:
                return calls * per_call / elapsed

    def one_at_a_time():
        for row in query_vectors:
            index.search(row[None], k)

    return {"kind": index.kind, "passages": len(index), "k": k,
            "queries_per_s": rate(one_at_a_time, len(query_vectors)),
            "batched_queries_per_s": rate(lambda: index.search(query_vectors, k), len(query_vectors))}


def time_query_texts(index: Index, texts: list[str], k: int = 10, batch_size: int = 64) -> dict:
    """End to end: embed `texts` with the index's encoder and search; {queries, seconds, queries_per_s}."""
    encoder = index.encoder()
    encoder.embed(texts[:1], desc=None)  # warm-up
    started = time.perf_counter()
    index.search(encoder.embed(list(texts), desc=None, batch_size=batch_size), k)
    seconds = time.perf_counter() - started
    return {"queries": len(texts), "seconds": seconds, "queries_per_s": len(texts) / seconds}


def approximate_recall(approximate: Index, exact: Index, query_vectors: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k passages that the approximate search also returns in its top-k."""
    found = approximate.search(query_vectors, k)
    truth = exact.search(query_vectors, k)
    shares = [len({h.passage_id for h in a} & {h.passage_id for h in e}) / max(len(e), 1)
              for a, e in zip(found, truth)]
    return float(np.mean(shares)) if shares else 0.0


def compare_search(vectors: np.ndarray, query_vectors: np.ndarray, k: int = 10, min_seconds: float = 1.0
                   ) -> dict:
    """Exact against HNSW search on the same (N, H) unit vectors held in memory (no encoder, no files), for
    corpora larger than one can embed in a bench: graph build seconds, queries/s of both, recall@k.

    Needs faiss (the HNSW graph). `vectors` may be real passage vectors, or many copies of them with noise.
    """
    if faiss_or_none() is None:
        raise RuntimeError("compare_search needs faiss (the HNSW graph)")
    from tunelab.retrieval.index import _hnsw_graph

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    passages = [{"passage_id": str(i), "doc_id": str(i), "start": 0, "end": 0, "text": ""}
                for i in range(len(vectors))]
    exact = Index(Path("."), {"search": "exact"}, vectors, passages)
    started = time.perf_counter()
    graph = _hnsw_graph(vectors)
    graph_seconds = time.perf_counter() - started
    approx = Index(Path("."), {"search": "hnsw"}, vectors, passages, graph=graph)
    return {"passages": len(vectors), "dimension": int(vectors.shape[1]), "k": k,
            "hnsw": {"m": HNSW_M, "ef_search": max(HNSW_EF_SEARCH, k), "build_seconds": graph_seconds},
            "exact": time_search(exact, query_vectors, k, min_seconds),
            "approximate": time_search(approx, query_vectors, k, min_seconds),
            f"recall@{k}": approximate_recall(approx, exact, query_vectors, k)}
