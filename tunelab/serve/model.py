"""What a server serves, loaded once before it binds its port: a finished run of any task that has HTTP
endpoints (Task.api), or a causal LM model reference (builtin:NAME, gguf:PATH, a folder) as `tunelab chat`
loads it. Loading errors are TunelabErrors, so `tunelab serve` fails in one line before it listens."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

CHAT_ENDPOINTS = ("chat.completions", "completions")


@dataclass
class Served:
    """The served model. `run` is None for a model reference; `gen` / `context` are set for causal LMs."""

    ref: str
    id: str
    """The model id of /v1/models; requests may name it, or the reference they started the server with."""
    task: str
    endpoints: tuple[str, ...]
    model: Any
    tokenizer: Any
    run: Any = None  # tunelab.runs.Run
    gen: Any = None  # tunelab.config.GenerateConfig: the run's generate settings, request defaults
    context: int | None = None
    """Tokens the model attends over (prompt + answer), None when it states none."""
    index: Any = None  # tunelab.retrieval.index.Index, for /v1/answer with retrieval
    device: str = "cpu"
    extra: dict = field(default_factory=dict)
    """Room for the endpoints' own loaded state (e.g. the answer endpoint's generator)."""

    def names(self) -> set[str]:
        """The names a request's `model` may give: the id, the reference, the run folder's path."""
        return {self.id, self.ref, str(Path(self.ref)), str(Path(self.ref).resolve())}


def pick_device(name: str) -> str:
    """cpu, cuda, or auto (cuda when torch sees one)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TunelabError("serve --device cuda: torch sees no CUDA device here; use --device cpu (or auto)")
    if name not in ("cpu", "cuda"):
        raise TunelabError(f"serve --device: got {name!r}; use cpu, cuda or auto")
    return name


def load_served(ref: str, overrides: list[str] | None = None, *, device: str = "cpu",
                index: str | None = None) -> Served:
    """Load `ref` (a finished run or a causal LM model reference) for serving, on `device`."""
    from tunelab.generation import model_context
    from tunelab.runs import is_run

    overrides = list(overrides or [])
    device = pick_device(device)
    if is_run(ref):
        from tunelab.runs import load_run, run_task

        task = run_task(ref)  # before the weights load: a run that cannot be served fails at once
        if not task.api:
            raise TunelabError(f"serve: {ref} is a {task.name} run, which has no HTTP endpoints; serve a run of a "
                               "task that predicts (classification, causal_lm, seq2seq, extractive_qa, "
                               "token_classification, retrieval)")
        run = load_run(ref, overrides)
        served = Served(ref, Path(ref).resolve().name, task.name, tuple(task.api), run.model, run.tokenizer, run=run,
                        gen=getattr(run.cfg, "generate", None))
    else:
        from tunelab.tasks.causal_lm import chat_model

        try:
            model, tokenizer, gen, _ = chat_model(ref, overrides)
        except TunelabError as e:  # worded for `model.name` in a config; here the user gave a command argument
            raise TunelabError(f"serve: {ref} is not a finished run (config.yaml and model/) and does not load as a "
                               f"causal LM: {str(e).removeprefix('model.name: ')}") from None
        served = Served(ref, ref, "causal_lm", CHAT_ENDPOINTS + ("answer",), model, tokenizer, gen=gen)
    if "chat.completions" in served.endpoints:
        served.context = model_context(served.model, served.tokenizer)
        if index is None:  # a causal LM answers questions only from retrieved passages
            served.endpoints = tuple(e for e in served.endpoints if e != "answer")
    if index is not None:
        if "answer" not in served.endpoints:
            raise TunelabError(f"serve --index: {ref} is a {served.task} run; --index serves /v1/answer from "
                               "retrieved passages with a causal_lm run, an extractive_qa run or a model reference")
        from tunelab.retrieval.index import load_index

        if "chat.completions" in served.endpoints:  # a generated answer needs the rag prompt: refused at start
            from tunelab.data.chat_template import require_chat_template

            require_chat_template(served.tokenizer, "rag")
        served.index = load_index(index)
        served.index.encoder()  # loaded now, not on the first question
    if device != "cpu":
        served.model.to(device)
    served.device = device
    served.model.eval()
    return served
