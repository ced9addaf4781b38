"""compresskit.quant.qat: trainable group scales over frozen packed codes, and the write-back."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

from compresskit import QuantConfig, quantize
from compresskit.core.config import ConfigError
from compresskit.kernels.modules import QuantLinear, set_kernel_backend
from compresskit.quant.qat import ScaleTrainableLinear, make_scales_trainable, write_back_scales


@pytest.fixture(scope="module")
def quantized():
    model = make_tiny_model("llama")
    quantize(model, QuantConfig(wbits=3, group_size=64))
    set_kernel_backend(model, "reference")
    return model


def _buffers(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith(("qweight", "qzeros", "g_idx", "scales"))}


def test_the_trainable_form_computes_the_packed_weight(quantized):
    q = next(m for m in quantized.modules() if isinstance(m, QuantLinear))
    wrapper = ScaleTrainableLinear(q)
    assert torch.allclose(wrapper.weight(), q.packed().dequantize(), atol=0, rtol=0)
    x = torch.randn(3, 5, q.in_features)
    assert torch.allclose(wrapper(x), q(x), atol=1e-5)
    wrapper(x).sum().backward()
    assert wrapper.log_gain.grad is not None and wrapper.log_gain.grad.abs().sum() > 0


def test_a_ragged_last_group_takes_the_gather_path():
    from compresskit.core.formats import GPTQPacked

    torch.manual_seed(0)
    q = torch.randint(0, 8, (32, 96), dtype=torch.uint8)
    scale, zero = torch.rand(32, 2) * 0.1 + 0.01, torch.randint(0, 8, (32, 2), dtype=torch.int32)
    layer = QuantLinear.from_packed(GPTQPacked.pack(q, scale.half().float(), zero, 3, 64), None, torch.float32)
    wrapper = ScaleTrainableLinear(layer)  # groups of 64 and 32
    assert not wrapper._reshape
    assert torch.equal(wrapper.weight(), layer.packed().dequantize())


def test_make_trainable_freezes_all_but_the_scales_and_writes_back_bit_identical(quantized):
    model = copy.deepcopy(quantized)
    before = _buffers(model)
    params = make_scales_trainable(model)
    n_layers = sum(isinstance(m, ScaleTrainableLinear) for m in model.modules())
    assert n_layers == 14 and len(params) == n_layers
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
    summary = write_back_scales(model)  # nothing learned: everything is exactly as it was
    assert summary["layers"] == 14 and summary["scales_changed"] == 0
    assert not any(isinstance(m, ScaleTrainableLinear) for m in model.modules())
    after = _buffers(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_learned_scales_round_to_fp16_and_codes_stay(quantized):
    model = copy.deepcopy(quantized)
    before = _buffers(model)
    params = make_scales_trainable(model, train_norms=True)
    assert len(params) == 14 + 5  # + 2 norms per layer and the final norm
    with torch.no_grad():
        for p in params:
            if p.dim() == 2:
                p.add_(0.01)
    write_back_scales(model)
    after = _buffers(model)
    for name in before:
        if name.endswith("scales"):
            assert not torch.equal(after[name], before[name])
            assert torch.equal(after[name], after[name].half().float())  # fp16-exact, as stored
            assert torch.allclose(after[name], before[name] * torch.exp(torch.tensor(0.01)), rtol=1e-3)
        else:
            assert torch.equal(after[name], before[name]), name


def test_a_float_model_has_nothing_to_train():
    with pytest.raises(ConfigError, match="no quantized layer"):
        make_scales_trainable(make_tiny_model("llama"))
