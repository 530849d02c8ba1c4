"""The trade-off table: every variant of a run measured on the run's test split, in one process.

`measure_variants(RUN_DIR, others=[...])` loads the run itself, each RUN_DIR/compressed/NAME and any other
runs (e.g. a distilled student trained on the same data), evaluates each, then times them all in interleaved
rounds (all variants stay in memory: a neighbour's load on a shared machine falls on every variant alike).
Per variant:

- the task metric (the run's train.early_stopping.metric, and accuracy where the task has it) on RUN_DIR's
  test split, computed by the task's own `evaluate`, and that metric as a % of the uncompressed run's;
- latency at batch 1: the median of single test examples, each at its real length, one forward pass
  (a causal LM: one forward over the example, no generation);
- throughput at batch 32: examples per second over batches of 32 test examples in a fixed random order,
  each padded to its longest;
- parameters, the weight files' size and, for magnitude-pruned variants, the sparsity (magnitude pruning
  keeps every shape: the same parameters and the same speed, which the table must not hide).

The examples are exactly what the task feeds its model when it evaluates: a hook on the input embedding
records the token ids of every evaluation batch (trailing padding stripped), so no task is asked how it
tokenises. Timings run after a warm-up, under torch.inference_mode, with the threads stated in the files.
A LoRA run is measured merged (its adapter folded into the weights), as it would be served.
"""
from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from tunelab.errors import TunelabError

FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
BATCH = 32
WARMUP = 3
ROUNDS = 4  # timing rounds over all variants (see time_variants)


def cpu_flags() -> dict:
    """The CPU's model name and which of the flags that decide int8 / bf16 speed it has (/proc/cpuinfo)."""
    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": name, "flags": {f: f in flags for f in FLAGS}}


# ---------------------------------------------------------------------------------------------
# One variant


def _input_embedding(model):
    from torch import nn

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is None:
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is None:
        raise TunelabError(f"report: {type(model).__name__} has no input embedding to read the test inputs from")
    return emb


def evaluate_and_capture(run, pad_id: int) -> tuple[dict, list[list[int]]]:
    """(the task's test metrics, the token ids of every test example as the task fed them to the model)."""
    captured: list[list[int]] = []

    def record(_module, args):
        ids = args[0]
        if ids.dim() == 2 and ids.shape[1] > 1:
            for row in ids.tolist():
                n = len(row)
                while n > 1 and row[n - 1] == pad_id:  # trailing padding is not part of the example
                    n -= 1
                captured.append(row[:n])

    hook = _input_embedding(run.model).register_forward_pre_hook(record)
    try:
        metrics = run.task.evaluate(run, None, "", lambda *_: None)
    finally:
        hook.remove()
    return metrics, captured


def timed_forward(model, ids, mask) -> float:
    t0 = time.perf_counter()
    model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - t0


def padded(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T), padding on the right
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


class Timing:
    """The inputs one variant is timed on, and the times taken so far.

    `singles`: n_latency examples spread over the split (batch 1, each at its real length); `batches`:
    n_throughput + 1 batches of 32 examples in a fixed random order (cycled if the split is small), the
    first of them a warm-up.
    """

    def __init__(self, model, examples: list[list[int]], pad_id: int, n_latency: int, n_throughput: int):
        import torch

        self.model = model
        n = min(n_latency, len(examples))
        self.singles = [torch.tensor([examples[i * len(examples) // n]]) for i in range(n)]
        order = list(range(len(examples)))
        random.Random(0).shuffle(order)
        stream = (examples[order[i % len(order)]] for i in range(BATCH * (n_throughput + 1)))
        self.batches = [padded([next(stream) for _ in range(BATCH)], pad_id) for _ in range(n_throughput + 1)]
        self.latencies: list[float] = []
        self.batch_seconds: list[float] = []

    def warm_up(self) -> None:
        for ids in self.singles[:WARMUP]:
            timed_forward(self.model, ids, torch_ones(ids))
        timed_forward(self.model, *self.batches[0])

    def run(self, round_: int, rounds: int) -> None:
        """This round's share: every `rounds`-th single example and batch."""
        for ids in self.singles[round_::rounds]:
            self.latencies.append(timed_forward(self.model, ids, torch_ones(ids)))
        for batch in self.batches[1:][round_::rounds]:
            self.batch_seconds.append(timed_forward(self.model, *batch))

    def result(self) -> dict:
        return {"latency_ms": round(1000 * statistics.median(self.latencies), 3),
                "throughput": round(BATCH * len(self.batch_seconds) / sum(self.batch_seconds), 2)}


def torch_ones(ids):
    import torch

    return torch.ones_like(ids)


def time_variants(timings: list[Timing], rounds: int = ROUNDS) -> list[dict]:
    """Latency and throughput of every variant, timed in interleaved rounds (variant 1, 2, ..., then again):
    a neighbour's load that comes and goes on a shared machine then falls on all variants alike, not on the
    one measured at that moment."""
    import torch

    with torch.inference_mode():
        for t in timings:
            t.warm_up()
        for r in range(rounds):
            for t in timings:
                t.run(r, rounds)
    return [t.result() for t in timings]


def weight_bytes(run_dir: Path) -> int:
    """Bytes of the weight files the variant needs: model/ (and a LoRA run's base/ beside it)."""
    from tunelab.compress.store import file_size

    size = file_size(run_dir / "model")
    if (run_dir / "model" / "adapter_config.json").exists() and (run_dir / "base").is_dir():
        size += file_size(run_dir / "base")
    return size


def _encoder_decoder(model) -> bool:
    """A transformers encoder-decoder, or one of tunelab's scratch seq2seq models."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False)) \
        or "seq2seq" in str(getattr(model, "scratch_kind", ""))


def load_variant(name: str, run_dir: Path, base_cfg, n_latency: int, n_throughput: int) -> tuple[dict, Timing]:
    """(the row of one variant without its timings, its Timing): loaded, evaluated on RUN_DIR's test split."""
    import torch

    from tunelab.compress.store import count_parameters
    from tunelab.models.build import is_peft
    from tunelab.runs import load_run

    run = load_run(run_dir)
    if _encoder_decoder(run.model):  # one forward needs decoder inputs too: a single-pass timing would mislead
        raise TunelabError(f"--report: {run_dir} holds an encoder-decoder model; the trade-off table times "
                           "single-pass models (classification, tagging, QA, retrieval, causal LMs): compare "
                           "seq2seq variants with `tunelab eval` on each")
    if run.task.name != base_cfg.task:
        raise TunelabError(f"--compare {run_dir}: a {run.task.name} run; the table compares {base_cfg.task} runs")
    run.cfg.data, run.cfg.train.seed = base_cfg.data, base_cfg.train.seed  # the same test split: RUN_DIR's
    run.cfg.generate.samples_in_eval = 0  # the run's own loss metric; no generation is timed or scored
    if is_peft(run.model):
        run.model = run.model.merge_and_unload()
    pad_id = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
    with torch.inference_mode():
        metrics, examples = evaluate_and_capture(run, pad_id)
    if not examples:
        raise TunelabError(f"report: evaluating {run_dir} fed its model no token ids to time")
    steps = _steps(run_dir)
    row = {"variant": name, "path": str(run_dir), "steps": steps, "parameters": count_parameters(run.model),
           "sparsity": _record(run_dir).get("sparsity") if _magnitude(steps) else None,
           "file_mb": round(weight_bytes(run_dir) / 1e6, 3), "test_examples": len(examples),
           "threads": torch.get_num_threads(),
           "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return row, Timing(run.model, examples, pad_id, n_latency, n_throughput)


def _record(run_dir: Path) -> dict:
    from tunelab.compress.pipeline import RECORD

    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def _steps(run_dir: Path) -> list[dict]:
    return _record(run_dir).get("steps", [])


def _magnitude(steps: list[dict]) -> bool:
    return any(s.get("op") == "prune_magnitude" for s in steps)


# ---------------------------------------------------------------------------------------------
# All variants


def variant_dirs(run_dir: Path, others: list) -> list[tuple[str, Path]]:
    """(name, folder): the run itself, its compressed results (by name), then the other runs."""
    from tunelab.compress.pipeline import COMPRESSED
    from tunelab.runs import is_run, run_config

    found = [("base", run_dir)]
    folder = run_dir / COMPRESSED
    if folder.is_dir():
        found += [(p.name, p) for p in sorted(folder.iterdir()) if not p.name.startswith(".") and is_run(p)]
    for other in others:
        run_config(other)  # one clear error for a folder that is not a finished run
        found.append((Path(other).name, Path(other)))
    return found


def measure_variants(run_dir, others: list | None = None, threads: int | None = None, n_latency: int = 50,
                     n_throughput: int = 4, log=print) -> list[dict]:
    """One row per variant of RUN_DIR (see the module docstring), metric retained as a % of the base row."""
    import torch

    from tunelab.compress.pipeline import base_metric, retained
    from tunelab.runs import run_config

    run_dir = Path(run_dir)
    base_cfg = run_config(run_dir)
    if threads:
        torch.set_num_threads(threads)
    metric, _ = base_metric(run_dir, base_cfg)
    rows, timings = [], []
    for name, folder in variant_dirs(run_dir, list(others or [])):
        log(f"evaluating {name} ({folder}) ...")
        row, timing = load_variant(name, folder, base_cfg, n_latency, n_throughput)
        row["metric"], row["value"] = metric, row["metrics"].get(metric)
        row["accuracy"] = row["metrics"].get("accuracy")
        row["retained_percent"] = retained(metric, row["value"], rows[0]["value"] if rows else row["value"])
        rows.append(row)
        timings.append(timing)
    log(f"timing {len(rows)} variants in {ROUNDS} interleaved rounds on {torch.get_num_threads()} threads ...")
    for row, times in zip(rows, time_variants(timings)):
        row.update(times)
    return rows


# ---------------------------------------------------------------------------------------------
# The files


def _cell(value, fmt: str = "{}") -> str:
    return "—" if value is None else fmt.format(value)


def table_markdown(rows: list[dict], machine: dict) -> str:
    """The Markdown table, with the threads and CPU flags that the timings depend on."""
    metric = rows[0]["metric"] if rows else "metric"
    has = ", ".join(f for f, on in machine["flags"].items() if on) or "none of " + ", ".join(FLAGS)
    lines = [f"Measured on {machine['cpu']} with {rows[0]['threads'] if rows else '?'} threads; CPU flags: {has}.",
             f"Test split: {rows[0]['test_examples'] if rows else 0} examples. Latency: median of single examples "
             "at their real lengths; throughput: batches of 32. Sparsity: zero weights of magnitude pruning, which "
             "keeps every shape (no fewer parameters, no speed-up).", "",
             f"| variant | parameters | sparsity | weights (MB) | latency b1 (ms) | throughput b32 (ex/s) | "
             f"{metric} | accuracy | % of base |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['parameters']:,} | {_cell(r['sparsity'], '{:.1%}')} | "
                     f"{r['file_mb']:.2f} | {r['latency_ms']:.2f} | {r['throughput']:.1f} | "
                     f"{_cell(r['value'], '{:.4f}')} | {_cell(r['accuracy'], '{:.4f}')} | "
                     f"{_cell(r['retained_percent'], '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Latency against the metric: one numbered point per variant, named in a legend beside the axes (variants
    often land on about the same point: names written beside the points would overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    colors = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        if r["value"] is None:
            continue
        ax.scatter(r["latency_ms"], r["value"], s=45, color=colors(i % 10), label=f"{i + 1}  {r['variant']}")
        ax.annotate(str(i + 1), (r["latency_ms"], r["value"]), textcoords="offset points", xytext=(5, 3),
                    fontsize=8)
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel(f"latency at batch 1 (ms, median, {rows[0]['threads']} threads)")
    ax.set_ylabel(f"test {rows[0]['metric']}")
    ax.set_title("compression trade-off")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_tradeoff(rows: list[dict], folder) -> list[Path]:
    """tradeoff.json, tradeoff.md and tradeoff.png in `folder` (each written atomically); returns their paths."""
    import tempfile

    from tunelab.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    if not rows:
        raise TunelabError("report: no variants were measured")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    machine = cpu_flags()
    atomic_write_json(folder / "tradeoff.json", {**machine, "threads": rows[0]["threads"], "rows": rows})
    atomic_write_text(folder / "tradeoff.md", table_markdown(rows, machine))
    with tempfile.TemporaryDirectory() as tmp:
        plot(rows, Path(tmp) / "plot.png")
        atomic_write_bytes(folder / "tradeoff.png", (Path(tmp) / "plot.png").read_bytes())
    return [folder / "tradeoff.json", folder / "tradeoff.md", folder / "tradeoff.png"]
