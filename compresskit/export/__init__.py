"""Writing artifacts (on core only): the native checkpoint now; GPTQ and compressed-tensors later."""
from .native import save_native

__all__ = ["save_native"]
