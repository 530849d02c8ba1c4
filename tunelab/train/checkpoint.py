"""Checkpoints: all a run needs to go on exactly where it stopped, written so that a crash never leaves one
half-written that could be loaded.

    RUN_DIR/checkpoints/step-N/
      weights.safetensors  the trainable parameters (every weight for full fine-tuning; the adapter and the
                           head for LoRA), gathered to full tensors in distributed runs
      best.safetensors     the best evaluation's trainable weights, only when no kept checkpoint holds them
      training.pt          optimizer and scheduler state (plain tensors and numbers: read with weights_only)
      rng.pt               every random generator (python, numpy, torch, CUDA), one entry per process
      state.json           the loop state (tunelab.train.state), the loss window not yet logged, world size
      config.yaml          the resolved run config
      complete.json        written last; a folder without it is ignored, never loaded

A checkpoint is written in a hidden temporary folder beside the others, every file fsynced, then renamed to
`step-N` (one atomic rename), so `step-N` is either complete or absent. `keep` newest checkpoints are kept,
plus the one holding the best weights and any a kept one takes its best weights from.
"""
from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.io import atomic_write_bytes, atomic_write_json, atomic_write_text, current_umask
from tunelab.train.state import LoopState

FORMAT = 1
COMPLETE = "complete.json"
WEIGHTS, BEST, TRAINING, RNG, STATE, CONFIG = ("weights.safetensors", "best.safetensors", "training.pt", "rng.pt",
                                               "state.json", "config.yaml")
_STEP_DIR = re.compile(r"step-(\d+)")


# ---------------------------------------------------------------------------------------------
# Random generators


def rng_state() -> dict:
    """This process's random generators as plain data (tensors, ints, lists): what `restore_rng` takes."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {"python": [version, list(words), gauss],
             "numpy": {"bit_generator": np_state["bit_generator"],
                       "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]),
                       "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back the generators `rng_state` captured."""
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class Snapshot:
    """What the loop hands to `Checkpoints.save` (everything on the CPU, gathered from all processes)."""

    state: LoopState
    weights: dict[str, torch.Tensor]
    best_weights: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict
    rng: list[dict]
    """One `rng_state()` per process, by rank."""
    loss_window: tuple[float, int]
    """MeanLoss's sum and count since the last log, so the next logged loss is the same after a resume."""
    world_size: int = 1


class Checkpoints:
    """The checkpoints of one run: `root` is RUN_DIR/checkpoints."""

    def __init__(self, root: Path, keep: int, config_text: str):
        self.root, self.keep, self.config_text = Path(root), keep, config_text

    def save(self, snap: Snapshot) -> Path:
        """Write step-N for `snap` (atomically), then drop checkpoints beyond the kept ones; returns the folder.

        A failure (a full disk, an unwritable folder) is one TunelabError; the earlier checkpoints stay valid.
        """
        step = snap.state.step
        final = self.root / f"step-{step}"
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".step-{step}.tmp-"))
            tmp.chmod(0o777 & ~current_umask())
            self._write_files(tmp, snap)
            atomic_write_json(tmp / COMPLETE, {"format": FORMAT, "step": step})
            if final.exists():  # the same step written again (a resume that stops at once): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except OSError as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = newest(self.root)
            kept = f"; the previous checkpoint {previous} stays valid" if previous else ""
            raise TunelabError(f"writing the checkpoint of step {step} to {self.root} failed "
                               f"({e.strerror or e}){kept}: free disk space or make the folder writable, then "
                               "resume") from None
        self.prune(snap.state.best_step)
        return final

    def _write_files(self, folder: Path, snap: Snapshot) -> str | None:
        """The checkpoint's files; returns where its best weights are ("self", "step-B", "best" or None)."""
        from safetensors.torch import save as safetensors_bytes

        atomic_write_bytes(folder / WEIGHTS, safetensors_bytes(_contiguous(snap.weights)))
        best = self._best_place(snap)
        if best == "best":
            atomic_write_bytes(folder / BEST, safetensors_bytes(_contiguous(snap.best_weights)))
        atomic_write_bytes(folder / TRAINING, _torch_bytes({"optimizer": snap.optimizer,
                                                            "scheduler": snap.scheduler}))
        atomic_write_bytes(folder / RNG, _torch_bytes(snap.rng))
        atomic_write_json(folder / STATE, {"format": FORMAT, "loop": snap.state.to_dict(),
                                           "loss_window": list(snap.loss_window), "world_size": snap.world_size,
                                           "best_weights": best})
        atomic_write_text(folder / CONFIG, self.config_text)
        return best

    def _best_place(self, snap: Snapshot) -> str | None:
        """Where the best weights go: this checkpoint's own weights, an existing checkpoint's, or a file."""
        s = snap.state
        if s.best_step is None or snap.best_weights is None:
            return None
        if s.best_step == s.step:
            return "self"
        if is_complete(self.root / f"step-{s.best_step}"):
            return f"step-{s.best_step}"
        return "best"

    def prune(self, best_step: int | None) -> None:
        """Delete the complete checkpoints beyond the newest `keep`, keeping the one the best weights are in
        and every one a kept checkpoint takes its best weights from (so each kept one stays loadable), and
        temporary folders of interrupted writes."""
        steps = complete_steps(self.root)
        kept = set(steps[-self.keep:])
        if best_step is not None and best_step in steps:
            kept.add(best_step)
        for step in sorted(kept):
            kept.update(_best_source(self.root / f"step-{step}"))
        for step in steps:
            if step not in kept:
                shutil.rmtree(self.root / f"step-{step}", ignore_errors=True)
        for leftover in self.root.glob(".step-*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _best_source(folder: Path) -> set[int]:
    """The step of the other checkpoint a checkpoint takes its best weights from (empty: none)."""
    try:
        best = json.loads((folder / STATE).read_text(encoding="utf-8")).get("best_weights")
    except (OSError, ValueError):
        return set()
    return {int(best[5:])} if isinstance(best, str) and best.startswith("step-") else set()


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Finding and reading


def is_complete(folder: Path) -> bool:
    """True for a checkpoint folder whose writing finished (its completion marker is there)."""
    return (folder / COMPLETE).is_file()


def complete_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under `root`, ascending."""
    if not Path(root).is_dir():
        return []
    steps = []
    for p in Path(root).iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir() and is_complete(p):
            steps.append(int(m.group(1)))
    return sorted(steps)


def newest(root: Path) -> Path | None:
    """The complete checkpoint of the highest step under `root`, or None."""
    steps = complete_steps(root)
    return Path(root) / f"step-{steps[-1]}" if steps else None


@dataclass
class Loaded:
    """A checkpoint read back: `Snapshot`'s contents plus the config it was written with."""

    folder: Path
    state: LoopState
    weights: dict[str, torch.Tensor]
    best_weights: dict[str, torch.Tensor] | None
    optimizer: dict
    scheduler: dict
    rng: list[dict]
    loss_window: tuple[float, int]
    world_size: int
    config_text: str
    finished_run: bool = False
    """Read from a finished run (to train it further), not from an interrupted one."""


def load(folder: Path) -> Loaded:
    """Read the complete checkpoint `folder`; a damaged one is a TunelabError naming the file."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_complete(folder):
        raise TunelabError(f"{folder} is not a complete checkpoint (no {COMPLETE}): it was being written when "
                           "the run stopped; resume from an earlier one")
    try:
        meta = json.loads((folder / STATE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')}, this tunelab reads {FORMAT}")
        best = meta["best_weights"]
        best_file = {None: None, "self": folder / WEIGHTS, "best": folder / BEST}.get(
            best, folder.parent / str(best) / WEIGHTS)
        training = torch.load(folder / TRAINING, map_location="cpu", weights_only=True)
        weights = load_file(folder / WEIGHTS)
        return Loaded(folder=folder, state=LoopState.from_dict(meta["loop"]), weights=weights,
                      best_weights=None if best_file is None else
                      (weights if best == "self" else load_file(best_file)),
                      optimizer=training["optimizer"], scheduler=training["scheduler"],
                      rng=torch.load(folder / RNG, map_location="cpu", weights_only=True),
                      loss_window=tuple(meta["loss_window"]), world_size=meta["world_size"],
                      config_text=(folder / CONFIG).read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - any damage (safetensors and pickle raise their own types)
        raise TunelabError(f"checkpoint {folder} cannot be read ({type(e).__name__}: {str(e)[:200]}); delete "
                           "it to resume from an earlier one") from None
