"""The vector index (tunelab.retrieval.index), chunking (tunelab.retrieval.chunking) and the encoder loader
(tunelab.retrieval.embed.load_encoder): exact passages cut by offsets (unicode included), exact search equal to
a brute-force ranking with faiss and without it, incremental adds equal to one build, encoder fingerprints,
damaged and foreign folders, and one check of the built-in MiniLM on handmade documents.

The encoder is the tiny random BERT of conftest.py (vocabulary: the keyword and filler words listed there).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tunelab.errors import DataError, TunelabError
from tunelab.retrieval import index as index_module
from tunelab.retrieval.chunking import Document, chunk_documents, chunk_text, read_documents
from tunelab.retrieval.embed import load_encoder, weights_fingerprint
from tunelab.retrieval.index import Hit, add_to_index, build_index, is_index, load_index, numpy_search


def words_doc(seed: int, n: int, helpers) -> str:
    """`n` vocabulary words (tiny BERT knows each as one token), seeded."""
    rng = np.random.default_rng(seed)
    vocab = sorted({w for ws in helpers.KEYWORDS.values() for w in ws} | set(helpers.FILLER))
    return " ".join(rng.choice(vocab, size=n))


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    return load_encoder(str(tiny_bert))


@pytest.fixture
def corpus(tmp_path, helpers) -> Path:
    """A folder of 5 documents (one in a sub-folder, one empty) + files that are not read."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for i in range(3):
        (folder / f"d{i}.txt").write_text(words_doc(i, 30 + 10 * i, helpers), encoding="utf-8")
    (folder / "sub" / "notes.md").write_text("goal match team coach. " * 3, encoding="utf-8")
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    (folder / ".hidden" / "secret.txt").write_text("bread", encoding="utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG")
    return folder


# ---------------------------------------------------------------------------------------------
# Chunking


def test_windows_are_exact_slices_of_the_given_token_size_and_overlap(encoder):
    text = "  " + " ".join(f"goal{'' if i % 2 else ','}" for i in range(12)) + "\n"  # 18 tokens: words and commas
    spans = chunk_text(text, encoder.tokenizer, body=6, overlap=2)
    # tokens 0-5, 4-9, 8-13, 12-17 ("," is a word of its own: every token starts a word)
    assert spans == [(2, 23), (17, 39), (30, 51), (46, 67)]
    assert text[17:39] == ", goal goal, goal goal"
    ids = [encoder.tokenizer(text[s:e], add_special_tokens=False)["input_ids"] for s, e in spans]
    assert [len(i) for i in ids] == [6, 6, 6, 6]
    assert all(a[-2:] == b[:2] for a, b in zip(ids, ids[1:]))  # consecutive windows share 2 tokens
    assert chunk_text(" \n\t", encoder.tokenizer, 6, 2) == []


def test_unicode_windows_end_at_word_boundaries_and_round_trip():
    """MiniLM's tokenizer lowercases, strips accents and splits words into pieces; offsets still point into the
    original text, and no window starts or ends inside a word."""
    from tunelab.models.load import load_tokenizer
    from tunelab.models.registry import resolve_model

    tokenizer = load_tokenizer(resolve_model("builtin:minilm-l6"))
    text = ("Größe naïve café — unbelievably Übersetzung 東京 tokenization 🙂 end. " * 3).strip()
    doc = Document("u", text)
    passages, empty = chunk_documents([doc], tokenizer, chunk_size=9, overlap=2, max_length=256)
    assert empty == 0 and [p.passage_id for p in passages][:2] == ["u#0", "u#1"]
    assert passages[0].text == "Größe naïve café —"  # "un" + "##bel" ... does not fit in the 7 text tokens
    for p in passages:
        assert text[p.start:p.end] == p.text
        assert len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= 7  # 9 minus [CLS], [SEP]
        assert (p.start == 0 or not text[p.start - 1].isalnum()) and (p.end == len(text) or not text[p.end].isalnum())
    assert passages[-1].end == len(text)
    # tokens 0-5, 4-10, 11-16 (the window from 9 would start inside "unbelievably": no overlap), 15-21, ...
    assert [p.text for p in passages[:4]] == [
        "Größe naïve café —", "café — unbelievably", "Übersetzung 東京", "東京 tokenization 🙂 end."]
    assert len(passages) == 14


def test_a_word_longer_than_a_window_is_cut():
    from tunelab.models.load import load_tokenizer
    from tunelab.models.registry import resolve_model

    tokenizer = load_tokenizer(resolve_model("builtin:minilm-l6"))
    text = "unbelievably unbelievably"  # 5 pieces each
    spans = chunk_text(text, tokenizer, body=3, overlap=1)
    assert [text[s:e] for s, e in spans] == ["unbelie", "vably", "unbelie", "vably"]  # un ##bel ##ie | ##va ##bly


@pytest.mark.parametrize("size, overlap, message", [
    (65, 0, "--chunk-size 65: the encoder reads at most 64 tokens; give --chunk-size 64 or less"),
    (2, 0, "--chunk-size 2: leaves no room for text beside the 2 special tokens"),
    (10, 8, "--overlap 8: must be at least 0 and less than the 8 text tokens"),
    (10, -1, "--overlap -1"),
])
def test_impossible_chunk_settings_are_refused(encoder, size, overlap, message):
    with pytest.raises(TunelabError, match="^" + message.replace("(", r"\(")):
        chunk_documents([Document("a", "goal")], encoder.tokenizer, size, overlap, encoder.max_length)


# ---------------------------------------------------------------------------------------------
# Reading corpora


def test_folder_corpus_is_read_recursively_in_path_order(corpus):
    docs = read_documents(corpus)
    assert [d.doc_id for d in docs] == ["d0.txt", "d1.txt", "d2.txt", "empty.txt", "sub/notes.md"]
    assert docs[-1].text.startswith("goal match")


def test_a_file_that_is_not_utf8_in_a_folder_is_read_as_windows_1252_and_reported(tmp_path, caplog):
    (tmp_path / "a.txt").write_text("plain text", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes("caf\u00e9 \u2013 menu".encode("cp1252"))  # like one BBC article
    docs = read_documents(tmp_path)
    assert [d.text for d in docs] == ["plain text", "caf\u00e9 \u2013 menu"]
    assert "1 file is not valid UTF-8 and was read as Windows-1252 (b.txt)" in caplog.text


def test_record_corpora(tmp_path, helpers):
    records = [{"id": "x", "body": "goal match"}, {"id": "7", "body": "bread soup"}]
    for fmt in ("jsonl", "csv", "parquet"):
        path = helpers.write_records(tmp_path, fmt, records, name=f"c-{fmt}")
        docs = read_documents(path, text_field="body")
        assert [(d.doc_id, d.text) for d in docs] == [("x", "goal match"), ("7", "bread soup")]
    numbers = helpers.write_jsonl(tmp_path / "n.jsonl", [{"key": 7, "text": "a"}, {"key": 8, "text": "b"}])
    assert [d.doc_id for d in read_documents(numbers, id_field="key")] == ["7", "8"]
    path = helpers.write_jsonl(tmp_path / "plain.jsonl", [{"text": "a"}, {"text": "b"}])
    assert [d.doc_id for d in read_documents(path)] == ["1", "2"]  # no ids: record numbers
    one = tmp_path / "one.md"
    one.write_text("# Title\n\nbody", encoding="utf-8")
    assert read_documents(one) == [Document("one.md", "# Title\n\nbody")]


def test_bad_corpora_are_one_line_errors(tmp_path, helpers):
    bad = helpers.write_jsonl(tmp_path / "bad.jsonl", [{"id": 1, "text": "a"}, {"id": 2, "body": "b"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: record 2 has no field 'text' \(fields: id, body\); set "
                                        "--text-field"):
        read_documents(bad)
    dup = helpers.write_jsonl(tmp_path / "dup.jsonl", [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}])
    with pytest.raises(DataError, match="records 1 and 2 have the same id '1'"):
        read_documents(dup)
    half = helpers.write_jsonl(tmp_path / "half.jsonl", [{"id": 1, "text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match="record 2 has no 'id' .other records have one."):
        read_documents(half)
    with pytest.raises(DataError, match="does not exist"):
        read_documents(tmp_path / "nope")
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(DataError, match="has no .txt or .md files"):
        read_documents(tmp_path / "empty-folder")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(DataError, match="unsupported corpus file type '.pdf'"):
        read_documents(tmp_path / "x.pdf")


# ---------------------------------------------------------------------------------------------
# The encoder


def test_encoder_fingerprint_is_stable_and_follows_the_weights(tiny_bert, encoder):
    import torch

    again = load_encoder(str(tiny_bert))
    assert again.fingerprint == encoder.fingerprint and len(encoder.fingerprint) == 16
    assert (encoder.pooling, encoder.max_length, encoder.name) == ("mean", 64, str(tiny_bert))
    assert weights_fingerprint(encoder.model, "cls", 64) != encoder.fingerprint
    assert weights_fingerprint(encoder.model, "mean", 32) != encoder.fingerprint
    with torch.no_grad():
        again.model.embeddings.word_embeddings.weight[3, 0] += 1e-6
    assert weights_fingerprint(again.model, "mean", 64) != encoder.fingerprint
    vectors = encoder.embed(["goal match", "bread"], desc=None)
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Build, load, search


def test_build_writes_an_index_that_loads_and_finds_its_own_passages(corpus, encoder, tmp_path):
    built, stats = build_index(corpus, tmp_path / "idx", encoder, chunk_size=16, overlap=4, desc=None)
    # 14 text tokens a window, 10 new each: 30 tokens -> 3 windows, 40 -> 4, 50 -> 5, notes.md's 15 -> 2
    assert (stats.documents, stats.empty, stats.passages) == (5, 1, 14)
    index = load_index(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["encoder"] == {"name": str(encoder.name), "fingerprint": encoder.fingerprint, "pooling": "mean",
                               "max_length": 64, "path": str(Path(encoder.name).resolve())}
    assert (meta["dimension"], meta["documents"], meta["passages"], meta["search"]) == (32, 4, 14, "exact")
    assert meta["chunking"] == {"chunk_size": 16, "overlap": 4}
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == ["index.json", "passages.jsonl", "vectors.npy"]
    texts = {d.doc_id: d.text for d in read_documents(corpus)}
    for p in index.passages:
        assert texts[p["doc_id"]][p["start"]:p["end"]] == p["text"]
    assert np.array_equal(index.vectors, built.vectors)
    assert np.allclose(index.vectors, encoder.embed([p["text"] for p in index.passages], desc=None), atol=1e-6)
    hits = index.query([index.passages[5]["text"]], k=3, encoder=encoder)[0]
    assert hits[0].passage_id == index.passages[5]["passage_id"] and hits[0].rank == 1
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and [h.rank for h in hits] == [1, 2, 3]
    assert isinstance(hits[0], Hit) and hits[0].doc_id == index.passages[5]["doc_id"]


def _index_of(vectors: np.ndarray, path: Path) -> index_module.Index:
    passages = [{"passage_id": f"d{i}#0", "doc_id": f"d{i}", "start": 0, "end": 1, "text": str(i)}
                for i in range(len(vectors))]
    meta = {"search": "exact", "encoder": {"name": "x", "fingerprint": "f"}}
    return index_module.Index(path, meta, vectors.astype(np.float32), passages)


def _unit(rng, n: int, dim: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("with_faiss", [True, False])
def test_exact_search_equals_a_brute_force_ranking(with_faiss, monkeypatch, tmp_path):
    if not with_faiss:
        monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    assert (index_module.faiss_or_none() is not None) == with_faiss
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 200), _unit(rng, 7)
    index = _index_of(vectors, tmp_path)
    hits = index.search(queries, k=10)
    scores = queries @ vectors.T
    for q, row in enumerate(hits):
        expected = np.argsort(-scores[q], kind="stable")[:10]
        assert [int(h.passage_id[1:-2]) for h in row] == expected.tolist()
        assert np.allclose([h.score for h in row], scores[q, expected], atol=1e-5)


def test_a_search_of_few_queries_runs_on_one_faiss_thread_and_restores_the_setting(tmp_path):
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    index = _index_of(_unit(rng, 50), tmp_path)
    seen = []
    index._searcher = lambda q, k: (seen.append(faiss.omp_get_max_threads()),
                                    numpy_search(index.vectors, q, k))[1]
    original = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        index.search(_unit(rng, 1), k=3)
        index.search(_unit(rng, index_module.FEW_QUERIES), k=3)
        assert seen == [1, 2] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(original)


@pytest.mark.parametrize("with_faiss", [True, False])
def test_ties_rank_in_passage_order_and_k_beyond_the_size_gives_all(with_faiss, monkeypatch, tmp_path):
    if not with_faiss:
        monkeypatch.setitem(sys.modules, "faiss", None)
    rng = np.random.default_rng(1)
    base = _unit(rng, 3)
    vectors = base[[2, 0, 1, 0, 2, 0]]  # passages 1, 3, 5 equal; 0 and 4 equal
    index = _index_of(vectors, tmp_path)
    hits = index.search(base[[0]], k=50)[0]
    assert len(hits) == 6 and [h.rank for h in hits] == [1, 2, 3, 4, 5, 6]
    assert [h.passage_id for h in hits[:3]] == ["d1#0", "d3#0", "d5#0"]
    assert index.search(np.zeros((0, 16), np.float32), k=3) == []


def test_numpy_search_pins_ties():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], dtype=np.float32)
    scores, ids = numpy_search(vectors, np.array([[1, 0]], dtype=np.float32), 3)
    assert ids.tolist() == [[0, 2, 3]] and np.allclose(scores, [[1, 1, 0.6]])


def test_without_faiss_exact_builds_and_approximate_is_refused(corpus, encoder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    index, _ = build_index(corpus, tmp_path / "idx", encoder, chunk_size=16, overlap=4, desc=None)
    assert index.search(index.vectors[:1], k=1)[0][0].passage_id == "d0.txt#0"
    with pytest.raises(TunelabError, match="^--approximate hnsw builds a faiss HNSW graph, which needs faiss "
                                           r"\(not installed here\): pip install faiss-cpu"):
        build_index(corpus, tmp_path / "hnsw", encoder, approximate="hnsw", desc=None)
    assert not (tmp_path / "hnsw").exists()


def test_hnsw_index_finds_what_exact_search_finds(tmp_path, encoder, helpers):
    records = [{"id": f"r{i}", "text": words_doc(100 + i, 12, helpers)} for i in range(300)]
    corpus = helpers.write_jsonl(tmp_path / "c.jsonl", records)
    exact, _ = build_index(corpus, tmp_path / "exact", encoder, chunk_size=16, overlap=2, desc=None)
    approx, stats = build_index(corpus, tmp_path / "approx", encoder, chunk_size=16, overlap=2,
                                approximate="hnsw", desc=None)
    assert (tmp_path / "approx" / "hnsw.faiss").is_file() and stats.passages == 300
    approx = load_index(tmp_path / "approx")
    assert approx.kind == "hnsw" and np.array_equal(approx.vectors, exact.vectors)
    queries = exact.vectors[:40]
    found = [{h.passage_id for h in row} for row in approx.search(queries, k=10)]
    truth = [{h.passage_id for h in row} for row in exact.search(queries, k=10)]
    recall = np.mean([len(f & t) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.95


# ---------------------------------------------------------------------------------------------
# Adding documents


def test_add_equals_one_build_of_all_documents(corpus, encoder, tmp_path):
    more = tmp_path / "more"
    (more / "sub").mkdir(parents=True)
    (more / "e.txt").write_text("robot chip code web " * 9, encoding="utf-8")
    (more / "sub" / "f.md").write_text("salad rice cook", encoding="utf-8")
    both = tmp_path / "both"
    both.mkdir()
    for folder in (corpus, more):
        for f in folder.rglob("*.*"):
            if not any(part.startswith(".") for part in f.relative_to(folder).parts):
                (both / f.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
                (both / f.relative_to(folder)).write_bytes(f.read_bytes())
    build_index(corpus, tmp_path / "grown", encoder, chunk_size=16, overlap=4, desc=None)
    _, stats = add_to_index(tmp_path / "grown", more, encoder, desc=None)
    assert (stats.documents, stats.passages, stats.skipped) == (2, 5, 0)  # 36 tokens -> 4 windows, 3 -> 1
    one, _ = build_index(both, tmp_path / "one", encoder, chunk_size=16, overlap=4, desc=None)
    grown = load_index(tmp_path / "grown")
    key = lambda p: p["passage_id"]  # noqa: E731  (one build orders documents by path: both folders mixed)
    assert sorted(grown.passages, key=key) == sorted(one.passages, key=key)
    order_one = {p["passage_id"]: i for i, p in enumerate(one.passages)}
    rows = [order_one[p["passage_id"]] for p in grown.passages]
    assert np.allclose(grown.vectors, one.vectors[rows], atol=1e-6)
    meta_grown, meta_one = dict(grown.meta), dict(one.meta)
    assert meta_grown == meta_one and meta_grown["documents"] == 6


def test_add_to_an_hnsw_index_grows_its_graph(tmp_path, encoder, helpers):
    first = helpers.write_jsonl(tmp_path / "a.jsonl", [{"id": f"a{i}", "text": words_doc(i, 12, helpers)}
                                                       for i in range(60)])
    more = helpers.write_jsonl(tmp_path / "b.jsonl", [{"id": f"b{i}", "text": words_doc(500 + i, 12, helpers)}
                                                      for i in range(20)])
    build_index(first, tmp_path / "idx", encoder, chunk_size=16, overlap=2, approximate="hnsw", desc=None)
    add_to_index(tmp_path / "idx", more, desc=None)  # the recorded encoder
    index = load_index(tmp_path / "idx")
    assert (index.kind, len(index), index.meta["documents"]) == ("hnsw", 80, 80)
    hits = index.search(index.vectors[60:], k=1)  # the graph holds the new vectors
    assert [row[0].passage_id for row in hits] == [f"b{i}#0" for i in range(20)]


def test_add_refuses_known_ids_unless_skipped(corpus, encoder, tmp_path):
    build_index(corpus, tmp_path / "idx", encoder, chunk_size=16, overlap=4, desc=None)
    before = (tmp_path / "idx" / "vectors.npy").read_bytes()
    with pytest.raises(TunelabError, match=r"4 document ids are already in .*idx \(e.g. d0.txt, d1.txt, d2.txt"):
        add_to_index(tmp_path / "idx", corpus, encoder, desc=None)
    _, stats = add_to_index(tmp_path / "idx", corpus, encoder, skip_existing=True, desc=None)
    assert (stats.documents, stats.skipped, stats.passages, stats.empty) == (1, 4, 0, 1)  # empty.txt is new
    assert (tmp_path / "idx" / "vectors.npy").read_bytes() == before


def test_a_failed_add_leaves_the_old_index_whole(corpus, encoder, tmp_path, monkeypatch, helpers):
    build_index(corpus, tmp_path / "idx", encoder, chunk_size=16, overlap=4, desc=None)
    files = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    real = index_module._write

    def crash(folder, *args, **kwargs):
        real(folder, *args, **kwargs)
        raise KeyboardInterrupt  # after every file of the new version was written

    monkeypatch.setattr(index_module, "_write", crash)
    more = helpers.write_jsonl(tmp_path / "more.jsonl", [{"id": "n", "text": "goal goal"}])
    with pytest.raises(KeyboardInterrupt):
        add_to_index(tmp_path / "idx", more, encoder, desc=None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


# ---------------------------------------------------------------------------------------------
# Encoders that do not match, folders that are not indexes


def test_another_encoder_is_refused_naming_both(corpus, encoder, tmp_path, tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    other_dir = tmp_path / "other-bert"
    model = AutoModel.from_pretrained(str(tiny_bert))
    with torch.no_grad():
        model.pooler.dense.bias += 0.5  # a change the embeddings do not even use: still another fingerprint
    model.save_pretrained(str(other_dir))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(other_dir))
    other = load_encoder(str(other_dir))
    build_index(corpus, tmp_path / "idx", encoder, chunk_size=16, overlap=4, desc=None)
    index = load_index(tmp_path / "idx")
    message = (f"^{tmp_path / 'idx'} was built with encoder {tiny_bert} \\(fingerprint {encoder.fingerprint}\\); "
               f"{other_dir} is another \\(fingerprint {other.fingerprint}\\): query with the index's own encoder")
    with pytest.raises(TunelabError, match=message):
        index.query(["goal"], encoder=other)
    with pytest.raises(TunelabError, match=message):
        add_to_index(tmp_path / "idx", corpus, other, skip_existing=True, desc=None)
    assert index.query(["goal"], k=1)[0][0].rank == 1  # the recorded encoder, loaded from its path


def test_folders_that_are_not_indexes(tmp_path, corpus, encoder):
    with pytest.raises(TunelabError, match="does not exist; build one with `tunelab index build"):
        load_index(tmp_path / "nope")
    with pytest.raises(TunelabError, match="is not a tunelab index .no index.json."):
        load_index(corpus)
    with pytest.raises(TunelabError, match="is a folder that is not a tunelab index; it is never replaced"):
        build_index(corpus, corpus, encoder, overwrite=True, desc=None)
    build_index(corpus, tmp_path / "idx", encoder, chunk_size=16, overlap=4, desc=None)
    assert is_index(tmp_path / "idx") and not is_index(corpus)
    with pytest.raises(TunelabError, match="already holds an index; add --overwrite"):
        build_index(corpus, tmp_path / "idx", encoder, desc=None)
    _, stats = build_index(corpus, tmp_path / "idx", encoder, chunk_size=32, overlap=0, overwrite=True, desc=None)
    assert load_index(tmp_path / "idx").meta["chunking"] == {"chunk_size": 32, "overlap": 0}
    np.save(tmp_path / "idx" / "vectors.npy", np.zeros((2, 32), np.float32))
    with pytest.raises(TunelabError, match=rf"index .*idx is damaged: index.json counts {stats.passages} passages "
                                           r"of dimension 32, the files hold vectors \(2, 32\)"):
        load_index(tmp_path / "idx")
    (tmp_path / "idx" / "index.json").write_text("{", encoding="utf-8")
    with pytest.raises(TunelabError, match="is damaged: index.json is not readable JSON"):
        load_index(tmp_path / "idx")


def test_all_empty_documents_are_refused(tmp_path, encoder):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("", encoding="utf-8")
    with pytest.raises(TunelabError, match="all 1 documents are empty; nothing to index"):
        build_index(tmp_path / "docs", tmp_path / "idx", encoder, chunk_size=16, overlap=4, desc=None)


# ---------------------------------------------------------------------------------------------
# The built-in encoder on handmade documents


def test_minilm_ranks_the_obvious_passage_first(tmp_path):
    docs = {
        "paris.txt": "The Eiffel Tower stands in Paris, the capital of France. It was finished in 1889.",
        "plants.txt": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
        "football.txt": "The striker scored twice in the final minutes and the team won the cup.",
        "cpu.txt": "A processor executes instructions; its cache keeps recently used data close to the cores.",
    }
    (tmp_path / "docs").mkdir()
    for name, text in docs.items():
        (tmp_path / "docs" / name).write_text(text, encoding="utf-8")
    index, stats = build_index(tmp_path / "docs", tmp_path / "idx", desc=None)
    assert stats.passages == 4 and index.meta["encoder"]["name"] == "builtin:minilm-l6"
    questions = ["Where is the Eiffel Tower?", "How do plants make sugar?", "Who won the cup?",
                 "What does a CPU cache do?"]
    hits = load_index(tmp_path / "idx").query(questions, k=2)
    assert [row[0].doc_id for row in hits] == list(docs)
    assert all(row[0].score > row[1].score + 0.2 for row in hits)


# ---------------------------------------------------------------------------------------------
# The bench hooks


def test_bench_hooks_report_consistent_numbers(corpus, encoder, tmp_path):
    from tunelab.retrieval.measure import approximate_recall, compare_search, time_build, time_search

    exact, built = time_build(corpus, tmp_path / "idx", encoder, chunk_size=16, overlap=4)
    assert (built["documents"], built["passages"], built["kind"]) == (4, 14, "exact")
    assert built["passages_per_s"] == pytest.approx(14 / built["seconds"])
    speed = time_search(exact, exact.vectors[:3], k=5, min_seconds=0.05)
    assert speed["queries_per_s"] > 0 and speed["batched_queries_per_s"] > 0 and speed["passages"] == 14
    assert approximate_recall(exact, exact, exact.vectors, k=5) == 1.0
    rng = np.random.default_rng(2)
    vectors = _unit(rng, 500, 32)
    far = approximate_recall(_index_of(vectors[::-1].copy(), tmp_path), _index_of(vectors, tmp_path),
                             vectors[:20], k=1)  # passage ids name other vectors: the top-1 ids disagree
    assert far == 0.0
    report = compare_search(vectors, vectors[:20], k=10, min_seconds=0.05)
    assert report["passages"] == 500 and report["recall@10"] >= 0.9
    assert report["exact"]["kind"] == "exact" and report["approximate"]["kind"] == "hnsw"


@pytest.mark.parametrize("with_faiss", [True, False])
def test_ties_at_the_kth_place_are_broken_by_passage_order(with_faiss, monkeypatch, tmp_path):
    if not with_faiss:
        monkeypatch.setitem(sys.modules, "faiss", None)
    rng = np.random.default_rng(3)
    base = _unit(rng, 1)
    vectors = np.concatenate([_unit(rng, 20) * 0.1 + 0.0, np.repeat(base, 10, axis=0)])  # 10 identical last
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = _index_of(vectors, tmp_path)
    hits = index.search(base, k=3)[0]
    assert [int(h.passage_id[1:-2]) for h in hits] == [20, 21, 22]  # the first three of the ten tied


def test_index_batch_size_must_be_positive(corpus, tmp_path, capsys):
    from tunelab.cli import main

    assert main(["index", "build", "--corpus", str(corpus), "--output", str(tmp_path / "i"),
                 "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --batch-size: got 0; give 1 or more passages embedded at once"
