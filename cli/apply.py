"""``compresskit apply PASS MODEL``: any registered pass (compresskit.core.registry), its settings given as
``--set FIELD=VALUE``, run as a one-pass recipe like ``quantize``, ``prune`` and ``distill`` (which have an
option per setting). Registered on the app by cli/main.py."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from compresskit import api

from .common import (
    EXIT_GATE_FAILED, EXIT_USER_ERROR, csv, force_option, longbench_limit_option, longbench_option, max_drop_option,
    max_ppl_increase_option, no_eval_option, passkey_trials_option, ppl_windows_option, print_push, private_option,
    push_to_hub_option, revision_option, run_user, samples_option, tasks_option, token_option, with_revision,
    check_device, device_option, dtype_option, push_format_option,
)
from .render import comparison_table, console, err_console, phase_progress


def apply(
    kind: str = typer.Argument(..., help="the pass: quantize, prune, distill, or one registered "
                               "with compresskit.register", metavar="PASS"),
    model: str = typer.Argument(..., help="embedded model name (smollm2-135m), local directory, or hub id"),
    revision: Optional[str] = revision_option(),
    device: str = device_option(),
    dtype: str = dtype_option(),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    set_: list[str] = typer.Option([], "--set", metavar="FIELD=VALUE",
                                   help="a setting of the pass (VALUE read as YAML: 3, 3e-4, true, a list); "
                                        "repeatable"),
    teacher: Optional[str] = typer.Option(None, help="for a pass that learns from a teacher (default: MODEL)"),
    tasks: str = tasks_option("ppl,passkey"),
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
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    push_to_hub: Optional[str] = push_to_hub_option(),
    push_format: str = push_format_option(),
    private: bool = private_option(),
    token: Optional[str] = token_option(),
) -> None:
    """Run one registered PASS on MODEL with its settings (--set FIELD=VALUE), evaluate it against MODEL, and
    save it unless the gate fails."""
    model = with_revision(model, revision)
    check_device(device, dtype)
    if not api.REGISTRY.has(kind):
        err_console.print(f"[bold red]error:[/] unknown pass {escape(kind)!r}; passes: "
                          f"{escape(', '.join(api.REGISTRY.kinds()))}", soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR)
    settings = run_user(lambda: api.config_from_options(kind, {}, [*set_]) if not api.REGISTRY.multi_method(kind)
                        else _multi(kind, set_))
    run_user(lambda: api.check_output(output, overwrite))
    evaluation = None
    if not no_eval:
        evaluation = run_user(lambda: api.eval_settings(
            tasks=csv(tasks), lengths=csv(lengths, int), ppl_windows=ppl_windows, passkey_trials=passkey_trials,
            samples=samples, longbench_path=None if longbench is None else str(longbench),
            longbench_limit=longbench_limit)).to_dict() | {"max_drop": max_drop, "max_ppl_increase": max_ppl_increase}
    before_bytes = run_user(lambda: api.checkpoint_bytes(model))
    try:
        with phase_progress() as on_event:
            result = run_user(lambda: api.run_pass(
                model, output, kind, settings, evaluation=evaluation, teacher=teacher, overwrite=overwrite,
                device=device, dtype=dtype,
                force=force, token=token, push=None if not push_to_hub else {"repo": push_to_hub, "private": private,
                                                    "format": push_format},
                progress=on_event))
    except api.GateFailedError as e:
        console.print(comparison_table(f"{model} -> {output} ({kind})", before_bytes, None, e.evaluation.before,
                                       e.evaluation.child))
        err_console.print(f"[bold red]not saved:[/] gate {escape(e.comparison.summary())}; report in "
                          f"{escape(str(e.report))}; rerun with --force to save anyway", soft_wrap=True)
        raise typer.Exit(EXIT_GATE_FAILED)
    ev = result.evaluation
    name = getattr(settings, "name", kind)
    console.print(comparison_table(f"{model} -> {output} ({name}, {result.pass_seconds[1]:.1f}s)", before_bytes,
                                   api.checkpoint_bytes(output), ev and ev.before, ev and ev.child))
    if result.comparison is not None and result.comparison.gate is not None:
        console.print(f"gate: {escape(result.comparison.summary())}")
    if result.push is not None:
        print_push(result.push)


def _multi(kind: str, items: list[str]):
    """A kind with several methods: ``--set method=NAME`` picks one (default: the first registered)."""
    method = next((i.partition("=")[2].strip() for i in items if i.partition("=")[0].strip() == "method"),
                  api.REGISTRY.methods(kind)[0])
    rest = [i for i in items if i.partition("=")[0].strip() != "method"]
    return api.config_from_options(kind, {"method": method}, rest)
