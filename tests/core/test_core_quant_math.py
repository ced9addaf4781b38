"""core.quant_math against a per-group loop reference, plus error bounds, SQNR ordering and errors."""
from __future__ import annotations

import pytest
import torch

from compresskit.core.quant_math import (
    compute_qparams,
    dequantize,
    fake_quantize,
    group_index,
    num_groups,
    quantize,
    quantize_rows_int8,
    sqnr_db,
)



def gaussian(out_f, in_f, seed=0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) * std


def loop_reference(w: torch.Tensor, bits: int, group_size: int, sym: bool):
    """One row and one group at a time, straight from the documented conventions."""
    maxq = 2**bits - 1
    out_f, in_f = w.shape
    gs = in_f if group_size == -1 else group_size
    bounds = [(s, min(s + gs, in_f)) for s in range(0, in_f, gs)]
    scale = torch.empty(out_f, len(bounds))
    zero = torch.empty(out_f, len(bounds), dtype=torch.int32)
    q = torch.empty(out_f, in_f, dtype=torch.uint8)
    deq = torch.empty(out_f, in_f)
    for r in range(out_f):
        for g, (a, b) in enumerate(bounds):
            seg = w[r, a:b].float()
            lo = torch.clamp(seg.min(), max=0.0)
            hi = torch.clamp(seg.max(), min=0.0)
            if sym:
                s = 2 * torch.maximum(-lo, hi) / maxq
            else:
                s = (hi - lo) / maxq
            s = torch.clamp(s, min=1e-5).half().float()
            z = torch.tensor(float(2 ** (bits - 1))) if sym else torch.clamp(torch.round(-lo / s), 0, maxq)
            codes = torch.clamp(torch.round(seg / s) + z, 0, maxq)
            scale[r, g], zero[r, g] = s, int(z)
            q[r, a:b] = codes.to(torch.uint8)
            deq[r, a:b] = s * (codes - z)
    return scale, zero, q, deq


CASES = [
    # (out, in, bits, group_size)
    (8, 128, 4, 32),
    (8, 128, 4, 64),
    (6, 128, 3, 128),
    (5, 64, 2, 32),
    (4, 256, 8, 128),
    (7, 96, 4, -1),
]



@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("out_f,in_f,bits,group_size", CASES)
def test_matches_loop_reference(out_f, in_f, bits, group_size, sym):
    w = gaussian(out_f, in_f, seed=out_f * in_f + bits)
    w[0, :5] = 0.0  # a few exact zeros
    if out_f > 2:
        w[2] = w[2].abs() + 0.1  # an all-positive row: the range must still include 0
        w[1] = -w[1].abs() - 0.1  # an all-negative row
    scale, zero = compute_qparams(w, bits, group_size, sym)
    q = quantize(w, scale, zero, bits, group_size)
    deq = dequantize(q, scale, zero, group_size)
    rs, rz, rq, rdeq = loop_reference(w, bits, group_size, sym)
    assert scale.dtype == torch.float32 and zero.dtype == torch.int32 and q.dtype == torch.uint8
    assert torch.equal(scale, rs)
    assert torch.equal(zero, rz)
    assert torch.equal(q, rq)
    torch.testing.assert_close(deq, rdeq, rtol=0, atol=0)
    assert int(q.max()) <= 2**bits - 1 and int(zero.min()) >= 0 and int(zero.max()) <= 2**bits - 1
    torch.testing.assert_close(fake_quantize(w, bits, group_size, sym), deq, rtol=0, atol=0)


@pytest.mark.parametrize("sym", [False, True])
def test_ragged_last_group(sym):
    w = gaussian(6, 96, seed=3)
    w[:, 64:] *= 5  # make the short group's range clearly different from the first
    scale, zero = compute_qparams(w, 4, 64, sym)
    assert scale.shape == (6, 2) == zero.shape
    rs, rz, rq, rdeq = loop_reference(w, 4, 64, sym)
    assert torch.equal(scale, rs) and torch.equal(zero, rz)
    q = quantize(w, scale, zero, 4, 64)
    assert torch.equal(q, rq)
    assert torch.equal(dequantize(q, scale, zero, 64), rdeq)
    # the last group's scale comes from columns 64..95 only
    expect_last = ((w[:, 64:].amax(1).clamp(min=0) - w[:, 64:].amin(1).clamp(max=0)) / 15).half().float()
    if not sym:
        assert torch.equal(scale[:, 1], expect_last)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
def test_error_bounded_by_half_scale_inside_clip_range(bits, sym):
    w = gaussian(16, 256, seed=bits)
    gs = 64
    scale, zero = compute_qparams(w, bits, gs, sym)
    q = quantize(w, scale, zero, bits, gs)
    deq = dequantize(q, scale, zero, gs)
    s = scale.repeat_interleave(gs, dim=1)
    z = zero.float().repeat_interleave(gs, dim=1)
    lo = s * (0 - z) - s / 2
    hi = s * (2**bits - 1 - z) + s / 2
    inside = (w >= lo) & (w <= hi)
    err = (deq - w).abs()
    assert torch.all(err[inside] <= s[inside] / 2 * (1 + 1e-5) + 1e-7)
    if not sym:
        # asymmetric min/max covers every value (up to the fp16 rounding of the scale)
        assert inside.float().mean() > 0.99
    else:
        # symmetric: only the top of the positive side can clip
        assert torch.all(w[~inside] > 0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_sym_zero_point(bits):
    w = gaussian(4, 64, seed=11)
    scale, zero = compute_qparams(w, bits, 32, sym=True)
    assert torch.all(zero == 2 ** (bits - 1))
    absmax = w.reshape(4, 2, 32).abs().amax(2)
    torch.testing.assert_close(scale, (2 * absmax / (2**bits - 1)).half().float(), rtol=0, atol=0)


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("bits", [3, 4])
def test_per_channel_equals_full_width_group(bits, sym):
    w = gaussian(10, 128, seed=5)
    s1, z1 = compute_qparams(w, bits, -1, sym)
    s2, z2 = compute_qparams(w, bits, 128, sym)
    assert s1.shape == (10, 1)
    assert torch.equal(s1, s2) and torch.equal(z1, z2)
    q1 = quantize(w, s1, z1, bits, -1)
    q2 = quantize(w, s2, z2, bits, 128)
    assert torch.equal(q1, q2)
    assert torch.equal(dequantize(q1, s1, z1, -1), dequantize(q2, s2, z2, 128))


def test_scales_are_fp16_exact():
    w = gaussian(32, 128, seed=9, std=0.037)
    for sym in (False, True):
        for bits in (2, 3, 4, 8):
            scale, _ = compute_qparams(w, bits, 32, sym)
            assert torch.equal(scale, scale.half().float())


def test_constant_group_uses_minimum_scale():
    w = torch.zeros(2, 64)
    w[1] = 0.25
    scale, zero = compute_qparams(w, 4, 32, sym=False)
    assert torch.all(scale[0] > 0)  # no division by zero
    deq = fake_quantize(w, 4, 32)
    assert torch.all(torch.isfinite(deq))
    torch.testing.assert_close(deq, w, atol=0.25 / 15 / 2 + 1e-4, rtol=0)
    assert torch.equal(deq[0], w[0])


def test_sqnr_ordering():
    w = gaussian(256, 512, seed=42, std=0.02)
    sq = {b: sqnr_db(w, fake_quantize(w, b, 64)) for b in (2, 3, 4, 8)}
    assert sq[8] > sq[4] > sq[3] > sq[2]
    assert sq[8] > 40
    assert sq[4] > 15
    assert sq[3] > 10
    assert sq[2] > 4
    # independent SQNR computation agrees with sqnr_db
    deq = fake_quantize(w, 4, 64).double()
    manual = 10 * torch.log10((w.double() ** 2).sum() / ((w.double() - deq) ** 2).sum())
    assert sq[4] == pytest.approx(float(manual), rel=1e-9)
    # smaller groups are at least as good
    assert sqnr_db(w, fake_quantize(w, 4, 32)) > sqnr_db(w, fake_quantize(w, 4, -1))


def test_fake_quantize_keeps_dtype():
    w = gaussian(4, 64, seed=1).to(torch.bfloat16)
    out = fake_quantize(w, 4, 32)
    assert out.dtype == torch.bfloat16 and out.shape == w.shape


def test_group_index_and_num_groups():
    assert num_groups(128, 32) == 4
    assert num_groups(96, 64) == 2
    assert num_groups(1000, -1) == 1
    gi = group_index(96, 64)
    assert gi.dtype == torch.int32
    assert gi.tolist() == [0] * 64 + [1] * 32
    assert group_index(40, -1).tolist() == [0] * 40


def test_quantize_rows_int8():
    w = gaussian(50, 64, seed=4, std=0.05)
    w[3] = 0.0  # an all-zero row
    q, scale = quantize_rows_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == torch.float16 and scale.shape == (50,)
    assert int(q.abs().max()) <= 127
    s = scale.float()
    expected = (w.abs().amax(1) / 127).clamp(min=1e-5)
    torch.testing.assert_close(s, expected.half().float(), rtol=0, atol=0)
    err = (q.float() * s[:, None] - w).abs()
    assert torch.all(err <= s[:, None] / 2 * (1 + 1e-5) + 1e-9)
    assert torch.all(q[3] == 0)
    # the largest element of every non-zero row maps to +-127 (or 126 after the fp16 rounding of the scale)
    nz = [r for r in range(50) if r != 3]
    assert torch.all(q[nz].abs().amax(1) >= 126)


def test_shape_errors():
    with pytest.raises(ValueError, match="2-D"):
        compute_qparams(torch.zeros(64), 4, 32, False)
    with pytest.raises(ValueError, match="2-D"):
        compute_qparams(torch.zeros(2, 2, 64), 4, 32, False)
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows_int8(torch.zeros(64))
    w = gaussian(4, 64)
    scale, zero = compute_qparams(w, 4, 32, False)
    with pytest.raises(ValueError, match="do not match"):
        quantize(w, scale, zero, 4, 64)  # 2 groups given, 1 expected
    with pytest.raises(ValueError, match="do not match"):
        quantize(w, scale[:, :1], zero, 4, 32)
    with pytest.raises(ValueError, match="do not match"):
        quantize(w[:3], scale, zero, 4, 32)


@pytest.mark.parametrize("shape,group_size", [((64, 96), 64), ((64, 128), 32), ((32, 64), -1)])
def test_straight_through_fake_quant_matches_the_integer_path_and_passes_gradients(shape, group_size):
    from compresskit.core.quant_math import fake_quantize_ste

    w = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    scale, zero = compute_qparams(w, 3, group_size, False)
    expected = dequantize(quantize(w, scale, zero, 3, group_size), scale, zero, group_size)
    w_req, s_req = w.clone().requires_grad_(True), scale.clone().requires_grad_(True)
    out = fake_quantize_ste(w_req, s_req, zero, 3, group_size)
    assert torch.equal(out.detach(), expected)
    out.sum().backward()
    assert w_req.grad is not None and s_req.grad is not None and s_req.grad.abs().sum() > 0
