"""``compresskit run``: a recipe (a YAML list of passes) with one progress display. Registered on the app by
cli/main.py (``register(app)``); the work is compresskit.api.run_recipe's."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from compresskit import api
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .common import EXIT_GATE_FAILED, check_device, device_option, dtype_option, print_push, run_user, token_option
from .render import console, err_console, progress_log, rows_table

SHIPPED = "serve-4bit, smallest-4k-passkey"  # tests/cli/test_cli_recipe.py checks this against the package
STATE_WORDS = {"cached": "done before", "skip": "not needed (what reads it is done)"}


@contextmanager
def recipe_progress(plan: Any) -> Iterator[Callable[[Any], None]]:
    """One display for the whole run: a bar over the stages and a bar for the stage running now, with a
    line per stage as it finishes (or is found done)."""
    n = len(plan.stages)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        overall = progress.add_task(escape(f"recipe {plan.recipe.name}"), total=n)
        current = progress.add_task("", total=1, visible=False)
        titles: dict[int, str] = {}
        log = progress_log(console)  # off a terminal (a log file), a line now and then

        def on_event(event: Any) -> None:
            s = event.stage
            name = s.step.name if s.step.name.startswith(s.kind) else f"{s.kind}: {s.step.name}"
            title = titles.setdefault(s.position, f"{s.position}/{n} {name}")
            if event.kind == "start":
                progress.reset(current, total=max(event.n, 1), description=escape(title), visible=True)
            elif event.kind == "phase":
                progress.update(current, description=escape(f"{title}: {event.label}"))
            elif event.kind == "advance":
                label = f"{title}: {event.message}" if event.message else title
                progress.update(current, advance=event.n, description=escape(label))
                task = next(t for t in progress.tasks if t.id == current)
                log(label, int(task.completed), int(task.total or 0))
            elif event.kind == "note":
                progress.console.print(f"  {escape(title)}: {escape(event.message)}", soft_wrap=True)
            else:
                word = f"done in {event.seconds:.1f}s" if event.kind == "done" else STATE_WORDS[event.kind]
                mark = "[green]ok[/]" if event.kind == "done" else "[dim]--[/]"
                progress.console.print(f"{mark} {escape(title)}: {word} ({escape(str(s.path))})", soft_wrap=True)
                progress.update(current, visible=False)
                progress.advance(overall)

        yield on_event


def run(
    recipe: str = typer.Argument(..., help=f"a recipe YAML file, or the name of a shipped recipe ({SHIPPED})"),
    work_dir: Optional[Path] = typer.Option(None, help="where each stage's result is kept (default "
                                            "OUTPUT.recipe-work); a rerun skips the stages found done there"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="override a setting (repeatable): PASS.FIELD=VALUE, PASS being a pass name or "
                                        "its position (quantize.wbits=3, 2.steps=50), or model=, output=, work_dir=; a "
                                        "pass field's VALUE is read as YAML ([1024,4096], true, 3e-4)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate the recipe and print the plan (what is done, "
                                 "what would run), without running or writing anything"),
    force: bool = typer.Option(False, "--force", help="save even if an eval gate fails (the failure is recorded)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory (one that "
                                   "holds this recipe's result with the same settings is left alone)"),
    token: Optional[str] = token_option(),
    device: str = device_option(),
    dtype: str = dtype_option(),
) -> None:
    """Run a RECIPE: passes such as prune -> distill -> quantize -> eval (a gate against the original
    model) -> save -> push, listed with their settings in a YAML file (docs/recipes.md). The recipe is
    checked before anything runs (every problem in one error); each stage's result is kept in the work
    directory, so a rerun skips the stages whose settings and inputs did not change, and an interrupted
    distill or OmniQuant stage resumes. The output holds the resolved recipe as recipe.yaml."""
    check_device(device, dtype)
    plan = run_user(lambda: api.plan_recipe(recipe, overrides=set_, work_dir=work_dir, overwrite=overwrite))
    if dry_run:
        console.print(rows_table(f"{plan.recipe.name}: {plan.recipe.model} -> {plan.recipe.output} (dry run: "
                                 f"work dir {plan.work_dir})", plan.to_rows()))
        return
    try:
        with recipe_progress(plan) as on_event:
            result = run_user(lambda: api.run_recipe(plan, progress=on_event, force=force, token=token,
                                                        device=device, dtype=dtype))
    except api.GateFailedError as e:
        err_console.print(f"[bold red]not saved:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_GATE_FAILED)
    _summary(api, result)


def _summary(api: Any, result: Any) -> None:
    ran = ", ".join(result.ran) or "nothing (every stage was done before)"
    size = api.checkpoint_bytes(result.output) / 1e6
    console.print(f"{escape(str(result.output))}: {size:.1f} MB of weights; ran {escape(ran)} in "
                  f"{sum(result.seconds.values()):.1f}s", soft_wrap=True)
    if result.comparison is not None and result.comparison.gate is not None:
        forced = " (saved with --force)" if not result.comparison.passed else ""
        console.print(f"gate: {escape(result.comparison.summary())}{forced}", soft_wrap=True)
    if result.push is not None:
        print_push(result.push)


def register(app: typer.Typer) -> None:
    app.command()(run)
