"""compresskit.eval: evaluation of (possibly compressed) causal LMs.

Only torch / transformers / stdlib are imported here. Models are used strictly through their
``forward`` / ``generate``, in eval mode under ``torch.inference_mode()``; progress is reported
through an optional ``progress(units_done)`` callback.
"""
from .passkey import PasskeyResult, PasskeyTrial, passkey, passkey_prompt
from .perplexity import PerplexityResult, perplexity, perplexity_ids
from .report import EvalReport, EvalRow
from .suite import TASKS, count_tokens, evaluate, total_units

__all__ = [
    "TASKS",
    "EvalReport",
    "EvalRow",
    "PasskeyResult",
    "PasskeyTrial",
    "PerplexityResult",
    "count_tokens",
    "evaluate",
    "passkey",
    "passkey_prompt",
    "perplexity",
    "perplexity_ids",
    "total_units",
]
