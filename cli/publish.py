"""``compresskit export`` and ``compresskit push``. Registered on the app by cli/main.py (``register(app)``).
(quantize, prune and distill push through their one-pass recipe's push pass.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from compresskit import api

from .common import (
    fetch, print_push, private_option, push_to_hub_option, revision_option, run_user, token_option, with_revision,
)
from .render import console, status

def finish_saved(output: Path, push_to_hub: Optional[str] = None, private: bool = False,
                 token: Optional[str] = None, *, revision: Optional[str] = None, overwrite: bool = False) -> None:
    """After ``export`` saved ``output``: rewrite its card from what is in it now, then push it if asked."""
    run_user(lambda: api.write_card(output))
    if push_to_hub:
        with status(f"pushing {output} to {push_to_hub}"):
            result = run_user(lambda: api.push(output, push_to_hub, private=private, token=token, revision=revision,
                                               overwrite=overwrite))
        print_push(result)


def export(
    path: str = typer.Argument(..., help="a compresskit checkpoint: directory (written by quantize / save) or hub id"),
    revision: Optional[str] = revision_option(),
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
    path = with_revision(path, revision)
    fetch(path)
    with status(f"exporting {path} as {format}"):
        result = run_user(lambda: api.export_model(path, format, output, overwrite=overwrite, dtype=dtype,
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
    format: str = typer.Option("auto", "--format", "-f", help="auto (a compresskit-quantized model as GPTQ, which "
                               "loads without compresskit; anything else as saved), native, gptq, gptq-v1, "
                               "compressed-tensors"),
) -> None:
    """Push a saved model to a hub repo in one commit (retried on transient errors). A quantized model goes
    as GPTQ by default, so that whoever has only the hub id loads the right weights."""
    with status(f"pushing {path} to {repo}"):
        result = run_user(lambda: api.push(path, repo, private=private, revision=revision, token=token,
                                       overwrite=overwrite, endpoint=endpoint, format=format))
    print_push(result)


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(push)
