"""Where training progress goes: metrics.jsonl (one JSON object per event), TensorBoard, a progress bar."""
from __future__ import annotations

import json
import time
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: Path | None, total_steps: int, show_progress: bool = True):
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if run_dir else None
        self._tb = None
        if run_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        self._bar = None
        if show_progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True)
        self.history: list[dict] = []

    def log(self, kind: str, step: int, values: dict) -> None:
        """Record one event (`kind` is 'train' or 'eval'); scalar values also go to TensorBoard."""
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        self.history.append(record)
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._tb:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def progress(self, n: int, **postfix: str) -> None:
        if self._bar:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def message(self, text: str) -> None:
        if self._bar:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar:
            self._bar.close()
        if self._tb:
            self._tb.close()
        if self._jsonl:
            self._jsonl.close()
