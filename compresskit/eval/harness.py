"""Adapter to EleutherAI's lm-evaluation-harness (``pip install lm_eval``, optional).

The (possibly compressed) model is handed to ``lm_eval.models.huggingface.HFLM`` as an instance:
HFLM then uses it as is, on its own device and dtype, via its ``forward`` only. lm_eval is
imported lazily, so compresskit itself never depends on it.
"""
from __future__ import annotations

from typing import Any

from ..core.errors import MissingDependencyError

_MISSING = (
    "compresskit.eval.harness needs lm-evaluation-harness: pip install lm_eval "
    "(or pip install 'lm_eval>=0.4,<0.5')"
)


def _import_lm_eval() -> Any:
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(_MISSING) from exc
    return lm_eval


def lm_eval_model(
    model: Any,
    tokenizer: Any,
    *,
    batch_size: int | str = 1,
    max_length: int | None = None,
    **kwargs: Any,
) -> Any:
    """``lm_eval.models.huggingface.HFLM`` wrapping the HF causal LM ``model`` and its ``tokenizer``.

    ``max_length`` defaults to ``model.config.max_position_embeddings`` (HFLM's own guess if the
    config has none). ``batch_size`` may be an int or ``"auto"``. Other ``kwargs`` go to HFLM
    (e.g. ``add_bos_token``, ``prefix_token_id``, ``truncation``); its ``device``, ``dtype`` and
    ``parallelize`` options do not apply to a model instance, which stays where it is. HFLM puts
    the model in eval mode; it does not change its weights. Raises ``ImportError`` without lm_eval.
    """
    lm_eval = _import_lm_eval()
    if max_length is None:
        max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return lm_eval.models.huggingface.HFLM(
        pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, **kwargs
    )


def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: list[Any],
    *,
    batch_size: int | str = 1,
    max_length: int | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict:
    """Run lm-evaluation-harness ``tasks`` on ``model``; returns ``lm_eval.simple_evaluate``'s dict.

    Per-task metrics are under ``result["results"][task]`` (e.g. ``"acc,none"``). ``batch_size``,
    ``max_length`` and ``model_kwargs`` configure the HFLM (see `lm_eval_model`); other ``kwargs``
    go to ``simple_evaluate`` (``num_fewshot``, ``limit``, ``task_manager``, ...). The task data
    must already be available locally: in the Hugging Face datasets cache (e.g. run once online,
    then set ``HF_DATASETS_OFFLINE=1``) or as task configs pointing at local files.
    """
    lm_eval = _import_lm_eval()
    lm = lm_eval_model(model, tokenizer, batch_size=batch_size, max_length=max_length, **(model_kwargs or {}))
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), **kwargs)
