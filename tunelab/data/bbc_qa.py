"""builtin:bbc-qa: cloze-style reading-comprehension questions built at run time from the BBC News articles
(tunelab.data.builtin.bbc_news), for extractive QA. Nothing of it is stored in the repository.

How it is built (seeded, so every run gets the same questions):
1. Each article is cut into paragraphs (lines) and sentences (at . ! ? followed by a space and a capital or a
   quote); the first line (the headline) and sentences under 8 or over 40 words are skipped.
2. In each sentence the first span of one of these kinds is a candidate answer, tried in this order:
   an amount ("£600m", "$1.13bn") -> "how much"; a percentage ("76%") -> "what percentage"; a year
   (1900-2099) -> "what year"; another number ("464,000") -> "how many"; two or more capitalised words not
   at the sentence start ("Warner Bros") -> "which name".
3. The question is the sentence with that span replaced by the wh-phrase and a question mark at the end;
   the context is the whole article (headline included), the answer the span at its exact offset.
4. Per article (shuffled with the seed) up to two candidate sentences are drawn. The first is an
   answerable question about its article. The second, with probability 1/2, becomes an unanswerable
   question: paired with another article of the same topic in which neither the answer text nor the
   sentence occurs; otherwise it is a second answerable question.
About 4,200 questions come out, a quarter of them unanswerable. The questions copy their sentence, so the
task is mostly finding the sentence and reading off the span; the windows matter because articles run to
~480 MiniLM tokens (up to several thousand).
"""
from __future__ import annotations

import random
import re

SEED = 13
AMOUNT = r"[$£€]\d[\d,]*(?:\.\d+)?(?:bn|m|k)?\b"
PATTERNS = (  # (kind, regex, wh-phrase), tried in this order
    ("amount", AMOUNT, "how much"),
    ("percentage", r"\b\d+(?:\.\d+)?%", "what percentage"),
    ("year", r"\b(?:19|20)\d\d\b", "what year"),
    ("number", r"(?<![$£€\d.,-])\b\d[\d,]*(?:\.\d+)?\b(?![%\d-])", "how many"),
    ("name", r"(?<=[a-z,;] )[A-Z][a-z]+(?: [A-Z][a-z]+)+\b", "which name"),
)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
MIN_WORDS, MAX_WORDS = 8, 40


def sentences(text: str) -> list[tuple[int, str]]:
    """(offset, sentence) of the article's sentences after its first line (the headline)."""
    out = []
    for para in list(re.finditer(r"[^\n]+", text))[1:]:
        start = para.start()
        pieces = SENTENCE_END.split(para.group())
        pos = 0
        for piece in pieces:
            pos = para.group().index(piece, pos)
            if MIN_WORDS <= len(piece.split()) <= MAX_WORDS:
                out.append((start + pos, piece))
            pos += len(piece)
    return out


def candidate(sentence: str) -> tuple[str, re.Match, str] | None:
    """(kind, the answer span's match, the wh-phrase) of the first kind that occurs in `sentence`."""
    for kind, pattern, wh in PATTERNS:
        match = re.search(pattern, sentence)
        if match:
            return kind, match, wh
    return None


def cloze(sentence: str, match: re.Match, wh: str) -> str:
    """The sentence with the span replaced by the wh-phrase, as a question."""
    text = sentence[:match.start()] + wh + sentence[match.end():]
    return text.rstrip(" .!?\"'") + "?"


def bbc_qa(log=None, seed: int = SEED) -> list[dict]:
    """Flat extractive-QA records: question, context, answers {text, answer_start}, topic, kind, id."""
    from tunelab.data.builtin import bbc_news

    articles = [a for a in bbc_news(log) if a["text"]]
    rng = random.Random(seed)
    order = list(range(len(articles)))
    rng.shuffle(order)
    by_topic: dict[str, list[int]] = {}
    for i in order:
        by_topic.setdefault(articles[i]["label"], []).append(i)
    records = []
    for i in order:
        art = articles[i]
        found = [(off, s, c) for off, s in sentences(art["text"]) if (c := candidate(s))]
        for k, (offset, sentence, (kind, match, wh)) in enumerate(rng.sample(found, min(2, len(found)))):
            answer = match.group()
            question = cloze(sentence, match, wh)
            rec = {"id": f"{art['_file']}#{k + 1}", "question": question, "topic": art["label"], "kind": kind}
            if k == 1 and rng.random() < 0.5:
                other = _other_article(articles, by_topic[art["label"]], i, answer, sentence, rng)
                if other is not None:
                    records.append({**rec, "context": articles[other]["text"],
                                    "answers": {"text": [], "answer_start": []}})
                    continue
            records.append({**rec, "context": art["text"],
                            "answers": {"text": [answer], "answer_start": [offset + match.start()]}})
    if log:
        unanswerable = sum(not r["answers"]["text"] for r in records)
        log(f"builtin:bbc-qa: {len(records)} questions from {len(articles)} articles, {unanswerable} "
            "unanswerable (paired with another article of the same topic)")
    return records


def _other_article(articles: list[dict], same_topic: list[int], i: int, answer: str, sentence: str,
                   rng: random.Random) -> int | None:
    """Another article of the topic that contains neither the answer nor the sentence (10 draws at most)."""
    for _ in range(10):
        j = rng.choice(same_topic)
        if j != i and answer not in articles[j]["text"] and sentence not in articles[j]["text"]:
            return j
    return None
