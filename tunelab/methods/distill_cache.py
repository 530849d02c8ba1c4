"""The teacher's outputs for every training row, computed once and kept on disk (method.cache_teacher).

A file $TUNELAB_HOME/distill/<teacher>-<teacher key>-<data key>.safetensors, written atomically:
- the teacher key hashes the teacher run's model files (path, size, mtime), so a retrained teacher misses;
- the data key hashes the encoded training rows, so other data, max_length or tokenizer misses.
Rows are found by a hash of their contents (the real tokens and their targets, padding left out), so a row
is found whatever batch or padding it comes in, in any epoch and on resume.

Per row, the logits at its soft positions (tunelab.methods.distill.soft_positions), in row order: all of
them when they are at most TOP_K wide (labels), else the TOP_K largest with their vocabulary ids (about
512 bytes per trained token: fp32 values + int32 ids). Rows are filled by running the task's own loss on the
teacher over epoch 0's batches, so the stored numbers are the ones an uncached run computes.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from tunelab.errors import TunelabError
from tunelab.methods.distill import CACHE_VERSION, TOP_K, Capture, soft_positions

if TYPE_CHECKING:
    import torch


def row_keys(batch: dict[str, torch.Tensor]) -> list[bytes]:
    """A 16-byte hash per row of the batch's tensors with the padding left out (attention_mask == 0, or
    trailing IGNORE_INDEX in a target row of its own length, as seq2seq labels have)."""
    from tunelab.data.tokens import IGNORE_INDEX

    mask = batch.get("attention_mask")
    keys = []
    for b in range(len(next(iter(batch.values())))):
        h = hashlib.blake2b(digest_size=16)
        for name in sorted(batch):
            row = batch[name][b]
            if mask is not None and row.shape == mask[b].shape:
                row = row[mask[b].bool()]
            elif row.dim() == 1:
                real = (row != IGNORE_INDEX).nonzero()
                row = row[: int(real.max()) + 1 if len(real) else 0]
            h.update(name.encode())
            h.update(row.cpu().contiguous().numpy().tobytes())
        keys.append(h.digest())
    return keys


class TeacherCache:
    """Stored teacher logits: `values` (M, W) fp32, `indices` (M, k) vocabulary ids or None, and for each
    row key the slice of M holding its positions."""

    def __init__(self, keys: torch.Tensor, starts: torch.Tensor, values: torch.Tensor,
                 indices: torch.Tensor | None, path: Path):
        self.values, self.indices, self.path = values, indices, path
        self.rows = {bytes(k.tolist()): (int(a), int(b)) for k, a, b in zip(keys, starts[:-1], starts[1:])}

    def lookup(self, batch: dict[str, torch.Tensor], keep: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(teacher logits (N, W), vocabulary ids (N, k) or None) of the batch's kept positions, row-major."""
        import torch

        spans = []
        for b, key in enumerate(row_keys(batch)):
            if key not in self.rows:
                raise TunelabError(f"the teacher cache {self.path} has no entry for a training row; delete "
                                   "the file to compute it again")
            spans.append(self.rows[key])
        idx = torch.cat([torch.arange(a, b) for a, b in spans])
        counts = keep.reshape(keep.shape[0], -1).sum(1)
        if len(idx) != int(counts.sum()):
            raise TunelabError(f"the teacher cache {self.path} does not match the training rows; delete it to "
                               "compute it again")
        device = keep.device
        values = self.values[idx].to(device)
        return values, None if self.indices is None else self.indices[idx].long().to(device)


def teacher_key(teacher_dir: str | Path) -> str:
    """A hash of the teacher run's model files (path, size, modification time)."""
    root = Path(teacher_dir).resolve()
    h = hashlib.blake2b(digest_size=8)
    h.update(f"v{CACHE_VERSION} top{TOP_K} {root}".encode())
    for folder in ("model", "base"):
        for f in sorted(p for p in (root / folder).rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def cache_path(teacher_dir: str | Path, keys: list[bytes]) -> Path:
    from tunelab.models.gguf import tunelab_home

    data = hashlib.blake2b(b"".join(sorted(set(keys))), digest_size=8).hexdigest()
    name = Path(teacher_dir).resolve().name
    return tunelab_home() / "distill" / f"{name}-{teacher_key(teacher_dir)}-{data}.safetensors"


def _on(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def teacher_cache(job, teacher, teacher_dir: str, device, log) -> TeacherCache:
    """The cache of `teacher` on `job`'s training rows: read from disk, or computed now and written."""
    from safetensors.torch import load_file

    keys = [k for batch in job.epoch_batches(0) for k in row_keys(batch)]
    path = cache_path(teacher_dir, keys)
    if path.is_file():
        t = load_file(str(path))
        log(f"distill: teacher outputs read from {path}")
    else:
        t = compute(job, teacher, device)
        write(path, t)
        log(f"distill: teacher outputs for {len(t['keys'])} training rows written to {path} "
            f"({path.stat().st_size / 2 ** 20:.1f} MiB)")
    return TeacherCache(t["keys"], t["starts"], t["values"], t.get("indices"), path)


def compute(job, teacher, device) -> dict[str, torch.Tensor]:
    """The teacher's logits at the soft positions of every training row (epoch 0's batches), once per row."""
    import torch

    seen_rows: set[bytes] = set()
    keys, counts, values, indices = [], [], [], []
    with torch.no_grad():
        for batch in job.epoch_batches(0):
            batch = _on(batch, device)
            with Capture(teacher) as seen:
                job.loss(teacher, batch)  # the task's own call, so the inputs are the training ones
            keep = soft_positions(batch)
            logits = seen.logits(keep).float()  # (N, W)
            per_row = keep.reshape(keep.shape[0], -1).sum(1).tolist()
            for key, rows in zip(row_keys(batch), logits.split(per_row)):
                if key in seen_rows:
                    continue
                seen_rows.add(key)
                keys.append(key)
                counts.append(len(rows))
                if rows.shape[-1] > TOP_K:
                    top = rows.topk(TOP_K, dim=-1)
                    values.append(top.values.cpu())
                    indices.append(top.indices.to(torch.int32).cpu())
                else:
                    values.append(rows.cpu())
    out = {"keys": torch.tensor([list(k) for k in keys], dtype=torch.uint8),
           "starts": torch.tensor([0, *counts]).cumsum(0), "values": torch.cat(values).contiguous()}
    if indices:
        out["indices"] = torch.cat(indices).contiguous()
    return out


def write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write the cache atomically (a temp file renamed over the path)."""
    from safetensors.torch import save

    from tunelab.io import atomic_write_bytes

    atomic_write_bytes(path, save(tensors))
