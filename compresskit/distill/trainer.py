"""The distillation loop on Hugging Face accelerate.

One `accelerate.Accelerator` owns the student, the optimizer and each stage's dataloader, so the same
code runs as one CPU process or, under ``accelerate launch``, data-parallel / FSDP / DeepSpeed on many
GPUs (each process gets its share of every stage's windows). The teacher is only placed on the
device, in eval mode without gradients. Gradient accumulation, clipping and mixed precision go through
accelerate; the scheduler steps once per optimizer step (registered for checkpointing, not prepared,
so its schedule counts optimizer steps whatever the number of processes).
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import CompresskitError, InputError
from .checkpoint import TrainState, check_resumable, has_checkpoint, load_checkpoint, save_checkpoint
from .config import DistillConfig
from .objective import Objective, core_model

# (seqlen, number of windows, stage index) -> LongTensor [n, seqlen]
SampleFn = Callable[[int, int, int], torch.Tensor]
# (steps done, total steps, info: loss, kl, lr, seqlen, tokens_per_s, ...) per optimizer step
ProgressFn = Callable[[int, int, dict], None]


@dataclass
class DistillResult:
    """What a run did: steps and tokens (all processes), seconds, per-step history; ``interrupted`` when
    it stopped early at ``stop_after`` (the state is in the work directory)."""

    steps: int
    tokens: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int = 0
    interrupted: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tokens_per_second": self.tokens_per_second}


def lr_lambda(config: DistillConfig) -> Callable[[int], float]:
    """Multiplier of ``lr`` at optimizer step ``i`` (0-based): linear warmup, then the schedule down to
    ``min_lr_ratio`` at the last step."""
    warm, total, floor, kind = config.warmup_steps, config.steps, config.min_lr_ratio, config.lr_schedule

    def fn(i: int) -> float:
        if i < warm:
            return (i + 1) / warm
        p = min(1.0, (i - warm) / max(1, total - warm - 1))
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return 1.0 - (1.0 - floor) * p
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    return fn


class _Rows(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ids[i]


def make_accelerator(config: DistillConfig):
    """An Accelerator for this config (``auto`` precision: bf16 on CUDA, fp32 elsewhere, unless
    ``accelerate launch`` chose one)."""
    from accelerate import Accelerator

    mp = config.mixed_precision
    if mp == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):
            mp = None
        else:
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=mp)


def _set_training(student: nn.Module, config: DistillConfig, on: bool) -> None:
    """Train mode with transformers' (non-reentrant) activation checkpointing, or back to eval mode.
    transformers 5.x renamed gradient_checkpointing_* to activation_checkpointing_*; both are served."""
    core = core_model(student)
    new_api = hasattr(core, "activation_checkpointing_enable")
    if on:
        student.train()
        core.config.use_cache = False
        if config.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if new_api:
                core.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                core.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        if config.gradient_checkpointing:
            if new_api and core.is_activation_checkpointing:
                core.activation_checkpointing_disable()
            elif not new_api and core.is_gradient_checkpointing:
                core.gradient_checkpointing_disable()
        core.config.use_cache = True
        student.eval()


def run_distillation(
    student: nn.Module,
    teacher: nn.Module,
    config: DistillConfig,
    samples: SampleFn,
    *,
    trainable: Sequence[nn.Parameter] | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    stop_after: int | None = None,
    accelerator: Any = None,
) -> DistillResult:
    """Train ``student`` (in place) to match ``teacher`` as ``config`` says.

    ``samples(seqlen, n, stage)`` gives each stage's token windows (``[n, seqlen]``; drawn once per
    stage, consumed in order, so the data position is the step count). ``trainable`` lists the
    parameters to train (default: those that require grad, e.g. after peft froze the base), all others
    are frozen. With ``work_dir`` the state is saved every ``checkpoint_every`` steps (and at
    ``stop_after``), and a checkpoint found there is resumed exactly. The student comes back in eval
    mode, unwrapped, with gradient checkpointing off."""
    from accelerate.utils import set_seed

    accelerator = accelerator or make_accelerator(config)
    set_seed(config.seed)
    objective = Objective.build(student, teacher, config)
    teacher.eval().requires_grad_(False)
    teacher.to(accelerator.device)
    if trainable is not None:
        keep = {id(p) for p in trainable}
        for p in student.parameters():
            p.requires_grad_(id(p) in keep)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise InputError("the student has no trainable parameter")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    state = TrainState()
    _set_training(student, config, True)
    model, optimizer = accelerator.prepare(student, optimizer)
    accelerator.register_for_checkpointing(scheduler, state)
    resumed = 0
    if has_checkpoint(work_dir):
        check_resumable(work_dir, config)
        load_checkpoint(accelerator, work_dir)
        resumed = state.step
    try:
        interrupted = _loop(accelerator, model, teacher, objective, optimizer, scheduler, state, config, samples,
                            params, work_dir, progress, stop_after)
    finally:
        accelerator.wait_for_everyone()
        _set_training(student, config, False)
    accelerator.free_memory()
    return DistillResult(state.step, state.tokens, state.seconds, state.history, resumed, interrupted,
                         config.to_dict())


def _loop(accelerator, model, teacher, objective, optimizer, scheduler, state, config, samples, params,
          work_dir, progress, stop_after) -> bool:
    """Run the remaining steps; True when stopped at ``stop_after`` before the end."""
    world, accum = accelerator.num_processes, config.grad_accum
    start_tokens, start_seconds, t0 = state.tokens, state.seconds, time.perf_counter()
    end = 0
    for index, (seqlen, n_steps) in enumerate(config.stages()):
        begin, end = end, end + n_steps
        if state.step >= end:
            continue
        windows = samples(seqlen, n_steps * config.batch_size * accum * world, index)
        if tuple(windows.shape) != (n_steps * config.batch_size * accum * world, seqlen):
            raise ValueError(f"stage {index}: samples gave {tuple(windows.shape)}, expected "
                             f"{(n_steps * config.batch_size * accum * world, seqlen)}")
        loader = accelerator.prepare(torch.utils.data.DataLoader(_Rows(windows), batch_size=config.batch_size))
        skip = (state.step - begin) * accum
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        parts_sum: dict[str, float] = {}
        micro = 0
        for ids in batches:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, parts = objective(model, teacher, ids)
                if not bool(torch.isfinite(loss.detach()).all()):  # before the step: the weights stay good
                    _diverged(accelerator, work_dir, config, state, float(loss.detach().float().sum()))
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            for k, v in parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            if not accelerator.sync_gradients:
                continue
            lr = scheduler.get_last_lr()[0]
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state.step += 1
            state.tokens += micro * ids.numel() * world
            state.seconds = start_seconds + time.perf_counter() - t0
            record = {k: _mean_across(accelerator, v / micro) for k, v in parts_sum.items()}
            record.update(step=state.step, seqlen=seqlen, lr=lr, tokens=state.tokens)
            state.history.append(record)
            parts_sum, micro = {}, 0
            if progress is not None:
                elapsed = state.seconds - start_seconds
                progress(state.step, config.steps, {**record, "tokens_per_s": (state.tokens - start_tokens) / max(
                    elapsed, 1e-9)})
            stop = stop_after is not None and state.step >= stop_after and state.step < config.steps
            if work_dir is not None and (stop or (config.checkpoint_every and state.step % config.checkpoint_every == 0
                                                  and state.step < config.steps)):
                save_checkpoint(accelerator, work_dir, config)
            if stop:
                return True
    return False


class DistillDivergedError(CompresskitError, ArithmeticError):
    """The loss stopped being a finite number: training stops before the bad step."""


def _diverged(accelerator, work_dir: Path | None, config: DistillConfig, state: TrainState, loss: float) -> None:
    """Stop with the student as it was after the last good step, saved as the resumable state if there is
    a work dir (so nothing learned is lost)."""
    kept = ""
    if work_dir is not None and state.step > 0:
        save_checkpoint(accelerator, work_dir, config)
        kept = f"; the state after step {state.step} is saved in {work_dir}"
    raise DistillDivergedError(
        f"distillation diverged at step {state.step + 1} of {config.steps} (loss {loss}){kept}. Lower --lr "
        f"(now {config.lr:g}), keep --max-grad-norm on (now {config.max_grad_norm:g}), or train in float32 "
        "(--mixed-precision no)")


def _mean_across(accelerator, value: float) -> float:
    """The mean of a logged number over processes (the number itself on one process)."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], device=accelerator.device)
    return float(accelerator.reduce(t, reduction="mean").item())


def default_work_dir(output: str | os.PathLike) -> Path:
    """Where a run writing ``output`` keeps its resumable state: ``OUTPUT.distill-state``."""
    output = Path(output)
    return output.with_name(output.name + ".distill-state")
