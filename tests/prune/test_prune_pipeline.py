"""Pruning in place equals masking the same units in the unpruned model; layers renumber; protection."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

from compresskit.core.arch import get_arch
from compresskit.prune import PruneConfig, probe_from_answer, prune_in_place
from compresskit.prune.apply import count_parameters

IDS = torch.randint(0, 320, (2, 48), generator=torch.Generator().manual_seed(0))
TEST = torch.randint(0, 320, (1, 30), generator=torch.Generator().manual_seed(9))


def _logits(model, ids=TEST):
    with torch.no_grad():
        return model(ids).logits


def _probes():
    prompt = torch.randint(0, 320, (60,), generator=torch.Generator().manual_seed(5)).tolist()
    return [probe_from_answer(prompt, prompt[20:24])]


def _masked_logits(model, record, ids=TEST):
    """The unpruned model with the removed heads' o_proj inputs and the removed MLP channels' down_proj
    inputs zeroed, and removed layers replaced by the identity."""
    spec = get_arch(model)
    cfg = model.config
    n_h = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_h
    hooks = []
    for i, block in enumerate(spec.blocks_of(model)):
        if i not in record["kept_layers"]:
            hooks.append(block.register_forward_hook(lambda m, a, k, out: a[0] if a else k["hidden_states"],
                                                     with_kwargs=True))
            continue
        if str(i) in record["kept_query_heads"]:
            head_mask = torch.zeros(n_h)
            head_mask[record["kept_query_heads"][str(i)]] = 1
            col_mask = head_mask.repeat_interleave(d)
            hooks.append(block.self_attn.o_proj.register_forward_pre_hook(lambda m, a, c=col_mask: (a[0] * c,)))
        if str(i) in record["kept_mlp_channels"]:
            ch = torch.zeros(cfg.intermediate_size)
            ch[record["kept_mlp_channels"][str(i)]] = 1
            hooks.append(block.mlp.down_proj.register_forward_pre_hook(lambda m, a, c=ch: (a[0] * c,)))
    try:
        return _logits(model, ids)
    finally:
        for h in hooks:
            h.remove()


def test_ratio_zero_returns_identical_logits(tiny_model):
    before = _logits(tiny_model)
    record = prune_in_place(tiny_model, PruneConfig(), None)
    assert torch.equal(_logits(tiny_model), before)
    assert record["params_after"] == record["params_before"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("shape", [dict(num_attention_heads=4, num_key_value_heads=2),
                                   dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=2)])
def test_pruning_heads_and_channels_equals_masking_them(family, shape):
    model = make_tiny_model(family, num_hidden_layers=3, **shape)
    original = copy.deepcopy(model)
    heads = 0.5 if shape["num_attention_heads"] == 4 else 0.33
    record = prune_in_place(model, PruneConfig(mlp=0.25, heads=heads, seqlen=48), IDS, _probes())
    n_h = shape["num_attention_heads"]
    assert model.config.num_attention_heads == n_h - round(heads * n_h)
    assert model.config.num_key_value_heads == 2 and model.config.intermediate_size == 96
    for block in model.model.layers:
        assert block.self_attn.q_proj.out_features == model.config.num_attention_heads * model.config.head_dim
        assert block.self_attn.num_key_value_groups == model.config.num_attention_heads // 2
    assert torch.allclose(_logits(model), _masked_logits(original, record), atol=1e-5)
    assert record["params_after"] == count_parameters(model) < record["params_before"]


def test_pruning_whole_kv_groups_equals_masking_them():
    model = make_tiny_model("llama", num_hidden_layers=2, hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    original = copy.deepcopy(model)
    record = prune_in_place(model, PruneConfig(heads=0.5, head_unit="group", protect_retrieval=False, seqlen=48), IDS)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (3, 1)
    assert all(len(v) == 1 for v in record["kept_kv_heads"].values())
    assert torch.allclose(_logits(model), _masked_logits(original, record), atol=1e-5)


def test_layer_removal_renumbers_and_generates_with_the_cache():
    model = make_tiny_model("qwen2", num_hidden_layers=4, use_sliding_window=True, sliding_window=16,
                            max_window_layers=2)
    types = list(model.config.layer_types)
    original = copy.deepcopy(model)
    record = prune_in_place(model, PruneConfig(layers=2, protect_retrieval=False, seqlen=48), IDS)
    kept = record["kept_layers"]
    assert len(kept) == 2 and model.config.num_hidden_layers == 2
    assert model.config.layer_types == [types[i] for i in kept]
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1]
    assert torch.allclose(_logits(model), _masked_logits(original, record), atol=1e-5)
    prompt = TEST[:, :12]
    cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    ids = prompt
    for _ in range(8):  # greedy without any cache
        ids = torch.cat([ids, _logits(model, ids)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, ids)


def test_removed_layers_are_the_lowest_block_influence():
    model = make_tiny_model("llama", num_hidden_layers=4)
    record = prune_in_place(model, PruneConfig(layers=1, protect_retrieval=False, seqlen=48), IDS)
    bi = record["importance"]["block_influence"]
    dropped = set(range(4)) - set(record["kept_layers"])
    assert dropped == {min(range(4), key=lambda i: bi[i])}


def test_protected_heads_are_kept_even_with_the_lowest_activation_score(monkeypatch):
    from compresskit.prune import pipeline

    model = make_tiny_model("llama", num_hidden_layers=2, hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    probe_model = copy.deepcopy(model)
    unprotected = prune_in_place(probe_model, PruneConfig(heads=0.67, protect_retrieval=False, seqlen=48), IDS)
    # protect, in layer 0, a head the activation score drops
    dropped = sorted(set(range(6)) - set(unprotected["kept_query_heads"]["0"]))[0]
    fake = torch.zeros(2, 6)
    fake[0, dropped] = 1.0
    monkeypatch.setattr(pipeline, "head_retrieval_scores", lambda *a, **k: fake)
    record = prune_in_place(model, PruneConfig(heads=0.67, protect_fraction=0.01, seqlen=48), IDS, _probes())
    assert record["retrieval"]["protected"] == [[0, dropped]]
    assert dropped in record["kept_query_heads"]["0"] and record["retrieval"]["protected_kept"]
    assert all(len(v) == 2 for v in record["kept_query_heads"].values())  # still one per group


def test_real_retrieval_protection_keeps_every_protected_head():
    model = make_tiny_model("mistral", num_hidden_layers=3, hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    record = prune_in_place(model, PruneConfig(heads=0.67, protect_fraction=0.2, seqlen=48), IDS, _probes())
    prot = record["retrieval"]["protected"]
    assert len(prot) == 4  # ceil(0.2 * 18)
    assert record["retrieval"]["protected_kept"]
    assert all(h in record["kept_query_heads"][str(layer)] for layer, h in prot)


def test_protection_without_probes_is_an_error():
    with pytest.raises(ValueError, match="needs needle probes"):
        prune_in_place(make_tiny_model(), PruneConfig(heads=0.5, seqlen=48), IDS)


def test_layer_removal_keeps_a_layer_holding_a_protected_head(monkeypatch):
    from compresskit.prune import pipeline

    model = make_tiny_model("llama", num_hidden_layers=4)
    plain = prune_in_place(copy.deepcopy(model), PruneConfig(layers=1, protect_retrieval=False, seqlen=48), IDS)
    weakest = (set(range(4)) - set(plain["kept_layers"])).pop()
    fake = torch.zeros(4, 4)
    fake[weakest, 1] = 1.0
    monkeypatch.setattr(pipeline, "head_retrieval_scores", lambda *a, **k: fake)
    record = prune_in_place(model, PruneConfig(layers=1, protect_fraction=0.01, seqlen=48), IDS, _probes())
    assert weakest in record["kept_layers"] and len(record["kept_layers"]) == 3
    assert record["retrieval"]["protected"] == [[weakest, 1]] and record["retrieval"]["protected_kept"]
