"""OmniQuant: learnable weight clipping + learnable equivalent transformation, block by block."""
from .pipeline import quantize_omniquant

__all__ = ["quantize_omniquant"]
