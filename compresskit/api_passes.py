"""The built-in passes (rtn, gptq, omniquant, prune, distill), registered in compresskit.core.registry, and
`apply`, which runs any registered pass on a model in memory.

Each pass is a `PassSpec`: its config class, its checks, its progress units and its run function, which
gets a `PassContext` (the model, tokenizer, data, state directory, teacher and one progress callback).
The Python API (`quantize`, `apply`), the command line and the recipe runner all go through the registry.

Adding a pass (docs/design.md has the worked example)::

    @dataclass(frozen=True)
    class ScaleConfig(JsonConfig):
        factor: float = 1.0
        ...  # to_dict / from_dict, checks in __post_init__

    def run_scale(ctx: PassContext, config: ScaleConfig) -> dict:
        ...  # change ctx.model in place
        return {"factor": config.factor}

    register(PassSpec("scale", "scale", ScaleConfig, run_scale, verb="scaling"))
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .api_distill import check_distill, check_distill_dependencies, distill
from .api_kv import kv_memory, resolve_kv
from .api_models import calibration_ids
from .api_prune import prune, prune_plan, prune_units
from .core.arch import get_arch
from .core.config import CalibratedConfig, QuantConfig
from .core.errors import ConfigError, InputError
from .core.progress import Progress, no_progress
from .core.record import PassResult, record_of
from .core.registry import REGISTRY, PassSpec, register
from .distill import DistillConfig
from .distill.config import RESUME_NEUTRAL
from .kvcache import KVPolicy, attach_kv, check_model
from .prune import PruneConfig
from .quant import plan_linears, quantize_rtn
from .quant.gptq import GPTQConfig, quantize_gptq
from .quant.omniquant import OmniQuantConfig, quantize_omniquant
from .recipe import yaml_value

@dataclass
class PassContext:
    """What a pass's run function gets besides its config.

    ``model`` (changed in place) and its ``tokenizer``; ``data``: calibration / training data given through
    the API (token ids or a source spec; None: the config's own source); ``state_dir``: where a resumable
    pass keeps its progress (None: not kept); ``teacher`` / ``teacher_tokenizer`` for passes that learn
    from one; ``progress(n, message)``; ``note(message)`` for one-line remarks (e.g. resuming);
    ``options``: pass-specific extras from the API caller (e.g. ``stop_after`` for distill)."""

    model: nn.Module
    tokenizer: Any = None
    data: Any = None
    state_dir: Path | None = None
    teacher: nn.Module | None = None
    teacher_tokenizer: Any = None
    progress: Progress = no_progress
    note: Callable[[str], None] = lambda message: None
    options: dict[str, Any] = field(default_factory=dict)
    reporting: bool = True  # False on the other ranks of a distributed run: no progress display there


# --- quantization: rtn, gptq, omniquant ------------------------------------------------------------------

def count_quantizable(model: nn.Module, config: QuantConfig) -> int:
    """How many linears ``config`` would quantize (raises on a bad setting, changing nothing)."""
    return len(plan_linears(model, config)[0])


def _check_quantize(ctx: PassContext, config: QuantConfig) -> None:
    count_quantizable(ctx.model, config)


def _calibration(ctx: PassContext, config: CalibratedConfig):
    return calibration_ids(ctx.model, ctx.tokenizer, config, ctx.data)


def _quantized(ctx: PassContext, manifest: Any) -> dict[str, Any]:
    summary = {"name": manifest.recipe.name, "quantized_linears": len(manifest.linears)}
    record_of(ctx.model).passes.append(PassResult("quantize", manifest.recipe.name, manifest.recipe.to_dict(), summary,
                                                  manifest))
    return summary


def run_rtn(ctx: PassContext, config: QuantConfig) -> dict[str, Any]:
    return _quantized(ctx, quantize_rtn(ctx.model, config, progress=ctx.progress))


def run_gptq(ctx: PassContext, config: GPTQConfig) -> dict[str, Any]:
    ids = _calibration(ctx, config)
    return _quantized(ctx, quantize_gptq(ctx.model, config, ids, progress=ctx.progress))


def _resolved(ctx: PassContext, config: OmniQuantConfig) -> OmniQuantConfig:
    """``config`` with its preset decided for the model's device (the published settings on a GPU)."""
    return config.resolved(next(ctx.model.parameters()).device.type,
                           getattr(ctx.model.config, "max_position_embeddings", None))


def run_omniquant(ctx: PassContext, config: OmniQuantConfig) -> dict[str, Any]:
    if not config.is_resolved:
        config = _resolved(ctx, config)
        hint = "; preset=published (--preset published) runs the paper's settings" if config.preset == "cpu" else ""
        ctx.note(f"omniquant: the {config.preset} preset for a model on {next(ctx.model.parameters()).device.type}: "
                 f"{config.settings_line()}{hint}")
    ids = _calibration(ctx, config)
    if config.retrieval_mix:
        ids = _with_retrieval(ctx, ids, config)
    state = None if ctx.state_dir is None else str(ctx.state_dir)
    # the end-to-end stage learns from the parent: the teacher given, else the model before quantization
    stages = _finetune_stages(ctx, config)
    parent = (ctx.teacher or copy.deepcopy(ctx.model)) if stages else None
    summary = _quantized(ctx, quantize_omniquant(ctx.model, config, ids, work_dir=state, progress=ctx.progress))
    for stage in stages:  # recorded by distill itself: a distill pass in the record, report.distillation
        distill(ctx.model, parent, stage, tokenizer=ctx.tokenizer, progress=ctx.progress)
    if len(stages) == 2:
        _fold_long_stage(record_of(ctx.model))
    return summary


def _fold_long_stage(record: Any) -> None:
    """One distill pass for OmniQuant's two stages: the long one's summary and history go under ``long_stage``
    of the end-to-end one's (config.json, distillation.json); the manifest's report holds them as
    ``distillation`` and ``long_distillation``."""
    long, first = record.passes.pop(), record.passes[-1]
    first.summary["long_stage"] = long.summary
    first.detail = {**first.detail, "long_stage": long.detail}
    # the long stage's distill wrote its summary over the end-to-end one's: put that back beside it
    record.manifest.report = {**record.manifest.report, "distillation": first.summary,
                              "long_distillation": long.summary}


def _with_retrieval(ctx: PassContext, ids: torch.Tensor, config: OmniQuantConfig) -> torch.Tensor:
    """The block stage's windows with ``config.retrieval_mix`` of them made retrieval exercises."""
    from .calib import with_retrieval  # the data modules load when data is first needed

    if ctx.tokenizer is None:
        raise InputError("retrieval_mix writes its facts and questions as text: quantize(..., tokenizer=tok), "
                         "or retrieval_mix=0")
    return with_retrieval(ctx.tokenizer, ids, config.retrieval_mix, seed=config.seed, repeat=config.retrieval_repeat)


def finetune_config(config: OmniQuantConfig, context: int = 2048) -> DistillConfig | None:
    """The distillation that OmniQuant's end-to-end stage runs (None: ``finetune_steps=0``): group scales only,
    windows of half then all of ``finetune_seqlen`` tokens (at most the model's ``context``) of the calibration
    source with retrieval exercises mixed in (bench/results/distill.md's best W3 setting)."""
    steps = config.finetune_steps
    if not steps:
        return None
    return DistillConfig(steps=steps, lr=config.finetune_lr, warmup_steps=min(2, steps // 4),
                         seqlen=min(config.finetune_seqlen, context),
                         seqlen_schedule=(0.5, 1.0) if steps >= 2 else (), quant_params_only=True,
                         retrieval_mix=config.finetune_retrieval_mix,
                         retrieval_repeat=config.finetune_retrieval_repeat if config.finetune_retrieval_mix else 0.0,
                         data=config.calib, seed=config.seed)


def long_finetune_config(config: OmniQuantConfig, context: int = 2048) -> DistillConfig | None:
    """The long-window stage after it (None when ``finetune_long_steps=0`` or the model's ``context`` is no longer
    than the end-to-end stage's windows): every window of ``finetune_long_seqlen`` tokens a retrieval exercise
    with its facts where the shorter windows cannot put them, more than ``finetune_seqlen`` tokens before the
    questions; a third of ``finetune_lr`` (the scales are trained already), its own draws (``seed + 1``)."""
    short, long = min(config.finetune_seqlen, context), min(config.finetune_long_seqlen, context)
    steps = config.finetune_long_steps
    if not steps or long <= short:
        return None
    return DistillConfig(steps=steps, lr=config.finetune_lr / 3, warmup_steps=min(1, steps // 4), seqlen=long,
                         quant_params_only=True, retrieval_mix=1.0, retrieval_repeat=config.finetune_retrieval_repeat,
                         retrieval_depth=1 - short / long, data=config.calib, seed=config.seed + 1)


def _finetune_stages(ctx: PassContext, config: OmniQuantConfig) -> list[DistillConfig]:
    """The distillations that run after the blocks for this model's context: end-to-end, then long-window."""
    context = getattr(ctx.model.config, "max_position_embeddings", None) or 2048
    return [c for c in (finetune_config(config, context), long_finetune_config(config, context)) if c is not None]


def _omniquant_units(ctx: PassContext, config: OmniQuantConfig) -> int:
    count_quantizable(ctx.model, config)  # validate first
    config = _resolved(ctx, config)
    return len(get_arch(ctx.model).blocks_of(ctx.model)) * config.epochs + sum(
        c.steps for c in _finetune_stages(ctx, config))


# --- pruning and distillation -----------------------------------------------------------------------------

def run_prune(ctx: PassContext, config: PruneConfig) -> dict[str, Any]:
    return prune(ctx.model, config, tokenizer=ctx.tokenizer, calib=ctx.data, progress=ctx.progress)


def _check_distill(ctx: PassContext, config: DistillConfig) -> None:
    check_distill_dependencies(config)
    if ctx.teacher is not None:
        check_distill(ctx.model, ctx.teacher, config)


def run_distill(ctx: PassContext, config: DistillConfig) -> dict[str, Any]:
    result = distill(ctx.model, ctx.teacher, config, tokenizer=ctx.teacher_tokenizer or ctx.tokenizer, data=ctx.data,
                     work_dir=ctx.state_dir, progress=ctx.progress if ctx.reporting else None, **ctx.options)
    return {**record_of(ctx.model).last("distill").summary, "result": result}


register(PassSpec("quantize", "rtn", QuantConfig, run_rtn, units=lambda ctx, c: count_quantizable(ctx.model, c),
                  check=_check_quantize, verb="quantizing", done="quantized",
                  description="round to nearest, per group or channel"))
register(PassSpec("quantize", "gptq", GPTQConfig, run_gptq, units=lambda ctx, c: count_quantizable(ctx.model, c),
                  check=_check_quantize, verb="quantizing", done="quantized",
                  description="GPTQ: second-order error compensation on calibration data"))
register(PassSpec("quantize", "omniquant", OmniQuantConfig, run_omniquant, units=_omniquant_units,
                  check=_check_quantize, resumable=True, verb="quantizing", done="quantized",
                  description="OmniQuant: learnable clipping and equivalent transformation, block by block"))
register(PassSpec("prune", "prune", PruneConfig, run_prune, units=lambda ctx, c: prune_units(ctx.model, c),
                  check=lambda ctx, c: prune_plan(ctx.model, c), verb="pruning", done="pruned",
                  description="structured pruning of MLP channels, attention heads and layers"))
register(PassSpec("distill", "distill", DistillConfig, run_distill, units=lambda ctx, c: c.steps,
                  check=_check_distill, resumable=True, needs_teacher=True, verb="distilling", done="distilled",
                  key_neutral=tuple(RESUME_NEUTRAL),
                  description="distillation from the parent model (forward KL on logits)"))


# --- the KV-cache policy: no weight changes, generation compresses its cache ------------------------------

def run_kv(ctx: PassContext, config: KVPolicy) -> dict[str, Any]:
    config = resolve_kv(ctx.model, ctx.tokenizer, config)  # retrieval-heads: the heads are scored and saved
    attach_kv(ctx.model, config)
    summary = {"name": config.name, "policy": config.to_dict(), "memory": kv_memory(ctx.model, config)}
    record_of(ctx.model).passes.append(PassResult("kv", config.name, config.to_dict(), summary))
    ctx.progress(1, config.name)
    return summary


register(PassSpec("kv", "kv", KVPolicy, run_kv, check=lambda ctx, c: check_model(ctx.model), changes_weights=False,
                  verb="setting the KV cache", done="compressed (with its KV policy)",
                  description="a KV-cache policy: eviction at prefill and/or a quantized cache (docs/kvcache.md)"))


# --- running one pass in memory -------------------------------------------------------------------------

def make_config(kind: str, config: Any = None, **overrides: Any) -> Any:
    """A validated config of pass ``kind`` from a config object, a dict and/or keyword overrides (for a
    kind with several methods, ``method`` picks the config class)."""
    if config is not None and not isinstance(config, dict):
        if not overrides:
            return config
        config = config.to_dict()
    d = {**(config or {}), **overrides}
    return REGISTRY.spec_for(kind, d).config.from_dict(d)


def apply(model: nn.Module, kind: str, config: Any = None, *, tokenizer: Any = None, data: Any = None,
          work_dir: str | os.PathLike | None = None, teacher: nn.Module | None = None, teacher_tokenizer: Any = None,
          progress: Progress | None = None, options: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the registered pass ``kind`` (``"quantize"``, ``"prune"``, ``"distill"``, or one you registered)
    on ``model`` in place; returns the pass's summary. ``config`` is its config, a dict of fields, or None
    (fields from ``overrides``). ``data`` overrides the config's calibration / training source; ``work_dir``
    keeps a resumable pass's state; ``progress(n, message)`` is called as units finish."""
    config = make_config(kind, config, **overrides)
    spec = REGISTRY.spec_for(kind, config)
    ctx = PassContext(model, tokenizer, data, None if work_dir is None else Path(work_dir), teacher,
                      teacher_tokenizer, progress or no_progress, options=dict(options or {}))
    if spec.needs_teacher and teacher is None:
        raise InputError(f"the {kind} pass learns from a teacher: apply(..., teacher=parent_model)")
    if spec.check is not None:
        spec.check(ctx, config)
    return spec.run(ctx, config)


def config_from_options(kind: str, values: dict[str, Any], settings: list[str] | None = None) -> Any:
    """The config of pass ``kind`` from a front end's options: ``values`` holds every option the command
    has (the selected method's config class keeps the fields it takes), ``settings`` are ``FIELD=VALUE``
    strings (VALUE read as YAML) for fields that have no option of their own, e.g. a registered method's."""
    spec = REGISTRY.spec_for(kind, values)
    names = set(spec.field_names)
    extra: dict[str, Any] = {}
    for item in settings or []:
        name, sep, text = str(item).partition("=")
        if not sep or not name.strip():
            raise InputError(f"--set {item}: expected FIELD=VALUE, e.g. --set damp=0.05")
        if name.strip() not in names:
            raise ConfigError(f"--set {item}: {spec.method} has no field {name.strip()!r}; its fields: "
                              f"{', '.join(sorted(names - {'version', 'extra'}))}")
        extra[name.strip()] = yaml_value(text)
    # an option left at None takes the config's default (for omniquant: its preset's value)
    return make_config(kind, {k: v for k, v in values.items() if k in names and v is not None} | extra)


def pass_units(model: nn.Module, kind: str, config: Any) -> int:
    """How many progress units pass ``kind`` reports on ``model`` with ``config``."""
    spec = REGISTRY.spec_for(kind, config)
    return spec.units(PassContext(model), config)


def quantize(
    model: nn.Module,
    config: QuantConfig | dict | None = None,
    *,
    calib: Any = None,
    tokenizer: Any = None,
    work_dir: str | os.PathLike | None = None,
    progress: Callable[..., None] | None = None,
    **overrides: Any,
):
    """Quantize ``model`` in place; returns the manifest (also in the model's record, `compresskit.record`).

    ``config`` is a `QuantConfig`, `GPTQConfig` or `OmniQuantConfig` (or any registered method's config), a
    dict of fields (``method`` picks the class), or None (fields from ``overrides``). RTN needs no data.
    GPTQ and OmniQuant calibrate on ``calib``: a ``[nsamples, seqlen]`` LongTensor of token ids, a source
    spec (``"builtin"``, ``"file:PATH"``, ``"generated"``, ``"hf:NAME"``; default ``config.calib``), a list of
    strings or a ``datasets.Dataset``, tokenized with ``tokenizer``. ``work_dir`` keeps per-block checkpoints so an interrupted OmniQuant run
    resumes. ``progress(n, message)`` (compresskit.core.progress) is called per linear (RTN, GPTQ) or per
    block epoch (OmniQuant).
    """
    config = make_config("quantize", config if config is not None else {"method": "rtn"}, **overrides)
    apply(model, "quantize", config, tokenizer=tokenizer, data=calib, work_dir=work_dir, progress=progress)
    return record_of(model).manifest


def progress_units(model: nn.Module, config: QuantConfig) -> int:
    """How many progress units `quantize` reports: linears (RTN, GPTQ) or blocks x epochs (OmniQuant)."""
    return pass_units(model, "quantize", config)
