"""The C CPU kernels against the torch reference: every width, group sizes, odd shapes, poisoned outputs."""
from __future__ import annotations

import pytest
import torch
from _packed import CASES, ROWS, random_packed, rel_err

from compresskit.core.quant_math import quantize_rows_int8
from compresskit.kernels import cpu_native, reference

pytestmark = pytest.mark.skipif(cpu_native.unavailable_reason() is not None,
                                reason=f"no CPU kernels here: {cpu_native.unavailable_reason()}")


@pytest.mark.parametrize("bits,group_size,in_f,out_f", CASES)
def test_gemv_and_chunked_prefill_match_reference(bits, group_size, in_f, out_f):
    packed = random_packed(out_f, in_f, bits, group_size, seed=bits)
    w = cpu_native.prepare(packed)
    g = torch.Generator().manual_seed(1)
    for rows in ROWS:
        x = torch.randn(rows, in_f, generator=g)
        ref = reference.gptq_linear(x, packed)
        if rows <= 17:  # the GEMV itself, into a poisoned buffer: unwritten elements stay NaN
            out = torch.full((rows, out_f), float("nan"))
            cpu_native.gemv(x, w, out=out)
            assert rel_err(out, ref) < 1e-5, rows
        assert rel_err(cpu_native.matmul(x, w), ref) < 1e-5, rows


@pytest.mark.parametrize("bits,group_size", [(4, 64), (3, 32), (2, -1), (8, 128)])
def test_dequant_tiles_is_the_dense_weight(bits, group_size):
    packed = random_packed(160, 256, bits, group_size)  # 3 tiles of 64 columns, the last one half padding
    w = cpu_native.prepare(packed)
    assert w.qt.shape[0] == 3 and w.qt.shape[2] == 64
    dense = packed.dequantize(torch.float32)
    out = torch.full((256, 128), float("nan"))
    cpu_native.dequant_tiles(w, 1, 3, out=out)
    torch.testing.assert_close(out[:, :96], dense[64:160].t(), rtol=0, atol=1e-7)
    assert torch.equal(out[:, 96:], torch.zeros(256, 32))  # padding columns have scale 0
    with pytest.raises(ValueError, match="outside"):
        cpu_native.dequant_tiles(w, 2, 4)


def test_chunked_prefill_splits_tiles(monkeypatch):
    monkeypatch.setattr(cpu_native, "CHUNK_ELEMENTS", 64 * 128)  # one 64-column tile per chunk
    packed = random_packed(160, 128, 4, 32)  # 3 tiles, the last one partial
    x = torch.randn(20, 128)
    assert rel_err(cpu_native.matmul(x, cpu_native.prepare(packed)), reference.gptq_linear(x, packed)) < 1e-5


def test_int8_rows_matches_reference():
    table = torch.randn(1000, 96)
    q, scale = quantize_rows_int8(table)
    x = torch.randn(3, 96)
    out = torch.full((3, 1000), float("nan"))
    cpu_native.int8_rows(x, q, scale, out=out)
    assert rel_err(out, reference.int8_rows_linear(x, q, scale)) < 1e-6


def test_bad_inputs_are_refused_with_the_shape():
    w = cpu_native.prepare(random_packed(64, 128, 4, 32))
    with pytest.raises(ValueError, match=r"\[rows, 128\]"):
        cpu_native.gemv(torch.randn(2, 64), w)
    with pytest.raises(ValueError, match="float32"):
        cpu_native.gemv(torch.randn(2, 128, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="out must be"):
        cpu_native.gemv(torch.randn(2, 128), w, out=torch.empty(2, 63))


def test_group_size_must_start_on_word_boundaries():
    assert cpu_native.group_size_ok(4, 64) and cpu_native.group_size_ok(3, 32) and cpu_native.group_size_ok(8, -1)
    assert not cpu_native.group_size_ok(2, 24) and not cpu_native.group_size_ok(4, 36)


def test_build_failure_and_opt_out_give_reasons(monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_NO_NATIVE", "1")
    cpu_native.library.cache_clear()
    try:
        assert "COMPRESSKIT_NO_NATIVE" in cpu_native.unavailable_reason()
        monkeypatch.delenv("COMPRESSKIT_NO_NATIVE")
        monkeypatch.setenv("CC", "/nonexistent/cc")
        monkeypatch.setattr(cpu_native.shutil, "which", lambda name: None)
        with pytest.raises(cpu_native.NativeUnavailable, match="no C compiler"):
            cpu_native._compiler()
    finally:
        cpu_native.library.cache_clear()
