"""The C CPU kernels against the torch reference: every width, group sizes, odd shapes, poisoned outputs."""
from __future__ import annotations

import pytest
import torch
from _packed import CASES, ROWS, random_packed, rel_err
from conftest import make_tiny_model

from compresskit.core.quant_math import quantize_rows_int8
from compresskit.kernels import cpu_native, reference

I16_TOL = 1e-4  # int16 activations: ~3e-5 measured on random inputs

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
            for exact in (True, False):
                out = torch.full((rows, out_f), float("nan"))
                cpu_native.gemv(x, w, out=out, exact=exact)
                assert rel_err(out, ref) < (1e-5 if exact else I16_TOL), (rows, exact)
        tol = 1e-5 if rows > cpu_native.GEMV_MAX_ROWS else I16_TOL
        assert rel_err(cpu_native.matmul(x, w), ref) < tol, rows


def test_int16_activation_error_is_the_rounding_bound():
    """The int16 GEMV equals the float formula on activations rounded per 128-feature chunk: computing
    that rounding in torch and running the exact kernel on it gives the same numbers."""
    if not cpu_native.has_int16():
        pytest.skip("this build has no int16 kernels (not x86 AVX2)")
    packed = random_packed(96, 576, 4, 64)
    w = cpu_native.prepare(packed)
    x = torch.randn(3, 576, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 10, 576)
    d = x.reshape(3, -1, 64).abs().amax(-1, keepdim=True) / 32767  # groups of 64 <= 128: one chunk each
    xq = (torch.round(x.reshape(3, -1, 64) * (1 / d)) * d).reshape(3, 576)  # as the C code: times 1/d
    fast, exact_on_rounded = cpu_native.gemv(x, w), cpu_native.gemv(xq, w, exact=True)
    assert rel_err(fast, exact_on_rounded) < 2e-6
    assert 1e-7 < rel_err(fast, reference.gptq_linear(x, packed)) < I16_TOL  # it does round


@pytest.mark.parametrize("bits,group_size", [(4, 64), (3, 32), (2, -1), (8, 128)])
def test_dequant_tiles_is_the_dense_weight(bits, group_size):
    nb = cpu_native.tile_width()
    assert nb in (16, 32, 64)  # four float vectors of the machine the library was built for
    out_f = 160  # 3 tiles of 64 (the last one half padding), 5 of 32 or 10 of 16
    tiles = -(-out_f // nb)
    packed = random_packed(out_f, 256, bits, group_size)
    w = cpu_native.prepare(packed)
    assert w.qt.shape[0] == tiles and w.qt.shape[2] == nb == w.tile
    dense = packed.dequantize(torch.float32)
    out = torch.full((256, (tiles - 1) * nb), float("nan"))
    cpu_native.dequant_tiles(w, 1, tiles, out=out)
    torch.testing.assert_close(out[:, :out_f - nb], dense[nb:out_f].t(), rtol=0, atol=1e-7)
    assert torch.equal(out[:, out_f - nb:], torch.zeros(256, tiles * nb - out_f))  # padding columns: scale 0
    with pytest.raises(ValueError, match="outside"):
        cpu_native.dequant_tiles(w, tiles - 1, tiles + 1)


def test_chunked_prefill_splits_tiles(monkeypatch):
    nb = cpu_native.tile_width()
    monkeypatch.setattr(cpu_native, "CHUNK_ELEMENTS", nb * 128)  # one tile per chunk
    packed = random_packed(2 * nb + nb // 2, 128, 4, 32)  # 3 tiles, the last one partial
    x = torch.randn(20, 128)
    assert rel_err(cpu_native.matmul(x, cpu_native.prepare(packed)), reference.gptq_linear(x, packed)) < 1e-5


@pytest.mark.parametrize("k", [96, 600])  # 600: several 128-feature chunks and a tail under 16
def test_int8_rows_matches_reference(k):
    table = torch.randn(1003, k)  # 1003: a last group of fewer than four rows
    q, scale = quantize_rows_int8(table)
    x = torch.randn(3, k)
    ref = reference.int8_rows_linear(x, q, scale)
    for exact in (True, False):
        out = torch.full((3, 1003), float("nan"))
        cpu_native.int8_rows(x, q, scale, out=out, exact=exact)
        assert rel_err(out, ref) < (1e-6 if exact else I16_TOL), exact


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
    cpu_native._loaded.cache_clear()
    try:
        assert "COMPRESSKIT_NO_NATIVE" in cpu_native.unavailable_reason()
        monkeypatch.delenv("COMPRESSKIT_NO_NATIVE")
        monkeypatch.setenv("CC", "/nonexistent/cc")
        monkeypatch.setattr(cpu_native.shutil, "which", lambda name: None)
        with pytest.raises(cpu_native.NativeUnavailable, match="no C compiler"):
            cpu_native._compiler()
    finally:
        cpu_native._loaded.cache_clear()


@pytest.mark.parametrize("failure", ["unwritable cache", "noexec mount", "failing compiler"])
def test_a_build_or_load_failure_falls_back_once_with_one_warning(monkeypatch, tmp_path, failure):
    import warnings

    import compresskit
    from compresskit.core.config import QuantConfig

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path / "cache"))
    if failure == "unwritable cache":
        monkeypatch.setenv("COMPRESSKIT_CACHE", str(blocker / "cache"))  # mkdir under a file: OSError
    elif failure == "noexec mount":
        def noexec(path, *a, **k):
            raise OSError(f"{path}: failed to map segment from shared object")
        monkeypatch.setattr(cpu_native.ctypes, "CDLL", noexec)
    else:
        monkeypatch.setenv("CC", "false")  # exists, exits 1
    builds = []
    real_build = cpu_native._build
    monkeypatch.setattr(cpu_native, "_build", lambda cc: builds.append(cc) or real_build(cc))
    cpu_native._loaded.cache_clear()
    try:
        model = make_tiny_model("llama")
        compresskit.quantize(model, QuantConfig(wbits=4, group_size=32))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            used = compresskit.set_kernel_backend(model, "auto")
            model(torch.randint(0, 320, (1, 8)))
            assert cpu_native.unavailable_reason() is not None
        assert set(used.values()) == {"dequant"} and len(builds) == 1  # tried once for 14 layers
        native = [w for w in caught if "CPU kernels are unavailable" in str(w.message)]
        assert len(native) == 1, [str(w.message) for w in caught]
    finally:
        cpu_native._loaded.cache_clear()
