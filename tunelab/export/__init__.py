"""A finished run's model in a format other programs run: ONNX (encoder tasks, for onnxruntime) and GGUF
(Llama-architecture causal LMs, for llama.cpp), each checked against the PyTorch model it came from.

`export_run(RUN_DIR, "onnx" | "gguf", ...)` is the API behind `tunelab export`. Both formats start the
same way (`load_for_export`): the run is loaded as `tunelab eval` loads it (a compressed variant
RUN_DIR/compressed/NAME too), a LoRA adapter is merged into its base, and models these formats cannot
hold (int8 modules of torch.ao) are refused. The writers live in tunelab.export.onnx and tunelab.export.gguf;
each writes its result atomically (staged, checked, then renamed into place) and never replaces an
existing one without `overwrite`.
"""
from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError

FORMATS = ("onnx", "gguf")


def export_run(run_dir: str | Path, fmt: str, *, output: str | Path | None = None, overwrite: bool = False,
               check: bool = True, opset: int | None = None, gguf_type: str = "f32", log=print) -> dict:
    """Export the run's model as `fmt`; returns what export.json (ONNX) or the check file (GGUF) records.

    `output`: the folder (onnx, default RUN_DIR/export/onnx) or file (gguf, default
    RUN_DIR/export/model-<type>.gguf). `check=False` skips running the exported model against PyTorch.
    """
    if fmt == "onnx":
        from tunelab.export.onnx import export_onnx

        if gguf_type != "f32":
            raise TunelabError("--type applies to --format gguf; ONNX export writes fp32")
        return export_onnx(run_dir, output=output, overwrite=overwrite, check=check, opset=opset, log=log)
    if fmt == "gguf":
        from tunelab.export.gguf import export_gguf

        if opset is not None:
            raise TunelabError("--opset applies to --format onnx; remove it for gguf")
        return export_gguf(run_dir, output=output, overwrite=overwrite, check=check, qtype=gguf_type, log=log)
    raise TunelabError(f"--format {fmt!r}; known: {', '.join(FORMATS)}")


def load_for_export(run_dir: str | Path):
    """The finished run (tunelab.runs.Run) with a LoRA adapter merged into its base model, in eval mode.

    One clear error for what is not a run, and for int8 modules (`refuse_quantized`).
    """
    from tunelab.runs import is_run, load_run

    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise TunelabError(f"{run_dir} is not a finished tunelab run (needs config.yaml and model/); pass the "
                           "output_dir of `tunelab train` or a variant RUN_DIR/compressed/NAME")
    run = load_run(run_dir)
    if hasattr(run.model, "merge_and_unload"):  # a peft LoRA model: W + (alpha/r)·BA folded into W
        run.model = run.model.merge_and_unload()
    run.model.eval()
    refuse_quantized(run.model, run_dir)
    return run


# Where int8 module classes live: torch.ao's dynamic quantization (packed weights only its own kernels read)
# and tunelab's weight-only Int8Linear (torch._weight_int8pack_mm, which ONNX has no operator for).
INT8_MODULES = ("torch.ao.nn.quantized", "torch.nn.quantized", "tunelab.compress.quantize")


def refuse_quantized(model, run_dir: Path) -> None:
    """A TunelabError when `model` holds int8 modules (a variant compressed with --quantize)."""
    quantized = sorted({type(m).__module__ + "." + type(m).__name__ for m in model.modules()
                        if type(m).__module__.startswith(INT8_MODULES)})
    if quantized:
        raise TunelabError(f"{run_dir} holds int8-quantized modules ({quantized[0]}), which cannot be exported: "
                           "export the variant compressed without --quantize (or the run itself); onnxruntime "
                           "can quantize the exported model (onnxruntime.quantization.quantize_dynamic)")


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Never replace a user's export silently."""
    if path.exists() and not overwrite:
        raise TunelabError(f"{path} already exists; pass --overwrite to replace it, or --output another path")


def refuse_foreign_folder(out_dir: Path) -> None:
    """An ONNX export replaces its folder whole: only an empty folder or an earlier export (export.json) may
    be replaced, never a run or any other folder of the user's (`--output runs/x --overwrite`)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TunelabError(f"--output {out_dir} is a file; an ONNX export is a folder: give a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "export.json").is_file():
        raise TunelabError(f"--output {out_dir} is a folder that holds other files and no export.json, and an "
                           "export replaces its folder whole: choose a new or empty folder")


def refuse_bad_file(path: Path) -> None:
    """A GGUF export is one file with its check beside it as .json: not a folder, not a .json name."""
    if path.is_dir():
        raise TunelabError(f"--output {path} is a folder; give the file to write, e.g. {path / 'model.gguf'}")
    if path.suffix == ".json":
        raise TunelabError(f"--output {path}: the check is written beside the file as .json; give a .gguf name")
