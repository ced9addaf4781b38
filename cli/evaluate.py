"""``compresskit eval``: a model's scores at several lengths, optionally against a baseline (model or saved
report) with a gate; a table, ``--json`` (report.json's shape) or a report directory. Registered on the
app by cli/main.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from compresskit import api

from .common import (
    EXIT_GATE_FAILED, check_device, device_option, dtype_option, fetch, json_option, longbench_limit_option,
    longbench_option, passkey_trials_option, ppl_windows_option, revision_option, run_user, samples_option,
    tasks_option, with_revision,
)
from .passes import DEFAULT_TASKS, eval_settings, evaluate
from .render import console, err_console, gate_table, report_table, status


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
    settings = run_user(lambda: eval_settings(tasks, lengths, ppl_windows, passkey_trials, samples, seed, longbench,
                                               longbench_limit, cache, kv))
    out = err_console if as_json else console  # with --json, stdout carries only the JSON
    base = None
    if baseline is not None and Path(baseline).suffix == ".json" and Path(baseline).is_file():
        base = run_user(lambda: api.load_report(baseline))
    elif baseline is not None:
        fetch(baseline)
        with status(f"loading {baseline}", out):
            bm, btok = run_user(lambda: api.load_model(baseline, device=device, dtype=dtype))
        base = run_user(lambda: evaluate(bm, btok, baseline, api.eval_settings(settings, kv=None), out))
        del bm
    fetch(path)
    with status(f"loading {path}", out):
        m, tok = run_user(lambda: api.load_model(path, device=device, dtype=dtype))
    report = run_user(lambda: evaluate(m, tok, path, settings, out))
    kv_note = f" with KV cache {settings.kv}" if settings.kv else ""
    comparison = None
    if base is not None:
        comparison = run_user(lambda: api.compare(base, report, max_drop=max_drop, max_ppl_increase=max_ppl_increase))
    if as_json:  # the shape of report.json (--output-dir): a saved copy is a valid --baseline
        meta = {"title": f"Evaluation of {path}{kv_note}", "kv": settings.kv}
        print(json.dumps(api.eval_report_data(report, base, comparison, meta), indent=2))
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
