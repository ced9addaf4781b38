"""OmniQuant: learnable weight clipping + learnable equivalent transformation, block by block."""
from .config import OmniQuantConfig
from .pipeline import quantize_omniquant

__all__ = ["OmniQuantConfig", "quantize_omniquant"]
