"""Terminal output for the CLI: progress bars, tables, and error messages."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


LOG_INTERVAL_S = 60.0  # off a terminal (a log file, CI): a progress line at most this often


@contextmanager
def progress_bar(description: str, total: int, to: Console = console) -> Iterator[Callable[..., None]]:
    """A bar with an ETA on ``to`` (stderr when stdout carries JSON); yields ``advance(n=1, message=None)``
    (the message follows the description). Off a terminal, where rich draws the bar once at the end, a
    plain line with the count, the elapsed time and the latest message comes at most every
    ``LOG_INTERVAL_S`` seconds, so a long run written to a log shows how far it is."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=to, transient=False,
    ) as progress:
        task = progress.add_task(escape(description), total=total)
        log = progress_log(to)
        done = [0]

        def advance(n: int = 1, message: str | None = None) -> None:
            if message:
                progress.update(task, description=escape(f"{description}: {message}"))
            progress.advance(task, n)
            done[0] += n
            log(f"{description}: {message}" if message else description, done[0], total)

        yield advance


def progress_log(to: Console) -> Callable[[str, int, int], None]:
    """``log(label, done, total)``: off a terminal, a line "label (done/total, h:mm:ss)" at most every
    ``LOG_INTERVAL_S`` seconds (the elapsed time since this call); on a terminal nothing (the bar shows it)."""
    start = last = time.monotonic()

    def log(label: str, done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if to.is_terminal or now - last < LOG_INTERVAL_S:
            return
        last = now
        m, sec = divmod(int(now - start), 60)
        to.print(escape(f"{label} ({done}/{total}, {m // 60}:{m % 60:02d}:{sec:02d})"), soft_wrap=True)

    return log


@contextmanager
def status(message: str, to: Console = console) -> Iterator[None]:
    with to.status(escape(message)):
        yield


def fmt_score(row: Any) -> str:
    if row is None:
        return "-"
    return f"{row.score:.3f}" if row.metric == "ppl" else f"{row.score:.0f}%"


def comparison_table(title: str, before_bytes: int, after_bytes: int | None, before: Any, after: Any,
                     params: tuple[int, int] | None = None) -> Table:
    """size (and parameters, when given) + every (task, length) row of two eval reports, with the change."""
    table = Table(title=escape(title))
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    if after_bytes is not None:
        ratio = after_bytes / before_bytes if before_bytes else float("nan")
        table.add_row("size (MB)", f"{before_bytes / 1e6:.1f}", f"{after_bytes / 1e6:.1f}", f"{ratio:.1%} of original")
    if params is not None:
        table.add_row("parameters (M)", f"{params[0] / 1e6:.2f}", f"{params[1] / 1e6:.2f}",
                      f"{params[1] / params[0]:.1%} of original")
    rows = (after or before).rows if (after or before) is not None else []
    for row in rows:
        b = before.get(row.task, row.length) if before is not None else None
        a = after.get(row.task, row.length) if after is not None else None
        if a is not None and b is not None:
            change = f"{a.score / b.score:.3f}x" if row.metric == "ppl" else f"{a.score - b.score:+.0f} pts"
        else:
            change = "-"
        label = "perplexity" if row.metric == "ppl" else row.task
        table.add_row(f"{label} @ {row.length}", fmt_score(b), fmt_score(a), change)
    return table


def distill_table(title: str, teacher: Any, before: Any, after: Any, loss: tuple[float | None, float | None]) -> Table:
    """Teacher, student before and after distillation per (task, length), and for perplexity the share of
    the teacher-student gap that distillation closed; the loss row holds the first and the last step's."""
    table = Table(title=escape(title))
    for col in ("metric", "teacher", "before", "after", "gap closed"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    if loss[0] is not None and loss[1] is not None:
        table.add_row("distill loss", "-", f"{loss[0]:.4f}", f"{loss[1]:.4f}", "-")
    for row in (after.rows if after is not None else []):
        t, b = teacher.get(row.task, row.length), before.get(row.task, row.length)
        gap = "-"
        if t is not None and b is not None and row.metric == "ppl" and b.score != t.score:
            gap = f"{(b.score - row.score) / (b.score - t.score):.0%}"
        label = "perplexity" if row.metric == "ppl" else row.task
        table.add_row(f"{label} @ {row.length}", fmt_score(t), fmt_score(b), fmt_score(row), gap)
    return table


def _rows_table(title: str, rows: list[list[str]]) -> Table:
    """A header row plus body rows; a body row whose last cell is "NO" (a failed gate) is red."""
    table = Table(title=escape(title))
    header, *body = rows
    for col in header:
        table.add_column(str(col))
    for r in body:
        table.add_row(*(escape(str(c)) for c in r), style="red" if r[-1] == "NO" else None)
    return table


def rows_table(title: str, rows: list[list[str]]) -> Table:
    return _rows_table(title, rows)


def gate_table(title: str, comparison: Any) -> Table:
    """A comparison's rows (parent, compressed, change, limit, ok), failing rows in red."""
    return _rows_table(title, comparison.table())


def report_table(title: str, report: Any) -> Table:
    return _rows_table(title, report.table())


def _kl_line(stage: dict[str, Any]) -> str:
    return f"KL {stage.get('kl_first') or 0:.4f} -> {stage.get('kl_last') or 0:.4f}"


def _long_stage(stage: dict[str, Any] | None) -> str:
    """OmniQuant's long-window stage, folded into its end-to-end stage's summary."""
    if not stage:
        return ""
    return f"; then {stage.get('steps')} steps at {stage.get('recipe', {}).get('seqlen')} tokens, {_kl_line(stage)}"


def info_table(info: dict[str, Any]) -> Table:
    table = Table(title=escape(info["path"]), show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key in ("model_type", "layers", "hidden_size", "dtype"):
        table.add_row(key, str(info.get(key)))
    table.add_row("weights (MB)", f"{info['weights_bytes'] / 1e6:.1f}")
    if info.get("passes"):
        table.add_row("passes", escape(" -> ".join(f"{p['pass']} ({p['name']})" for p in info["passes"])))
    pruning = info.get("pruning")
    if pruning:
        plan, recipe = pruning.get("plan", {}), pruning.get("recipe", {})
        table.add_row("pruning", escape(
            f"mlp {recipe.get('mlp')}, heads {recipe.get('heads')} ({recipe.get('head_unit')}), layers "
            f"{recipe.get('layers')}, retrieval protection {'on' if recipe.get('protect_retrieval') else 'off'}: "
            f"{plan.get('keep_layers')} layers, {plan.get('keep_heads')}/{plan.get('keep_groups')} heads, MLP "
            f"{plan.get('keep_intermediate')}; {pruning.get('params_before', 0) / 1e6:.1f}M -> "
            f"{pruning.get('params_after', 0) / 1e6:.1f}M parameters"))
    distillation = info.get("distillation")
    if distillation:
        table.add_row("distillation", escape(
            f"{distillation.get('name')} from {distillation.get('teacher')}: {distillation.get('steps')} steps, "
            f"{distillation.get('tokens')} tokens, {_kl_line(distillation)}" + _long_stage(distillation.get("long_stage"))))
    q = info.get("quantization")
    if q is None:
        table.add_row("quantization", "none" if not info.get("foreign_quantization") else
                      f"{info['foreign_quantization'].get('quant_method')} (not compresskit)")
        return table
    table.add_row("recipe", q["name"])
    for k, v in sorted(q["recipe"].items()):
        table.add_row(f"  {k}", str(v))
    table.add_row("quantized linears", str(q["quantized_linears"]))
    table.add_row("embeddings", str(q["embeddings"]))
    table.add_row("skipped", str(q["skipped"] or "none"))
    table.add_row("base model", escape(str(q["base_model"])))
    table.add_row("compresskit", str(q["compresskit_version"]))
    if q.get("calibration"):
        c = q["calibration"]
        table.add_row("calibration", escape(", ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in c.items() if v not in (None, []))))
    if q.get("attention_abits", 16) < 16:
        table.add_row("activations", f"{q['attention_abits']} bits per token (simulated)")
    if q.get("evaluation"):
        table.add_row("evaluation", ", ".join(q["evaluation"]))
    return table


@contextmanager
def phase_progress(to: Console | None = None) -> Iterator[Callable[[Any], None]]:
    """The display of a one-pass run (``compresskit quantize / prune / distill``): each phase the runner
    starts (loading, evaluating, the pass itself, saving) gets its own line, a bar when it has work units
    (a spinner while it loads or saves), and notes are printed as they come, above the bar that keeps counting.
    Yields ``on_event``; ``to``: the console (the CLI's stdout by default)."""
    to = to or console
    current: list[Any] = [None, None]  # the open context, its advance function

    def close() -> None:
        if current[0] is not None:
            current[0].__exit__(None, None, None)
            current[0] = current[1] = None

    def on_event(event: Any) -> None:
        if event.kind == "phase":
            close()
            cm = progress_bar(event.label, event.n, to) if event.n else status(event.label, to)
            current[1] = cm.__enter__()
            current[0] = cm
        elif event.kind == "advance" and current[1] is not None:
            current[1](event.n, event.message or None)
        elif event.kind == "note":  # above the open bar (rich prints it there): the bar keeps counting
            to.print(escape(event.message), soft_wrap=True)
        elif event.kind in ("done", "cached", "skip"):
            close()

    try:
        yield on_event
    finally:
        close()
