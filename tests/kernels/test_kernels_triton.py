"""The Triton kernels under the interpreter (TRITON_INTERPRET=1, set in conftest before triton is
imported) against the torch reference: every width, group sizes, odd shapes, fp16 and fp32, rows on
both the GEMV (<= 8) and the GEMM path, outputs poisoned with NaN so unwritten elements fail."""
from __future__ import annotations

import os

import pytest
import torch
from _packed import CASES, ROWS, random_packed, rel_err

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("needs TRITON_INTERPRET=1 on a machine without a GPU", allow_module_level=True)

from compresskit.kernels import reference, triton_kernels  # noqa: E402

DEVICE = torch.device("cpu")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
# Larger tiles than the GPU defaults: the interpreter's cost is per program, so fewer programs keep the
# grid of shapes fast; masks and split-K are still exercised (no shape here is a multiple of them all).
GEMV_BLOCKS = dict(block_n=128, block_k=128)
GEMM_BLOCKS = dict(block_m=64, block_n=128, block_k=64)


@pytest.mark.parametrize("bits,group_size,in_f,out_f", CASES)
def test_kernels_match_reference(bits, group_size, in_f, out_f):
    packed = random_packed(out_f, in_f, bits, group_size, seed=bits)
    g = torch.Generator().manual_seed(2)
    for i, rows in enumerate(ROWS):
        dtype = (torch.float32, torch.float16)[(i + bits) % 2]
        w = triton_kernels.prepare(packed, DEVICE, dtype)
        x = torch.randn(rows, in_f, generator=g).to(dtype)
        ref = reference.gptq_linear(x.float(), packed)  # float32 oracle
        if rows <= triton_kernels.GEMV_MAX_ROWS:
            ws = torch.full((64, rows, out_f), float("nan"))
            y = triton_kernels.gemv(x, w, workspace=ws, **GEMV_BLOCKS)
        else:
            y = torch.full((rows, out_f), float("nan"), dtype=dtype)
            triton_kernels.gemm(x, w, out=y, **GEMM_BLOCKS)
        assert y.shape == (rows, out_f)
        assert rel_err(y, ref) < TOL[dtype], (rows, dtype)


def test_matmul_dispatch_and_dtype():
    packed = random_packed(64, 128, 4, 32)
    w = triton_kernels.prepare(packed, DEVICE, torch.float16)
    for rows in (2, 9):
        y = triton_kernels.matmul(torch.randn(rows, 128).half(), w)
        assert y.dtype == torch.float16 and y.shape == (rows, 64)


def test_three_bit_planes_rebuild_the_codes():
    from compresskit.core.packing import unpack_int

    packed = random_packed(64, 96, 3, 32)
    w = triton_kernels.prepare(packed, DEVICE, torch.float32)
    lo = unpack_int(w.qweight.t(), 2, 96)
    hi = unpack_int(w.qhigh.t(), 1, 96)
    q = unpack_int(packed.qweight.t(), 3, 96)
    assert torch.equal((lo | (hi << 2)), q)


def test_bad_inputs():
    w = triton_kernels.prepare(random_packed(64, 128, 4, 32), DEVICE, torch.float32)
    with pytest.raises(ValueError, match="at most 8 rows"):
        triton_kernels.gemv(torch.randn(9, 128), w)
    with pytest.raises(ValueError, match="expects 128"):
        triton_kernels.gemm(torch.randn(9, 100), w)
