"""Generative QA over retrieved passages: the one prompt that fine-tuning (`data.format: rag`) and
`tunelab ask --index` share, fitted to the model's context, and answering questions with it.

The prompt is a chat: a system instruction (answer from the passages; say so when they do not hold the
answer), then one user turn with the numbered passages (with their ids) and the question. Fitting it to a
token limit cuts the lowest-ranked passage first, at token boundaries, then drops it and goes on to the next;
the question is never cut. A model trained on `rag` records is therefore asked exactly the way it learned.

Nothing heavy is imported at module level: tunelab.data.formats imports the record types from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from tunelab.errors import TunelabError

SYSTEM_PROMPT = ("Answer the question using only the numbered passages. Keep the answer short. If the passages "
                 "do not contain the answer, say that they do not contain it.")


@dataclass(frozen=True)
class Passage:
    """One passage of a prompt: its text, its id (None: shown by number only) and, from an index, where it
    came from and its retrieval score."""
    text: str
    id: str | None = None
    score: float | None = None
    doc_id: str | None = None
    cut: bool = False
    """True when the text was shortened to fit the prompt."""


@dataclass
class RagExample:
    """A question with its passages (best first) and, in training data, the answer."""
    question: str
    passages: list[Passage]
    answer: str | None = None


def user_message(question: str, passages: list[Passage]) -> str:
    """The user turn: numbered passages, each headed by its number and id, then the question."""
    blocks = [f"[{k}]" + (f" (id: {p.id})" if p.id is not None else "") + f"\n{p.text}"
              for k, p in enumerate(passages, 1)]
    head = "Passages:\n\n" + "\n\n".join(blocks) if blocks else "Passages: (none)"
    return f"{head}\n\nQuestion: {question}"


def rag_messages(question: str, passages: list[Passage], answer: str | None = None) -> list[dict]:
    """Chat messages: system instruction, user turn (passages + question), and the answer when given."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_message(question, passages)}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


class NoRoom(TunelabError):
    """Even the question without any passage does not fit the token limit."""

    def __init__(self, needed: int, limit: int):
        self.needed, self.limit = needed, limit
        super().__init__(f"the prompt needs {needed} tokens without any passage; the limit is {limit}")


@dataclass
class Fitted:
    """A prompt fitted to a token limit."""
    ids: list[int]
    """Token ids of the rendered chat (with the generation prompt; or with the answer when one was given)."""
    messages: list[dict]
    passages: list[Passage] = field(default_factory=list)
    """The passages in the prompt, best first (texts as cut)."""
    dropped: int = 0
    """Passages left out entirely."""

    @property
    def shortened(self) -> bool:
        """True when a passage was cut or left out."""
        return self.dropped > 0 or any(p.cut for p in self.passages)


def _render_ids(tokenizer, question: str, passages: list[Passage], answer: str | None) -> tuple[list, list]:
    """(token ids, messages) of the chat, as training encodes it (no special tokens added beyond the
    template's own)."""
    from tunelab.data.chat_template import render

    messages = rag_messages(question, passages, answer)
    text = render(tokenizer, messages, generation_prompt=answer is None)
    return tokenizer(text, add_special_tokens=False)["input_ids"], messages


def _token_ends(tokenizer, text: str) -> list[int]:
    """Character offsets where each token of `text` ends: text[:ends[n-1]] is its first n tokens."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return sorted({end for _, end in offsets if end > 0})


def fit_prompt(tokenizer, question: str, passages: list[Passage], limit: int | None,
               answer: str | None = None) -> Fitted:
    """The chat for `question` over `passages`, at most `limit` tokens long (None: no limit).

    With `answer` the limit covers the whole conversation (training: model.max_length); without, the prompt
    with its generation prompt (asking: the context minus the room for the answer). The lowest-ranked passage
    is cut token by token (a binary search over how many of its tokens stay), then dropped, then the next;
    raises NoRoom when the question alone does not fit.
    """
    kept = list(passages)
    ids, messages = _render_ids(tokenizer, question, kept, answer)
    dropped = 0
    while limit is not None and len(ids) > limit:
        if not kept:
            raise NoRoom(len(ids), limit)
        last = kept.pop()
        ends = _token_ends(tokenizer, last.text)
        # the whole passage is known not to fit (its last token ending at the text's end)
        lo, hi, best = 1, len(ends) - (1 if ends and ends[-1] >= len(last.text) else 0), None
        while lo <= hi:  # the most tokens of `last` that fit
            mid = (lo + hi) // 2
            trial = replace(last, text=last.text[: ends[mid - 1]], cut=True)
            trial_ids, trial_messages = _render_ids(tokenizer, question, [*kept, trial], answer)
            if len(trial_ids) <= limit:
                best, lo = (trial, trial_ids, trial_messages), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            kept.append(best[0])
            return Fitted(best[1], best[2], kept, dropped)
        dropped += 1
        ids, messages = _render_ids(tokenizer, question, kept, answer)
    return Fitted(ids, messages, kept, dropped)


def encode_rag(tokenizer, example: RagExample, max_length: int, train_on_prompt: bool
               ) -> tuple[list[int], list[bool], bool] | None:
    """Training: (ids, trained-token mask, passages shortened?) of one record within max_length tokens, the
    loss on the answer only (unless train_on_prompt). None when the question and answer alone do not fit."""
    from tunelab.data.chat_template import encode_chat

    try:
        fitted = fit_prompt(tokenizer, example.question, example.passages, max_length, example.answer)
    except NoRoom:
        return None
    ids, mask, _ = encode_chat(tokenizer, fitted.messages, max_length, train_on_prompt)
    return ids, mask, fitted.shortened


def prompt_ids(tokenizer, example: RagExample, budget: int | None) -> list[int]:
    """Generation from a file of rag records: the prompt within `budget` tokens (the answer left out).

    Where the question alone is too long, its prompt without passages (the caller cuts it from the left,
    as it does other over-long prompts of a file) instead of stopping the whole file.
    """
    try:
        return fit_prompt(tokenizer, example.question, example.passages, budget).ids
    except NoRoom:
        return _render_ids(tokenizer, example.question, [], None)[0]


# ---------------------------------------------------------------------------------------------
# Answering: `tunelab ask RUN_OR_MODEL --index INDEX`


@dataclass
class Generator:
    """A causal LM ready to answer: model, tokenizer, generation settings, and the context its prompt +
    answer must fit (`context_from` says where that number came from, for error messages)."""
    model: object
    tokenizer: object
    gen: object  # tunelab.config.GenerateConfig
    context: int
    context_from: str

    @property
    def budget(self) -> int:
        """Prompt tokens left once generate.max_new_tokens is set aside."""
        from tunelab.generation import prompt_budget

        return prompt_budget(self.context, self.gen.max_new_tokens)


@dataclass
class Answer:
    """A generated answer and the passages its prompt held (best first; `dropped` more were left out)."""
    question: str
    text: str
    passages: list[Passage]
    dropped: int


def load_generator(ref: str, overrides: list[str], max_length: int | None = None) -> Generator:
    """A finished run whose task can chat (causal_lm, LoRA included) or a model reference (builtin:NAME,
    gguf:PATH, a folder), loaded as `tunelab chat` loads it, with generate.* `overrides`.

    The context is `max_length` when given (at most the model's positions), else the run's model.max_length
    (what it was trained at), else the model's positions.
    """
    from tunelab.data.chat_template import require_chat_template
    from tunelab.generation import model_context
    from tunelab.runs import is_run, task_verb

    if is_run(ref):
        model, tokenizer, gen, context = task_verb(ref, "chat")(ref, list(overrides))
        context_from = f"the run's model.max_length {context}"
    else:
        from tunelab.tasks.causal_lm import chat_model

        model, tokenizer, gen, _ = chat_model(ref, list(overrides))
        context = model_context(model, tokenizer)
        context_from = f"the model's {context} positions"
        if context is None and max_length is None:
            raise TunelabError(f"ask: {ref} states no context length; give --max-length TOKENS")
    require_chat_template(tokenizer, "rag")
    positions = model_context(model, tokenizer)
    if max_length is not None:
        if max_length < 1 or (positions is not None and max_length > positions):
            raise TunelabError(f"ask --max-length: got {max_length}; the model reads 1 to {positions} tokens")
        context, context_from = max_length, f"--max-length {max_length}"
    return Generator(model, tokenizer, gen, context, context_from)


def passages_of_hits(hits) -> list[Passage]:
    """Index hits (tunelab.retrieval.index.Hit, best first) as prompt passages."""
    return [Passage(h.text, str(h.passage_id), float(h.score), str(h.doc_id)) for h in hits]


def fit_question(generator: Generator, question: str, passages: list[Passage]) -> Fitted:
    """The prompt for one question within the generator's budget, or one error saying what to change."""
    budget = generator.budget
    try:
        return fit_prompt(generator.tokenizer, question, passages, budget)
    except NoRoom as e:
        raise TunelabError(
            f"ask: the question {question[:60]!r}{'...' if len(question) > 60 else ''} takes {e.needed} prompt "
            f"tokens without any passage, but only {budget} are left ({generator.context_from} minus "
            f"generate.max_new_tokens {generator.gen.max_new_tokens}); shorten the question, lower "
            "generate.max_new_tokens or raise --max-length") from None


def answer_questions(generator: Generator, index, questions: list[str], k: int, batch_size: int = 8,
                     stopping_criteria=None) -> list[Answer]:
    """Retrieve the top `k` passages of `index` (tunelab.retrieval.index.Index) for each question, fit
    them into the prompt, and generate the answers (the run's or the model's generate settings).

    `stopping_criteria` (a transformers StoppingCriteriaList) is handed to `generate` as well: `tunelab
    serve` ends a generation with it when the client goes away or the time limit passes."""
    from tunelab.generation import generate_texts, settings_kwargs
    from tunelab.models.device import model_device

    hits = index.query(list(questions), k)
    fitted = [fit_question(generator, q, passages_of_hits(h)) for q, h in zip(questions, hits)]
    kwargs = settings_kwargs(generator.tokenizer, generator.model, generator.gen)
    if stopping_criteria is not None:
        kwargs["stopping_criteria"] = stopping_criteria
    texts = generate_texts(generator.model, generator.tokenizer, [f.ids for f in fitted], kwargs, batch_size,
                           model_device(generator.model))
    return [Answer(q, t, f.passages, f.dropped) for q, t, f in zip(questions, texts, fitted)]


# What a refusal (SYSTEM_PROMPT: "say that they do not contain it") contains, after SQuAD normalisation
REFUSALS = ("do not contain", "does not contain", "dont contain", "doesnt contain", "do not mention",
            "does not mention", "not mentioned", "no information", "cannot answer", "cant answer", "no answer")


def scored_answer(text: str) -> str:
    """The answer as EM / F1 see it: "" (no answer) for a refusal such as "The passages do not contain the
    answer.", so a correct refusal scores 1 against a question with no gold answer and 0 against one with."""
    from tunelab.evaluate.qa_metrics import normalize_answer

    normalised = normalize_answer(text)
    return "" if any(phrase in normalised for phrase in REFUSALS) else text


def gold_answers(value, path: str, line: int | None, i: int, field: str) -> list[str] | None:
    """A record's gold answers: a string, a list of strings, or SQuAD-style {text: [...]}; None when absent.
    An empty list means the passages hold no answer."""
    if value is None:
        return None
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    from tunelab.errors import DataError

    raise DataError(path, f"record {i + 1}: field {field!r} must be a string, a list of strings or "
                          f"{{\"text\": [...]}} (the gold answers), got {value!r:.60}", line)
