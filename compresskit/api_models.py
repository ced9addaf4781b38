"""The base of the API: loading, calibration data, saving and describing checkpoints, kernel backends.

Every other API module builds on this one (re-exported by compresskit.api).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .api_publish import card_writer, model_parent, public_fields
from .core.errors import CompresskitError, InputError
from .core.fsutil import check_output_dir, dir_size_bytes, write_json_atomic
from .core.manifest import QuantManifest
from .core.record import Evaluation, ModelRecord, record_of, set_record
from .export import save_native
from .kernels.backends import table as _backend_table
from .kernels.modules import set_kernel_backend as _set_backend
from .kvcache import attach_kv
from .models import DEFAULT_MODEL, load_pretrained, resolve_model

# Errors caused by the user's input: front ends report them as one line, not a traceback. Anything else
# is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (CompresskitError,)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str | torch.device = "auto") -> str:
    """``"auto"``: the GPU when there is one (CUDA, else XPU), else the CPU; any other value is checked
    (``"cuda:1"`` on a machine with one GPU is a one-line error, not a crash deep in loading)."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        xpu = getattr(torch, "xpu", None)
        return "xpu" if xpu is not None and xpu.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except RuntimeError as e:
        raise InputError(f"device {name!r} is not a device: use auto, cpu, cuda, cuda:N or xpu") from e
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r}: this machine has no CUDA GPU (or torch is a CPU build); use --device cpu")
    if kind == "cuda" and torch.device(name).index is not None and torch.device(name).index >= torch.cuda.device_count():
        raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind not in ("cpu", "cuda", "xpu", "mps"):
        raise InputError(f"device {name!r} is not supported: use auto, cpu, cuda, cuda:N or xpu")
    return name


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    """``"auto"``: bfloat16 on a GPU that has it, float16 on one that does not, float32 on the CPU (CPUs
    without bf16 hardware are many times slower in bf16); else ``bfloat16`` / ``float16`` / ``float32``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if kind == "xpu" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    verify: bool = True,
    backend: str = "auto",
):
    """``(model, tokenizer)`` for an embedded name (``smollm2-135m``), a local directory or a hub id
    (``org/name``, ``org/name@revision``), on ``device`` in ``dtype`` (`resolve_device`, `resolve_dtype`:
    by default a GPU in bf16 when there is one, else the CPU in float32).

    Quantized compresskit checkpoints load too (their packed modules are rebuilt). ``verify``
    checks the files against the manifest's sha256 sums. ``backend`` picks the kernel of quantized
    layers (see `set_kernel_backend`). A checkpoint saved with a KV-cache policy generates under it
    (`compresskit.attach_kv(model, None)` goes back to the full cache).
    """
    device = resolve_device(device)
    model, tokenizer = load_pretrained(name_or_path, dtype=resolve_dtype(dtype, device), device=device,
                                       verify=verify)
    if backend != "auto":
        set_kernel_backend(model, backend)
    kv = record_of(model).last("kv")
    if kv is not None:  # the checkpoint's KV-cache policy: generation compresses its cache as it was evaluated
        attach_kv(model, kv.config)
    return model, tokenizer


def set_kernel_backend(model: nn.Module, backend: str = "auto") -> dict[str, str]:
    """Compute every quantized layer through ``backend``: ``"auto"`` (per layer, device and dtype: Triton
    on CUDA, compresskit's C kernels on CPU, chunked dequantize elsewhere), or a name from
    `kernel_backends` (``triton``, ``cpu_native``, ``cpu_int4pack``, ``dequant``, ``dense``,
    ``reference``). A forced backend is checked against every layer now; ``BackendError`` names the
    first layer it cannot serve, why, and which backends can. Returns layer name -> backend."""
    return _set_backend(model, backend)


def kernel_backends() -> list[dict[str, str]]:
    """The backend table: devices, bits, group sizes and dtypes each kernel serves, where automatic
    choice uses it, and whether it can run on this machine."""
    return _backend_table()


def calibration_ids(model: nn.Module, tokenizer: Any, config: Any, calib: Any = None) -> torch.Tensor:
    """``[nsamples, seqlen]`` token ids for calibration (``config``: anything with ``nsamples``, ``seqlen``,
    ``calib`` and ``seed``), checked against the model's context. ``calib`` is a LongTensor of token ids, a
    source spec (default ``config.calib``), a list of strings or a ``datasets.Dataset`` (its ``text``
    column, read as far as the windows need)."""
    if isinstance(calib, torch.Tensor):
        ids = calib.long()
    else:
        from .calib import build_samples  # the data modules load when data is first needed

        if tokenizer is None:
            raise InputError("calibration from a text source needs the tokenizer: quantize(..., tokenizer=tok)")
        ids = build_samples(tokenizer, config.calib if calib is None else calib, config.nsamples, config.seqlen,
                            seed=config.seed, model=model)
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and ids.shape[1] > context:
        raise InputError(f"calibration seqlen {ids.shape[1]} exceeds the model's context {context}; "
                         f"use --seqlen {context} or less")
    return ids


def heldout_text() -> str:
    """The shipped held-out text (never used for calibration)."""
    from .calib import heldout_text as _heldout  # the data modules load when data is first needed

    return _heldout()


def write_report(path: str | os.PathLike, report: Any) -> None:
    """Write a report (anything with ``to_dict``, or a dict) as JSON, atomically."""
    write_json_atomic(path, report.to_dict() if hasattr(report, "to_dict") else report)


def record(model: nn.Module) -> ModelRecord:
    """What was done to ``model``: its source, the passes that ran (resolved configs, summaries) and its
    evaluation (a `ModelRecord`; ``save`` writes it, the model card and `info` read it back)."""
    return record_of(model)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with a copy of its record (``copy.deepcopy`` copies the weights, and the copy
    starts a record of its own, from its config: it no longer knows its source's storage dtype)."""
    clone = copy.deepcopy(model)
    set_record(clone, copy.deepcopy(record_of(model)))
    return clone


def manifest_of(model: nn.Module) -> QuantManifest | None:
    """The quantization manifest of a model quantized in this process or loaded from a checkpoint."""
    return record_of(model).manifest


def save(
    model: nn.Module,
    tokenizer: Any,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    evaluation: dict[str, Any] | None = None,
    files: dict[str, str | bytes | os.PathLike] | None = None,
) -> Path:
    """Write the model (quantized or not) as safetensors + config.json, atomically, with its record.

    Non-quantized float tensors are stored in the source checkpoint's dtype (bf16 for the embedded
    model); scales as fp16. ``evaluation`` (role -> report: ``before``, ``after``, and ``gate`` -> the
    comparison; reports with ``to_dict`` or dicts) becomes the record's evaluation: the manifest holds
    it, or a float checkpoint's pass summaries hold its scores. ``files`` adds files to the artifact
    inside the same atomic write, before its card: relative name -> text (``str``), ``bytes``, or a
    ``Path`` of a file or directory to copy (e.g. ``{"recipe.yaml": text, "evaluation": report_dir}``).
    An existing ``path`` is refused unless ``overwrite``.
    """
    rec = record_of(model)
    storage = _DTYPES.get(str(rec.source.dtype), next(model.parameters()).dtype)
    if not storage.is_floating_point:
        storage = torch.float32
    if evaluation is not None:
        rec.evaluation = Evaluation.of(evaluation)
    manifest = rec.manifest
    if manifest is not None and rec.evaluation is not None:
        manifest.evaluation = rec.evaluation.to_dict()
    parent = model_parent(model)
    # where the model came from, by public name only (hub id, embedded name, a directory's last part):
    # no local path goes into a file that may be pushed
    origin = parent.base_model or parent.source
    if manifest is not None:
        manifest.base_model = parent.base_model
    card = card_writer(model, None if rec.evaluation is None else rec.evaluation.table_source(), path, parent)

    def finalize(directory: Path) -> None:
        _add_files(directory, files or {})
        card(directory)

    return save_native(model, tokenizer, path, manifest, overwrite=overwrite, storage_dtype=storage,
                       sidecars=rec.side_files() or None,
                       config_updates=rec.saved_config() | {"_name_or_path": origin or ""}, finalize=finalize,
                       scrub=public_fields)


def _add_files(directory: Path, files: dict[str, str | bytes | os.PathLike]) -> None:
    """Write ``files`` (see `save`) into ``directory``; names must stay inside it."""
    for name, content in files.items():
        target = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InputError(f"save(files=...): {name!r} must be a relative name inside the saved directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            target.write_bytes(content)
        elif Path(content).is_dir():
            shutil.copytree(content, target)
        else:
            shutil.copy2(content, target)


def fetch_model(name_or_path: str | os.PathLike) -> Path:
    """The local directory of a model: an embedded model converted once, a directory itself, a hub id
    (``org/name[@revision]``) downloaded once into the hub cache (config, tokenizer, safetensors)."""
    return Path(resolve_model(name_or_path))


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail before any work if ``path`` exists and ``overwrite`` is False."""
    return check_output_dir(path, overwrite)


def checkpoint_bytes(name_or_path: str | os.PathLike) -> int:
    """Bytes of the weight files of a model directory (or embedded model)."""
    return dir_size_bytes(resolve_model(name_or_path))


def info(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint is: architecture, sizes, and its record (the passes that made it, their settings,
    its evaluation's scores; `ModelRecord.from_saved`)."""
    path = Path(resolve_model(name_or_path))
    config = json.loads((path / "config.json").read_text())
    qcfg = config.get("quantization_config")
    rec = ModelRecord.from_saved(config, path)
    manifest = rec.manifest
    saved = rec.saved_config()
    return {
        "path": str(path),
        "model_type": config.get("model_type"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "dtype": config.get("dtype") or config.get("torch_dtype"),
        "weights_bytes": dir_size_bytes(path),
        "quantization": None if manifest is None else {
            "recipe": manifest.recipe.to_dict(),
            "name": manifest.recipe.name,
            "quantized_linears": len(manifest.linears),
            "embeddings": manifest.embeddings.to_dict() if manifest.embeddings else None,
            "skipped": manifest.skipped,
            "compresskit_version": manifest.compresskit_version,
            "base_model": manifest.base_model,
            "evaluation": manifest.evaluation,
            "calibration": None if not manifest.report else {
                k: v for k, v in manifest.report.items() if k != "blocks"},
            "attention_abits": manifest.attention_abits,
        },
        "foreign_quantization": qcfg if qcfg and manifest is None else None,
        "pruning": saved.get("compresskit_pruning"),
        "distillation": saved.get("compresskit_distillation"),
        "passes": [{"pass": p.kind, "name": p.name} for p in rec.passes],
        "evaluation": None if rec.evaluation is None else rec.evaluation.scores(),
        "recipe": rec.recipe,
    }
