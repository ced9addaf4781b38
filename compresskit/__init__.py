"""compresskit: compression for long-context language models.

Importing it registers the ``compresskit`` quantization method with transformers, so that
``AutoModelForCausalLM.from_pretrained`` loads compresskit checkpoints. Nothing heavier happens at
import: no model, data or kernel is loaded.
"""
from .core.config import OmniQuantConfig, QuantConfig
from .core.version import __version__
from .distill import DistillConfig
from .prune import PruneConfig
from .integrations.transformers_plugin import register as _register  # noqa: E402

_register()

# the pruning call is ``prune_model``: ``compresskit.prune`` is the pruning package (compresskit/prune);
# likewise ``distill_model`` (``compresskit.distill`` is the distillation package)
from .api import distill as distill_model  # noqa: E402
from .api import prune as prune_model  # noqa: E402
from .api import export_model, push, write_card  # noqa: E402  (publishing: compresskit.api_publish)
from .api import plan_recipe, run_recipe  # noqa: E402  (recipes: compresskit.api_recipe)
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

__all__ = ["DistillConfig", "OmniQuantConfig", "PruneConfig", "QuantConfig", "compare", "distill_model", "evaluate",
           "export_model", "info", "kernel_backends", "load_model", "plan_recipe", "prune_model", "push", "quantize",
           "run_recipe", "save", "set_kernel_backend", "write_card", "write_eval_report", "__version__"]
