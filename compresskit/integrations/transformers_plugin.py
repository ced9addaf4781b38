"""Teach transformers to load compresskit checkpoints.

After ``import compresskit``, ``AutoModelForCausalLM.from_pretrained(dir)`` on a saved compresskit
checkpoint sees ``quantization_config.quant_method == "compresskit"``, builds the runtime modules
listed in the manifest on the meta device, and lets transformers load the packed tensors into them.
transformers has no entry-point discovery: without the import, the method is unknown to it.
"""
from __future__ import annotations

import copy
import re
from typing import Any

import torch
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..core.manifest import QUANT_METHOD, QuantManifest
from ..core.arch import get_arch
from ..kernels.attention import enable_qkv_quantization
from ..kernels.convert import install_empty_modules, tie_int8_head


class CompresskitQuantConfig(QuantizationConfigMixin):
    """The manifest dict, carried through transformers as its quantization config."""

    def __init__(self, **manifest: Any) -> None:
        manifest.setdefault("quant_method", QUANT_METHOD)
        for key, value in manifest.items():
            setattr(self, key, value)
        self.manifest()  # validate now: a bad manifest fails before the model is built

    def manifest(self) -> QuantManifest:
        return QuantManifest.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)


class CompresskitHfQuantizer(HfQuantizer):
    """Loads pre-quantized compresskit checkpoints (it does not quantize at load time)."""

    requires_calibration = True

    def _process_model_before_weight_loading(self, model, **kwargs):
        manifest = self.quantization_config.manifest()
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        install_empty_modules(model, manifest, dtype=dtype, device="meta")
        self._manifest = manifest
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        emb = self._manifest.embeddings
        if emb is not None and emb.tied:
            tie_int8_head(model, emb)
        if self._manifest.attention_abits < 16:
            enable_qkv_quantization(model, get_arch(model), self._manifest.attention_abits)
        return model

    def get_weight_conversions(self):
        """Format 2 stores each quantized linear's packed words as ``NAME.weight`` (so that transformers
        without compresskit refuses the checkpoint): load them into ``NAME.qweight``."""
        from transformers.core_model_loading import WeightRenaming

        names = sorted(self.quantization_config.manifest().linears)
        if not names:
            return []
        group = "(" + "|".join(re.escape(n) for n in names) + ")"
        return [WeightRenaming(group + r"\.weight", r"\1.qweight")]

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register() -> None:
    """Register with transformers once (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(CompresskitQuantConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(CompresskitHfQuantizer)
