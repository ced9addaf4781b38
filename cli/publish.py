"""``compresskit export`` and ``compresskit push``, and the ``--push-to-hub`` step of the commands that save.

Registered on the app by cli/main.py (``register(app)``). Commands that save call `finish_saved` after
their last write, which rewrites the model card (the evaluation report and plots are in by then) and
pushes when ``--push-to-hub`` was given; `push_options` documents the three options they declare.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from .render import console, status

PUSH_TO_HUB_HELP = "after saving, push the result to this hub model repo (NAME or NAMESPACE/NAME) in one commit"
PRIVATE_HELP = "with --push-to-hub / push: create the repo private"
TOKEN_HELP = "hub token with write access (default: HF_TOKEN or the stored `hf auth login`)"


def push_to_hub_option() -> Any:
    return typer.Option(None, "--push-to-hub", metavar="NAME", help=PUSH_TO_HUB_HELP)


def private_option() -> Any:
    return typer.Option(False, "--private", help=PRIVATE_HELP)


def token_option() -> Any:
    return typer.Option(None, "--token", help=TOKEN_HELP, show_default=False)


def push_options() -> dict[str, Any]:
    """The options a saving command declares: ``push_to_hub``, ``private``, ``token``."""
    return {"push_to_hub": push_to_hub_option(), "private": private_option(), "token": token_option()}


def _print_push(result: Any) -> None:
    if result.up_to_date:
        console.print(f"{escape(result.repo_id)}@{escape(result.revision)} already holds these files: nothing pushed")
    else:
        tries = f" (after {result.attempts} attempts)" if result.attempts > 1 else ""
        console.print(f"pushed {len(result.uploaded)} files to {escape(result.repo_id)}@{escape(result.revision)} "
                      f"in one commit{tries}: {escape(str(result.commit_url))}", soft_wrap=True)


def finish_saved(output: Path, push_to_hub: Optional[str] = None, private: bool = False,
                 token: Optional[str] = None, *, revision: Optional[str] = None, overwrite: bool = False) -> None:
    """After a command saved ``output``: rewrite its card from what is in it now, then push it if asked."""
    from compresskit import api

    from .main import _run

    _run(lambda: api.write_card(output))
    if push_to_hub:
        with status(f"pushing {output} to {push_to_hub}"):
            result = _run(lambda: api.push(output, push_to_hub, private=private, token=token, revision=revision,
                                           overwrite=overwrite))
        _print_push(result)


def export(
    path: str = typer.Argument(..., help="a compresskit checkpoint directory (written by quantize / save)"),
    format: str = typer.Option("gptq", "--format", "-f", help="gptq (v2: exact zero points) | gptq-v1 (zero - 1) | "
                               "compressed-tensors (pack-quantized)"),
    output: Path = typer.Option(..., "--output", "-o", help="directory to write (must not exist unless --overwrite)"),
    dtype: str = typer.Option("float16", help="dtype of the non-quantized tensors and scales: float16 | float32"),
    weights_only: bool = typer.Option(False, "--weights-only", help="weight-activation checkpoints: export the "
                                      "weights; activations then run in full precision"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    push_to_hub: Optional[str] = push_to_hub_option(),
    private: bool = private_option(),
    token: Optional[str] = token_option(),
) -> None:
    """Export a compresskit checkpoint to a format engines read (transformers, vLLM, GPTQModel)."""
    from compresskit import api

    from .main import _run

    with status(f"exporting {path} as {format}"):
        result = _run(lambda: api.export_model(path, format, output, overwrite=overwrite, dtype=dtype,
                                               weights_only=weights_only))
    console.print(f"wrote {escape(str(result.path))} ({result.format}, {result.weights_bytes / 1e6:.1f} MB of weights)")
    for note in result.notes:
        console.print(f"  note: {escape(note)}", soft_wrap=True)
    if push_to_hub:
        finish_saved(result.path, push_to_hub, private, token)


def push(
    path: Path = typer.Argument(..., help="a saved model directory (native or exported)"),
    repo: str = typer.Option(..., "--repo", help="hub model repo: NAME or NAMESPACE/NAME"),
    private: bool = private_option(),
    revision: Optional[str] = typer.Option(None, help="branch to push to (created if missing; default main)"),
    token: Optional[str] = token_option(),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the repo's contents if it holds other files"),
    endpoint: Optional[str] = typer.Option(None, help="hub endpoint (default: HF_ENDPOINT or huggingface.co)"),
) -> None:
    """Push a saved model to a hub repo in one commit (retried on transient errors)."""
    from compresskit import api

    from .main import _run

    with status(f"pushing {path} to {repo}"):
        result = _run(lambda: api.push(path, repo, private=private, revision=revision, token=token,
                                       overwrite=overwrite, endpoint=endpoint))
    _print_push(result)


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(push)
