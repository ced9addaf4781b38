"""quant.rtn / quant.apply on the tiny models of every family."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from conftest import make_tiny_model

from compresskit.core.arch import get_arch
from compresskit.core.config import ConfigError, QuantConfig
from compresskit.core.manifest import LinearEntry, QuantManifest
from compresskit.core.quant_math import fake_quantize, quantize_rows_int8
from compresskit.kernels.modules import Int8Embedding, Int8Linear, QuantLinear
from compresskit.quant import plan_linears, quantize_rtn, rtn_pack



IDS = torch.tensor([[3, 17, 250, 42, 99, 7, 128, 64, 1, 300, 5, 12]])
ORDER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
EXPECTED_NAMES = [f"model.layers.{i}.{rel}" for i in range(2) for rel in ORDER]


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


def _rel_err(a, b):
    return float((a - b).norm() / b.norm())


def _module_types(model):
    return {n: type(m) for n, m in model.named_modules()}


def test_quantize_rtn_replaces_linears(tiny_model):
    arch = get_arch(tiny_model)
    originals = {n: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
                 for n, m in arch.quantizable_linears(tiny_model).items()}
    calls = []
    cfg = QuantConfig(wbits=4, group_size=32)
    manifest = quantize_rtn(tiny_model, cfg, progress=lambda n, message: calls.append(message))

    assert list(manifest.linears) == EXPECTED_NAMES
    assert calls == EXPECTED_NAMES
    assert manifest.recipe == cfg and manifest.skipped == {}
    named = dict(tiny_model.named_modules())
    for name, (w, b) in originals.items():
        m = named[name]
        assert isinstance(m, QuantLinear), name
        entry = manifest.linears[name]
        assert entry == LinearEntry(4, 32, False, b is not None)
        # stored weight is exactly the RTN fake-quantized original
        torch.testing.assert_close(m.packed().dequantize(), fake_quantize(w, 4, 32), rtol=0, atol=0)
        if b is not None:
            assert torch.equal(m.bias, b)
    assert not [n for n, m in tiny_model.named_modules() if type(m) is nn.Linear]
    if arch.family == "qwen2":
        assert manifest.linears["model.layers.0.self_attn.q_proj"].bias is True
        assert manifest.linears["model.layers.0.self_attn.o_proj"].bias is False

    # the manifest survives a JSON round trip
    back = QuantManifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert back.linears == manifest.linears and back.embeddings == manifest.embeddings


def test_tied_lm_head_shares_int8_table(tiny_model):
    emb_w = tiny_model.model.embed_tokens.weight.detach().clone()
    assert tiny_model.lm_head.weight is tiny_model.model.embed_tokens.weight  # the fixture ties
    manifest = quantize_rtn(tiny_model, QuantConfig(wbits=4, group_size=64))
    emb, head = tiny_model.model.embed_tokens, tiny_model.lm_head
    assert isinstance(emb, Int8Embedding) and isinstance(head, Int8Linear)
    assert head.weight is emb.weight and head.weight_scale is emb.weight_scale
    assert manifest.embeddings.tied is True
    assert manifest.embeddings.embed == "model.embed_tokens" and manifest.embeddings.lm_head == "lm_head"
    q, s = quantize_rows_int8(emb_w)
    assert torch.equal(emb.weight, q)
    assert torch.equal(emb.weight_scale, s.float())


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_untied_lm_head(family):
    model = make_tiny_model(family, tie=False)
    emb_w = model.model.embed_tokens.weight.detach().clone()
    head_w = model.lm_head.weight.detach().clone()
    assert not torch.equal(emb_w, head_w)
    manifest = quantize_rtn(model, QuantConfig(wbits=4, group_size=64))
    emb, head = model.model.embed_tokens, model.lm_head
    assert isinstance(emb, Int8Embedding) and isinstance(head, Int8Linear)
    assert head.weight is not emb.weight
    assert manifest.embeddings.tied is False
    assert torch.equal(emb.weight, quantize_rows_int8(emb_w)[0])
    assert torch.equal(head.weight, quantize_rows_int8(head_w)[0])
    assert torch.equal(head.weight_scale, quantize_rows_int8(head_w)[1].float())


def test_logits_close_at_8_bits_and_further_at_2(tiny_model):
    family = get_arch(tiny_model).family
    ref = _logits(tiny_model)
    errs = {}
    for bits in (8, 4, 2):
        m = make_tiny_model(family)
        assert torch.equal(_logits(m), ref)  # same seed, same model
        quantize_rtn(m, QuantConfig(wbits=bits, group_size=32))
        out = _logits(m)
        assert out.shape == ref.shape and torch.all(torch.isfinite(out))
        errs[bits] = _rel_err(out, ref)
    assert errs[8] < 0.02, errs
    assert errs[2] > errs[4] > errs[8], errs
    assert errs[2] > 2 * errs[8]


def test_embed_bits_16_keeps_float_embeddings(tiny_model):
    ref = _logits(tiny_model)
    manifest = quantize_rtn(tiny_model, QuantConfig(wbits=8, group_size=64, embed_bits=16))
    assert manifest.embeddings is None
    assert type(tiny_model.model.embed_tokens) is nn.Embedding
    assert type(tiny_model.lm_head) is nn.Linear
    assert tiny_model.lm_head.weight is tiny_model.model.embed_tokens.weight
    assert _rel_err(_logits(tiny_model), ref) < 0.01  # 8-bit linears only: tighter than with int8 embeddings


@pytest.mark.parametrize("overrides,cfg", [
    (dict(hidden_size=96), QuantConfig(wbits=4, group_size=64)),  # fails on the very first linear
    (dict(intermediate_size=96), QuantConfig(wbits=4, group_size=64)),  # fails on down_proj, the 7th
])
def test_group_size_not_dividing_fails_before_any_change(overrides, cfg):
    model = make_tiny_model("llama", **overrides)
    before_types = _module_types(model)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="does not divide") as ei:
        plan_linears(model, cfg)
    assert "96" in str(ei.value) and "ragged_last_group" in str(ei.value)
    with pytest.raises(ConfigError, match="does not divide"):
        quantize_rtn(model, cfg)
    assert _module_types(model) == before_types
    assert not any(isinstance(m, (QuantLinear, Int8Embedding, Int8Linear)) for m in model.modules())
    after = model.state_dict()
    assert set(after) == set(before_state)
    assert all(torch.equal(after[k], v) for k, v in before_state.items())


def test_ragged_last_group_allowed():
    model = make_tiny_model("llama", intermediate_size=96)
    down_w = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    cfg = QuantConfig(wbits=4, group_size=64, ragged_last_group=True)
    manifest = quantize_rtn(model, cfg)
    assert len(manifest.linears) == 14
    down = model.model.layers[0].mlp.down_proj
    assert isinstance(down, QuantLinear) and down.scales.shape == (2, 64)
    torch.testing.assert_close(down.packed().dequantize(), fake_quantize(down_w, 4, 64), rtol=0, atol=0)


def test_plan_linears_does_not_modify():
    model = make_tiny_model("mistral")
    before = _module_types(model)
    plans, skipped = plan_linears(model, QuantConfig(wbits=3, group_size=64, skip=("o_proj",)))
    assert _module_types(model) == before
    assert [p.name for p in plans] == [n for n in EXPECTED_NAMES if not n.endswith("o_proj")]
    assert skipped == {f"model.layers.{i}.self_attn.o_proj": "in skip list" for i in range(2)}
    assert all(p.entry == LinearEntry(3, 64, False, False) for p in plans)


@pytest.mark.parametrize("skip,expected_skipped", [
    (("down_proj",), ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]),
    (("model.layers.1.self_attn.q_proj",), ["model.layers.1.self_attn.q_proj"]),
    (("mlp.gate_proj", "k_proj"), ["model.layers.0.self_attn.k_proj", "model.layers.0.mlp.gate_proj",
                                   "model.layers.1.self_attn.k_proj", "model.layers.1.mlp.gate_proj"]),
    (("proj",), []),  # a bare substring is not a dotted suffix: nothing is skipped
])
def test_skip_list(skip, expected_skipped):
    model = make_tiny_model("llama")
    originals = {n: m for n, m in get_arch(model).quantizable_linears(model).items()}
    manifest = quantize_rtn(model, QuantConfig(wbits=4, group_size=32, skip=skip))
    assert sorted(manifest.skipped) == sorted(expected_skipped)
    assert all(v == "in skip list" for v in manifest.skipped.values())
    assert sorted(manifest.linears) == sorted(set(EXPECTED_NAMES) - set(expected_skipped))
    for name, orig in originals.items():
        m = model.get_submodule(name)
        if name in expected_skipped:
            assert m is orig and type(m) is nn.Linear
        else:
            assert isinstance(m, QuantLinear)


def test_quantizing_twice_errors():
    model = make_tiny_model("qwen2")
    quantize_rtn(model, QuantConfig(wbits=4, group_size=32))
    types = _module_types(model)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_rtn(model, QuantConfig(wbits=4, group_size=32))
    assert _module_types(model) == types


def test_quantizing_twice_with_only_embeddings_quantized_errors_cleanly():
    """Every block linear skipped: the first pass only turns the embeddings into int8 rows; a second
    pass must refuse before touching them (it used to re-quantize the int8 table, then crash)."""
    skip = tuple(rel.rsplit(".", 1)[1] for rel in ORDER)
    cfg = QuantConfig(wbits=4, group_size=32, skip=skip)
    model = make_tiny_model("llama")
    manifest = quantize_rtn(model, cfg)
    assert manifest.linears == {} and len(manifest.skipped) == 14
    emb = model.model.embed_tokens
    table, scale = emb.weight.detach().clone(), emb.weight_scale.detach().clone()
    logits = _logits(model)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_rtn(model, cfg)
    assert model.model.embed_tokens is emb
    assert torch.equal(emb.weight, table) and torch.equal(emb.weight_scale, scale)
    assert torch.equal(_logits(model), logits)
    # keeping embeddings as they are (embed_bits=16) still lets the linears be quantized
    manifest = quantize_rtn(model, QuantConfig(wbits=4, group_size=32, embed_bits=16))
    assert len(manifest.linears) == 14 and model.model.embed_tokens is emb


def test_rtn_pack_matches_fake_quantize():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g) * 0.02
    for entry in (LinearEntry(4, 32, False), LinearEntry(3, 64, True), LinearEntry(2, -1, False)):
        packed = rtn_pack(w, entry)
        assert (packed.bits, packed.group_size) == (entry.bits, entry.group_size)
        torch.testing.assert_close(packed.dequantize(), fake_quantize(w, entry.bits, entry.group_size, entry.sym),
                                   rtol=0, atol=0)



def test_unsupported_model_errors():
    from transformers import GPT2Config, GPT2LMHeadModel

    from compresskit.core.arch import UnsupportedArchitectureError

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(UnsupportedArchitectureError, match="llama"):
        quantize_rtn(model, QuantConfig(group_size=32))


def test_skipping_lm_head_keeps_tied_embeddings_in_float():
    from compresskit.core.config import QuantConfig
    from compresskit.quant import quantize_rtn

    model = make_tiny_model("llama")
    emb_before = model.model.embed_tokens.weight.detach().clone()
    manifest = quantize_rtn(model, QuantConfig(wbits=4, group_size=32, skip=("lm_head",)))
    assert manifest.embeddings is None and "lm_head" in manifest.skipped
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)
    assert torch.equal(model.model.embed_tokens.weight, emb_before)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(manifest.linears) == 14
