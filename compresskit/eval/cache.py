"""Reuse of evaluation rows: a parent model is scored once per task setting, not once per run.

A row's key is the sha256 of the model's weights and config, the tokenizer's vocabulary, the task,
the length, the task's settings and :data:`CACHE_VERSION`; rows live as small JSON files.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..core.fsutil import write_json_atomic
from .report import EvalRow

CACHE_VERSION = 2  # bump when a task's scoring or the fingerprint changes


def model_fingerprint(model: Any) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, bytes), the config (name excluded) and
    the settings that change the forward pass without being tensors: activation bits of quantized
    linears and attention, and the attention implementation."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    config = getattr(model, "config", None)
    if config is not None:
        d = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
        h.update(f"attn={getattr(config, '_attn_implementation', None)}".encode())
    for name, m in model.named_modules():
        for attr in ("abits", "compresskit_abits"):
            if hasattr(m, attr):
                h.update(f"{name}|{attr}={getattr(m, attr)}".encode())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = tokenizer.get_vocab()
    specials = getattr(tokenizer, "all_special_tokens", [])
    return hashlib.sha256(json.dumps([sorted(vocab.items()), list(specials)]).encode()).hexdigest()


class RowCache:
    """Rows of one (model, tokenizer) pair under ``directory``."""

    def __init__(self, directory: str | Path, model_key: str) -> None:
        self.directory, self.model_key = Path(directory), model_key

    @classmethod
    def for_model(cls, directory: str | Path, model: Any, tokenizer: Any) -> "RowCache":
        return cls(directory, hashlib.sha256(
            f"{model_fingerprint(model)}|{tokenizer_fingerprint(tokenizer)}".encode()).hexdigest())

    def key(self, task: str, length: int, fields: dict[str, Any]) -> str:
        blob = json.dumps([CACHE_VERSION, self.model_key, task, length, fields], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> EvalRow | None:
        """The stored row (marked ``cached``), or None; an unreadable entry counts as absent."""
        try:
            row = EvalRow.from_dict(json.loads(self._path(key).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        row.cached = True
        return row

    def put(self, key: str, row: EvalRow) -> None:
        from dataclasses import asdict

        self.directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self._path(key), {**asdict(row), "cached": False})
