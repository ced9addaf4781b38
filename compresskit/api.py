"""The Python API: the one module the command line calls. It defines nothing; it gathers the API modules
that compose the rooms, each importing only the ones below it:

    api_publish  ->  api_models  ->  api_kv (KV policies)  ->  api_eval, api_kv_sweep, api_prune, api_distill
    ->  api_passes (the registered passes)  ->  api_recipe_plan  ->  runner  ->  api_recipe

    import compresskit
    model, tok = compresskit.load_model("smollm2-135m")
    before = compresskit.evaluate(model, tok, lengths=[1024])
    compresskit.quantize(model, compresskit.QuantConfig(wbits=4, group_size=64))
    after = compresskit.evaluate(model, tok, lengths=[1024])
    compresskit.save(model, tok, "smollm2-w4g64", evaluation={"before": before, "after": after})
"""
from __future__ import annotations

from .api_distill import (  # noqa: F401
    check_distill, check_distill_dependencies, distill, distill_units, has_distill_checkpoint, is_main_process,
    make_distill_config,
)
from .api_eval import compare, eval_report_data, eval_settings, eval_units, evaluate, load_report, write_eval_report  # noqa: F401
from .api_models import (  # noqa: F401
    USER_ERRORS, calibration_ids, check_output, checkpoint_bytes, copy_model, fetch_model, heldout_text, info,
    kernel_backends,
    load_model, manifest_of, record, resolve_device, resolve_dtype, save, set_kernel_backend, write_report,
)
from .api_passes import (  # noqa: F401
    PassContext, apply, config_from_options, count_quantizable, make_config, pass_units, progress_units, quantize,
)
from .api_prune import (  # noqa: F401
    make_prune_config, parameter_count, prune, prune_plan, prune_scores, prune_units, retrieval_probes,
)
from .api_publish import export_model, push, write_card  # noqa: F401
from .api_recipe import (  # noqa: F401
    GateFailedError, RecipeError, RecipeEvent, RecipeResult, one_pass_recipe, run_pass, run_recipe, shipped_recipes,
)
from .api_recipe_plan import RecipePlan, plan_recipe  # noqa: F401
from .core.errors import CompresskitError  # noqa: F401
from .core.record import ModelRecord, record_of  # noqa: F401
from .core.registry import REGISTRY, PassSpec, register  # noqa: F401
from .core.version import __version__  # noqa: F401
from .eval.settings import EvalSettings  # noqa: F401
from .api_kv_sweep import KVRow, KVSweep, continuation_ppl, kv_sweep, measure_cache  # noqa: F401
from .api_kv import attach_kv, compress_kv, kv_head_scores, kv_memory, resolve_kv  # noqa: F401
from .kvcache import KVPolicy, attached_policy, cache_bytes, evicting_cache  # noqa: F401
from .prune import PruneConfig  # noqa: F401
