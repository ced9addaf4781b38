"""Export to the GPTQ checkpoint format (read by transformers + optimum + GPTQModel, vLLM, SGLang).

compresskit's native linears already are the GPTQ layout with exact zero points, so ``gptq_v2``
(GPTQModel's exact-zero format) is a renaming. The classic v1 format (``checkpoint_format: "gptq"``,
what AutoGPTQ wrote and most engines expect) stores ``zero - 1``; a zero point of 0 cannot be stored
there, and asymmetric min/max quantization produces one whenever a group's weights are all >= 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..core.errors import InputError
from ..core.packing import pack_int, unpack_int
from ..core.version import __version__
from .source import (
    FLOAT_DTYPES, NativeSource, NotExpressibleError, activation_notes, check_groups, dense_tensors, export_record,
    pruning_notes, uniform_entry, write_export,
)

GPTQ_BITS = (2, 3, 4, 8)
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")  # v1 (zero - 1) and v2 (exact zero)
QUANTIZER = f"compresskit:{__version__}"


def zeros_v2_to_v1(qzeros: torch.Tensor, bits: int, out_features: int, layer: str = "layer") -> torch.Tensor:
    """v2 ``qzeros`` (exact zero points, int32 ``[groups, out * bits / 32]``) -> v1 (``zero - 1``).

    Raises `NotExpressibleError` naming the layer, group and output channel of a zero point of 0."""
    groups = qzeros.shape[0]
    if qzeros.dim() != 2 or qzeros.dtype != torch.int32:
        raise ValueError(f"{layer}: qzeros must be int32 [groups, packed], got {qzeros.dtype} {tuple(qzeros.shape)}")
    z = unpack_int(qzeros, bits, out_features).to(torch.int16)
    zero = (z == 0).nonzero()
    if zero.numel():
        g, o = (int(v) for v in zero[0])
        raise NotExpressibleError(
            f"{layer}: zero point 0 (group {g}, output channel {o}; {zero.shape[0]} such zero points in this layer) "
            "cannot be stored in GPTQ v1, which stores zero - 1. Export --format gptq (gptq_v2, exact zero points; "
            "GPTQModel and vLLM read it), or quantize with --sym (zero points fixed at 2^(bits-1))")
    out = pack_int(z - 1, bits)
    assert out.shape == (groups, qzeros.shape[1])
    return out


def zeros_v1_to_v2(qzeros: torch.Tensor, bits: int, out_features: int) -> torch.Tensor:
    """Inverse of `zeros_v2_to_v1` (what a v1 loader does: add 1 back)."""
    z = unpack_int(qzeros, bits, out_features).to(torch.int16)
    if int(z.max()) >= 2**bits - 1:
        raise ValueError("a v1 zero point of 2^bits - 1 would be 2^bits after adding 1: not a valid v1 tensor")
    return pack_int(z + 1, bits)


def quantization_config(bits: int, group_size: int, sym: bool, checkpoint_format: str,
                        modules_in_block: list[list[str]] | None = None, damp_percent: float = 0.01) -> dict[str, Any]:
    """config.json's ``quantization_config`` as transformers/optimum/GPTQModel and vLLM read it."""
    if bits not in GPTQ_BITS:
        raise NotExpressibleError(f"GPTQ stores {', '.join(map(str, GPTQ_BITS))}-bit weights, not {bits}-bit")
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise InputError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
    cfg: dict[str, Any] = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": group_size,
        "sym": sym,
        "desc_act": False,  # compresskit's g_idx is always i // group_size
        "checkpoint_format": checkpoint_format,
        "format": checkpoint_format,
        "pack_dtype": "int32",
        "lm_head": False,
        "true_sequential": True,
        "damp_percent": damp_percent,
        "static_groups": False,
        "meta": {"quantizer": [QUANTIZER], "damp_percent": damp_percent, "static_groups": False,
                 "true_sequential": True},
    }
    if modules_in_block is not None:
        cfg["modules_in_block_to_quantize"] = modules_in_block
    return cfg


def modules_in_block(source: NativeSource) -> list[list[str]] | None:
    """None when every block linear is quantized; else the block-relative names quantized in every block
    (GPTQ configs name one set for all blocks), or an error when the skipped set varies by block."""
    blocks, every = source.block_linears()
    linears = set(source.manifest.linears)
    missing = [n for n in every if n not in linears]
    if not missing:
        return None
    prefix = blocks + "."
    per_block: dict[int, set[str]] = {}
    for name in every:
        idx, rel = name[len(prefix):].split(".", 1)
        if name in linears:
            per_block.setdefault(int(idx), set()).add(rel)
    sets = {frozenset(v) for v in per_block.values()}
    if len(sets) > 1 or len(per_block) != int(source.config["num_hidden_layers"]):
        raise NotExpressibleError(
            f"GPTQ's config quantizes the same linears in every block, but this checkpoint keeps {missing[0]} "
            f"(and {len(missing) - 1} more) in float only in some blocks; export --format compressed-tensors "
            "(its ignore list names single modules) instead")
    kept = next(iter(sets))
    order = [rel for name in every[: len(every) // int(source.config["num_hidden_layers"])]
             if (rel := name[len(prefix):].split(".", 1)[1]) in kept]
    return [order]


def gptq_tensors(source: NativeSource, checkpoint_format: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The GPTQ tensors of every quantized linear (zero points rewritten for v1), scales and biases in
    ``dtype`` (scales are fp16 values, exact in float16 and float32)."""
    tensors, out = source.tensors(), {}
    for name, e in source.manifest.linears.items():
        qzeros = tensors[f"{name}.qzeros"]
        out_features = tensors[f"{name}.scales"].shape[1]
        if checkpoint_format == "gptq":
            qzeros = zeros_v2_to_v1(qzeros, e.bits, out_features, name)
        out[f"{name}.qweight"] = tensors[f"{name}.qweight"].to(torch.int32).contiguous()
        out[f"{name}.qzeros"] = qzeros.to(torch.int32).contiguous()
        out[f"{name}.scales"] = tensors[f"{name}.scales"].to(dtype).contiguous()
        out[f"{name}.g_idx"] = tensors[f"{name}.g_idx"].to(torch.int32).contiguous()
        if f"{name}.bias" in tensors:
            out[f"{name}.bias"] = tensors[f"{name}.bias"].to(dtype).contiguous()
    return out


def export_gptq(source: NativeSource, output: str | Path, *, checkpoint_format: str = "gptq_v2",
                dtype: str = "float16", weights_only: bool = False, overwrite: bool = False,
                finalize: Callable[[Path], None] | None = None) -> tuple[Path, list[str]]:
    """Write ``source`` as a GPTQ checkpoint in ``output``; returns the path and notes on what changed."""
    what = "GPTQ" + (" v1" if checkpoint_format == "gptq" else "")
    manifest = source.require_quantized(what)
    entry = uniform_entry(manifest, what)
    if entry.bits not in GPTQ_BITS:
        raise NotExpressibleError(f"GPTQ stores {', '.join(map(str, GPTQ_BITS))}-bit weights; this checkpoint "
                                  f"has {entry.bits}-bit weights")
    notes = activation_notes(manifest, what, weights_only) + pruning_notes(source)
    check_groups(manifest, source.tensors(), what)
    if entry.group_size == -1:
        notes.append("per-channel weights (group_size -1): GPTQModel 7.7's CPU kernel for them (TorchFusedLinear) "
                     "computes wrong outputs although it dequantizes these tensors correctly (docs/formats.md); on "
                     "CPU prefer a group size, or --format compressed-tensors")
    blocks = modules_in_block(source)
    if blocks is not None:
        notes.append(f"only {', '.join(blocks[0])} are quantized in each block (modules_in_block_to_quantize)")
    float_dtype = FLOAT_DTYPES[dtype]
    qtensors = gptq_tensors(source, checkpoint_format, float_dtype)
    skip = {f"{n}.{t}" for n in manifest.linears for t in ("qweight", "qzeros", "scales", "g_idx", "bias")}
    tensors, dense_notes = dense_tensors(source, float_dtype, skip)
    tensors.update(qtensors)
    notes += dense_notes
    config = {k: v for k, v in source.config.items() if k != "quantization_config"}
    config["dtype"] = dtype
    damp = getattr(manifest.recipe, "damp", 0.01)
    config["quantization_config"] = quantization_config(entry.bits, entry.group_size, entry.sym, checkpoint_format,
                                                        blocks, damp_percent=damp)
    config["compresskit_export"] = export_record(source, "gptq-v1" if checkpoint_format == "gptq" else "gptq", notes)
    return write_export(source, output, tensors, config, overwrite=overwrite, finalize=finalize), notes
