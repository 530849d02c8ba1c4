"""`tunelab export RUN_DIR --format onnx|gguf`: a finished run's model for onnxruntime or llama.cpp, checked
against PyTorch. Thin: the work is done by tunelab.export."""
from __future__ import annotations

EPILOG = """examples:
  tunelab export runs/bbc-news --format onnx
  tunelab export runs/bbc-news --format onnx --output dist/bbc-onnx --overwrite
  tunelab export runs/smollm2-lora-alpaca --format gguf --type q8_0
  tunelab export runs/bbc-news/compressed/prune50 --format onnx
onnx: classification, token_classification, extractive_qa and retrieval runs (LoRA merged); writes model.onnx
(dynamic batch and sequence), the tokenizer, labels and export.json; onnxruntime's outputs are compared with
PyTorch's on padded batches (max |diff| <= 1e-4, else nothing is written).
gguf: Llama-architecture causal_lm runs such as SmolLM2 (LoRA merged); --type f32 (default), f16 or q8_0;
the file is read back by tunelab's gguf: loader and its logits compared with the run's (written beside it as
.json). --no-check skips either comparison."""


def cmd_export(args) -> int:
    from tunelab.export import export_run

    export_run(args.run_dir, args.format, output=args.output, overwrite=args.overwrite, check=not args.no_check,
               opset=args.opset, gguf_type=args.type or "f32")
    return 0


def add_commands(sub) -> None:
    """Register `export` on the main parser's subparsers."""
    from tunelab.export import FORMATS

    e = sub.add_parser("export", help="write a run's model as ONNX (encoders) or GGUF (Llama causal LMs)",
                       description="Export a finished run (or a compressed variant RUN_DIR/compressed/NAME) for "
                                   "inference outside tunelab, and check the result against the PyTorch model.",
                       epilog=EPILOG)
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run or compressed variant")
    e.add_argument("--format", required=True, choices=FORMATS, help="onnx or gguf")
    e.add_argument("--output", help="onnx: a folder (default RUN_DIR/export/onnx); gguf: a file (default "
                                    "RUN_DIR/export/model-TYPE.gguf)")
    e.add_argument("--opset", type=int, help="onnx: the ONNX opset (default: the exporter's, 20 in torch 2.13)")
    e.add_argument("--type", choices=("f32", "f16", "q8_0"), help="gguf: tensor type of the matrices (default f32)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing export")
    e.add_argument("--no-check", action="store_true", help="skip running the export against the PyTorch model")
    e.set_defaults(func=cmd_export)
