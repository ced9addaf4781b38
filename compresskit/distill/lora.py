"""LoRA students through peft: adapters on the block linears, trained, then merged into the weights so
the result is an ordinary checkpoint of the student's shape (no peft modules, no peft at load time)."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ..core.errors import MissingDependencyError  # noqa: F401 (raised here; re-exported by compresskit.distill)
from .config import DistillConfig

PEFT_MISSING = ("LoRA distillation needs peft, which is not installed: pip install peft "
                "(or pip install 'compresskit[distill]'); or distill all weights without --lora")


def require_peft() -> Any:
    try:
        import peft
    except ImportError as e:
        raise MissingDependencyError(PEFT_MISSING) from e
    return peft


def apply_lora(model: nn.Module, config: DistillConfig) -> nn.Module:
    """``model`` wrapped with LoRA adapters (rank ``lora_rank``, ``lora_alpha``, ``lora_dropout``) on the
    linears named in ``lora_targets``; the base weights are frozen. Returns the peft model."""
    peft = require_peft()
    lora = peft.LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                           target_modules=list(config.lora_targets), bias="none", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lora)


def merge_lora(model: nn.Module) -> nn.Module:
    """The base model with every adapter merged into its weights and the peft modules removed."""
    if not hasattr(model, "merge_and_unload"):
        return model
    merged = model.merge_and_unload()
    leftover = [name for name, m in merged.named_modules() if type(m).__module__.startswith("peft")]
    if leftover:
        raise RuntimeError(f"peft modules remain after merging: {leftover[:3]}")
    return merged
