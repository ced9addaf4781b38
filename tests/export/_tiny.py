"""Tiny saved checkpoints for the export tests, and a GPTQ/compressed-tensors decoder written here, on
purpose independently of compresskit's packing code: a column's int32 words are one little-endian bit
stream (Python ints), value ``i`` is ``bits`` wide at bit ``i * bits``."""
from __future__ import annotations

from pathlib import Path

import torch
from conftest import make_tiny_model
from safetensors.torch import load_file

import compresskit
from compresskit.kernels.modules import QuantLinear

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 300, 2]])


def saved_quantized(path: Path, tokenizer, *, family: str = "llama", tie: bool = True, wbits: int = 4,
                    group_size: int = 32, sym: bool = False, **cfg):
    """A tiny model quantized (RTN) and saved natively at ``path``; returns ``(model, path)``."""
    model = make_tiny_model(family, tie=tie)
    compresskit.quantize(model, wbits=wbits, group_size=group_size, sym=sym, **cfg)
    compresskit.save(model, tokenizer, path)
    return model, path


def dequantized_linears(model) -> dict[str, torch.Tensor]:
    """name -> float32 [out, in] weight of every QuantLinear, through compresskit's own unpacking."""
    return {n: m.packed().dequantize(torch.float32) for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def decode_stream(words: list[int], bits: int, n: int) -> list[int]:
    """``n`` values of ``bits`` from int32 words read as one little-endian bit stream."""
    stream = 0
    for k, w in enumerate(words):
        stream |= (w & 0xFFFFFFFF) << (32 * k)
    return [(stream >> (i * bits)) & ((1 << bits) - 1) for i in range(n)]


def decode_columns(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """int32 ``[words, cols]`` packed along dim 0 -> int64 ``[n, cols]``."""
    cols = [decode_stream(packed[:, c].tolist(), bits, n) for c in range(packed.shape[1])]
    return torch.tensor(cols, dtype=torch.int64).t()


def decode_gptq(tensors: dict[str, torch.Tensor], name: str, bits: int, v1: bool) -> torch.Tensor:
    """float32 ``[out, in]`` weight of a GPTQ linear: ``scales[g_idx] * (q - z[g_idx])`` (v1: z = stored + 1)."""
    qweight, qzeros = tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"]
    scales, g_idx = tensors[f"{name}.scales"].float(), tensors[f"{name}.g_idx"].long()
    in_f, out_f = qweight.shape[0] * 32 // bits, scales.shape[1]
    q = decode_columns(qweight, bits, in_f)  # [in, out]
    z = decode_columns(qzeros.t(), bits, out_f).t()  # [groups, out]
    if v1:
        z = z + 1
    return (scales[g_idx] * (q - z[g_idx]).float()).t()


def decode_compressed_tensors(tensors: dict[str, torch.Tensor], name: str, bits: int, sym: bool) -> torch.Tensor:
    """float32 ``[out, in]``: ``scale * (q_signed - z_signed)``, signed = stored - 2^(b-1)."""
    out_f, in_f = tensors[f"{name}.weight_shape"].tolist()
    scale = tensors[f"{name}.weight_scale"].float()  # [out, groups]
    offset = 2 ** (bits - 1)
    q = decode_columns(tensors[f"{name}.weight_packed"].t(), bits, in_f).t() - offset  # [out, in]
    z = torch.zeros_like(scale, dtype=torch.int64) if sym else \
        decode_columns(tensors[f"{name}.weight_zero_point"], bits, out_f) - offset  # [out, groups]
    group = in_f // scale.shape[1]
    g = torch.arange(in_f) // group
    return scale[:, g] * (q - z[:, g]).float()


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model(IDS).logits.float()
