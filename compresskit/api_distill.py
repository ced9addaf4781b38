"""Distillation in the Python API: composes compresskit.distill (the loop), compresskit.calib (the data)
and compresskit.quant.qat (trainable scales of a packed student). Re-exported as ``api.distill`` and
``compresskit.distill_model`` (``compresskit.distill`` is the package).

    import compresskit
    teacher, tok = compresskit.load_model("smollm2-135m")
    student, _ = compresskit.load_model("smollm2-mlp25")          # a pruned checkpoint
    result = compresskit.distill_model(student, teacher, tokenizer=tok, data="builtin", seqlen=2048, steps=50,
                                       lr=2e-4, work_dir="run.distill-state")
    compresskit.save(student, tok, "smollm2-mlp25-distilled")
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from .core.arch import get_arch
from .core.errors import ConfigError, InputError
from .core.progress import Progress
from .core.record import PassResult, record_of
from .distill import (
    DistillConfig, DistillResult, apply_lora, has_checkpoint, merge_lora, part_parameters, require_peft,
    run_distillation,
)
from .kernels.modules import QuantLinear

_STORAGE = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def make_distill_config(config: DistillConfig | dict | None = None, **overrides: Any) -> DistillConfig:
    """A validated `DistillConfig` from a config, a dict and/or keyword overrides."""
    return DistillConfig.build(config, **overrides)


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds packed compresskit layers."""
    return any(isinstance(m, QuantLinear) for m in model.modules())


def check_distill(student: nn.Module, teacher: nn.Module, config: DistillConfig) -> None:
    """Fail before any work when the pair or the settings cannot run (context, vocabulary, student kind)."""
    get_arch(student), get_arch(teacher)
    for who, m in (("student", student), ("teacher", teacher)):
        context = getattr(m.config, "max_position_embeddings", None)
        if context is not None and config.seqlen > context:
            raise ConfigError(f"--seqlen {config.seqlen} exceeds the {who}'s context ({context} tokens); use "
                              f"--seqlen {context} or less")
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ConfigError(f"the student's vocabulary ({student.config.vocab_size}) differs from the teacher's "
                          f"({teacher.config.vocab_size}); distill from the model the student was made from")
    quantized = is_quantized(student)
    if quantized and not config.quant_params_only:
        raise ConfigError("the student is quantized: its integer weights cannot be trained; pass "
                          "--quant-params-only (quant_params_only=True) to train its quantization scales")
    if config.quant_params_only and not quantized:
        raise ConfigError("--quant-params-only trains the scales of a quantized student, and this student has no "
                          "quantized layer; quantize it first, or drop --quant-params-only")
    if is_quantized(teacher):
        raise ConfigError("the teacher is quantized; distill from the full-precision parent model")


def sampler(tokenizer: Any, data: Any, *, seed: int, model: nn.Module | None = None,
            retrieval_mix: float = 0.0, retrieval_repeat: float = 0.0,
            retrieval_depth: float = 1.0) -> Callable[[int, int, int], torch.Tensor]:
    """``samples(seqlen, n, stage)``: ``n`` windows of ``seqlen`` tokens for each schedule stage.

    ``data`` is a calibration source spec (``builtin``, ``file:PATH``, ``generated``, ``hf:NAME``;
    tokenized with ``tokenizer``), a 1-D LongTensor token stream, or such a callable itself. Each
    stage draws with its own seed, so a stage's windows are the same on every (resumed) run. With
    ``retrieval_mix`` that share of each stage's windows become retrieval exercises (needs the tokenizer),
    ``retrieval_repeat`` of them with a repeated haystack, their facts in the first ``retrieval_depth`` of the text."""
    draw = _plain_sampler(tokenizer, data, seed=seed, model=model)
    if not retrieval_mix:
        return draw
    from .calib import with_retrieval  # the data modules load when data is first needed

    if tokenizer is None:
        raise InputError("retrieval_mix writes its facts and questions as text: distill(..., tokenizer=tok)")
    def mixed(seqlen: int, n: int, stage: int) -> torch.Tensor:
        return with_retrieval(tokenizer, draw(seqlen, n, stage), retrieval_mix, seed=seed + 7919 * (stage + 1),
                              repeat=retrieval_repeat, depth=retrieval_depth)

    return mixed


def _plain_sampler(tokenizer: Any, data: Any, *, seed: int,
                   model: nn.Module | None) -> Callable[[int, int, int], torch.Tensor]:
    from .calib import build_samples, parse_source, sample_windows  # loaded when data is first needed

    if callable(data):
        return data
    if isinstance(data, torch.Tensor):
        stream = data.flatten().long()

        def from_stream(seqlen: int, n: int, stage: int) -> torch.Tensor:
            if stream.numel() < seqlen:
                raise InputError(f"the token stream has {stream.numel()} tokens, fewer than seqlen={seqlen}")
            return sample_windows(stream, n, seqlen, seed=seed + 1009 * stage)

        return from_stream
    if tokenizer is None:
        raise InputError("distillation data from a text source needs the tokenizer: distill(..., tokenizer=tok)")
    source = parse_source(data)

    def from_source(seqlen: int, n: int, stage: int) -> torch.Tensor:
        with warnings.catch_warnings():  # many short-to-long windows overlap by design; say it once in the docs
            warnings.simplefilter("ignore")
            return build_samples(tokenizer, source, n, seqlen, seed=seed + 1009 * stage, model=model)

    return from_source


def _round_to_storage(params: list[nn.Parameter], storage: torch.dtype | None) -> None:
    """Round trained float weights to the checkpoint's storage dtype, so what is evaluated is what is saved."""
    if storage is None:
        return
    with torch.no_grad():
        for p in params:
            if p.is_floating_point() and p.dtype != storage:
                p.copy_(p.to(storage).to(p.dtype))


def _summary(result: DistillResult, config: DistillConfig, teacher: nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
    hist = result.history
    first, last = (hist[0], hist[-1]) if hist else ({}, {})
    return {"recipe": config.to_dict(), "name": config.name,
            "teacher": record_of(teacher).source.name or getattr(teacher.config, "_name_or_path", None),
            "steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 1),
            "tokens_per_second": round(result.tokens_per_second, 1), "resumed_from": result.resumed_from,
            "interrupted": result.interrupted, "loss_first": first.get("loss"), "loss_last": last.get("loss"),
            "kl_first": first.get("kl"), "kl_last": last.get("kl"), **extra}


def distill(
    student: nn.Module,
    teacher: nn.Module,
    config: DistillConfig | dict | None = None,
    *,
    tokenizer: Any = None,
    data: Any = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    stop_after: int | None = None,
    round_to_storage: bool = True,
    **overrides: Any,
) -> DistillResult:
    """Distill ``teacher`` into ``student`` in place; returns the run's `DistillResult`.

    The student is a pruned (or otherwise smaller) float model, trained in all its weights (or those of
    ``train_parts``, e.g. ``("mlp",)``) or, with
    ``lora=True``, through LoRA adapters that are merged at the end; or a quantized model with
    ``quant_params_only=True``, where only its group scales (and with ``train_norms`` its norm
    weights) learn and the integer codes stay as they are. ``data`` defaults to ``config.data`` (see
    `sampler`). ``work_dir`` keeps a resumable state (every ``checkpoint_every`` steps; a rerun with the
    same settings and directory continues exactly); ``stop_after`` stops after that many steps (as an
    interruption would). ``progress(n, message)`` (compresskit.core.progress) is called per optimizer step, the message
    holding the step, loss, KL, sequence length, learning rate and tokens/s. Trained float
    weights are rounded to the student's storage dtype (bf16 for the embedded model) unless
    ``round_to_storage=False``. The run's summary goes into the student's record (`compresskit.record`;
    ``save`` writes it as ``distillation.json`` and into config.json / the quantization manifest).
    """
    config = make_distill_config(config, **overrides)
    check_distill(student, teacher, config)
    on_step = None if progress is None else _step_progress(progress)
    samples = sampler(tokenizer, data if data is not None else config.data, seed=config.seed, model=teacher,
                      retrieval_mix=config.retrieval_mix, retrieval_repeat=config.retrieval_repeat,
                      retrieval_depth=config.retrieval_depth)
    record = record_of(student)
    storage = _STORAGE.get(str(record.source.dtype))
    extra: dict[str, Any] = {}
    if config.quant_params_only:
        from .quant.qat import make_scales_trainable, write_back_scales  # only for packed students

        trainable = make_scales_trainable(student, train_norms=config.train_norms)
        try:
            result = run_distillation(student, teacher, config, samples, trainable=trainable, work_dir=work_dir,
                                      progress=on_step, stop_after=stop_after)
        finally:
            extra["scales"] = write_back_scales(student)
        trained = [p for p in trainable if p.dim() == 1]  # norm weights; the scales were rounded to fp16
    elif config.lora:
        torch.manual_seed(config.seed)  # the adapters' initialisation, reproducibly
        model = apply_lora(student, config)
        try:
            result = run_distillation(model, teacher, config, samples, work_dir=work_dir, progress=on_step,
                                      stop_after=stop_after)
        finally:  # the student is a plain model again whatever happened (the state is in work_dir)
            merged = merge_lora(model)
        if merged is not student:  # peft merges in place and returns the model it wrapped
            raise RuntimeError("peft returned a different model object after merging")
        trained = [p for p in student.parameters() if p.is_floating_point()]
    else:
        trained = part_parameters(student, config.train_parts)
        result = run_distillation(student, teacher, config, samples, trainable=trained, work_dir=work_dir,
                                  progress=on_step, stop_after=stop_after)
    for p in student.parameters():
        p.requires_grad_(False)
    if round_to_storage:
        _round_to_storage(trained, storage)
    summary = _summary(result, config, teacher, extra)
    record.passes.append(PassResult("distill", config.name, config.to_dict(), summary,
                                    {**summary, "history": result.history}))
    if record.manifest is not None:  # a quantized student: the manifest says how its scales were trained
        record.manifest.report = {**(record.manifest.report or {}), "distillation": summary}
    return result


def _step_progress(progress: Progress) -> Callable[[int, int, dict], None]:
    """The training loop's per-step hook (step, total, metrics) as the one progress protocol."""
    seen = [0]

    def on_step(step: int, total: int, info: dict) -> None:
        kl = info.get("kl", float("nan"))
        progress(step - seen[0], f"step {step}/{total}: loss {info['loss']:.4f}, kl {kl:.4f}, "
                                 f"{info['tokens_per_s']:.0f} tok/s, seq {info['seqlen']}, lr {info['lr']:.2e}")
        seen[0] = step

    return on_step


def check_distill_dependencies(config: DistillConfig) -> None:
    """Fail before any work when an optional package the config needs is missing (peft for LoRA)."""
    if config.lora:
        require_peft()


def is_main_process() -> bool:
    """False on the other processes of an ``accelerate launch`` run: only the main one evaluates and saves."""
    from accelerate import PartialState

    return PartialState().is_main_process


def has_distill_checkpoint(work_dir: str | os.PathLike | None) -> bool:
    """Whether ``work_dir`` holds a resumable distillation state."""
    return has_checkpoint(work_dir)


def distill_units(config: DistillConfig) -> int:
    """Progress units `distill` reports: optimizer steps."""
    return config.steps

