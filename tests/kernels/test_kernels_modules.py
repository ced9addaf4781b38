"""kernels.modules / reference / convert: numerics against dense torch ops, empty (meta) modules."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import make_tiny_model

from compresskit.core.config import QuantConfig
from compresskit.core.formats import GPTQPacked, Int8Rows
from compresskit.core.quant_math import compute_qparams, dequantize, quantize, quantize_rows_int8
from compresskit.kernels import backends, reference
from compresskit.kernels.convert import install_empty_modules, install_int8_embeddings
from compresskit.kernels.modules import Int8Embedding, Int8Linear, QuantLinear
from compresskit.quant import quantize_rtn



def _quantized_weight(out_f, in_f, bits, group_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    scale, zero = compute_qparams(w, bits, group_size, sym=False)
    q = quantize(w, scale, zero, bits, group_size)
    return q, scale, zero


@pytest.mark.parametrize("bits,group_size,in_f,out_f", [(4, 32, 64, 48), (3, 64, 128, 64), (2, -1, 64, 32),
                                                        (8, 64, 128, 40), (4, 64, 96, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("lead", [(3,), (2, 5)])
def test_quant_linear_forward(bits, group_size, in_f, out_f, with_bias, lead):
    q, scale, zero = _quantized_weight(out_f, in_f, bits, group_size, seed=bits)
    packed = GPTQPacked.pack(q, scale, zero, bits, group_size)
    g = torch.Generator().manual_seed(1)
    bias = torch.randn(out_f, generator=g) if with_bias else None
    m = QuantLinear.from_packed(packed, bias, dtype=torch.float32)
    x = torch.randn(*lead, in_f, generator=g)
    w_ref = dequantize(q, scale, zero, group_size)  # from the unpacked triple, not via the module
    y = m(x)  # automatic backend (on CPU: int16-rounded activations for few rows where built)
    assert y.shape == (*lead, out_f) and y.dtype == torch.float32
    ref = F.linear(x, w_ref, bias)
    assert float((y - ref).norm() / ref.norm()) < 1e-4
    m.backend = "cpu_exact" if backends.BACKENDS["cpu_exact"].unavailable() is None else "dequant"
    # exact kernels: to float rounding; explicit matmul as a second reference
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    expect = x @ w_ref.t() + (0 if bias is None else bias)
    torch.testing.assert_close(m(x), expect, rtol=1e-5, atol=1e-5)
    m.backend = "reference"  # the oracle path computes exactly what the reference function does
    torch.testing.assert_close(reference.gptq_linear(x, packed, bias), m(x), rtol=0, atol=0)


def test_quant_linear_packed_round_trip_and_repr():
    q, scale, zero = _quantized_weight(32, 64, 4, 32)
    packed = GPTQPacked.pack(q, scale, zero, 4, 32)
    m = QuantLinear.from_packed(packed, None, dtype=torch.float32)
    assert m.bias is None
    back = m.packed()
    for name in GPTQPacked.TENSORS:
        assert torch.equal(getattr(back, name).float(), getattr(packed, name).float()), name
    assert "bits=4" in repr(m) and "group_size=32" in repr(m)
    m_pc = QuantLinear(64, 32, 4, -1)
    assert "per-channel" in repr(m_pc)


def test_quant_linear_bf16_model_dtype():
    q, scale, zero = _quantized_weight(32, 64, 4, 32)
    packed = GPTQPacked.pack(q, scale, zero, 4, 32)
    m = QuantLinear.from_packed(packed, None, dtype=torch.bfloat16)
    assert m.scales.dtype == torch.bfloat16 and m.qweight.dtype == torch.int32
    x = torch.randn(4, 64).to(torch.bfloat16)
    y = m(x)
    assert y.dtype == torch.bfloat16
    ref = F.linear(x.float(), dequantize(q, scale, zero, 32))
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


def test_quant_linear_rejects_wrong_width():
    q, scale, zero = _quantized_weight(32, 64, 4, 32)
    m = QuantLinear.from_packed(GPTQPacked.pack(q, scale, zero, 4, 32), None, torch.float32)
    with pytest.raises(ValueError, match="64"):
        m(torch.randn(2, 32))


@pytest.mark.parametrize("in_f,out_f,bits,group_size", [(128, 64, 4, 32), (96, 64, 3, 64), (128, 48, 2, -1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_module_on_meta(in_f, out_f, bits, group_size, dtype):
    m = QuantLinear(in_f, out_f, bits, group_size, bias=True, dtype=dtype, device="meta")
    groups = 1 if group_size == -1 else -(-in_f // group_size)
    expect = {
        "qweight": ((in_f * bits // 32, out_f), torch.int32),
        "qzeros": ((groups, out_f * bits // 32), torch.int32),
        "scales": ((groups, out_f), dtype),
        "g_idx": ((in_f,), torch.int32),
        "bias": ((out_f,), dtype),
    }

    bufs = dict(m.named_buffers())
    assert set(bufs) == set(expect)
    for name, (shape, dt) in expect.items():
        assert bufs[name].is_meta, name
        assert tuple(bufs[name].shape) == shape and bufs[name].dtype == dt, name
    assert list(m.parameters()) == []
    # shapes agree with what pack() produces for the same layer
    q, scale, zero = _quantized_weight(out_f, in_f, bits, group_size)
    for name, t in GPTQPacked.pack(q, scale, zero, bits, group_size).tensors().items():
        assert bufs[name].shape == t.shape, name


def test_int8_embedding_and_linear():
    g = torch.Generator().manual_seed(3)
    table = torch.randn(40, 16, generator=g) * 0.1
    q, s = quantize_rows_int8(table)
    deq = Int8Rows(q, s).dequantize()
    deq_manual = q.float() * s.float().unsqueeze(1)

    emb = Int8Embedding(40, 16, padding_idx=None, dtype=torch.float32)
    emb.load_rows(Int8Rows(q, s.float()))
    ids = torch.tensor([[0, 5, 39], [7, 7, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(out, deq_manual[ids], rtol=0, atol=0)
    torch.testing.assert_close(out, F.embedding(ids, deq), rtol=0, atol=0)
    # close to the original float table
    torch.testing.assert_close(out, table[ids], rtol=0, atol=float(s.float().max()) / 2 + 1e-6)

    lin = Int8Linear(16, 40, dtype=torch.float32)
    lin.load_rows(Int8Rows(q, s.float()))
    x = torch.randn(2, 3, 16, generator=g)
    y = lin(x)  # 6 rows: the C kernel on CPU (int16 activations where built)
    ref = F.linear(x, deq)
    assert y.shape == (2, 3, 40) and float((y - ref).norm() / ref.norm()) < 1e-4
    lin.native_exact = True
    torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-6)
    rows = lin.rows()
    assert torch.equal(rows.weight, q) and torch.equal(rows.weight_scale, s.float())
    assert not lin.weight.requires_grad and lin.weight.dtype == torch.int8


def test_install_empty_modules_matches_quantized_model():
    cfg = QuantConfig(wbits=4, group_size=32)
    qmodel = make_tiny_model("qwen2")  # q/k/v have biases
    manifest = quantize_rtn(qmodel, cfg)

    fresh = make_tiny_model("qwen2")
    install_empty_modules(fresh, manifest, dtype=torch.float32, device="meta")
    q_named = dict(qmodel.named_modules())
    for name, entry in manifest.linears.items():
        m = fresh.get_submodule(name)
        assert isinstance(m, QuantLinear)
        assert (m.bias is not None) == entry.bias
        ref = q_named[name]
        for bname, buf in m.named_buffers():
            assert buf.is_meta
            assert buf.shape == getattr(ref, bname).shape and buf.dtype == getattr(ref, bname).dtype, (name, bname)
    assert isinstance(fresh.model.embed_tokens, Int8Embedding)
    assert isinstance(fresh.lm_head, Int8Linear)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    assert fresh.lm_head.weight_scale is fresh.model.embed_tokens.weight_scale


def test_install_empty_modules_then_load_state_reproduces_logits():
    cfg = QuantConfig(wbits=3, group_size=64)
    qmodel = make_tiny_model("llama", tie=False)
    manifest = quantize_rtn(qmodel, cfg)
    fresh = make_tiny_model("llama", seed=123, tie=False)
    install_empty_modules(fresh, manifest, dtype=torch.float32, device="cpu")
    assert fresh.lm_head.weight is not fresh.model.embed_tokens.weight
    missing, unexpected = fresh.load_state_dict(qmodel.state_dict(), strict=False)
    assert not unexpected
    assert not [k for k in missing if "rotary" not in k]
    ids = torch.tensor([[1, 5, 9, 44, 300, 2]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, qmodel(ids).logits, rtol=0, atol=0)


def test_install_int8_embeddings_without_head():
    from compresskit.core.manifest import EmbeddingEntry

    model = make_tiny_model("llama", tie=False)
    install_int8_embeddings(model, EmbeddingEntry("model.embed_tokens", None, False), torch.float32, "meta")
    assert isinstance(model.model.embed_tokens, Int8Embedding)
    assert model.model.embed_tokens.weight.shape == (320, 64)
    assert isinstance(model.lm_head, nn.Linear)


def test_dequantized_cache_gives_identical_logits_and_is_released():
    from compresskit.kernels.modules import dequantized_cache

    from compresskit.kernels.modules import set_kernel_backend

    model = make_tiny_model("qwen2")
    quantize_rtn(model, QuantConfig(wbits=3, group_size=32))
    set_kernel_backend(model, "reference")
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    heads = [m for m in model.modules() if isinstance(m, Int8Linear)]  # the int8 lm_head keeps its float table
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference_logits = model(ids).logits
        with dequantized_cache(model):
            cached_logits = model(ids).logits
            assert all(m._kernel[1].name == "dense" and m._kernel[2].shape == (m.out_features, m.in_features)
                       for m in layers)
            assert heads and all(h._dense is not None and h._dense.dtype == torch.float32 for h in heads)
    assert torch.equal(cached_logits, reference_logits)
    assert all(m.backend == "reference" and m._kernel is None for m in layers)  # dense copies released
    assert all(h._dense is None and not h.keep_dense for h in heads)
