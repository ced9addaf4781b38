"""The ``compresskit`` command line. It calls only the Python API (compresskit.api).

``quantize``, ``prune`` and ``distill`` each build a one-pass recipe (the pass, an evaluation against the
parent with its gate, save, push) and run it through the same runner as ``compresskit run``, in memory
(compresskit.api.run_pass); this module (quantize, prune: cli/distill.py has distill) turns options into
that recipe and prints the result; what they share is in cli/passes.py. The other commands live in their
own modules and are registered at the end.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from compresskit import api

from . import apply as apply_cmd  # apply: any registered pass
from . import distill as distill_cmd  # distill
from . import evaluate as evaluate_cmd  # eval
from . import kv as kv_cmd  # kv: KV-cache policies side by side
from . import publish  # export, push
from . import recipe  # run: recipes
from .common import (
    DATA_HELP, check_device, device_option, dtype_option, force_option, json_option, kv_option, longbench_limit_option,
    longbench_option, max_drop_option, max_ppl_increase_option, no_eval_option, passkey_trials_option,
    ppl_windows_option, private_option, push_format_option, push_to_hub_option, revision_option, run_user,
    samples_option, tasks_option, token_option, with_revision,
)
from .passes import DEFAULT_TASKS, PRUNE_TASKS, eval_settings, evaluation_pass, finish, gate_failed, push_spec, run_pass
from .render import comparison_table, console, info_table, rows_table

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
    calib: str = typer.Option("builtin", help="gptq/omniquant: " + DATA_HELP),
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
    settings = run_user(lambda: eval_settings(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench,
                                               longbench_limit, cache))
    before_bytes = run_user(lambda: api.checkpoint_bytes(model))
    try:
        result = run_pass(model, output, "quantize", config, device=device, dtype=dtype, evaluation=evaluation_pass(no_eval, settings, max_drop,
                                                                                     max_ppl_increase),
                           push=push_spec(push_to_hub, private, push_format), overwrite=overwrite, force=force, token=token,
                           state_dir=work_dir, keep_state=keep_state, kv=kv)
    except api.GateFailedError as e:
        title = f"{model} -> {output} ({config.name}, quantized in {e.result.pass_seconds.get(1, 0.0):.1f}s)"
        gate_failed(e, comparison_table(title, before_bytes, None, e.evaluation.before, e.evaluation.child))
    title = f"{model} -> {output} ({config.name}, quantized in {result.pass_seconds[1]:.1f}s)"
    ev = result.evaluation
    console.print(comparison_table(title, before_bytes, api.checkpoint_bytes(output), ev and ev.before,
                                   ev and ev.child))
    finish(result)


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
    calib: str = typer.Option("builtin", help=DATA_HELP),
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
    settings = run_user(lambda: eval_settings(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench,
                                               longbench_limit, cache))
    before_bytes = run_user(lambda: api.checkpoint_bytes(model))
    try:
        result = run_pass(model, output, "prune", config, device=device, dtype=dtype, evaluation=evaluation_pass(no_eval, settings, max_drop,
                                                                                  max_ppl_increase),
                           push=push_spec(push_to_hub, private, push_format), overwrite=overwrite, force=force, token=token,
                           record_ungated=False, kv=kv)
    except api.GateFailedError as e:
        gate_failed(e, comparison_table(f"{model} -> {output} ({config.name})", before_bytes, None,
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
    finish(result)


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
app.command()(distill_cmd.distill)
app.command("eval")(evaluate_cmd.eval_cmd)
app.command()(apply_cmd.apply)  # any registered pass

if __name__ == "__main__":
    app()
