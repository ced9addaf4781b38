"""``compresskit distill``: a pruned or quantized student learns from its parent (compresskit.api.run_pass with
a distill pass), evaluated teacher / before / after and gated like the other passes. Registered on the app
by cli/main.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from compresskit import api

from .common import (
    DATA_HELP, csv, device_option, dtype_option, fetch, force_option, kv_option, longbench_limit_option,
    longbench_option, max_drop_option, max_ppl_increase_option, no_eval_option, passkey_trials_option,
    ppl_windows_option, private_option, push_format_option, push_to_hub_option, run_user, samples_option,
    tasks_option, token_option, check_device,
)
from .passes import PRUNE_TASKS, eval_settings, evaluation_pass, finish, gate_failed, push_spec, run_pass
from .render import console, distill_table


def distill(
    teacher: str = typer.Option(..., "--teacher", help="the parent model (embedded name, directory, or hub id)"),
    student: str = typer.Option(..., "--student", help="the compressed model: pruned (float) or quantized"),
    device: str = device_option(),
    dtype: str = dtype_option(),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    data: str = typer.Option("builtin", help=DATA_HELP),
    retrieval_mix: float = typer.Option(0.0, help="share of the windows (0..1) made retrieval exercises: facts "
                                        "hidden in the text and asked for at its end (keeps passkey)"),
    retrieval_repeat: float = typer.Option(0.0, help="share of those exercises whose haystack is one short "
                                           "passage repeated (passkey-style context)"),
    retrieval_depth: float = typer.Option(1.0, help="hide the exercises' facts in this first share of the text "
                                          "(0..1; e.g. 0.5: only more than half a window from the questions)"),
    seqlen: int = typer.Option(4096, help="the (final, longest) sequence length, up to the models' context"),
    seqlen_schedule: str = typer.Option("", help="short-to-long stages ending at --seqlen: tokens (1024,2048,4096) "
                                        "or fractions (0.25,0.5,1)"),
    schedule_fractions: str = typer.Option("", help="share of the steps per stage (default equal), e.g. 0.5,0.3,0.2"),
    steps: int = typer.Option(100, help="optimizer steps"),
    batch_size: int = typer.Option(1, help="sequences per forward"),
    grad_accum: int = typer.Option(1, help="forwards accumulated per optimizer step"),
    lr: float = typer.Option(1e-4, help="AdamW learning rate (peak)"),
    weight_decay: float = typer.Option(0.0, help="AdamW weight decay"),
    warmup_steps: int = typer.Option(0, help="linear warmup steps"),
    lr_schedule: str = typer.Option("cosine", help="cosine | linear | constant after warmup"),
    min_lr_ratio: float = typer.Option(0.1, help="final learning rate as a fraction of --lr"),
    max_grad_norm: float = typer.Option(1.0, help="gradient clipping norm (0: off)"),
    temperature: float = typer.Option(1.0, help="KL temperature (the loss is scaled by T^2)"),
    kl_weight: float = typer.Option(1.0, help="weight of the forward KL on logits"),
    ce_weight: float = typer.Option(0.0, help="weight of the student's next-token cross-entropy"),
    hidden_weight: float = typer.Option(0.0, help="weight of the hidden-state loss on mapped layers"),
    hidden_loss: str = typer.Option("cosine", help="hidden-state loss: cosine | mse"),
    hidden_layers: str = typer.Option("", help="student layers for the hidden-state loss (default all)"),
    kl_chunk: int = typer.Option(1024, help="positions per lm_head/KL chunk (0: the whole sequence)"),
    train_parts: str = typer.Option("", help="train only these parts of a float student: attention, mlp, norms, "
                                    "embed, lm_head (e.g. mlp: an MLP-pruned student keeps its attention)"),
    lora: bool = typer.Option(False, "--lora", help="train LoRA adapters (peft), merged at the end"),
    lora_rank: int = typer.Option(16, help="LoRA rank"),
    lora_alpha: float = typer.Option(32.0, help="LoRA alpha"),
    quant_params_only: bool = typer.Option(False, "--quant-params-only", help="quantized student: train only the "
                                           "group scales; the integer codes stay bit for bit"),
    train_norms: bool = typer.Option(False, "--train-norms", help="with --quant-params-only: also train the norms"),
    gradient_checkpointing: bool = typer.Option(True, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                help="recompute layer activations in the backward pass (long sequences)"),
    checkpoint_every: int = typer.Option(0, help="save the resumable state every N steps (0: off)"),
    work_dir: Optional[Path] = typer.Option(None, help="resumable state (default OUTPUT.distill-state); a rerun "
                                            "with the same settings resumes from it"),
    keep_state: bool = typer.Option(False, "--keep-state", help="keep the work dir after saving"),
    mixed_precision: str = typer.Option("auto", help="auto (bf16 on CUDA, fp32 on CPU) | no | bf16 | fp16"),
    seed: int = typer.Option(0, help="random seed (data windows and evaluation)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    tasks: str = tasks_option(PRUNE_TASKS, "evaluation tasks (teacher, before, after)"),
    no_eval: bool = no_eval_option(),
    lengths: str = typer.Option("", help="evaluation lengths, comma-separated (default: --seqlen)"),
    max_drop: Optional[float] = max_drop_option("is below the teacher by"),
    max_ppl_increase: Optional[float] = max_ppl_increase_option(),
    force: bool = force_option(),
    ppl_windows: int = ppl_windows_option(),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    longbench: Optional[Path] = longbench_option(),
    longbench_limit: Optional[int] = longbench_limit_option(),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the teacher's scores computed before"),
    kv: Optional[str] = kv_option(),
    push_to_hub: Optional[str] = push_to_hub_option(),
    push_format: str = push_format_option(),
    private: bool = private_option(),
    token: Optional[str] = token_option(),
) -> None:

    """Distill TEACHER into a pruned or quantized STUDENT (forward KL on logits at the target length),
    evaluate teacher / student before / after, and save unless the gate (--max-drop) fails.
    Under ``accelerate launch`` the same command trains data-parallel (or FSDP / DeepSpeed)."""
    check_device(device, dtype)

    def floats(s: str) -> list[float]:
        return csv(s, float)

    config = run_user(lambda: api.make_distill_config(
        steps=steps, seqlen=seqlen, seqlen_schedule=tuple(floats(seqlen_schedule)),
        schedule_fractions=tuple(floats(schedule_fractions)), batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, lr_schedule=lr_schedule, min_lr_ratio=min_lr_ratio,
        max_grad_norm=max_grad_norm, temperature=temperature, kl_weight=kl_weight, ce_weight=ce_weight,
        hidden_weight=hidden_weight, hidden_loss=hidden_loss, hidden_layers=tuple(csv(hidden_layers, int)),
        kl_chunk=kl_chunk, data=data, retrieval_mix=retrieval_mix, retrieval_repeat=retrieval_repeat,
        retrieval_depth=retrieval_depth, seed=seed, train_parts=tuple(csv(train_parts)),
        lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha,
        quant_params_only=quant_params_only, train_norms=train_norms, gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=checkpoint_every, mixed_precision=mixed_precision))
    run_user(lambda: api.check_output(output, overwrite))
    main = api.is_main_process()  # under `accelerate launch` every process trains; only the main one reports
    settings = run_user(lambda: eval_settings(tasks, lengths or str(config.seqlen), ppl_windows, passkey_trials,
                                               samples, seed, longbench, longbench_limit, cache))
    evaluation = evaluation_pass(no_eval, settings, max_drop, max_ppl_increase, baseline=teacher)
    state = work_dir or output.with_name(output.name + ".distill-state")
    fetch(teacher, student)
    try:
        result = run_pass(student, output, "distill", config, device=device, dtype=dtype, teacher=teacher, evaluation=evaluation,
                           push=push_spec(push_to_hub, private, push_format), overwrite=overwrite, force=force, token=token,
                           state_dir=state, keep_state=keep_state, main_process=main, kv=kv)
    except api.GateFailedError as e:
        summary = e.result.results[1]
        gate_failed(e, distill_table(_distill_title(student, teacher, output, config, summary), e.evaluation.parent,
                                      e.evaluation.before, e.evaluation.child,
                                      (summary["loss_first"], summary["loss_last"])))
    if not main:
        return  # the main process evaluates, gates and saves the (identical) trained student
    summary, ev = result.results[1], result.evaluation
    title = _distill_title(student, teacher, output, config, summary)
    if ev is not None:
        console.print(distill_table(title, ev.parent, ev.before, ev.child, (summary["loss_first"], summary["loss_last"])))
    else:
        console.print(f"{escape(title)}: loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}")
    finish(result)


def _distill_title(student: str, teacher: str, output: Path, config: Any, summary: dict[str, Any]) -> str:
    return (f"{student} <- {teacher}: {output} ({config.name}; {summary['tokens']} tokens in "
            f"{summary['seconds']:.0f}s, {summary['tokens_per_second']:.0f} tok/s)")
