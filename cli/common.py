"""What every command shares: reporting user errors in one line, the options of the evaluating commands
(spelled once), and list parsing. Imported by cli/main.py, cli/publish.py and cli/recipe.py."""
from __future__ import annotations

import os
from typing import Any, Callable

import typer
from rich.markup import escape

from compresskit import api

from .render import console, err_console

DEBUG_HINT = "set COMPRESSKIT_DEBUG=1 for the full traceback"

# Exit codes, the same on every command (docs/cli.md). 1 is left to an uncaught exception, a bug: Python
# prints its traceback and exits with 1.
EXIT_USER_ERROR = 2  # bad input (an option, a path, a model): one line on stderr, nothing written (Click's too)
EXIT_GATE_FAILED = 3  # the evaluation gate failed: nothing saved (`eval`: the report is still written)


def run_user(fn: Callable[[], Any]) -> Any:
    """``fn()``, with a user error (a ``CompresskitError``) reported in one line and exit code 2. Any other
    exception is a bug: it propagates with its traceback."""
    try:
        return fn()
    except api.USER_ERRORS as e:
        if os.environ.get("COMPRESSKIT_DEBUG"):
            raise  # the full traceback, for bug reports
        # escaped: a path like "runs/[v2]" is text, not rich markup; soft_wrap: one line even when piped
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_USER_ERROR)


def csv(value: str, cast: Callable[[str], Any] = str) -> list[Any]:
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list, got {value!r}")


# options every evaluating command (quantize, prune, distill, apply, eval) shares, spelled once
TASKS_HELP = ("comma-separated: ppl, passkey, niah (= niah_single_1), niah_single_1..3, niah_multikey_1..3, "
              "niah_multivalue, niah_multiquery, vt, cwe, fwe, longbench:<dataset>")


def tasks_option(default: str, what: str = "evaluation tasks before and after") -> Any:
    """``--tasks`` on every command (``--eval`` is its older spelling, still accepted)."""
    return typer.Option(default, "--tasks", "--eval", help=f"{what}: {TASKS_HELP}")


def max_drop_option(than: str = "drops by") -> Any:
    return typer.Option(None, help=f"gate: refuse to save if any task at any length {than} more than this many "
                        "points (perplexity: percent); exit code 3")


def max_ppl_increase_option() -> Any:
    return typer.Option(None, help="gate: allowed perplexity increase in percent (default: --max-drop)")


def longbench_option() -> Any:
    return typer.Option(None, help="directory of LongBench jsonl files (for longbench:<dataset>)")


def longbench_limit_option() -> Any:
    return typer.Option(None, help="first N LongBench records per dataset")


def device_option() -> Any:
    return typer.Option("auto", "--device", help="where to load and run: auto (a GPU when there is one, else the "
                        "CPU), cpu, cuda, cuda:N, xpu")


def dtype_option() -> Any:
    return typer.Option("auto", "--dtype", help="what to load the model in: auto (bfloat16 on a GPU, float16 on one "
                        "without bf16, float32 on the CPU), bfloat16, float16, float32")


def check_device(device: str, dtype: str) -> None:
    """Fail before any work on a device or dtype this machine cannot use."""
    resolved = run_user(lambda: api.resolve_device(device))
    run_user(lambda: api.resolve_dtype(dtype, resolved))


def revision_option() -> Any:
    return typer.Option(None, "--revision", help="with a hub id: the branch, tag or commit to download "
                        "(default: main)", show_default=False)


def with_revision(model: str, revision: str | None) -> str:
    """``org/name`` + ``--revision REV`` -> ``org/name@REV``, how the API names a hub model at a revision."""
    return f"{model}@{revision}" if revision else model


def fetch(*models: str) -> None:
    """Download hub models now, after the inputs were checked and before any progress display, so that
    the download bars stand alone (an embedded or local model is already here)."""
    for model in models:
        run_user(lambda: api.fetch_model(model))


def json_option() -> Any:
    """``--json`` means one thing on every command: print JSON on stdout instead of a table."""
    return typer.Option(False, "--json", help="print JSON on stdout instead of a table (progress goes to stderr)")

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


def kv_option() -> Any:
    return typer.Option(None, "--kv", metavar="POLICY", help="save a KV-cache policy with the model (snapkv:0.5, "
                        "streaming:0.75, kivi:4, snapkv:0.5+kivi:4; docs/kvcache.md): it is evaluated and gated "
                        "generating under it, against the parent's full cache, and compresskit.load_model applies it")


DATA_HELP = ("builtin | file:PATH[#field] (.txt/.jsonl/.json/.parquet/.csv or a directory) | generated | "
             "hf:NAME[:CONFIG][:SPLIT][?data_files=GLOB,...][#column] (streamed)")


PUSH_TO_HUB_HELP = "after saving, push the result to this hub model repo (NAME or NAMESPACE/NAME) in one commit"
PRIVATE_HELP = "with --push-to-hub / push: create the repo private"
TOKEN_HELP = "hub token with write access (default: HF_TOKEN or the stored `hf auth login`)"


def push_to_hub_option() -> Any:
    return typer.Option(None, "--push-to-hub", metavar="NAME", help=PUSH_TO_HUB_HELP)


def push_format_option() -> Any:
    return typer.Option("auto", "--push-format", help="with --push-to-hub: auto (a quantized model as GPTQ, which "
                        "loads without compresskit; anything else as saved), native (compresskit's format: loading "
                        "needs `import compresskit`), gptq, gptq-v1, compressed-tensors")


def private_option() -> Any:
    return typer.Option(False, "--private", help=PRIVATE_HELP)


def token_option() -> Any:
    return typer.Option(None, "--token", help=TOKEN_HELP, show_default=False)


def print_push(result: Any) -> None:
    if result.up_to_date:
        console.print(f"{escape(result.repo_id)}@{escape(result.revision)} already holds these files: nothing pushed")
    else:
        tries = f" (after {result.attempts} attempts)" if result.attempts > 1 else ""
        console.print(f"pushed {len(result.uploaded)} files to {escape(result.repo_id)}@{escape(result.revision)} "
                      f"in one commit{tries}: {escape(str(result.commit_url))}", soft_wrap=True)
