"""compresskit.prune: structured pruning (MLP channels, attention heads, layers) that keeps long context.

Imports only compresskit.core. Needle probes for retrieval-head scoring come in as plain token ids
(`RetrievalProbe`, `probe_from_answer`); compresskit.api builds them from the eval room's passkey prompts.
"""
from .apply import count_parameters
from .config import PRUNE_CONFIG_VERSION, PruneConfig, PrunePlan, plan
from .importance import Importance, collect_importance
from .pipeline import progress_units, prune_in_place
from .retrieval import (RetrievalProbe, answer_loss_scores, head_retrieval_scores, probe_from_answer,
                        retrieval_scores)

__all__ = ["PRUNE_CONFIG_VERSION", "Importance", "PruneConfig", "PrunePlan", "RetrievalProbe", "answer_loss_scores",
           "collect_importance", "head_retrieval_scores",
           "count_parameters", "plan", "probe_from_answer", "progress_units", "prune_in_place", "retrieval_scores"]
