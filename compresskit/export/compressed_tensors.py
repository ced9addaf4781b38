"""Export to compressed-tensors ``pack-quantized`` (vLLM's fast path for asymmetric 4/8-bit, llm-compressor).

Per linear: ``weight_packed`` int32 ``[out, in * b / 32]`` (codes packed along the input, the transpose of
GPTQ's qweight), ``weight_scale`` ``[out, groups]``, ``weight_zero_point`` int32 ``[out * b / 32, groups]``
(asymmetric only, packed along the output) and ``weight_shape`` int64 ``[out, in]``. Codes and zero points
are stored SIGNED, ``v - 2^(b-1)``, and packed with the ``2^(b-1)`` offset added back, dense
little-endian like GPTQ (32 values in ``b`` words). Dequantization is ``scale * (q_s - z_s)``, which is
``scale * (q - z)``: the same weights, bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..core.packing import pack_int, unpack_int
from .source import (
    FLOAT_DTYPES, NativeSource, NotExpressibleError, activation_notes, check_groups, dense_tensors, export_record,
    pruning_notes, uniform_entry, write_export,
)

CT_BITS = (2, 3, 4, 8)  # what compressed-tensors packs (densely) and transformers' loader reads
VLLM_BITS = (4, 8)  # what vLLM's kernels for this format run
FORMAT = "pack-quantized"


def to_signed(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes ``[0, 2^b)`` -> compressed-tensors' signed storage ``[-2^(b-1), 2^(b-1))`` (int8)."""
    v = values.to(torch.int16)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits} bits: [{int(v.min())}, {int(v.max())}]")
    return (v - 2 ** (bits - 1)).to(torch.int8)


def from_signed(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of `to_signed` (uint8)."""
    return (values.to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8)


def pack_signed(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed int8 ``[..., n]`` packed along the last dim into int32, offset by ``2^(b-1)`` (as
    compressed-tensors' ``pack_to_int32`` stores them)."""
    return pack_int(from_signed(values, bits), bits)


def unpack_signed(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_signed`: int32 ``[..., m]`` -> int8 ``[..., n]``."""
    return to_signed(unpack_int(packed, bits, n), bits)


def pack_quantized(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int, sym: bool,
                   dtype: torch.dtype, layer: str = "layer") -> dict[str, torch.Tensor]:
    """One linear's GPTQ-layout tensors (``qweight [in*b/32, out]``, ``qzeros [groups, out*b/32]``,
    ``scales [groups, out]``) -> its pack-quantized tensors (names without the module prefix)."""
    groups, out_f = scales.shape
    in_f = qweight.shape[0] * 32 // bits
    if qweight.shape[1] != out_f or qzeros.shape[0] != groups:
        raise ValueError(f"{layer}: qweight {tuple(qweight.shape)}, qzeros {tuple(qzeros.shape)} and scales "
                         f"{tuple(scales.shape)} do not describe one linear")
    codes = unpack_int(qweight.t(), bits, in_f)  # [out, in] unsigned
    zeros = unpack_int(qzeros, bits, out_f).t()  # [out, groups] unsigned
    out = {
        "weight_packed": pack_signed(to_signed(codes, bits), bits).contiguous(),
        "weight_scale": scales.t().to(dtype).contiguous(),
        "weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64),
    }
    if sym:
        if not bool((zeros == 2 ** (bits - 1)).all()):
            raise ValueError(f"{layer}: a symmetric layer must have every zero point at 2^(bits-1)")
    else:
        out["weight_zero_point"] = pack_signed(to_signed(zeros, bits).t().contiguous(), bits).t().contiguous()
    return out


def weight_scheme(bits: int, group_size: int, sym: bool) -> dict[str, Any]:
    return {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False, "actorder": None,
            "group_size": None if group_size == -1 else group_size,
            "strategy": "channel" if group_size == -1 else "group", "observer": "minmax"}


def quantization_config(bits: int, group_size: int, sym: bool, ignore: list[str]) -> dict[str, Any]:
    """config.json's ``quantization_config`` for compressed-tensors (read by transformers and vLLM)."""
    if bits not in CT_BITS:
        raise NotExpressibleError(f"compressed-tensors pack-quantized stores {', '.join(map(str, CT_BITS))}-bit "
                                  f"weights, not {bits}-bit")
    return {
        "quant_method": "compressed-tensors",
        "format": FORMAT,
        "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weight_scheme(bits, group_size, sym),
                                      "input_activations": None, "output_activations": None, "format": FORMAT}},
        "ignore": ignore,
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "transform_config": {},
        "global_compression_ratio": None,
    }


def export_compressed_tensors(source: NativeSource, output: str | Path, *, dtype: str = "float16",
                              weights_only: bool = False, overwrite: bool = False,
                              finalize: Callable[[Path], None] | None = None) -> tuple[Path, list[str]]:
    """Write ``source`` as a compressed-tensors pack-quantized checkpoint in ``output``."""
    what = "compressed-tensors"
    manifest = source.require_quantized(what)
    entry = uniform_entry(manifest, what)
    notes = activation_notes(manifest, what, weights_only) + pruning_notes(source)
    if entry.bits not in VLLM_BITS:
        notes.append(f"{entry.bits}-bit pack-quantized loads in transformers (compressed-tensors decompresses it), but "
                     f"vLLM's kernels for this format run {' and '.join(map(str, VLLM_BITS))}-bit only; --format gptq "
                     "serves 2/3-bit weights there")
    tensors = source.tensors()
    check_groups(manifest, tensors, what)
    float_dtype = FLOAT_DTYPES[dtype]
    _, every = source.block_linears()
    ignore = ["lm_head"] + [n for n in every if n not in manifest.linears]
    if len(ignore) > 1:
        notes.append(f"{len(ignore) - 1} block linears stay in float (listed in ignore)")
    out: dict[str, torch.Tensor] = {}
    skip = set()
    for name, e in manifest.linears.items():
        packed = pack_quantized(tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"], tensors[f"{name}.scales"],
                                e.bits, e.sym, float_dtype, name)
        out.update({f"{name}.{k}": v for k, v in packed.items()})
        skip |= {f"{name}.{t}" for t in ("qweight", "qzeros", "scales", "g_idx")}
    dense, dense_notes = dense_tensors(source, float_dtype, skip)
    dense.update(out)
    notes += dense_notes
    config = {k: v for k, v in source.config.items() if k != "quantization_config"}
    config["dtype"] = dtype
    config["quantization_config"] = quantization_config(entry.bits, entry.group_size, entry.sym, ignore)
    config["compresskit_export"] = export_record(source, "compressed-tensors", notes)
    return write_export(source, output, dense, config, overwrite=overwrite, finalize=finalize), notes
