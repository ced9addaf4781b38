"""Simulated q/k/v activation quantization inside attention (weight-activation recipes)."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

import compresskit
from compresskit.core.arch import get_arch
from compresskit.core.config import ConfigError, QuantConfig
from compresskit.kernels.attention import ATTENTION_NAME, enable_qkv_quantization


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_sixteen_bits_is_plain_sdpa_and_four_bits_is_not():
    model = make_tiny_model("llama")
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    sdpa = _logits(model, ids)
    enable_qkv_quantization(model, get_arch(model), 16)
    assert model.config._attn_implementation == ATTENTION_NAME
    assert torch.equal(_logits(model, ids), sdpa)
    enable_qkv_quantization(model, get_arch(model), 4)
    four = _logits(model, ids)
    assert not torch.allclose(four, sdpa, atol=1e-3)
    enable_qkv_quantization(model, get_arch(model), 8)
    eight = _logits(model, ids)
    assert (eight - sdpa).abs().max() < (four - sdpa).abs().max()


def test_weight_activation_recipes_reload_with_their_attention_quantization(tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("mistral")
    manifest = compresskit.quantize(model, QuantConfig(wbits=4, abits=6, group_size=32))
    assert manifest.attention_abits == 6
    compresskit.save(model, None, tmp_path / "wa")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "wa", dtype=torch.float32)
    assert reloaded.config._attn_implementation == ATTENTION_NAME
    assert reloaded.model.layers[1].self_attn.compresskit_abits == 6
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))


def test_a_bad_setting_leaves_attention_untouched():
    model = make_tiny_model("llama", hidden_size=96, intermediate_size=192)
    before = model.config._attn_implementation
    with pytest.raises(ConfigError):
        compresskit.quantize(model, QuantConfig(wbits=4, abits=4, group_size=64))
    assert model.config._attn_implementation == before
    assert not hasattr(model.model.layers[0].self_attn, "compresskit_abits")
