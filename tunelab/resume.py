"""Going on with an interrupted (or finished, to train longer) run: where its checkpoints are, which one to
load, and whether the config asked for still means the same run.

A run in progress lives in RUN_DIR itself (a new run) or, when it replaces an existing run (`--overwrite`), in
a hidden `.NAME.staging-XXXX` folder beside it until it finishes; its `tunelab-run.json` says
`"status": "training"` until then. A finished run keeps its checkpoints in RUN_DIR/checkpoints, so it can be
trained further (a larger train.max_steps or train.epochs) into a new staging folder.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

RUN_MARKER = "tunelab-run.json"
CHECKPOINTS = "checkpoints"

# Settings that may differ on resume: they change how long or where the run trains, not what it trains.
RESUMABLE = ("output_dir", "train.max_steps", "train.epochs", "train.checkpoint_every", "train.keep_checkpoints",
             "train.threads", "train.device", "train.eval_batch_size", "train.distributed_timeout",
             "train.reuse_memory", "generate.")


def marker_status(folder: Path) -> str | None:
    """'training' or 'finished' for a run folder (runs of earlier versions: 'finished'); None: no marker."""
    try:
        data = json.loads((Path(folder) / RUN_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("status", "finished") if isinstance(data, dict) else None


def in_progress_homes(place: Path) -> list[Path]:
    """Folders holding an unfinished run for RUN_DIR `place`: itself, or hidden staging folders beside it."""
    homes = [place] if place.is_dir() and marker_status(place) == "training" else []
    if place.parent.is_dir():
        homes += [p for p in place.parent.glob(f"{glob.escape('.' + place.name)}.staging-*")
                  if p.is_dir() and marker_status(p) == "training"]
    return homes


@dataclass
class ResumePoint:
    checkpoint: Path
    """The complete checkpoint to load."""
    home: Path | None
    """The folder of the run in progress that goes on; None: a finished run, trained further in a new folder."""


def find_resume(place: Path) -> ResumePoint:
    """The newest complete checkpoint of RUN_DIR `place`: an interrupted run first, else a finished one."""
    from tunelab.train.checkpoint import newest

    homes = [(h, newest(h / CHECKPOINTS)) for h in in_progress_homes(place)]
    found = [(h, c) for h, c in homes if c is not None]
    if found:
        home, ckpt = max(found, key=lambda hc: (hc[1] / "complete.json").stat().st_mtime)
        return ResumePoint(ckpt, home)
    if place.is_dir() and marker_status(place) == "finished" and (ckpt := newest(place / CHECKPOINTS)):
        return ResumePoint(ckpt, None)
    if homes:
        raise TunelabError(f"{place} was interrupted before its first checkpoint was written: there is nothing "
                           f"to resume; train it again with --overwrite")
    if place.is_dir() and marker_status(place) == "finished":
        raise TunelabError(f"{place} is a finished run without checkpoints (train.checkpoint_every: 0, or a run "
                           "of an earlier version): it cannot be trained further; train a new run")
    raise TunelabError(f"no run to resume at {place}: the folder holds no tunelab run with a checkpoint; check "
                       "output_dir (or the RUN_DIR given)")


def seed_home(source: Path, checkpoint: Path, home: Path) -> None:
    """Start `home` (a new staging folder) from a finished run: its logs, and the checkpoint to go on from
    (hard links where possible) with the checkpoint its best weights are in."""
    for name in ("metrics.jsonl",):
        if (source / name).is_file():
            shutil.copy2(source / name, home / name)
    if (source / "tensorboard").is_dir():
        shutil.copytree(source / "tensorboard", home / "tensorboard")
    wanted = {checkpoint.name}
    best = json.loads((checkpoint / "state.json").read_text(encoding="utf-8")).get("best_weights")
    if isinstance(best, str) and best.startswith("step-"):
        wanted.add(best)
    for name in wanted:
        shutil.copytree(source / CHECKPOINTS / name, home / CHECKPOINTS / name, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v and k not in ("target_modules",):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_settings(saved_config_text: str, cfg) -> list[str]:
    """The settings of `cfg` that differ from the checkpoint's config and may not change on resume."""
    import yaml

    old, new = _flat(yaml.safe_load(saved_config_text)), _flat(cfg.to_dict())
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)
            and not any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE)]


def fill_resolved(cfg, saved_config_text: str) -> None:
    """Settings a run resolves when it starts (a null early-stopping metric becomes the task's default): left
    unset in the config a resume is asked with, they take the run's own value."""
    import yaml

    saved = yaml.safe_load(saved_config_text)
    if cfg.train.early_stopping.metric is None:
        cfg.train.early_stopping.metric = saved["train"]["early_stopping"]["metric"]


def check_resumable(saved_config_text: str, cfg, saved_world: int, world: int, checkpoint: Path) -> None:
    """Refuse a resume that would change what the run means, naming each setting that differs."""
    import yaml

    changed = changed_settings(saved_config_text, cfg)
    if changed:
        old = _flat(yaml.safe_load(saved_config_text))
        new = _flat(cfg.to_dict())
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise TunelabError(f"cannot resume {checkpoint}: {detail} would change what the run trains (only "
                           "train.max_steps, train.epochs, where and how often it saves may change); resume with "
                           "the run's own settings, or train a new run")
    if saved_world != world:
        raise TunelabError(f"cannot resume {checkpoint}: it was trained by {saved_world} process(es) and this is "
                           f"{world} (the global batch would change); launch it with {saved_world} processes as "
                           f"before (one machine: `torchrun --nproc-per-node {saved_world}`)" if saved_world > 1 else
                           f"cannot resume {checkpoint}: it was trained by one process; resume it without torchrun")


def resume_config(run_dir: Path, overrides: list[str]):
    """The config of RUN_DIR's newest checkpoint with `overrides`, and output_dir = RUN_DIR (it may have moved)."""
    import json as _json

    from tunelab.config import load_config

    point = find_resume(run_dir.resolve())
    return load_config(point.checkpoint / "config.yaml",
                       [*overrides, f"output_dir={_json.dumps(str(run_dir), ensure_ascii=False)}"])


