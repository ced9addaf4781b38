"""compresskit: compression for long-context language models.

Importing it registers the ``compresskit`` quantization method with transformers, so that
``AutoModelForCausalLM.from_pretrained`` loads compresskit checkpoints, and registers the built-in passes
(compresskit.api_passes). Nothing heavier happens at import: no model, data or kernel is loaded.
"""
from .core.version import __version__
from .integrations.transformers_plugin import register as _register

_register()

# the API registers the built-in passes as it is imported (compresskit.api_passes)
from .api import (  # noqa: E402
    CompresskitError,
    EvalSettings,
    PassSpec,
    apply,
    attach_kv,
    compare,
    compress_kv,
    copy_model,
    evaluate,
    export_model,
    info,
    kernel_backends,
    load_model,
    plan_recipe,
    push,
    quantize,
    record,
    register,
    run_pass,
    run_recipe,
    save,
    set_kernel_backend,
    write_card,
    write_eval_report,
)
# the pruning call is ``prune_model``: ``compresskit.prune`` is the pruning package (compresskit/prune);
# likewise ``distill_model`` (``compresskit.distill`` is the distillation package)
from .api import distill as distill_model  # noqa: E402
from .api import prune as prune_model  # noqa: E402
from .core.config import QuantConfig  # noqa: E402
from .distill import DistillConfig  # noqa: E402
from .prune import PruneConfig  # noqa: E402
from .quant.gptq import GPTQConfig  # noqa: E402
from .quant.omniquant import OmniQuantConfig  # noqa: E402

__all__ = ["CompresskitError", "DistillConfig", "EvalSettings", "GPTQConfig", "OmniQuantConfig", "PassSpec",
           "PruneConfig", "QuantConfig", "apply", "attach_kv", "compare", "compress_kv", "copy_model", "distill_model", "evaluate",
           "export_model", "info", "kernel_backends", "load_model", "plan_recipe", "prune_model", "push",
           "quantize", "record", "register", "run_pass", "run_recipe", "save", "set_kernel_backend", "write_card",
           "write_eval_report", "__version__"]
