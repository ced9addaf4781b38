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

from ..core.fsutil import atomic_output_dir, sha256_file
from ..core.formats import FORMAT_VERSION, stored_packed_names
from ..core.manifest import QuantManifest

SCALE_SUFFIXES = (".scales", ".weight_scale")  # fp16 by construction: stored as fp16, exactly
DEFAULT_SHARD_BYTES = 4 * 1024**3


def _narrow(t: torch.Tensor, dtype: torch.dtype, chunk: int = 1 << 22) -> torch.Tensor:
    """``t`` in ``dtype`` when that loses nothing, else unchanged (e.g. norms with folded LET scales). The
    round trip is checked a chunk at a time, so no second full-size copy is made."""
    if t.dtype == dtype:
        return t
    narrow = t.to(dtype)
    flat_t, flat_n = t.reshape(-1), narrow.reshape(-1)
    for i in range(0, flat_t.numel(), chunk):
        if not torch.equal(flat_n[i:i + chunk].to(t.dtype), flat_t[i:i + chunk]):
            return t
    return narrow


def storage_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors to write (no copies), tied duplicates dropped."""
    state = model.state_dict()
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        if target in state and source in state and state[target].data_ptr() == state[source].data_ptr():
            del state[target]
    return state


def stored(name: str, t: torch.Tensor, storage_dtype: torch.dtype) -> torch.Tensor:
    """``t`` as written: scales as fp16 and other floats as ``storage_dtype``, each only where the cast is
    exact (a reload reproduces the model bit for bit); on the CPU, contiguous."""
    t = t.detach().cpu()
    if t.is_floating_point():
        t = _narrow(t, torch.float16 if name.endswith(SCALE_SUFFIXES) else storage_dtype)
    return t.contiguous()


_ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def write_safetensors(state: dict[str, torch.Tensor], out: Path, max_shard_bytes: int,
                      convert: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, t: t.detach().cpu().contiguous(),
                      ) -> dict[str, dict[str, Any]]:
    """Write ``convert(name, tensor)`` of every tensor as one file or shards plus an index; returns
    ``{file: {"bytes", "sha256"}}``. Tensors are converted and written one at a time (the safetensors
    layout written directly: header, then each tensor's bytes), so saving holds at most one converted
    tensor besides the model: no copy of the whole state."""
    layout = {}  # name -> (dtype, shape, bytes) of what will be written (converted once to know)
    for name, t in state.items():
        c = convert(name, t)
        layout[name] = (c.dtype, tuple(c.shape), c.numel() * c.element_size())
        del c
    shards: list[list[str]] = [[]]
    size = 0
    for name, (_, _, nbytes) in layout.items():
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files: dict[str, dict[str, Any]] = {}
    weight_map = {}
    for i, names in enumerate(shards, 1):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _write_file(out / name, names, layout, lambda n: convert(n, state[n]))
        os.chmod(out / name, 0o644)  # checkpoints are meant to be shared
        files[name] = {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
        weight_map.update({k: name for k in names})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v[2] for v in layout.values())}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


def _write_file(path: Path, names: list[str], layout: dict[str, tuple], tensor: Callable[[str], torch.Tensor]) -> None:
    """One safetensors file: 8-byte header length, the JSON header (padded to 8 bytes), the tensors' bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for n in names:
        dtype, shape, nbytes = layout[n]
        header[n] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for n in names:
            t = tensor(n)
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            del t


FILES_KEY = "compresskit_files"  # config.json of a float checkpoint: {file: {"bytes", "sha256"}}


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
        state = storage_state_dict(model)
        if manifest is not None:  # format 2: packed words under NAME.weight (see core.formats.FORMAT_VERSION)
            renames = stored_packed_names(manifest.linears)
            state = {renames.get(k, k): v for k, v in state.items()}
            manifest.format_version = FORMAT_VERSION
        files = write_safetensors(state, tmp, max_shard_bytes, lambda name, t: stored(name, t, storage_dtype))
        config = model.config.to_dict() | (config_updates or {})
        config.pop("quantization_config", None)
        config.pop(FILES_KEY, None)
        config["dtype"] = str(storage_dtype).removeprefix("torch.")
        if manifest is not None:
            manifest.files = files
            config["quantization_config"] = manifest.config_dict()
        else:  # a float checkpoint (pruned, distilled): the same sizes and sha256 sums, checked on load
            config[FILES_KEY] = files
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
