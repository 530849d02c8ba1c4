"""Measurements as stored facts: the machine, the load, the matmul peak, model FLOPs, and the statistics.

Every run of a side is stored with its own start/end time (UTC), the load average before and after, and the
machine it ran on, in bench/out/<part>-<stamp>.json. results.md is rendered from those files only, so
rebuilding it (`--rewrite`) never changes a date or a figure.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def load() -> list[float]:
    """The 1, 5 and 15-minute load averages (runnable processes; 2 cores are busy at 2.0)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """CPU model, the flags that decide bf16 speed, cores, torch threads and version."""
    import torch

    from tunelab.train.precision import cpu_has_fast_bf16

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:  # not Linux: the flags stay unknown
        pass
    return {"cpu": model, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": bool({"amx_bf16", "amx_tile"} & flags),
            "fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__, "python": platform.python_version()}


def describe_machine(m: dict) -> str:
    bf16 = ", ".join(f for f in ("avx512_bf16", "amx") if m.get(f)) or "no native bf16"
    return f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, {bf16}, torch {m['torch']}"


# ---------------------------------------------------------------------------------------------
# The matmul peak, the yardstick of model-FLOPs utilisation


def matmul_peak(dtype_name: str, sizes=(512, 1024, 2048), budget_s: float = 1.0) -> float:
    """Best GFLOP/s of square torch matmuls (2 n^3 FLOPs each) at the process's thread count.

    Each size runs for about `budget_s` after one warm-up product; bigger sizes are skipped once a single
    product takes over 2 s (bf16 without native support is ~100x slower than fp32).
    """
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        t0 = time.perf_counter()
        a @ b  # warm-up (and the timing of one product)
        one = time.perf_counter() - t0
        reps = max(1, min(50, int(budget_s / max(one, 1e-6))))
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
        if one > 2.0:
            break
    return best


def peak() -> dict:
    """Both precisions' peaks, measured in this process (a child of the bench, like every side)."""
    return {"started": utc_now(), "load_before": load(), "fp32_gflops": matmul_peak("fp32"),
            "bf16_gflops": matmul_peak("bf16"), "finished": utc_now(), "load_after": load(), "machine": machine()}


# ---------------------------------------------------------------------------------------------
# Model FLOPs


def matmul_params(model) -> dict[str, int]:
    """Weights that take part in matrix products, by role: `body` (the transformer's linear layers), `head`
    (a vocabulary projection, `lm_head`), `adapter` (LoRA A and B). Embedding lookups are no products;
    a classifier's pooler and head run on one position per example and are left out (under 0.1%)."""
    import torch

    counts = {"body": 0, "head": 0, "adapter": 0}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        parts, n = name.split("."), module.weight.numel()
        if "lora_A" in parts or "lora_B" in parts:
            counts["adapter"] += n
        elif parts[-1] == "lm_head":
            counts["head"] += n
        elif not {"classifier", "pooler", "score"} & set(parts):
            counts["body"] += n
    return counts


def training_flops(params: dict[str, int], examples: list[tuple[int, int]], *, layers: int, hidden: int,
                   full: bool, causal: bool) -> float:
    """Model FLOPs of one pass over `examples` [(tokens n, trained positions m)], per example:

    full fine-tuning: 6 N_body n                      (forward 2N, backward 4N: activations and weights)
    LoRA:             4 N_body n + 6 N_adapter n      (frozen weights: forward 2N + activation gradients 2N)
    both:             + 4 N_head m (LoRA) / 6 N_head m (full): the vocabulary projection only where a loss is
                      taken; + attention scores and mixing, 3 x forward: 12 L d n^2, halved when causal.
    """
    per_token = 6 * params["body"] if full else 4 * params["body"] + 6 * params["adapter"]
    head = (6 if full else 4) * params["head"]
    attn = 12 * layers * hidden * (0.5 if causal else 1.0)
    return float(sum(per_token * n + head * m + attn * n * n for n, m in examples))


# ---------------------------------------------------------------------------------------------
# Statistics


def spread(values: list[float]) -> dict:
    """Median and range (min, max) of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def ratio_se(sums: list[float], counts: list[float]) -> tuple[float, float]:
    """Mean per unit (sum(s) / sum(c)) and its standard error with examples as the sampling unit.

    Tokens of one conversation are not independent, so the error is that of a ratio estimator over
    examples: sqrt(sum((s_i - mean c_i)^2) / (k (k - 1))) / mean(c).
    """
    k, total = len(sums), sum(counts)
    mean = sum(sums) / total
    if k < 2:
        return mean, math.nan
    resid = sum((s - mean * c) ** 2 for s, c in zip(sums, counts))
    return mean, math.sqrt(resid / (k * (k - 1))) / (total / k)


# ---------------------------------------------------------------------------------------------
# Stored measurements


def new_path(part: str, smoke: bool) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT / f"{part}{'-smoke' if smoke else ''}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"


def save(path: Path, record: dict) -> None:
    """Write atomically: a crash mid-run keeps the runs measured so far."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def latest(part: str, smoke: bool) -> dict | None:
    """The newest complete stored measurement of a part (smoke ones only when asked for)."""
    tag = f"{part}-smoke-" if smoke else f"{part}-2"
    for path in sorted(OUT.glob(f"{tag}*.json"), reverse=True):
        record = json.loads(path.read_text())
        if record.get("complete"):
            record["file"] = os.path.relpath(path, HERE.parent)
            return record
    return None
