"""LoRA through peft: low-rank adapters on the chosen linear layers; the task head trains in full."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the model, not with the config that names the method
    from torch import nn

from tunelab.errors import TunelabError
from tunelab.methods import register_method


@dataclass
class Options:
    r: int = 8
    """lora: rank."""
    alpha: float = 16.0
    """lora: scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """lora: dropout on the adapter input."""
    target_modules: Union[str, list[str]] = "auto"
    """lora: auto | all-linear | [module names]."""
    merge: bool = False
    """lora: also write a merged full model to RUN_DIR/merged."""

# Attention projections per architecture when target_modules is "auto" (peft's own defaults agree).
AUTO_TARGETS = {"bert": ["query", "value"], "llama": ["q_proj", "v_proj"], "distilbert": ["q_lin", "v_lin"]}


def apply(model: nn.Module, head: set[str], r: int = 8, alpha: float = 16.0, dropout: float = 0.05,
          target_modules: str | list[str] = "auto", task_type: str = "SEQ_CLS", **_: object) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    if hasattr(model, "scratch_kind"):
        raise TunelabError("method.name: lora needs a Hugging Face model; scratch models train with full "
                           "(or freeze / head on a pretrained scratch folder)")

    if target_modules == "auto":
        model_type = getattr(model.config, "model_type", "")
        targets: str | list[str] | None = AUTO_TARGETS.get(model_type)  # None -> peft's default table
    else:
        targets = target_modules
    head_modules = sorted({name.rsplit(".", 1)[0] for name in head})
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                     task_type=task_type, modules_to_save=head_modules or None)
    return get_peft_model(model, cfg)


register_method("lora", apply, "lora (adapters + head)", Options)
