"""The ``compresskit`` command line. It calls only the Python API (compresskit.api)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.markup import escape

from .render import (
    comparison_table, console, distill_table, err_console, gate_table, info_table, progress_bar, report_table, rows_table,
    status,
)

from . import publish  # noqa: E402  (export, push, and the --push-to-hub step of the commands that save)
from . import recipe  # noqa: E402  (run: recipes)

app = typer.Typer(help="Compress Hugging Face causal LMs and check them at long context.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


# options every evaluating command (quantize, prune, distill, eval) shares, spelled once
def no_eval_option() -> Any:
    return typer.Option(False, "--no-eval", help="skip the evaluation (and the gate)")


def force_option() -> Any:
    return typer.Option(False, "--force", help="save even if the gate fails (the failure is recorded)")


def ppl_windows_option() -> Any:
    return typer.Option(4, help="perplexity windows per length")


def passkey_trials_option() -> Any:
    return typer.Option(5, help="passkey trials (depths) per length")


def samples_option() -> Any:
    return typer.Option(5, help="prompts per RULER task and length")


def _run(fn: Callable[[], Any]) -> Any:
    from compresskit import api

    try:
        return fn()
    except api.USER_ERRORS as e:
        if os.environ.get("COMPRESSKIT_DEBUG"):
            raise  # the full traceback, for bug reports
        # escaped: a path like "runs/[v2]" is text, not rich markup; soft_wrap: one line even when piped
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2)


def _csv(value: str, cast: Callable[[str], Any] = str) -> list[Any]:
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list, got {value!r}")


def _evaluate(api: Any, model: Any, tokenizer: Any, label: str, opts: dict[str, Any]):
    """Evaluate with a progress bar (rows reused from the cache advance it at once)."""
    text = api.heldout_text()
    total = api.eval_units(tokenizer, opts["tasks"], opts["lengths"], text=text, ppl_windows=opts["ppl_windows"],
                           passkey_trials=opts["passkey_trials"], samples=opts["samples"],
                           longbench_path=opts["longbench_path"], longbench_limit=opts["longbench_limit"])
    with progress_bar(f"evaluating {label}", total) as advance:
        return api.evaluate(model, tokenizer, text=text, progress=advance, **opts)


def _eval_opts(tasks: str, lengths: str, ppl_windows: int, passkey_trials: int, samples: int, seed: int,
               longbench: Optional[Path], longbench_limit: Optional[int], cache: bool) -> dict[str, Any]:
    return dict(tasks=_csv(tasks), lengths=_csv(lengths, int), ppl_windows=ppl_windows,
                passkey_trials=passkey_trials, samples=samples, seed=seed, longbench_path=longbench,
                longbench_limit=longbench_limit, cache=cache)


TASKS_HELP = ("comma-separated: ppl, passkey, niah (= niah_single_1), niah_single_1..3, niah_multikey_1..3, "
              "niah_multivalue, niah_multiquery, vt, cwe, fwe, longbench:<dataset>")
DEFAULT_TASKS = "ppl,passkey,niah_single_1,niah_multikey_1,vt,cwe"


@app.command()
def quantize(
    model: str = typer.Argument(..., help="embedded model name (smollm2-135m), local directory, or hub id"),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    method: str = typer.Option("rtn", help="quantization method: rtn, gptq or omniquant"),
    wbits: int = typer.Option(4, help="weight bits: 2, 3, 4 or 8"),
    group_size: int = typer.Option(128, help="input channels per scale; -1 for per-channel"),
    sym: bool = typer.Option(False, "--sym", help="symmetric quantization (zero point fixed at 2^(bits-1))"),
    ragged_last_group: bool = typer.Option(False, "--ragged-last-group", help="allow a smaller last group when the group size does not divide"),
    embed_bits: int = typer.Option(8, help="token embedding / lm_head storage: 8 (int8 rows) or 16 (float)"),
    skip: list[str] = typer.Option([], help="module name (or suffix) to keep in full precision; repeatable"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    tasks: str = typer.Option(DEFAULT_TASKS, "--eval", help="evaluation tasks before and after: " + TASKS_HELP),
    no_eval: bool = no_eval_option(),
    lengths: str = typer.Option("1024", help="evaluation lengths in tokens, comma-separated"),
    max_drop: Optional[float] = typer.Option(None, help="gate: refuse to save if any task at any length drops by "
                                             "more than this many points (perplexity: percent)"),
    max_ppl_increase: Optional[float] = typer.Option(None, help="gate: allowed perplexity increase in percent "
                                                     "(default: --max-drop)"),
    force: bool = force_option(),
    ppl_windows: int = ppl_windows_option(),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    longbench: Optional[Path] = typer.Option(None, help="directory of LongBench jsonl files (for longbench:<dataset>)"),
    longbench_limit: Optional[int] = typer.Option(None, help="first N LongBench records per dataset"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the parent's scores computed before"),
    seed: int = typer.Option(0, help="random seed"),
    abits: int = typer.Option(16, help="activation bits (4, 6, 8; 16 = weight-only); simulated, no integer kernel"),
    lwc: bool = typer.Option(True, "--lwc/--no-lwc", help="omniquant: learn weight clipping"),
    let: Optional[bool] = typer.Option(None, "--let/--no-let", help="omniquant: learn equivalent transformation (default: on for W-A, off for weight-only)"),
    epochs: Optional[int] = typer.Option(None, help="omniquant: epochs per block (default 20; 40 for W2)"),
    nsamples: int = typer.Option(128, help="gptq/omniquant: calibration samples"),
    seqlen: int = typer.Option(2048, help="gptq/omniquant: calibration sequence length (up to the model's context)"),
    calib: str = typer.Option("builtin", help="gptq/omniquant: builtin | file:PATH[#field] | generated | hf:NAME[:CONFIG][:SPLIT]"),
    batch_size: int = typer.Option(1, help="gptq/omniquant: samples per forward / optimizer step"),
    lr_lwc: float = typer.Option(1e-2, help="omniquant: LWC learning rate"),
    lr_let: float = typer.Option(5e-3, help="omniquant: LET learning rate"),
    let_alpha: Optional[float] = typer.Option(None, help="omniquant: LET init strength (default 0.5; 0.75 for W4A4)"),
    work_dir: Optional[Path] = typer.Option(None, help="omniquant: per-block state for resuming (default OUTPUT.omniquant-state)"),
    keep_state: bool = typer.Option(False, "--keep-state", help="omniquant: keep the work dir after saving"),
    push_to_hub: Optional[str] = publish.push_to_hub_option(),
    private: bool = publish.private_option(),
    token: Optional[str] = publish.token_option(),
) -> None:
    """Quantize MODEL, evaluate it against the original at each length, and save it unless the gate
    (--max-drop / --max-ppl-increase) fails."""
    import shutil

    from compresskit import api

    # every option goes in; the method's config class keeps the ones it takes
    fields = dict(method=method, wbits=wbits, group_size=group_size, sym=sym, abits=abits,
                  ragged_last_group=ragged_last_group, embed_bits=embed_bits, skip=tuple(skip),
                  nsamples=nsamples, seqlen=seqlen, calib=calib, batch_size=batch_size, seed=seed,
                  lwc=lwc, let=let, epochs=epochs,
                  lr_lwc=lr_lwc, lr_let=lr_let, let_alpha=let_alpha)
    if method == "omniquant":
        work_dir = work_dir or output.with_name(output.name + ".omniquant-state")
        if work_dir.exists():
            console.print(f"resuming from {escape(str(work_dir))}")
    else:
        work_dir = None
    config = _run(lambda: api.make_config(fields, for_method=True))
    if config.abits < 16:
        console.print(f"activations at {config.abits} bits are simulated (fake-quantized per token): "
                      "no integer kernel runs them")
    _run(lambda: api.check_output(output, overwrite))
    with status(f"loading {model}"):
        m, tok = _run(lambda: api.load_model(model))
        before_bytes = api.checkpoint_bytes(model)
    units = _run(lambda: api.progress_units(m, config))  # bad layer shapes fail before the evaluation
    opts = _eval_opts(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench, longbench_limit, cache)
    before = None if no_eval else _run(lambda: _evaluate(api, m, tok, "original", opts))
    t0 = time.perf_counter()
    with progress_bar(f"quantizing {config.name}", units) as advance:
        _run(lambda: api.quantize(m, config, tokenizer=tok, work_dir=work_dir,
                                  progress=lambda message, n=1: advance(n, message)))
    quant_seconds = time.perf_counter() - t0
    after = None if no_eval else _run(lambda: _evaluate(api, m, tok, "quantized", opts))
    comparison = None if no_eval else _run(lambda: api.compare(before, after, max_drop=max_drop,
                                                               max_ppl_increase=max_ppl_increase))
    title = f"{model} -> {output} ({config.name}, quantized in {quant_seconds:.1f}s)"
    if comparison is not None and comparison.gate is not None and not comparison.passed and not force:
        rejected = output.with_name(output.name + ".gate-report")
        api.write_eval_report(rejected, after, before, comparison, meta={"title": f"{title}: NOT SAVED"})
        console.print(comparison_table(title, before_bytes, None, before, after))
        err_console.print(f"[bold red]not saved:[/] gate {escape(comparison.summary())}; report in "
                          f"{escape(str(rejected))}; rerun with --force to save anyway", soft_wrap=True)
        raise typer.Exit(3)
    evaluation = None if no_eval else {"before": before, "after": after, "gate": {
        **comparison.to_dict(), "forced": bool(force and not comparison.passed)}}
    with status(f"saving {output}"):
        _run(lambda: api.save(m, tok, output, overwrite=overwrite, evaluation=evaluation))
    if work_dir is not None and not keep_state:
        shutil.rmtree(work_dir, ignore_errors=True)
    if comparison is not None:
        api.write_eval_report(output / "evaluation", after, before, comparison, meta={"title": title})
    console.print(comparison_table(title, before_bytes, api.checkpoint_bytes(output), before, after))
    if comparison is not None and comparison.gate is not None:
        console.print(f"gate: {escape(comparison.summary())}" + (" (saved with --force)" if not comparison.passed else ""))
    publish.finish_saved(output, push_to_hub, private, token)


PRUNE_TASKS = "ppl,passkey,niah_single_1"


@app.command()
def prune(
    model: str = typer.Argument(..., help="embedded model name (smollm2-135m), local directory, or hub id"),
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
    tasks: str = typer.Option(PRUNE_TASKS, "--eval", help="evaluation tasks before and after: " + TASKS_HELP),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip the evaluation"),
    lengths: str = typer.Option("1024,2048", help="evaluation lengths in tokens, comma-separated"),
    ppl_windows: int = ppl_windows_option(),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the parent's scores computed before"),
    push_to_hub: Optional[str] = publish.push_to_hub_option(),
    private: bool = publish.private_option(),
    token: Optional[str] = publish.token_option(),
) -> None:
    """Remove MLP channels, attention heads and layers from MODEL (keeping its retrieval heads), print a
    before/after table, and save a plain float checkpoint that stock transformers loads."""
    from compresskit import api

    config = _run(lambda: api.make_prune_config(
        mlp=mlp, heads=heads, layers=layers, head_unit="group" if kv_groups else "query",
        protect_retrieval=protect_retrieval, protect_fraction=protect_fraction, retrieval_length=retrieval_length,
        retrieval_samples=retrieval_samples, calib=calib, nsamples=nsamples, seqlen=seqlen, seed=seed,
        **({"retrieval_score": retrieval_score} if retrieval_score else {})))
    _run(lambda: api.check_output(output, overwrite))
    with status(f"loading {model}"):
        m, tok = _run(lambda: api.load_model(model))
        before_bytes = api.checkpoint_bytes(model)
    shape = _run(lambda: api.prune_plan(m, config))  # a bad ratio fails before the evaluation
    params_before = api.parameter_count(m)
    opts = _eval_opts(tasks, lengths, ppl_windows, passkey_trials, samples, seed, None, None, cache)
    before = None if no_eval else _run(lambda: _evaluate(api, m, tok, "original", opts))
    t0 = time.perf_counter()
    with progress_bar(f"pruning {config.name}", api.prune_units(m, config)) as advance:
        record = _run(lambda: api.prune(m, config, tokenizer=tok, progress=lambda message, n=1: advance(n, message)))
    prune_seconds = time.perf_counter() - t0
    after = None if no_eval else _run(lambda: _evaluate(api, m, tok, "pruned", opts))
    with status(f"saving {output}"):
        _run(lambda: api.save(m, tok, output, overwrite=overwrite,
                              evaluation=None if no_eval else {"before": before, "after": after}))
    title = (f"{model} -> {output} ({config.name}: {shape['keep_layers']} layers, {shape['keep_heads']} heads / "
             f"{shape['keep_groups']} KV, MLP {shape['keep_intermediate']}; pruned in {prune_seconds:.1f}s)")
    console.print(comparison_table(title, before_bytes, api.checkpoint_bytes(output), before, after,
                                   params=(params_before, record["params_after"])))
    retrieval = record.get("retrieval")
    if retrieval is not None:
        console.print(f"retrieval heads protected: {len(retrieval['protected'])} (layer, head) "
                      f"{escape(str(retrieval['protected']))}; all kept: {retrieval['protected_kept']}")
    publish.finish_saved(output, push_to_hub, private, token)


@app.command()
def distill(
    teacher: str = typer.Option(..., "--teacher", help="the parent model (embedded name, directory, or hub id)"),
    student: str = typer.Option(..., "--student", help="the compressed model: pruned (float) or quantized"),
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
    tasks: str = typer.Option(PRUNE_TASKS, "--eval", help="evaluation tasks (teacher, before, after): " + TASKS_HELP),
    no_eval: bool = no_eval_option(),
    lengths: str = typer.Option("", help="evaluation lengths, comma-separated (default: --seqlen)"),
    max_drop: Optional[float] = typer.Option(None, help="gate: refuse to save if any task at any length is more than "
                                             "this many points below the teacher (perplexity: percent)"),
    max_ppl_increase: Optional[float] = typer.Option(None, help="gate: allowed perplexity increase over the "
                                                     "teacher in percent (default: --max-drop)"),
    force: bool = force_option(),
    ppl_windows: int = ppl_windows_option(),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse the teacher's scores computed before"),
    push_to_hub: Optional[str] = publish.push_to_hub_option(),
    private: bool = publish.private_option(),
    token: Optional[str] = publish.token_option(),
) -> None:
    """Distill TEACHER into a pruned or quantized STUDENT (forward KL on logits at the target length),
    evaluate teacher / student before / after, and save unless the gate (--max-drop) fails.
    Under ``accelerate launch`` the same command trains data-parallel (or FSDP / DeepSpeed)."""
    import shutil

    from compresskit import api

    def floats(s: str) -> list[float]:
        return _csv(s, float)

    config = _run(lambda: api.make_distill_config(
        steps=steps, seqlen=seqlen, seqlen_schedule=tuple(floats(seqlen_schedule)),
        schedule_fractions=tuple(floats(schedule_fractions)), batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup_steps, lr_schedule=lr_schedule, min_lr_ratio=min_lr_ratio,
        max_grad_norm=max_grad_norm, temperature=temperature, kl_weight=kl_weight, ce_weight=ce_weight,
        hidden_weight=hidden_weight, hidden_loss=hidden_loss, hidden_layers=tuple(_csv(hidden_layers, int)),
        kl_chunk=kl_chunk, data=data, retrieval_mix=retrieval_mix, seed=seed, train_parts=tuple(_csv(train_parts)),
        lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha,
        quant_params_only=quant_params_only, train_norms=train_norms, gradient_checkpointing=gradient_checkpointing,
        checkpoint_every=checkpoint_every, mixed_precision=mixed_precision))
    _run(lambda: api.check_output(output, overwrite))
    _run(lambda: api.check_distill_dependencies(config))
    work_dir = work_dir or output.with_name(output.name + ".distill-state")
    with status(f"loading {teacher} and {student}"):
        t_model, tok = _run(lambda: api.load_model(teacher))
        s_model, s_tok = _run(lambda: api.load_model(student))
    _run(lambda: api.check_distill(s_model, t_model, config))
    opts = _eval_opts(tasks, lengths or str(config.seqlen), ppl_windows, passkey_trials, samples, seed, None, None,
                      cache)
    main = api.is_main_process()  # under `accelerate launch` every process trains; only the main one reports
    no_eval = no_eval or not main
    t_report = None if no_eval else _run(lambda: _evaluate(api, t_model, tok, "teacher", opts))
    before = None if no_eval else _run(lambda: _evaluate(api, s_model, s_tok, "student", opts))
    if api.has_distill_checkpoint(work_dir) and main:
        console.print(f"resuming from {escape(str(work_dir))}")
    t0 = time.perf_counter()
    with progress_bar(f"distilling {config.name}", config.steps) as advance:
        seen = [0]

        def on_step(step: int, total: int, info: dict) -> None:
            message = (f"loss {info['loss']:.4f}, {info['tokens_per_s']:.0f} tok/s, seq {info['seqlen']}, "
                       f"lr {info['lr']:.2e}")
            advance(step - seen[0], message)
            seen[0] = step

        result = _run(lambda: api.distill(s_model, t_model, config, tokenizer=tok, work_dir=work_dir,
                                          progress=on_step if main else None))
    seconds = time.perf_counter() - t0
    if not main:
        return  # the main process evaluates, gates and saves the (identical) trained student
    after = None if no_eval else _run(lambda: _evaluate(api, s_model, s_tok, "distilled", opts))
    comparison = None if no_eval else _run(lambda: api.compare(t_report, after, max_drop=max_drop,
                                                               max_ppl_increase=max_ppl_increase))
    summary = s_model.compresskit_distillation
    title = (f"{student} <- {teacher}: {output} ({config.name}; {result.tokens} tokens in {seconds:.0f}s, "
             f"{result.tokens_per_second:.0f} tok/s)")
    table = None if no_eval else distill_table(title, t_report, before, after, (summary["loss_first"], summary["loss_last"]))
    if comparison is not None and comparison.gate is not None and not comparison.passed and not force:
        rejected = output.with_name(output.name + ".gate-report")
        api.write_eval_report(rejected, after, t_report, comparison, meta={"title": f"{title}: NOT SAVED"})
        console.print(table)
        err_console.print(f"[bold red]not saved:[/] gate {escape(comparison.summary())}; report in "
                          f"{escape(str(rejected))}; rerun with --force to save anyway", soft_wrap=True)
        raise typer.Exit(3)
    evaluation = None if no_eval else {"teacher": t_report, "before": before, "after": after, "gate": {
        **comparison.to_dict(), "forced": bool(force and not comparison.passed)}}
    with status(f"saving {output}"):
        _run(lambda: api.save(s_model, s_tok, output, overwrite=overwrite, evaluation=evaluation))
    if not keep_state:
        shutil.rmtree(work_dir, ignore_errors=True)
    if comparison is not None:
        api.write_eval_report(output / "evaluation", after, t_report, comparison, meta={"title": title})
    if table is not None:
        console.print(table)
    else:
        console.print(f"{escape(title)}: loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}")
    if comparison is not None and comparison.gate is not None:
        console.print(f"gate: {escape(comparison.summary())}" + (" (saved with --force)" if not comparison.passed else ""))
    publish.finish_saved(output, push_to_hub, private, token)


@app.command("eval")
def eval_cmd(
    path: str = typer.Argument(..., help="model to evaluate (embedded name, directory, or hub id)"),
    tasks: str = typer.Option(DEFAULT_TASKS, help="tasks: " + TASKS_HELP),
    lengths: str = typer.Option("1024,2048,4096", help="lengths in tokens, comma-separated"),
    baseline: Optional[str] = typer.Option(None, help="compare with this model (name or directory) or a saved "
                                           "report JSON"),
    max_drop: Optional[float] = typer.Option(None, help="with --baseline: exit 1 if any task drops by more than "
                                             "this many points (perplexity: percent)"),
    max_ppl_increase: Optional[float] = typer.Option(None, help="allowed perplexity increase in percent"),
    output_dir: Optional[Path] = typer.Option(None, help="write report.json, report.md and PNG plots here"),
    ppl_windows: int = typer.Option(8, help="perplexity windows per length"),
    passkey_trials: int = passkey_trials_option(),
    samples: int = samples_option(),
    longbench: Optional[Path] = typer.Option(None, help="directory of LongBench jsonl files (for longbench:<dataset>)"),
    longbench_limit: Optional[int] = typer.Option(None, help="first N LongBench records per dataset"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse scores computed before for the same weights"),
    seed: int = typer.Option(0, help="random seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report as JSON here"),
) -> None:
    """Evaluate a model at several lengths (perplexity, passkey, RULER tasks, LongBench), optionally
    against a baseline."""
    from compresskit import api

    opts = _eval_opts(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench, longbench_limit, cache)
    base = None
    if baseline is not None and Path(baseline).suffix == ".json" and Path(baseline).is_file():
        base = _run(lambda: api.load_report(baseline))
    elif baseline is not None:
        with status(f"loading {baseline}"):
            bm, btok = _run(lambda: api.load_model(baseline))
        base = _run(lambda: _evaluate(api, bm, btok, baseline, opts))
        del bm
    with status(f"loading {path}"):
        m, tok = _run(lambda: api.load_model(path))
    report = _run(lambda: _evaluate(api, m, tok, path, opts))
    comparison = None
    if base is not None:
        comparison = _run(lambda: api.compare(base, report, max_drop=max_drop, max_ppl_increase=max_ppl_increase))
        console.print(gate_table(f"{path} vs {baseline} ({report.seconds:.0f}s)", comparison))
    else:
        console.print(report_table(f"{path} ({report.seconds:.0f}s)", report))
    if json_out is not None:
        api.write_report(json_out, report)
    if output_dir is not None:
        paths = api.write_eval_report(output_dir, report, base, comparison, meta={"title": f"Evaluation of {path}"})
        console.print(f"report: {escape(', '.join(str(p) for p in paths))}")
    if comparison is not None and comparison.gate is not None:
        console.print(f"gate: {escape(comparison.summary())}")
        if not comparison.passed:
            raise typer.Exit(1)


@app.command()
def info(
    path: str = typer.Argument(..., help="checkpoint directory or embedded model name"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Print a checkpoint's architecture, sizes and compression recipe."""
    from compresskit import api

    data = _run(lambda: api.info(path))
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print(info_table(data))


@app.command()
def kernels(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List the kernel backends: what each serves, where automatic choice uses it, whether it runs here."""
    from compresskit import api

    rows = api.kernel_backends()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    cols = ["backend", "devices", "bits", "group sizes", "dtypes", "auto on", "here"]
    console.print(rows_table("kernel backends", [cols] + [[r[c] for c in cols] for r in rows]))


publish.register(app)  # export, push
recipe.register(app)  # run

if __name__ == "__main__":
    app()
