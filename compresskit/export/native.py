"""Save a compressed model as a compresskit checkpoint: safetensors + config.json with the manifest.

The directory loads back with ``AutoModelForCausalLM.from_pretrained`` after ``import compresskit``.
It is written atomically (temporary directory, then rename) and never replaces an existing
directory unless asked to.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..core.fsutil import atomic_output_dir, sha256_file
from ..core.manifest import QuantManifest

SCALE_SUFFIXES = (".scales", ".weight_scale")  # fp16 by construction: stored as fp16, exactly
DEFAULT_SHARD_BYTES = 4 * 1024**3


def _narrow(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` when that loses nothing, else unchanged (e.g. norms with folded LET scales)."""
    narrow = t.to(dtype)
    return narrow if torch.equal(narrow.to(t.dtype), t) else t


def storage_state_dict(model: nn.Module, storage_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors to write: tied duplicates dropped; scales as fp16 and other floats as
    ``storage_dtype``, each only where the cast is exact, so a reload reproduces the model bit for bit."""
    state = model.state_dict()
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        if target in state and source in state and state[target].data_ptr() == state[source].data_ptr():
            del state[target]
    out = {}
    for name, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point():
            t = _narrow(t, torch.float16 if name.endswith(SCALE_SUFFIXES) else storage_dtype)
        out[name] = t.contiguous().clone()
    return out


def _shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def write_safetensors(state: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> dict[str, dict[str, Any]]:
    """Write one file or shards plus an index; returns ``{file: {"bytes", "sha256"}}``."""
    shards = _shards(state, max_shard_bytes)
    files: dict[str, dict[str, Any]] = {}
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata={"format": "pt"})
        os.chmod(out / name, 0o644)  # safetensors creates 0600 files; checkpoints are meant to be shared
        files[name] = {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
        weight_map.update({k: name for k in shard})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


def save_native(
    model: nn.Module,
    tokenizer: Any,
    path: str | Path,
    manifest: QuantManifest | None,
    *,
    overwrite: bool = False,
    storage_dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    sidecars: dict[str, Any] | None = None,
    config_updates: dict[str, Any] | None = None,
    finalize: Callable[[Path], None] | None = None,
    scrub: Callable[[Any], Any] = lambda d: d,
) -> Path:
    """Write ``model`` (quantized when ``manifest`` is given) to ``path`` atomically; ``sidecars`` maps
    file names to JSON-able objects written beside config.json (e.g. ``pruning.json``); ``scrub`` maps
    config.json and every side file before they are written (the API drops local paths); ``finalize(tmp)``
    runs last, inside the temporary directory (the model card is written there)."""
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        files = write_safetensors(storage_state_dict(model, storage_dtype), tmp, max_shard_bytes)
        config = model.config.to_dict() | (config_updates or {})
        config.pop("quantization_config", None)
        config["dtype"] = str(storage_dtype).removeprefix("torch.")
        if manifest is not None:
            manifest.files = files
            config["quantization_config"] = manifest.config_dict()
        (tmp / "config.json").write_text(json.dumps(scrub(config), indent=2, sort_keys=True) + "\n")
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, data in (sidecars or {}).items():
            (tmp / name).write_text(json.dumps(scrub(data), indent=2, sort_keys=True) + "\n")
        if finalize is not None:
            finalize(tmp)
    return Path(path)
