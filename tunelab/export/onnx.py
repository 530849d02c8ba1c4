"""ONNX export of an encoder run: classification, token classification, extractive QA, retrieval.

The graph is traced by torch's own exporter, `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript;
the TorchScript exporter still works in torch 2.13 but is deprecated and warns on every call). Inputs are
input_ids and attention_mask (+ token_type_ids when both the tokenizer and the model take them), int64, with
dynamic batch and sequence axes; the outputs are named by the task (`OUTPUTS`). A retrieval run's output is
its embedding pooled and L2-normalised exactly as the run pools (tunelab.retrieval.embed.pool).

The folder holds model.onnx, the tokenizer, the run's task metadata (meta.json; labels.json when the task has
labels) and export.json: task, inputs, outputs, opset and the check, in which onnxruntime runs the graph and
PyTorch runs the model on padded batches of shapes the export never saw, and the largest |difference| must
stay under TOLERANCE.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.export import load_for_export, refuse_existing, refuse_foreign_folder

# The output names of each task's graph (a lookup of what the graph returns, not a branch per task).
OUTPUTS = {
    "classification": ("logits",),  # (batch, labels)
    "token_classification": ("logits",),  # (batch, sequence, labels)
    "extractive_qa": ("start_logits", "end_logits"),  # (batch, sequence) each
    "retrieval": ("sentence_embedding",),  # (batch, hidden), unit length
}  # not "embedding": the exporter names the value of aten.embedding so, and ONNX refuses a second one
TOLERANCE = 1e-4  # max |onnxruntime - torch| over every output value; fp32 graphs measure 1e-6 and below
CHECK_TEXTS = (  # invented here; lengths from 2 to ~40 words, so batches carry real padding
    "Shares rose.",
    "The match ended with a late goal from the young striker.",
    "A new phone with a faster chip and a larger screen goes on sale in the spring, the company said on "
    "Tuesday, while rivals cut prices of their older models.",
    "Who won the league?",
    "The coach said the team would cook a rice salad for the fans after the final match of the season.",
)


def export_onnx(run_dir: str | Path, *, output: str | Path | None = None, overwrite: bool = False,
                check: bool = True, opset: int | None = None, log=print) -> dict:
    """Write RUN_DIR's model as an ONNX folder (default RUN_DIR/export/onnx); returns export.json's content."""
    import torch

    from tunelab.io import atomic_write_json, staged_dir

    run_dir = Path(run_dir)
    out_dir = Path(output) if output else run_dir / "export" / "onnx"
    refuse_foreign_folder(out_dir)
    refuse_existing(out_dir, overwrite)
    run = load_for_export(run_dir)
    outputs = _outputs_of(run)
    graph = onnx_graph(run.model, outputs, run.meta.get("pooling")).eval()
    inputs = input_names(run.model, run.tokenizer)
    max_length = _max_length(run)
    with staged_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        example = _encode(run.tokenizer, list(CHECK_TEXTS[:2]), inputs, max_length)  # (2, T): one row padded
        used_opset = _trace(graph, example, inputs, outputs, tmp / "model.onnx", opset)
        log(f"traced the {run.task.name} model to ONNX (opset {used_opset}) in {time.perf_counter() - t0:.1f}s")
        info = {"format": "onnx", "task": run.task.name, "run": str(run_dir), "inputs": list(inputs),
                "outputs": _output_shapes(outputs), "opset": used_opset, "max_length": run.cfg.model.max_length,
                "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
                "check": _check(graph, tmp / "model.onnx", run.tokenizer, inputs, max_length) if check
                else {"skipped": "--no-check"}}
        if "max_abs_diff" in info["check"]:
            log(f"onnxruntime vs torch: max |diff| {info['check']['max_abs_diff']:.2e} on "
                f"{len(info['check']['batches'])} batches (tolerance {TOLERANCE:g})")
        else:
            log(f"check skipped: {info['check']['skipped']}")
        if run.meta.get("pooling"):
            info["pooling"] = run.meta["pooling"]
        _write_side_files(run, tmp)
        atomic_write_json(tmp / "export.json", info)
    log(f"wrote {out_dir}")
    return info


def _outputs_of(run) -> tuple[str, ...]:
    outputs = OUTPUTS.get(run.task.name)
    if outputs is None:
        raise TunelabError(f"{run.dir} is a {run.task.name} run; ONNX export takes {', '.join(OUTPUTS)} runs "
                           "(encoders); export a Llama-architecture causal LM with --format gguf")
    return outputs


def _max_length(run) -> int:
    """Tokens per text in the check: up to 128, within the model's positions (longer than the run's own
    model.max_length where the model allows, so the check also covers lengths training never used; a
    scratch model, which has no such config, stops at model.max_length)."""
    positions = getattr(getattr(run.model, "config", None), "max_position_embeddings", None)
    return max(4, min(128, int(positions or run.cfg.model.max_length or 128)))


def _graph_class():
    import torch

    class Graph(torch.nn.Module):
        """The run's model with plain tensor inputs and the task's outputs as a tuple (what ONNX holds)."""

        def __init__(self, model, outputs: tuple[str, ...], pooling: str | None):
            super().__init__()
            self.model, self.outputs, self.pooling = model, outputs, pooling

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # each (B, T) int64
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            out = self.model(**kw)
            if self.outputs == ("sentence_embedding",):
                from tunelab.retrieval.embed import pool

                return (pool(out.last_hidden_state, attention_mask, self.pooling or "mean"),)  # (B, H)
            return tuple(getattr(out, name) for name in self.outputs)

    return Graph


def onnx_graph(model, outputs: tuple[str, ...], pooling: str | None):
    """An nn.Module around `model` whose forward(input_ids, attention_mask[, token_type_ids]) returns the
    task's `outputs` as a tuple of tensors (built lazily: torch loads only when exporting)."""
    return _graph_class()(model, outputs, pooling)


def input_names(model, tokenizer) -> tuple[str, ...]:
    """input_ids, attention_mask, and token_type_ids when the tokenizer makes them and the model takes them."""
    import inspect

    names = ("input_ids", "attention_mask")
    takes = "token_type_ids" in inspect.signature(model.forward).parameters
    if takes and "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        names += ("token_type_ids",)
    return names


def _encode(tokenizer, texts: list, inputs: tuple[str, ...], max_length: int) -> dict:
    """Padded int64 tensors of `texts` (strings, or (a, b) pairs as a QA model reads them), only `inputs`."""
    if texts and isinstance(texts[0], tuple):
        enc = tokenizer([a for a, _ in texts], [b for _, b in texts], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
    else:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {name: enc[name].long() for name in inputs}


def _trace(graph, example: dict, inputs: tuple[str, ...], outputs: tuple[str, ...], path: Path,
           opset: int | None) -> int:
    """Trace `graph` to `path` with dynamic batch / sequence axes; returns the opset written."""
    import onnx
    import torch
    from torch.export import Dim

    batch, seq = Dim("batch"), Dim("sequence")
    shapes = {name: {0: batch, 1: seq} for name in inputs}
    kw = {} if opset is None else {"opset_version": opset}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" lines from the op registry
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation / tracing notes, none the user can act on
            torch.onnx.export(graph, tuple(example[name] for name in inputs), str(path), dynamo=True,
                              input_names=list(inputs), output_names=list(outputs), dynamic_shapes=shapes,
                              external_data=False, verbose=False, **kw)
    except Exception as e:  # the exporter raises many kinds for a model it cannot trace
        raise TunelabError(f"torch.onnx could not export this model: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}"
                           + ("; try another --opset (18 or later)" if opset is not None else "")) from None
    finally:
        quiet.setLevel(level)
    model = onnx.load(str(path), load_external_data=False)
    _require_dynamic_axes(model)
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def _require_dynamic_axes(model) -> None:
    """A TunelabError when the trace fixed the batch or sequence size (the model's code turned it into a
    constant), so the graph would refuse every other shape."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        fixed = [(axis, d.dim_value) for axis, d in zip(("batch", "sequence"), dims) if not d.dim_param]
        if fixed:
            axis, size = fixed[0]
            raise TunelabError(f"the traced graph fixes the {axis} size of {value.name} at {size} (the model's code "
                               "turns it into a constant), so it would take no other shape; this model cannot be "
                               "exported to ONNX with dynamic axes")


def _output_shapes(outputs: tuple[str, ...]) -> dict[str, list[str]]:
    shapes = {"logits": ["batch", "labels"], "start_logits": ["batch", "sequence"],
              "end_logits": ["batch", "sequence"], "sentence_embedding": ["batch", "hidden"]}
    return {name: shapes[name] for name in outputs}


def _check(graph, path: Path, tokenizer, inputs: tuple[str, ...], max_length: int) -> dict:
    """Run the ONNX graph (onnxruntime) and the PyTorch model on padded batches of new shapes: max |diff|."""
    import numpy as np
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install onnxruntime)"}
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [list(CHECK_TEXTS[1:4]), [CHECK_TEXTS[0]],  # 3 padded rows; one row
               [(CHECK_TEXTS[3], CHECK_TEXTS[4]), (CHECK_TEXTS[0], CHECK_TEXTS[2])]]  # pairs: token types 0 and 1
    worst, shapes = 0.0, []
    for texts in batches:
        enc = _encode(tokenizer, texts, inputs, max_length)
        with torch.no_grad():
            want = [t.numpy() for t in graph(*(enc[name] for name in inputs))]
        got = session.run(None, {name: enc[name].numpy() for name in inputs})
        worst = max(worst, *(float(np.abs(g - w).max()) for g, w in zip(got, want)))
        shapes.append(list(enc["input_ids"].shape))
    result = {"max_abs_diff": worst, "tolerance": TOLERANCE, "batches": shapes,
              "onnxruntime": ort.__version__, "seconds": round(time.perf_counter() - t0, 2)}
    if not worst <= TOLERANCE:  # also catches NaN
        raise TunelabError(f"the ONNX model differs from the PyTorch model by {worst:.3g} (tolerance "
                           f"{TOLERANCE:g}); nothing was written. Export with --debug and report it, or "
                           "skip the check with --no-check at your own risk")
    return result


def _write_side_files(run, folder: Path) -> None:
    """The tokenizer, the model config and the task's metadata (meta.json; labels.json when there are labels)."""
    from tunelab.io import atomic_write_json

    run.tokenizer.save_pretrained(str(folder))
    config = getattr(run.model, "config", None)
    if hasattr(config, "to_json_file"):
        config.to_json_file(str(folder / "config.json"))
    meta = json.loads(json.dumps(run.meta, default=str))
    atomic_write_json(folder / "meta.json", meta)
    if isinstance(meta, dict) and meta.get("labels") is not None:
        atomic_write_json(folder / "labels.json", meta["labels"])
