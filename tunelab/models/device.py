"""Where a loaded model runs: the device of its parameters.

Prediction code follows the model rather than a fixed device, so one code path serves `tunelab predict` (the
run loaded on the CPU) and `tunelab serve --device cuda` (the same run moved to the GPU after loading): the
inputs go where the weights are.
"""
from __future__ import annotations

import torch


def model_device(model) -> torch.device:
    """The device of `model`'s first parameter (or buffer); the CPU for a model that holds neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
