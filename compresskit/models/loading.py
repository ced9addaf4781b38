"""Resolve a model name (embedded name, local directory or hub id) and load it for compression.

Checks happen before the weights load: the path exists, the architecture is supported, and every
safetensors file is readable and matches the manifest's sizes (and checksums when asked).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..core.record import ModelRecord, Source, set_record
from ..core.arch import get_arch
from ..core.errors import CompresskitError
from ..core.fsutil import sha256_file
from .embedded import DEFAULT_MODEL, EMBEDDED, embedded_path, no_progress_bars


# what a hub model needs: config, tokenizer files, chat template, safetensors weights and its card (for the licence)
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "README.md"]


class ModelNotFoundError(CompresskitError, FileNotFoundError):
    """The model name is neither an embedded model, a local directory, nor a reachable hub id."""


class CorruptCheckpointError(CompresskitError, ValueError):
    """A weights file is unreadable, truncated, or does not match the manifest."""


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """An embedded model name -> its converted directory; a local directory -> itself; else a hub id."""
    name = str(name_or_path)
    if name in EMBEDDED:
        return str(embedded_path(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but has no config.json: it is not a model checkpoint")
        return str(path)
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    if not is_hub_id(name):
        raise ModelNotFoundError(
            f"no model at {name!r}: not a local directory, not an embedded model "
            f"({', '.join(EMBEDDED)}), and not a hub id of the form org/name"
        )
    return download(name)


def is_hub_id(name: str) -> bool:
    """``org/name`` or ``org/name@rev`` that is not a local path (the one test every caller uses)."""
    return (not name.startswith((".", "/", "~")) and split_revision(name)[0].count("/") == 1
            and not Path(name).expanduser().exists())


def split_revision(name: str) -> tuple[str, str | None]:
    """``"org/name@rev"`` -> ``("org/name", "rev")`` (a branch, tag or commit); ``"org/name"`` -> ``(.., None)``."""
    repo, sep, revision = name.partition("@")
    return repo, (revision or None) if sep else None


def download(name: str) -> str:
    """The local snapshot of hub model ``name`` (``org/name[@revision]``): its config, tokenizer and
    safetensors weights, fetched once into the hub cache (``HF_HUB_OFFLINE=1`` reads the cache only).
    Pickle weights (``.bin``) are never fetched or loaded: they can run code."""
    from huggingface_hub import snapshot_download

    repo, revision = split_revision(name)
    try:
        path = Path(snapshot_download(repo, revision=revision, allow_patterns=HUB_FILES))
    except Exception as e:  # the hub's errors (not found, gated, offline, network) are all "cannot get it"
        raise ModelNotFoundError(
            f"could not get {name!r} from the hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}); check "
            f"the id and --revision, your network, or HF_TOKEN for a gated or private repo; or pass a local directory "
            f"or an embedded model ({', '.join(EMBEDDED)})"
        ) from e
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{name} has no config.json: it is not a transformers model repo")
    _require_safetensors(path, name)
    return str(path)


def _require_safetensors(path: Path, name: str) -> None:
    if not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(
            f"{name} has no .safetensors weights (only pickle .bin files, or none); compresskit loads safetensors "
            "only, because pickle files can run code. Convert it once with transformers (load it, then "
            "save_pretrained(DIR, safe_serialization=True)) and pass DIR"
        )


def read_config(path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelNotFoundError(
            f"could not load {path!r}: it is not a local directory, not an embedded model "
            f"({', '.join(EMBEDDED)}), and the hub did not provide it ({type(e).__name__}: {str(e)[:200]})"
        ) from e


def verify_checkpoint(path: str, files: dict[str, dict[str, Any]] | None = None, checksums: bool = True) -> None:
    """Open every safetensors header; compare sizes (and sha256) with the manifest's record."""
    from safetensors import safe_open


    directory = Path(path)
    if not directory.is_dir():
        return  # hub id: transformers verifies downloads itself
    for f in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as sf:
                sf.keys()
        except Exception as e:  # safetensors raises its own error types
            raise CorruptCheckpointError(
                f"{f} is not a readable safetensors file ({e}); the checkpoint is corrupt or incomplete: "
                "save or copy it again"
            ) from e
    for name, rec in (files or {}).items():
        f = directory / name
        if not f.is_file():
            raise CorruptCheckpointError(f"{f} is listed in the manifest but missing; copy the whole directory")
        if f.stat().st_size != rec.get("bytes"):
            raise CorruptCheckpointError(
                f"{f} has {f.stat().st_size} bytes, the manifest records {rec.get('bytes')}: the file is corrupt"
            )
        if checksums and rec.get("sha256") and sha256_file(f) != rec["sha256"]:
            raise CorruptCheckpointError(f"{f} does not match its sha256 in the manifest: the file is corrupt")


def load_pretrained(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    verify: bool = True,
):
    """Load ``(model, tokenizer)`` ready for compression or evaluation (float32 + sdpa on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path)
    config = read_config(path)
    get_arch(config)  # unsupported families fail here, before any weight is read
    qcfg = getattr(config, "quantization_config", None)
    qcfg = qcfg.to_dict() if hasattr(qcfg, "to_dict") else qcfg
    files = (qcfg or {}).get("files") or getattr(config, "compresskit_files", None)  # quantized, or float
    verify_checkpoint(path, files, checksums=verify)
    _require_safetensors(Path(path), str(name_or_path))
    source_dtype = _config_dtype(path)
    with no_progress_bars():  # the files are local now: the caller's own progress display stays alone
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                     device_map=device, use_safetensors=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # the record starts here: where the model came from, and what its checkpoint says was done to it
    set_record(model, ModelRecord.from_saved(config.to_dict(), path if Path(path).is_dir() else None,
                                             Source(str(name_or_path), path, source_dtype)))
    return model, tokenizer


def _config_dtype(path: str) -> str | None:
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    d = json.loads(cfg.read_text())
    return d.get("dtype") or d.get("torch_dtype")
