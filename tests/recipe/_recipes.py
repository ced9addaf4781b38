"""Tiny sizes for the shipped recipes, set through the same --set overrides users have."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

EVAL = ["eval.tasks=[ppl, passkey]", "eval.lengths=[200]", "eval.ppl_windows=1", "eval.passkey_trials=1"]
QUANTIZE = ["quantize.nsamples=2", "quantize.seqlen=32", "quantize.epochs=1", "quantize.calib=generated"]
SERVE = QUANTIZE + EVAL + ["eval.max_drop=100", "eval.max_ppl_increase=1000"]
# heads 0.5: the tiny model has 4 query heads over 2 KV heads; group size 32: pruning leaves MLP width 96
SMALLEST = ["prune.nsamples=2", "prune.seqlen=32", "prune.heads=0.5", "prune.retrieval_length=160",
            "prune.retrieval_samples=1", "prune.calib=generated", "distill.steps=2", "distill.seqlen=64",
            "distill.seqlen_schedule=[32, 64]", "distill.warmup_steps=0", "distill.data=generated",
            "distill.retrieval_mix=0",  # its exercises need windows of 256 tokens or more
            "quantize.group_size=32", *QUANTIZE, *EVAL, "eval.max_drop=100", "eval.max_ppl_increase=1e6"]


def paths(model: Path, output: Path, work: Path | None = None) -> list[str]:
    return [f"model={model}", f"output={output}"] + ([f"work_dir={work}"] if work else [])


def mtimes(directory: Path) -> dict[str, int]:
    """Every entry under ``directory`` with its modification time (ns)."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted(directory.rglob("*"))} | {
        ".": os.stat(directory).st_mtime_ns}


def copy_run(src_work: Path, src_out: Path | None, dest: Path) -> tuple[Path, Path]:
    """A copy of a finished run's work directory (and output), modification times kept."""
    work, out = dest / "work", dest / "out"
    shutil.copytree(src_work, work)
    if src_out is not None:
        shutil.copytree(src_out, out)
    return work, out
