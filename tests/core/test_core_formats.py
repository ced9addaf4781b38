"""core.formats: GPTQPacked pack/unpack/dequantize, tensor specs, GPTQ layout, layer shape checks."""
from __future__ import annotations

import re

import pytest
import torch

from compresskit.core.config import ConfigError
from compresskit.core.formats import GPTQPacked, Int8Rows, check_layer_shape
from compresskit.core.quant_math import compute_qparams, dequantize, quantize, quantize_rows_int8



SHAPES = [
    # (in, out, bits, group_size)
    (128, 64, 4, 32),
    (128, 96, 4, 128),
    (256, 64, 3, 64),
    (96, 64, 3, -1),
    (64, 48, 2, 32),
    (128, 40, 8, 64),
    (96, 32, 4, 64),  # ragged last group
    (128, 24, 4, -1),
]


def _random_triple(in_f, out_f, bits, group_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size == -1 else -(-in_f // group_size)
    q = torch.randint(0, 2**bits, (out_f, in_f), generator=g).to(torch.uint8)
    zero = torch.randint(0, 2**bits, (out_f, groups), generator=g).to(torch.int32)
    scale = (torch.rand(out_f, groups, generator=g) * 0.1 + 1e-3).half().float()
    return q, scale, zero


@pytest.mark.parametrize("in_f,out_f,bits,group_size", SHAPES)
def test_pack_unpack_round_trip_and_specs(in_f, out_f, bits, group_size):
    q, scale, zero = _random_triple(in_f, out_f, bits, group_size, seed=in_f + out_f + bits)
    packed = GPTQPacked.pack(q, scale, zero, bits, group_size)
    assert (packed.in_features, packed.out_features, packed.bits, packed.group_size) == (in_f, out_f, bits, group_size)

    q2, zero2, scale2 = packed.unpack()
    assert torch.equal(q2, q)
    assert torch.equal(zero2.to(torch.int32), zero)
    assert scale2.dtype == torch.float16
    assert torch.equal(scale2.float(), scale)

    torch.testing.assert_close(packed.dequantize(), dequantize(q, scale, zero, group_size), rtol=0, atol=0)
    assert packed.dequantize(torch.bfloat16).dtype == torch.bfloat16

    specs = GPTQPacked.tensor_specs(in_f, out_f, bits, group_size)
    tensors = packed.tensors()
    assert set(specs) == set(tensors) == set(GPTQPacked.TENSORS)
    for name, (shape, dtype) in specs.items():
        assert tuple(tensors[name].shape) == tuple(shape), name
        assert tensors[name].dtype == dtype, name
    # the shapes written out independently
    groups = 1 if group_size == -1 else -(-in_f // group_size)
    assert specs["qweight"][0] == (in_f * bits // 32, out_f)
    assert specs["qzeros"][0] == (groups, out_f * bits // 32)
    assert specs["scales"][0] == (groups, out_f)
    assert specs["g_idx"][0] == (in_f,)
    int32_words = (in_f * bits // 32) * out_f + groups * (out_f * bits // 32) + in_f
    assert packed.nbytes == 4 * int32_words + 2 * groups * out_f


def test_g_idx():
    q, scale, zero = _random_triple(96, 32, 4, 64)
    packed = GPTQPacked.pack(q, scale, zero, 4, 64)
    assert packed.g_idx.dtype == torch.int32
    assert packed.g_idx.tolist() == [0] * 64 + [1] * 32
    q, scale, zero = _random_triple(64, 32, 4, -1)
    assert GPTQPacked.pack(q, scale, zero, 4, -1).g_idx.tolist() == [0] * 64


def test_gptq_4bit_layout():
    """qweight is packed along the input dim: input row i of output column o sits in qweight[i // 8, o]
    at bit 4 * (i % 8); qzeros is packed along the output dim within each group row."""
    in_f, out_f = 32, 16
    q = ((torch.arange(in_f)[None, :] + 3 * torch.arange(out_f)[:, None]) % 16).to(torch.uint8)  # [out, in]
    zero = ((torch.arange(out_f)[:, None] * 5 + torch.arange(2)[None, :] * 7) % 16).to(torch.int32)  # [out, 2]
    scale = torch.full((out_f, 2), 0.5)
    p = GPTQPacked.pack(q, scale, zero, 4, 16)
    assert p.qweight.shape == (4, 16) and p.qzeros.shape == (2, 2)
    for o in range(out_f):
        for i in range(in_f):
            word = int(p.qweight[i // 8, o]) & 0xFFFFFFFF
            assert (word >> (4 * (i % 8))) & 0xF == int(q[o, i])
    for g in range(2):
        for o in range(out_f):
            word = int(p.qzeros[g, o // 8]) & 0xFFFFFFFF
            assert (word >> (4 * (o % 8))) & 0xF == int(zero[o, g])
    torch.testing.assert_close(p.scales, scale.t().half())


def test_rtn_triple_round_trip():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 128, generator=g) * 0.02
    scale, zero = compute_qparams(w, 3, 64, sym=False)
    q = quantize(w, scale, zero, 3, 64)
    p = GPTQPacked.pack(q, scale, zero, 3, 64)
    torch.testing.assert_close(p.dequantize(), dequantize(q, scale, zero, 64), rtol=0, atol=0)


def test_pack_rejects_mismatched_qparams():
    q, scale, zero = _random_triple(128, 32, 4, 32)
    with pytest.raises(ValueError, match="do not fit"):
        GPTQPacked.pack(q, scale, zero, 4, 64)
    with pytest.raises(ValueError, match="do not fit"):
        GPTQPacked.pack(q, scale, zero[:, :2], 4, 32)


def test_int8_rows_dequantize():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(20, 16, generator=g)
    q, s = quantize_rows_int8(w)
    rows = Int8Rows(q, s)
    expect = torch.stack([q[r].float() * float(s[r]) for r in range(20)])
    torch.testing.assert_close(rows.dequantize(), expect, rtol=0, atol=0)
    assert rows.dequantize(torch.float16).dtype == torch.float16


def _listed_sizes(msg: str) -> list[int]:
    m = re.search(r"divides it \(([^)]*)\)", msg)
    assert m, msg
    return [int(x) for x in m.group(1).split(",")]


def test_check_layer_shape_group_not_dividing():
    with pytest.raises(ConfigError) as ei:
        check_layer_shape("model.layers.0.self_attn.q_proj", 576, 576, 4, 128, ragged_last_group=False)
    msg = str(ei.value)
    assert "q_proj" in msg and "576" in msg and "128" in msg and "ragged_last_group" in msg
    sizes = _listed_sizes(msg)
    assert 64 in sizes and 192 in sizes and 128 not in sizes
    assert all(576 % s == 0 and s % 32 == 0 for s in sizes)


def test_check_layer_shape_accepts():
    check_layer_shape("x", 576, 576, 4, 128, ragged_last_group=True)  # ragged allowed
    check_layer_shape("x", 576, 576, 4, 64, ragged_last_group=False)  # divides
    check_layer_shape("x", 576, 576, 4, -1, ragged_last_group=False)  # per channel
    check_layer_shape("x", 96, 32, 3, 32, ragged_last_group=False)


@pytest.mark.parametrize(
    "in_f,out_f,bits,what",
    [
        (100, 64, 4, "in_features=100"),  # 4-bit block is 8 values
        (64, 36, 4, "out_features=36"),
        (80, 64, 3, "in_features=80"),  # 3-bit block is 32 values
        (64, 48, 3, "out_features=48"),
        (64, 24, 2, "out_features=24"),  # 2-bit block is 16 values

        (66, 64, 8, "in_features=66"),  # 8-bit block is 4 values
    ],
)
def test_check_layer_shape_packing_block(in_f, out_f, bits, what):
    with pytest.raises(ConfigError, match=what) as ei:
        check_layer_shape("model.layers.1.mlp.down_proj", in_f, out_f, bits, -1, ragged_last_group=True)
    assert "down_proj" in str(ei.value) and "skip" in str(ei.value)
