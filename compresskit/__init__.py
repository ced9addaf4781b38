"""compresskit: compression for long-context language models.

Importing it registers the ``compresskit`` quantization method with transformers, so that
``AutoModelForCausalLM.from_pretrained`` loads compresskit checkpoints. Nothing heavier happens at
import: no model, data or kernel is loaded.
"""
from .core.config import OmniQuantConfig, QuantConfig
from .core.version import __version__
from .prune import PruneConfig
from .integrations.transformers_plugin import register as _register  # noqa: E402

_register()

# the pruning call is ``prune_model``: ``compresskit.prune`` is the pruning package (compresskit/prune)
from .api import prune as prune_model  # noqa: E402
from .api import (  # noqa: E402
    compare,
    evaluate,
    info,
    kernel_backends,
    load_model,
    quantize,
    save,
    set_kernel_backend,
    write_eval_report,
)

__all__ = ["OmniQuantConfig", "PruneConfig", "QuantConfig", "compare", "evaluate", "info", "kernel_backends", "load_model",
           "prune_model", "quantize", "save", "set_kernel_backend", "write_eval_report", "__version__"]
