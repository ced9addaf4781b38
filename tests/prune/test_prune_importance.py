"""Activation importance against an independent computation (eager attention weights, the MLP formula)."""
from __future__ import annotations

import torch
from conftest import make_tiny_model

from compresskit.core.arch import get_arch
from compresskit.prune import collect_importance
from compresskit.prune.importance import block_influence, channel_scores, head_scores


def test_pure_scores_on_hand_tensors():
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.0]]])  # [1, 2 tokens, 2 channels]
    assert torch.allclose(channel_scores(x), torch.tensor([[2.0, 1.0]]))
    h = torch.tensor([[[3.0, 4.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0]]])  # 2 heads of dim 2
    assert torch.allclose(head_scores(h, 2), torch.tensor([[2.5, 2.0]]))
    a = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    b = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    assert torch.allclose(block_influence(a, b), torch.tensor([0.5]))


def _reference(model, ids):
    """Per-sample scores computed another way: eager attention probabilities times V for the heads,
    act(gate) * up from the MLP's own input for the channels, hidden states for block influence."""
    spec = get_arch(model)
    cfg = model.config
    n_h, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    mlp_in, attn_in = {}, {}
    hooks = []
    for i, block in enumerate(spec.blocks_of(model)):
        hooks.append(block.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_in.__setitem__(i, a[0])))
        hooks.append(block.self_attn.register_forward_pre_hook(
            lambda m, a, k, i=i: attn_in.__setitem__(i, k["hidden_states"]), with_kwargs=True))
    mlp_sq = torch.zeros(cfg.num_hidden_layers, cfg.intermediate_size)
    head_sq = torch.zeros(cfg.num_hidden_layers, n_h)
    bi = torch.zeros(cfg.num_hidden_layers)
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for s in range(ids.shape[0]):
            out = model(ids[s:s + 1], output_attentions=True, output_hidden_states=True)
            for i, block in enumerate(spec.blocks_of(model)):
                x = mlp_in[i][0]
                act = block.mlp.act_fn(x @ block.mlp.gate_proj.weight.T) * (x @ block.mlp.up_proj.weight.T)
                mlp_sq[i] += act.abs().mean(0) ** 2
                v = (attn_in[i][0] @ block.self_attn.v_proj.weight.T).view(-1, n_kv, d)
                probs = out.attentions[i][0]  # [heads, T, T]
                for h in range(n_h):
                    head_out = probs[h] @ v[:, h // (n_h // n_kv)]
                    head_sq[i, h] += head_out.norm(dim=-1).mean() ** 2
                if i + 1 < cfg.num_hidden_layers:  # the last hidden state is after the final norm
                    a, b = out.hidden_states[i][0], out.hidden_states[i + 1][0]
                    bi[i] += (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).mean()
    model.config._attn_implementation = "sdpa"
    for h in hooks:
        h.remove()
    return mlp_sq.sqrt(), head_sq.sqrt(), bi / ids.shape[0]


def test_collected_scores_match_the_reference():
    model = make_tiny_model("llama", num_hidden_layers=3)
    ids = torch.randint(0, 320, (3, 40), generator=torch.Generator().manual_seed(1))
    imp = collect_importance(model, get_arch(model), ids)
    mlp, heads, bi = _reference(model, ids)
    assert imp.samples == 3 and imp.tokens == 120
    assert torch.allclose(imp.mlp, mlp, rtol=1e-4, atol=1e-6)
    assert torch.allclose(imp.heads, heads, rtol=1e-4, atol=1e-6)
    assert torch.allclose(imp.layers[:-1], bi[:-1], rtol=1e-4, atol=1e-6)
    assert imp.layers[-1] > 0


def test_batches_aggregate_like_single_samples():
    model = make_tiny_model("qwen2")
    ids = torch.randint(0, 320, (4, 24), generator=torch.Generator().manual_seed(2))
    a = collect_importance(model, get_arch(model), ids, batch_size=1)
    b = collect_importance(model, get_arch(model), ids, batch_size=2)
    for x, y in ((a.mlp, b.mlp), (a.heads, b.heads), (a.layers, b.layers)):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)
