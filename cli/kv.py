"""``compresskit kv``: KV-cache policies side by side on one model (`compresskit.api.kv_sweep`): task scores
per press and ratio, the continuation's perplexity, the bytes the cache holds, prefill time and decoding
speed; a table, and with ``--output`` the table, JSON and plots (score vs ratio per task, memory vs length).
Registered on the app by cli/main.py."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from compresskit import api

from .common import check_device, csv, fetch, device_option, dtype_option, revision_option, run_user, with_revision
from .render import console, status


def kv(
    path: str = typer.Argument(..., help="model (embedded name, directory, or hub id)"),
    revision: Optional[str] = revision_option(),
    device: str = device_option(),
    dtype: str = dtype_option(),
    methods: str = typer.Option("streaming,snapkv,tova", help="presses, comma-separated: streaming, snapkv, tova, "
                                "knorm, random, retrieval-heads, ada-snapkv, ada-tova (AdaKV budgets)"),
    ratios: str = typer.Option("0.25,0.5,0.75", help="share of the prompt's cache each press drops"),
    bits: str = typer.Option("4,2", help="KIVI quantized caches to add (kivi:BITS); '' for none"),
    policies: str = typer.Option("", help="more policies as specs, e.g. snapkv:0.5+kivi:4,tova:0.5,interval=256 "
                                 "(separate them with ';')"),
    lengths: str = typer.Option("2048", help="prompt lengths in tokens, comma-separated"),
    tasks: str = typer.Option("passkey,niah_single_1", help="tasks scored under each policy ('' for none)"),
    trials: int = typer.Option(5, help="passkey trials / needle samples per task and length"),
    continuation: int = typer.Option(256, help="tokens of the continuation perplexity (0: skip)"),
    timing: bool = typer.Option(True, "--timing/--no-timing", help="measure bytes, prefill and decoding speed"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="reuse task scores computed before"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write sweep.md, sweep.json and plots here"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --output directory"),
) -> None:
    """Sweep KV-cache policies on a model: scores vs compression ratio, memory and speed, full cache first."""
    path = with_revision(path, revision)
    check_device(device, dtype)
    specs = ["full", *(f"{m}:{r}" for m in csv(methods) for r in csv(ratios, float)),
             *(f"kivi:{b}" for b in csv(bits, int)), *(p.strip() for p in policies.split(";") if p.strip())]
    parsed = run_user(lambda: [s if s == "full" else api.KVPolicy.parse(s) for s in specs])  # bad specs fail here
    if output is not None:
        run_user(lambda: api.check_output(output, overwrite))
    fetch(path)
    with status(f"loading {path}"):
        model, tok = run_user(lambda: api.load_model(path, device=device, dtype=dtype))
    total, done = len(parsed) * len(csv(lengths, int)), [0]

    def progress(n: int, message: Optional[str] = None) -> None:
        done[0] += n
        console.print(f"  {done[0]}/{total} {escape(message or '')}")

    sweep = run_user(lambda: api.kv_sweep(model, tok, parsed, lengths=csv(lengths, int), tasks=csv(tasks),
                                          trials=trials, continuation=continuation or None, timing=timing,
                                          cache=cache, progress=progress))
    console.print(escape(sweep.table()))
    if output is not None:
        written = run_user(lambda: sweep.write(output, overwrite))
        console.print(f"wrote {escape(', '.join(str(p) for p in written))} and the plots")


def register(app: typer.Typer) -> None:
    app.command("kv")(kv)
