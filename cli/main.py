"""The ``compresskit`` command line. It calls only the Python API (compresskit.api)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.markup import escape

from .render import comparison_table, console, err_console, info_table, progress_bar, report_table, status

app = typer.Typer(help="Compress Hugging Face causal LMs and check them at long context.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _run(fn: Callable[[], Any]) -> Any:
    from compresskit import api

    try:
        return fn()
    except api.USER_ERRORS as e:
        # escaped: a path like "runs/[v2]" is text, not rich markup; soft_wrap: one line even when piped
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(2)


def _csv(value: str, cast: Callable[[str], Any] = str) -> list[Any]:
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list, got {value!r}")


def _evaluate(api: Any, model: Any, tokenizer: Any, label: str, tasks: list[str], lengths: list[int],
              ppl_windows: int, passkey_trials: int, seed: int):
    text = api.heldout_text() if "ppl" in tasks else None
    total = api.eval_units(tokenizer, tasks, lengths, text=text, ppl_windows=ppl_windows,
                           passkey_trials=passkey_trials)
    with progress_bar(f"evaluating {label}", total) as advance:
        return api.evaluate(model, tokenizer, tasks=tasks, lengths=lengths, text=text, ppl_windows=ppl_windows,
                            passkey_trials=passkey_trials, seed=seed, progress=advance)


@app.command()
def quantize(
    model: str = typer.Argument(..., help="embedded model name (smollm2-135m), local directory, or hub id"),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    method: str = typer.Option("rtn", help="quantization method"),
    wbits: int = typer.Option(4, help="weight bits: 2, 3, 4 or 8"),
    group_size: int = typer.Option(128, help="input channels per scale; -1 for per-channel"),
    sym: bool = typer.Option(False, "--sym", help="symmetric quantization (zero point fixed at 2^(bits-1))"),
    ragged_last_group: bool = typer.Option(False, "--ragged-last-group", help="allow a smaller last group when the group size does not divide"),
    embed_bits: int = typer.Option(8, help="token embedding / lm_head storage: 8 (int8 rows) or 16 (float)"),
    skip: list[str] = typer.Option([], help="module name (or suffix) to keep in full precision; repeatable"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate before and after"),
    tasks: str = typer.Option("ppl,passkey", help="evaluation tasks, comma-separated"),
    lengths: str = typer.Option("1024", help="evaluation lengths in tokens, comma-separated"),
    ppl_windows: int = typer.Option(4, help="perplexity windows per length"),
    passkey_trials: int = typer.Option(5, help="passkey trials per length"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Quantize MODEL and save it, with a before/after table (size, perplexity, passkey)."""
    import compresskit
    from compresskit import api

    task_list, length_list = _csv(tasks), _csv(lengths, int)
    config = _run(lambda: compresskit.QuantConfig(method=method, wbits=wbits, group_size=group_size, sym=sym,
                                                 ragged_last_group=ragged_last_group, embed_bits=embed_bits,
                                                 skip=tuple(skip)))
    _run(lambda: api.check_output(output, overwrite))
    with status(f"loading {model}"):
        m, tok = _run(lambda: api.load_model(model))
        before_bytes = api.checkpoint_bytes(model)
    n_layers = _run(lambda: api.count_quantizable(m, config))  # bad layer shapes fail before the evaluation
    before = _run(lambda: _evaluate(api, m, tok, "original", task_list, length_list, ppl_windows,
                                    passkey_trials, seed)) if evaluate else None
    t0 = time.perf_counter()
    with progress_bar(f"quantizing {config.name}", n_layers) as advance:
        _run(lambda: api.quantize(m, config, progress=lambda name: advance(1)))
    quant_seconds = time.perf_counter() - t0
    after = _run(lambda: _evaluate(api, m, tok, "quantized", task_list, length_list, ppl_windows,
                                   passkey_trials, seed)) if evaluate else None
    evaluation = {"before": before, "after": after} if evaluate else None
    with status(f"saving {output}"):
        _run(lambda: api.save(m, tok, output, overwrite=overwrite, evaluation=evaluation))
    after_bytes = api.checkpoint_bytes(output)
    console.print(comparison_table(f"{model} -> {output} ({config.name}, quantized in {quant_seconds:.1f}s)",
                                   before_bytes, after_bytes, before, after))


@app.command("eval")
def eval_cmd(
    path: str = typer.Argument(..., help="model to evaluate (embedded name, directory, or hub id)"),
    tasks: str = typer.Option("ppl,passkey", help="tasks, comma-separated"),
    lengths: str = typer.Option("1024", help="lengths in tokens, comma-separated"),
    ppl_windows: int = typer.Option(8, help="perplexity windows per length"),
    passkey_trials: int = typer.Option(5, help="passkey trials per length"),
    seed: int = typer.Option(0, help="random seed"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the report as JSON here"),
) -> None:
    """Evaluate a model (perplexity on held-out text, passkey retrieval) at several lengths."""
    from compresskit import api

    with status(f"loading {path}"):
        m, tok = _run(lambda: api.load_model(path))
    report = _run(lambda: _evaluate(api, m, tok, path, _csv(tasks), _csv(lengths, int), ppl_windows,
                                    passkey_trials, seed))
    console.print(report_table(f"{path} ({report.seconds:.0f}s)", report))
    if json_out is not None:
        api.write_report(json_out, report)


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


if __name__ == "__main__":
    app()
