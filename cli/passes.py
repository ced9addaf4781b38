"""What the pass commands (quantize, prune, distill) and ``eval`` share: evaluation settings from options, the
eval pass of a one-pass recipe, running it with a line per phase, the gate's failure and the closing lines."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from compresskit import api

from .common import EXIT_GATE_FAILED, csv, print_push, run_user
from .render import console, err_console, phase_progress, progress_bar

DEFAULT_TASKS = "ppl,passkey,niah_single_1,niah_multikey_1,vt,cwe"
PRUNE_TASKS = "ppl,passkey,niah_single_1"


def eval_settings(tasks: str, lengths: str, ppl_windows: int, passkey_trials: int, samples: int, seed: int,
                   longbench: Optional[Path], longbench_limit: Optional[int], cache: bool,
                   kv: Optional[str] = None) -> Any:
    return api.eval_settings(tasks=csv(tasks), lengths=csv(lengths, int), ppl_windows=ppl_windows,
                             passkey_trials=passkey_trials, samples=samples, seed=seed,
                             longbench_path=None if longbench is None else str(longbench),
                             longbench_limit=longbench_limit, cache=cache, kv=kv)


def evaluate(model: Any, tokenizer: Any, label: str, settings: Any, to: Any = console):
    """Evaluate with a progress bar on ``to`` (rows reused from the cache advance it at once)."""
    text = api.heldout_text()
    with progress_bar(f"evaluating {label}", api.eval_units(tokenizer, settings, text), to) as advance:
        return api.evaluate(model, tokenizer, settings, text=text, progress=advance)


def evaluation_pass(no_eval: bool, settings: Any, max_drop: Optional[float] = None,
                max_ppl_increase: Optional[float] = None, baseline: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The eval pass of a one-pass recipe (None with --no-eval)."""
    if no_eval:
        return None
    return settings.to_dict() | {"max_drop": max_drop, "max_ppl_increase": max_ppl_increase, "baseline": baseline}


def push_spec(push_to_hub: Optional[str], private: bool, push_format: str = "auto") -> Optional[dict[str, Any]]:
    return None if not push_to_hub else {"repo": push_to_hub, "private": private, "format": push_format}


def run_pass(model: str, output: Path, kind: str, config: Any, **kw: Any) -> Any:
    """Run the one-pass recipe with a line per phase; a failing gate prints what failed and exits 3."""
    with phase_progress() as on_event:
        return run_user(lambda: api.run_pass(model, output, kind, config, progress=on_event, **kw))


def gate_failed(e: Any, table: Any) -> None:
    console.print(table)
    err_console.print(f"[bold red]not saved:[/] gate {escape(e.comparison.summary())}; report in "
                      f"{escape(str(e.report))}; rerun with --force to save anyway", soft_wrap=True)
    raise typer.Exit(EXIT_GATE_FAILED)


def finish(result: Any) -> None:
    """The gate line and the push, after the table."""
    comparison = result.comparison
    if comparison is not None and comparison.gate is not None:
        forced = " (saved with --force)" if not comparison.passed else ""
        console.print(f"gate: {escape(comparison.summary())}{forced}")
    if result.push is not None:
        print_push(result.push)
