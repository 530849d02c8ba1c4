"""Words from sub-tokens: which tokens of an input make up one word, and word scores from token scores.

A word is a maximal run of tokens whose character spans touch (each starts where the one before it ends, or
inside it): no white space between them. So "unbelievably" tokenised as un ##bel ##ie ##va ##bly is one word,
and so is "hello," (the comma touches the word); "hello , world" is three. A word's score is the sum of its
tokens' scores and its span runs from its first token's start to its last token's end, so
`text[word.start:word.end] == word.text` always holds. A token whose span is empty (a byte-level BPE's
white-space token: offsets are trimmed of white space) adds its score to the word after it.

Written here rather than taken from the tokenizer's word ids: those follow each tokenizer's own
pre-tokenizer (a BERT tokenizer splits "hello," in two, a byte-level BPE keeps the leading space), while
this rule reads only the offsets, which every fast tokenizer gives, and means the same for all of them.
"""
from __future__ import annotations

from tunelab.explain import Span


def word_groups(offsets: list[tuple[int, int]]) -> list[int]:
    """The word index of each token, given the tokens' character offsets [start, end) in text order.

    A token with an empty span (a byte-level BPE's white-space token, its offsets trimmed to nothing) joins
    the word after it, whose leading space it is (the word before it at the end of the text).
    """
    groups: list[int | None] = []
    word, end = -1, None  # the current word's index and where it ends so far
    for start, stop in offsets:
        if start >= stop:
            groups.append(None)
        elif end is None or start > end:  # white space (or a gap) before this token: a new word
            word, end = word + 1, stop
            groups.append(word)
        else:
            end = max(end, stop)
            groups.append(word)
    following = max(word, 0)  # empty tokens after the last word join it (or make word 0 when all are empty)
    for i in range(len(groups) - 1, -1, -1):
        if groups[i] is None:
            groups[i] = following
        else:
            following = groups[i]
    return groups  # type: ignore[return-value]


def merge_words(text: str, tokens: list[Span]) -> list[Span]:
    """One Span per word of `tokens` (Spans into `text`, in text order): summed score, first start to last end."""
    words: list[Span] = []
    for token, group in zip(tokens, word_groups([(t.start, t.end) for t in tokens])):
        if group == len(words):
            words.append(Span("", token.start, token.end, token.score))
        else:
            words[group].score += token.score
        if token.end > token.start:  # an empty token adds its score, never its place
            word = words[group]
            word.start = token.start if word.start >= word.end else min(word.start, token.start)
            word.end = max(word.end, token.end)
    for word in words:
        word.text = text[word.start:word.end]
    return words
