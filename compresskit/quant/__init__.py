"""Quantization passes (on core + kernels)."""
from .apply import plan_linears
from .rtn import quantize_rtn, rtn_pack

__all__ = ["plan_linears", "quantize_rtn", "rtn_pack"]
