"""GPTQ: exact reduction to RTN for a diagonal Hessian, lower output error than RTN otherwise."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

import compresskit
from compresskit.core.config import QuantConfig
from compresskit.quant.gptq import GPTQConfig
from compresskit.core.manifest import LinearEntry
from compresskit.core.quant_math import compute_qparams, dequantize, quantize
from compresskit.kernels.modules import QuantLinear
from compresskit.quant.gptq import gptq_quantize


@pytest.mark.parametrize("bits,group_size,sym", [(4, 32, False), (3, -1, False), (4, 64, True), (2, 32, False)])
def test_diagonal_hessian_reduces_to_round_to_nearest(bits, group_size, sym):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    h = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(1)) + 0.5)
    q, scale, zero = gptq_quantize(w, h, LinearEntry(bits, group_size, sym), block_size=48)
    s_ref, z_ref = compute_qparams(w, bits, group_size, sym)
    assert torch.equal(scale, s_ref) and torch.equal(zero, z_ref)
    assert torch.equal(q, quantize(w, s_ref, z_ref, bits, group_size))


def test_correlated_inputs_get_lower_output_error_than_rtn():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 128, generator=g)
    mix = torch.randn(128, 128, generator=g) * 0.3 + torch.eye(128)
    x = torch.randn(2048, 128, generator=g) @ mix  # strongly correlated input channels
    h = 2 * x.t() @ x / x.shape[0]
    entry = LinearEntry(3, 32, False)
    q, scale, zero = gptq_quantize(w, h, entry)
    s_r, z_r = compute_qparams(w, 3, 32, False)
    w_rtn = dequantize(quantize(w, s_r, z_r, 3, 32), s_r, z_r, 32)
    w_gptq = dequantize(q, scale, zero, 32)
    err = lambda wq: float((x @ (w - wq).t()).pow(2).mean())
    assert err(w_gptq) < 0.8 * err(w_rtn)


def test_gptq_on_a_tiny_model_beats_rtn_and_round_trips(tmp_path):
    model = make_tiny_model("qwen2")
    ids = torch.randint(0, 320, (8, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    rtn, gptq = copy.deepcopy(model), copy.deepcopy(model)
    compresskit.quantize(rtn, QuantConfig(wbits=3, group_size=32))
    manifest = compresskit.quantize(gptq, GPTQConfig(wbits=3, group_size=32, nsamples=8, seqlen=64), calib=ids)
    assert all(isinstance(gptq.get_submodule(n), QuantLinear) for n in manifest.linears)

    def err(m):
        with torch.no_grad():
            return float((m(ids).logits - ref).pow(2).mean())

    assert err(gptq) < err(rtn)
    compresskit.save(gptq, None, tmp_path / "g")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "g", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, gptq(ids).logits)


def test_hessian_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match in_features=32"):
        gptq_quantize(torch.randn(8, 32), torch.eye(16), LinearEntry(4, 32, False))
