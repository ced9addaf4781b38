"""compresskit.eval: evaluation of (possibly compressed) causal LMs.

Only torch / transformers / stdlib are imported here. Models are used strictly through their
``forward`` / ``generate``, in eval mode under ``torch.inference_mode()``; progress is reported
through an optional ``progress(units_done)`` callback.
"""
from .cache import RowCache, model_fingerprint
from .compare import Comparison, CompareRow, Gate, compare
from .longbench import LongBenchResult, load_longbench, longbench
from .output import report_data, write_report_dir
from .passkey import PasskeyResult, PasskeyTrial, passkey, passkey_prompt
from .perplexity import PerplexityResult, perplexity, perplexity_ids
from .plots import plot_lines, write_plots
from .report import EvalReport, EvalRow
from .ruler import RULER_TASKS, RulerResult, ruler
from .suite import DEFAULT_TASKS, TASKS, count_tokens, evaluate, total_units

__all__ = [
    "DEFAULT_TASKS",
    "RULER_TASKS",
    "TASKS",
    "CompareRow",
    "Comparison",
    "EvalReport",
    "EvalRow",
    "Gate",
    "LongBenchResult",
    "RowCache",
    "RulerResult",
    "compare",
    "load_longbench",
    "longbench",
    "model_fingerprint",
    "ruler",
    "plot_lines",
    "write_plots",
    "report_data",
    "write_report_dir",
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
