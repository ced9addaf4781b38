"""compresskit.distill: recover a pruned or quantized student by learning from its parent model.

Forward KL on logits at a temperature (computed in chunks of positions from the final hidden
states), optional hidden-state and next-token losses, a short-to-long sequence-length schedule that
ends at the target length, LoRA students through peft, and an accelerate training loop that
checkpoints and resumes exactly. Imports only compresskit.core (plus torch / transformers /
accelerate / peft, the last two when a run starts); quantization-specific preparation of a student
comes in from compresskit.api as the list of parameters to train.
"""
from .checkpoint import TrainState, has_checkpoint
from .config import DISTILL_CONFIG_VERSION, DistillConfig
from .lora import PEFT_MISSING, MissingDependencyError, apply_lora, merge_lora, require_peft
from .losses import HeadLossSums, head_losses, hidden_state_loss, layer_map, next_token_labels, token_kl
from .objective import Objective, capture, core_model
from .parts import part_parameters
from .trainer import DistillResult, default_work_dir, lr_lambda, make_accelerator, run_distillation

__all__ = ["DISTILL_CONFIG_VERSION", "DistillConfig", "DistillResult", "HeadLossSums", "MissingDependencyError", "Objective", "PEFT_MISSING",
           "TrainState", "apply_lora", "capture", "core_model", "default_work_dir", "has_checkpoint", "head_losses",
           "hidden_state_loss", "layer_map", "lr_lambda", "make_accelerator", "merge_lora", "next_token_labels", "part_parameters",
           "require_peft", "run_distillation", "token_kl"]
