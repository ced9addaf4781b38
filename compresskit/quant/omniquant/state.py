"""Per-block checkpoints of learned parameters, so an interrupted run resumes where it stopped.

A directory holds ``meta.json`` (the run's fingerprint: recipe, model, calibration data hash) and,
per finished block, ``block_NNN.safetensors`` (learned tensors) + ``block_NNN.json`` (its report).
A directory from a different run is refused rather than silently mixed in.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ...core.config import ConfigError
from ...core.fsutil import write_json_atomic
from .block import BlockState


def tensor_fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class StateStore:
    def __init__(self, path: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        meta_file = self.path / "meta.json"
        meta = json.loads(json.dumps(meta))  # normalise (tuples -> lists)
        if meta_file.is_file():
            old = json.loads(meta_file.read_text())
            if old != meta:
                diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
                raise ConfigError(
                    f"{self.path} holds the state of a different run (differs in: {', '.join(diff)}); "
                    "delete it or choose another --work-dir"
                )
        else:
            write_json_atomic(meta_file, meta)

    def _files(self, index: int) -> tuple[Path, Path]:
        return self.path / f"block_{index:03d}.safetensors", self.path / f"block_{index:03d}.json"

    def load(self, index: int) -> tuple[BlockState, dict[str, Any]] | None:
        tensors, report = self._files(index)
        if not (tensors.is_file() and report.is_file()):
            return None
        return BlockState.from_tensors(load_file(str(tensors))), json.loads(report.read_text())

    def save(self, index: int, state: BlockState, report: dict[str, Any]) -> None:
        tensors, report_file = self._files(index)
        tmp = tensors.with_name(tensors.name + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in state.tensors().items()}, str(tmp))
        os.replace(tmp, tensors)
        write_json_atomic(report_file, report)  # written last: its presence marks the block finished
