"""The ``compresskit`` command line. It calls only the Python API (compresskit.api).

``quantize``, ``prune`` and ``distill`` each build a one-pass recipe (the pass, an evaluation against the
parent with its gate, save, push) and run it through the same runner as ``compresskit run``, in memory
(compresskit.api.run_pass); this module turns options into that recipe and prints the result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from compresskit import api

from . import apply as apply_cmd  # apply: any registered pass
from . import kv as kv_cmd  # kv: KV-cache policies side by side
from . import publish  # export, push
from . import recipe  # run: recipes
from .common import (
    EXIT_GATE_FAILED, csv, force_option, json_option, kv_option, longbench_limit_option, longbench_option,
    max_drop_option, max_ppl_increase_option, no_eval_option, passkey_trials_option, ppl_windows_option, print_push,
    check_device, device_option, dtype_option, fetch, push_format_option, private_option, push_to_hub_option, revision_option, run_user,
    samples_option, tasks_option, token_option, with_revision,
)
from .render import (
    comparison_table, console, distill_table, err_console, gate_table, info_table, phase_progress, progress_bar,
    report_table, rows_table, status,
)

app = typer.Typer(help="Compress Hugging Face causal LMs and check them at long context.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _version(value: bool) -> None:
    if value:
        print(f"compresskit {api.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print compresskit's version and exit")) -> None:
    """Compress Hugging Face causal LMs and check them at long context. Exit codes: 0 done, 1 crashed (a bug:
    the traceback is printed), 2 bad input (one line on stderr), 3 an evaluation gate failed (nothing saved)."""

DEFAULT_TASKS = "ppl,passkey,niah_single_1,niah_multikey_1,vt,cwe"
PRUNE_TASKS = "ppl,passkey,niah_single_1"


def _eval_settings(tasks: str, lengths: str, ppl_windows: int, passkey_trials: int, samples: int, seed: int,
                   longbench: Optional[Path], longbench_limit: Optional[int], cache: bool,
                   kv: Optional[str] = None) -> Any:
    return api.eval_settings(tasks=csv(tasks), lengths=csv(lengths, int), ppl_windows=ppl_windows,
                             passkey_trials=passkey_trials, samples=samples, seed=seed,
                             longbench_path=None if longbench is None else str(longbench),
                             longbench_limit=longbench_limit, cache=cache, kv=kv)


def _evaluate(model: Any, tokenizer: Any, label: str, settings: Any, to: Any = console):
    """Evaluate with a progress bar on ``to`` (rows reused from the cache advance it at once)."""
    text = api.heldout_text()
    with progress_bar(f"evaluating {label}", api.eval_units(tokenizer, settings, text), to) as advance:
        return api.evaluate(model, tokenizer, settings, text=text, progress=advance)


def _evaluation(no_eval: bool, settings: Any, max_drop: Optional[float] = None,
                max_ppl_increase: Optional[float] = None, baseline: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The eval pass of a one-pass recipe (None with --no-eval)."""
    if no_eval:
        return None
    return settings.to_dict() | {"max_drop": max_drop, "max_ppl_increase": max_ppl_increase, "baseline": baseline}


def _push(push_to_hub: Optional[str], private: bool, push_format: str = "auto") -> Optional[dict[str, Any]]:
    return None if not push_to_hub else {"repo": push_to_hub, "private": private, "format": push_format}


def _run_pass(model: str, output: Path, kind: str, config: Any, **kw: Any) -> Any:
    """Run the one-pass recipe with a line per phase; a failing gate prints what failed and exits 3."""
    with phase_progress() as on_event:
        return run_user(lambda: api.run_pass(model, output, kind, config, progress=on_event, **kw))


def _gate_failed(e: Any, table: Any) -> None:
    console.print(table)
    err_console.print(f"[bold red]not saved:[/] gate {escape(e.comparison.summary())}; report in "
                      f"{escape(str(e.report))}; rerun with --force to save anyway", soft_wrap=True)
    raise typer.Exit(EXIT_GATE_FAILED)


def _finish(result: Any) -> None:
    """The gate line and the push, after the table."""
    comparison = result.comparison
    if comparison is not None and comparison.gate is not None:
        forced = " (saved with --force)" if not comparison.passed else ""
        console.print(f"gate: {escape(comparison.summary())}{forced}")
    if result.push is not None:
        print_push(result.push)


@app.command()
def quantize(
    model: str = typer.Argument(..., help="embedded model name (smollm2-135m), local directory, or hub id"),
    revision: Optional[str] = revision_option(),
    device: str = device_option(),
    dtype: str = dtype_option(),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    method: str = typer.Option("rtn", help=f"quantization method: {', '.join(api.REGISTRY.methods('quantize'))}"),
    wbits: int = typer.Option(4, help="weight bits: 2, 3, 4 or 8"),
    group_size: int = typer.Option(128, help="input channels per scale; -1 for per-channel"),
    sym: bool = typer.Option(False, "--sym", help="symmetric quantization (zero point fixed at 2^(bits-1))"),
    ragged_last_group: bool = typer.Option(False, "--ragged-last-group", help="allow a smaller last group when the group size does not divide"),
    embed_bits: int = typer.Option(8, help="token embedding / lm_head storage: 8 (int8 rows) or 16 (float)"),
    skip: list[str] = typer.Option([], help="module name (or suffix) to keep in full precision; repeatable"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    tasks: str = tasks_option(DEFAULT_TASKS),
    no_eval: bool = no_eval_option(),
    lengths: str = typer.Option("1024", help="evaluation lengths in tokens, comma-separated"),
    max_drop: Optional[float] = max_drop_option(),
    max_ppl_increase: Optional[float] = max_ppl_increase_option(),
    force: bool = force_option(),
    ppl_windows: int = ppl_windows_option(),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    longbench: Optional[Path] = longbench_option(),
    longbench_limit: Optional[int] = longbench_limit_option(),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the parent's scores computed before"),
    seed: int = typer.Option(0, help="random seed"),
    abits: int = typer.Option(16, help="activation bits (4, 6, 8; 16 = weight-only); simulated, no integer kernel"),
    lwc: bool = typer.Option(True, "--lwc/--no-lwc", help="omniquant: learn weight clipping"),
    let: Optional[bool] = typer.Option(None, "--let/--no-let", help="omniquant: learn equivalent transformation (default: on for W-A, off for weight-only)"),
    epochs: Optional[int] = typer.Option(None, help="omniquant: epochs per block (default: its preset's)"),
    nsamples: Optional[int] = typer.Option(None, help="gptq/omniquant: calibration samples (gptq: 128; omniquant: "
                                           "its preset's)"),
    seqlen: Optional[int] = typer.Option(None, help="gptq/omniquant: calibration sequence length, up to the model's "
                                         "context (gptq: 2048; omniquant: its preset's)"),
    preset: str = typer.Option("auto", help="omniquant: settings for what is not given: auto (published on a GPU, "
                               "cpu otherwise), published (the paper's: hours on a CPU), cpu (within an hour on 2 "
                               "cores for a 135M model: docs/quantization.md)"),
    calib: str = typer.Option("builtin", help="gptq/omniquant: builtin | file:PATH[#field] | generated | hf:NAME[:CONFIG][:SPLIT]"),
    batch_size: int = typer.Option(1, help="gptq/omniquant: samples per forward / optimizer step"),
    lr_lwc: float = typer.Option(1e-2, help="omniquant: LWC learning rate"),
    lr_let: float = typer.Option(5e-3, help="omniquant: LET learning rate"),
    let_alpha: Optional[float] = typer.Option(None, help="omniquant: LET init strength (default 0.5; 0.75 for W4A4)"),
    work_dir: Optional[Path] = typer.Option(None, help="omniquant: per-block state for resuming (default OUTPUT.omniquant-state)"),
    keep_state: bool = typer.Option(False, "--keep-state", help="omniquant: keep the work dir after saving"),
    kv: Optional[str] = kv_option(),
    push_to_hub: Optional[str] = push_to_hub_option(),
    push_format: str = push_format_option(),
    private: bool = private_option(),
    token: Optional[str] = token_option(),
    set_: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE", help="a setting of the method that has no "
                                   "option here (a registered method's own field; VALUE read as YAML); repeatable"),
) -> None:
    """Quantize MODEL, evaluate it against the original at each length, and save it unless the gate
    (--max-drop / --max-ppl-increase) fails."""
    model = with_revision(model, revision)
    check_device(device, dtype)
    # every option goes in; the method's config class keeps the ones it takes (and --set the rest)
    fields = dict(method=method, wbits=wbits, group_size=group_size, sym=sym, abits=abits,
                  ragged_last_group=ragged_last_group, embed_bits=embed_bits, skip=tuple(skip),
                  nsamples=nsamples, seqlen=seqlen, calib=calib, batch_size=batch_size, seed=seed,
                  lwc=lwc, let=let, epochs=epochs, lr_lwc=lr_lwc, lr_let=lr_let, let_alpha=let_alpha, preset=preset)
    config = run_user(lambda: api.config_from_options("quantize", fields, set_))
    if config.abits < 16:
        console.print(f"activations at {config.abits} bits are simulated (fake-quantized per token): "
                      "no integer kernel runs them")
    run_user(lambda: api.check_output(output, overwrite))
    settings = run_user(lambda: _eval_settings(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench,
                                               longbench_limit, cache))
    before_bytes = run_user(lambda: api.checkpoint_bytes(model))
    try:
        result = _run_pass(model, output, "quantize", config, device=device, dtype=dtype, evaluation=_evaluation(no_eval, settings, max_drop,
                                                                                     max_ppl_increase),
                           push=_push(push_to_hub, private, push_format), overwrite=overwrite, force=force, token=token,
                           state_dir=work_dir, keep_state=keep_state, kv=kv)
    except api.GateFailedError as e:
        title = f"{model} -> {output} ({config.name}, quantized in {e.result.pass_seconds.get(1, 0.0):.1f}s)"
        _gate_failed(e, comparison_table(title, before_bytes, None, e.evaluation.before, e.evaluation.child))
    title = f"{model} -> {output} ({config.name}, quantized in {result.pass_seconds[1]:.1f}s)"
    ev = result.evaluation
    console.print(comparison_table(title, before_bytes, api.checkpoint_bytes(output), ev and ev.before,
                                   ev and ev.child))
    _finish(result)


@app.command()
def prune(
    model: str = typer.Argument(..., help="embedded model name (smollm2-135m), local directory, or hub id"),
    revision: Optional[str] = revision_option(),
    device: str = device_option(),
    dtype: str = dtype_option(),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    mlp: float = typer.Option(0.0, help="fraction of MLP channels to remove, in [0, 1)"),
    heads: float = typer.Option(0.0, help="fraction of attention heads to remove (uniform per KV group), in [0, 1)"),
    layers: int = typer.Option(0, help="number of decoder layers to remove (lowest block influence)"),
    kv_groups: bool = typer.Option(False, "--kv-groups", help="--heads removes whole KV groups instead of query heads"),
    protect_retrieval: bool = typer.Option(True, "--protect-retrieval/--no-protect-retrieval",
                                           help="score heads on needle copying and keep the top retrieval heads"),
    protect_fraction: float = typer.Option(0.05, help="share of all heads protected as retrieval heads"),
    retrieval_length: int = typer.Option(2048, help="length of the passkey prompts that score retrieval heads"),
    retrieval_samples: int = typer.Option(8, help="passkey prompts that score retrieval heads"),
    retrieval_score: Optional[str] = typer.Option(
        None, help="attention (mass on the copied needle token) | answer_loss (answer-loss rise when a head "
                   "is removed, head-mask gradients); default: the recipe default"),
    calib: str = typer.Option("builtin", help="builtin | file:PATH[#field] | generated | hf:NAME[:CONFIG][:SPLIT]"),
    nsamples: int = typer.Option(32, help="calibration samples for the activation importance"),
    seqlen: int = typer.Option(2048, help="calibration sequence length (up to the model's context)"),
    seed: int = typer.Option(0, help="random seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    tasks: str = tasks_option(PRUNE_TASKS),
    no_eval: bool = no_eval_option(),
    max_drop: Optional[float] = max_drop_option(),
    max_ppl_increase: Optional[float] = max_ppl_increase_option(),
    force: bool = force_option(),
    lengths: str = typer.Option("1024,2048", help="evaluation lengths in tokens, comma-separated"),
    ppl_windows: int = ppl_windows_option(),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    longbench: Optional[Path] = longbench_option(),
    longbench_limit: Optional[int] = longbench_limit_option(),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the parent's scores computed before"),
    kv: Optional[str] = kv_option(),
    push_to_hub: Optional[str] = push_to_hub_option(),
    push_format: str = push_format_option(),
    private: bool = private_option(),
    token: Optional[str] = token_option(),
) -> None:

    """Remove MLP channels, attention heads and layers from MODEL (keeping its retrieval heads), print a
    before/after table, and save a plain float checkpoint that stock transformers loads."""
    model = with_revision(model, revision)
    check_device(device, dtype)
    config = run_user(lambda: api.make_prune_config(
        mlp=mlp, heads=heads, layers=layers, head_unit="group" if kv_groups else "query",
        protect_retrieval=protect_retrieval, protect_fraction=protect_fraction, retrieval_length=retrieval_length,
        retrieval_samples=retrieval_samples, calib=calib, nsamples=nsamples, seqlen=seqlen, seed=seed,
        **({"retrieval_score": retrieval_score} if retrieval_score else {})))
    run_user(lambda: api.check_output(output, overwrite))
    settings = run_user(lambda: _eval_settings(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench,
                                               longbench_limit, cache))
    before_bytes = run_user(lambda: api.checkpoint_bytes(model))
    try:
        result = _run_pass(model, output, "prune", config, device=device, dtype=dtype, evaluation=_evaluation(no_eval, settings, max_drop,
                                                                                  max_ppl_increase),
                           push=_push(push_to_hub, private, push_format), overwrite=overwrite, force=force, token=token,
                           record_ungated=False, kv=kv)
    except api.GateFailedError as e:
        _gate_failed(e, comparison_table(f"{model} -> {output} ({config.name})", before_bytes, None,
                                         e.evaluation.before, e.evaluation.child))
    record, ev = result.results[1], result.evaluation
    shape = record["plan"]
    title = (f"{model} -> {output} ({config.name}: {shape['keep_layers']} layers, {shape['keep_heads']} heads / "
             f"{shape['keep_groups']} KV, MLP {shape['keep_intermediate']}; pruned in {result.pass_seconds[1]:.1f}s)")
    console.print(comparison_table(title, before_bytes, api.checkpoint_bytes(output), ev and ev.before, ev and ev.child,
                                   params=(record["params_before"], record["params_after"])))
    retrieval = record.get("retrieval")
    if retrieval is not None:
        console.print(f"retrieval heads protected: {len(retrieval['protected'])} (layer, head) "
                      f"{escape(str(retrieval['protected']))}; all kept: {retrieval['protected_kept']}")
    _finish(result)


@app.command()
def distill(
    teacher: str = typer.Option(..., "--teacher", help="the parent model (embedded name, directory, or hub id)"),
    student: str = typer.Option(..., "--student", help="the compressed model: pruned (float) or quantized"),
    device: str = device_option(),
    dtype: str = dtype_option(),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    data: str = typer.Option("builtin", help="builtin | file:PATH[#field] | generated | hf:NAME[:CONFIG][:SPLIT]"),
    retrieval_mix: float = typer.Option(0.0, help="share of the windows (0..1) made retrieval exercises: facts "
                                        "hidden in the text and asked for at its end (keeps passkey)"),
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
        kl_chunk=kl_chunk, data=data, retrieval_mix=retrieval_mix, seed=seed, train_parts=tuple(csv(train_parts)),
        lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha,
        quant_params_only=quant_params_only, train_norms=train_norms, gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=checkpoint_every, mixed_precision=mixed_precision))
    run_user(lambda: api.check_output(output, overwrite))
    main = api.is_main_process()  # under `accelerate launch` every process trains; only the main one reports
    settings = run_user(lambda: _eval_settings(tasks, lengths or str(config.seqlen), ppl_windows, passkey_trials,
                                               samples, seed, longbench, longbench_limit, cache))
    evaluation = _evaluation(no_eval, settings, max_drop, max_ppl_increase, baseline=teacher)
    state = work_dir or output.with_name(output.name + ".distill-state")
    fetch(teacher, student)
    try:
        result = _run_pass(student, output, "distill", config, device=device, dtype=dtype, teacher=teacher, evaluation=evaluation,
                           push=_push(push_to_hub, private, push_format), overwrite=overwrite, force=force, token=token,
                           state_dir=state, keep_state=keep_state, main_process=main, kv=kv)
    except api.GateFailedError as e:
        summary = e.result.results[1]
        _gate_failed(e, distill_table(_distill_title(student, teacher, output, config, summary), e.evaluation.parent,
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
    _finish(result)


def _distill_title(student: str, teacher: str, output: Path, config: Any, summary: dict[str, Any]) -> str:
    return (f"{student} <- {teacher}: {output} ({config.name}; {summary['tokens']} tokens in "
            f"{summary['seconds']:.0f}s, {summary['tokens_per_second']:.0f} tok/s)")


@app.command("eval")
def eval_cmd(
    path: str = typer.Argument(..., help="model to evaluate (embedded name, directory, or hub id)"),
    revision: Optional[str] = revision_option(),
    device: str = device_option(),
    dtype: str = dtype_option(),
    tasks: str = tasks_option(DEFAULT_TASKS, "tasks"),
    lengths: str = typer.Option("1024,2048,4096", help="lengths in tokens, comma-separated"),
    baseline: Optional[str] = typer.Option(None, help="compare with this model (name or directory) or a saved "
                                           "report JSON"),
    max_drop: Optional[float] = typer.Option(None, help="with --baseline: exit with code 3 if any task drops by more "
                                             "than this many points (perplexity: percent)"),
    max_ppl_increase: Optional[float] = typer.Option(None, help="allowed perplexity increase in percent"),
    output_dir: Optional[Path] = typer.Option(None, help="write report.json, report.md and PNG plots here"),
    ppl_windows: int = ppl_windows_option(),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    longbench: Optional[Path] = longbench_option(),
    longbench_limit: Optional[int] = longbench_limit_option(),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse scores computed before for the same weights"),
    seed: int = typer.Option(0, help="random seed"),
    as_json: bool = json_option(),
    kv: Optional[str] = typer.Option(None, "--kv", metavar="POLICY", help="generate under a KV-cache policy: "
                                     "snapkv:0.5, streaming:0.75, tova:0.5, knorm:0.5, random:0.5 (RATIO: share of "
                                     "the prompt's cache dropped), ada-snapkv:0.5 (AdaKV budgets), "
                                     "retrieval-heads:0.5, tova:0.5,interval=256 (also while generating), kivi:4 / "
                                     "kivi:2 (quantized cache), or both: snapkv:0.5+kivi:4; a --baseline keeps the "
                                     "full cache"),
) -> None:
    """Evaluate a model at several lengths (perplexity, passkey, RULER tasks, LongBench), optionally
    against a baseline."""
    path = with_revision(path, revision)
    check_device(device, dtype)
    settings = run_user(lambda: _eval_settings(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench,
                                               longbench_limit, cache, kv))
    out = err_console if as_json else console  # with --json, stdout carries only the JSON
    base = None
    if baseline is not None and Path(baseline).suffix == ".json" and Path(baseline).is_file():
        base = run_user(lambda: api.load_report(baseline))
    elif baseline is not None:
        fetch(baseline)
        with status(f"loading {baseline}", out):
            bm, btok = run_user(lambda: api.load_model(baseline, device=device, dtype=dtype))
        base = run_user(lambda: _evaluate(bm, btok, baseline, api.eval_settings(settings, kv=None), out))
        del bm
    fetch(path)
    with status(f"loading {path}", out):
        m, tok = run_user(lambda: api.load_model(path, device=device, dtype=dtype))
    report = run_user(lambda: _evaluate(m, tok, path, settings, out))
    kv_note = f" with KV cache {settings.kv}" if settings.kv else ""
    comparison = None
    if base is not None:
        comparison = run_user(lambda: api.compare(base, report, max_drop=max_drop, max_ppl_increase=max_ppl_increase))
    if as_json:  # the shape of report.json (--output-dir): a saved copy is a valid --baseline
        data = {"meta": {"title": f"Evaluation of {path}{kv_note}", "kv": settings.kv}}
        data |= ({"model": report.to_dict()} if base is None else
                 {"compressed": report.to_dict(), "parent": base.to_dict(), "comparison": comparison.to_dict()})
        print(json.dumps(data, indent=2))
    elif comparison is not None:
        console.print(gate_table(f"{path}{kv_note} vs {baseline} ({report.seconds:.0f}s)", comparison))
    else:
        console.print(report_table(f"{path}{kv_note} ({report.seconds:.0f}s)", report))
    if output_dir is not None:
        paths = api.write_eval_report(output_dir, report, base, comparison, meta={"title": f"Evaluation of {path}"})
        out.print(f"report: {escape(', '.join(str(p) for p in paths))}")
    if comparison is not None and comparison.gate is not None:
        out.print(f"gate: {escape(comparison.summary())}")
        if not comparison.passed:
            raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
def info(
    path: str = typer.Argument(..., help="checkpoint directory or embedded model name"),
    as_json: bool = json_option(),
) -> None:
    """Print a checkpoint's architecture, sizes and compression recipe."""
    data = run_user(lambda: api.info(path))
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print(info_table(data))


@app.command()
def kernels(as_json: bool = json_option()) -> None:
    """List the kernel backends: what each serves, where automatic choice uses it, whether it runs here."""
    rows = api.kernel_backends()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    cols = ["backend", "devices", "bits", "group sizes", "dtypes", "auto on", "here"]
    console.print(rows_table("kernel backends", [cols] + [[r[c] for c in cols] for r in rows]))


publish.register(app)  # export, push
recipe.register(app)  # run
kv_cmd.register(app)  # kv
app.command()(apply_cmd.apply)  # any registered pass

if __name__ == "__main__":
    app()
