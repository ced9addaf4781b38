"""Retrieval-head scores: the q.k rows computed from hooked states equal eager attention's weights; the
answer-loss gradient scores equal finite differences taken through the o_proj weights."""
from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from compresskit.core.arch import get_arch
from compresskit.prune import RetrievalProbe, probe_from_answer, retrieval_scores
from compresskit.prune.retrieval import answer_loss_scores, copy_mass, query_attention


def test_probe_from_answer_targets_every_needle_occurrence():
    prompt = [5, 9, 1, 2, 3, 7, 1, 2, 3, 8, 4]
    probe = probe_from_answer(prompt, [1, 2, 3])
    assert probe.input_ids.tolist() == prompt + [1, 2, 3]
    assert probe.queries.tolist() == [10, 11, 12]
    assert [t.tolist() for t in probe.targets] == [[2, 6], [3, 7], [4, 8]]
    with pytest.raises(ValueError, match="do not occur in the prompt"):
        probe_from_answer(prompt, [6, 6])


def test_query_attention_is_causal_and_windowed():
    q = torch.zeros(2, 2, 4)
    k = torch.zeros(1, 5, 4)
    probs = query_attention(q, k, torch.tensor([1, 4]), 0.5)
    assert torch.allclose(probs[0, 0], torch.tensor([0.5, 0.5, 0, 0, 0]))
    assert torch.allclose(probs[1, 1], torch.full((5,), 0.2))
    win = query_attention(q, k, torch.tensor([4, 4]), 0.5, window=2)
    assert torch.allclose(win[0, 0], torch.tensor([0, 0, 0, 0.5, 0.5]))
    mass = copy_mass(probs, [torch.tensor([0]), torch.tensor([3, 4])])
    assert torch.allclose(mass, torch.tensor([(0.5 + 0.4) / 2] * 2))


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_scores_equal_the_mass_of_eager_attention_weights(family):
    model = make_tiny_model(family, num_hidden_layers=3, hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    g = torch.Generator().manual_seed(3)
    probes = []
    for _ in range(2):
        prompt = torch.randint(0, 320, (50,), generator=g).tolist()
        probes.append(probe_from_answer(prompt, prompt[10:14]))
    scores = retrieval_scores(model, get_arch(model), probes)
    model.config._attn_implementation = "eager"
    expected = torch.zeros_like(scores)
    with torch.no_grad():
        for p in probes:
            att = model(p.input_ids[None], output_attentions=True).attentions
            for layer, a in enumerate(att):
                rows = a[0][:, p.queries]  # [heads, n, T]
                expected[layer] += torch.stack([rows[:, j, t].sum(-1) for j, t in enumerate(p.targets)], 1).mean(1)
    assert torch.allclose(scores, expected / len(probes), atol=1e-5)


def test_a_probe_needs_targets_before_its_queries():
    with pytest.raises(ValueError, match="must be non-empty and precede"):
        RetrievalProbe(torch.arange(5), torch.tensor([1]), (torch.tensor([3]),))


def _answer_loss(model, probes) -> float:
    total = 0.0
    with torch.no_grad():
        for p in probes:
            logits = model(p.input_ids[None]).logits[0, p.queries].double()
            total += float(torch.nn.functional.cross_entropy(logits, p.input_ids[p.queries + 1]))
    return total / len(probes)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_answer_loss_scores_equal_finite_differences_through_o_proj(family):
    model = make_tiny_model(family, num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    model.double()
    g = torch.Generator().manual_seed(5)
    probes = []
    for _ in range(2):
        prompt = torch.randint(0, 320, (40,), generator=g).tolist()
        probes.append(probe_from_answer(prompt, prompt[7:10]))
    flags = [p.requires_grad for p in model.parameters()]
    scores = answer_loss_scores(model, get_arch(model), probes)
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    # central differences, gate at 1 -/+ eps through the head's o_proj columns (a second way to gate it);
    # part of the tiny model's forward runs in float32, so eps stays large enough to be above its noise
    eps, d = 1e-2, model.config.hidden_size // model.config.num_attention_heads
    expected = torch.zeros_like(scores, dtype=torch.float64)
    for layer, block in enumerate(model.model.layers):
        w = block.self_attn.o_proj.weight
        for h in range(scores.shape[1]):
            saved = w.data[:, h * d:(h + 1) * d].clone()
            w.data[:, h * d:(h + 1) * d] = saved * (1 - eps)
            minus = _answer_loss(model, probes)
            w.data[:, h * d:(h + 1) * d] = saved * (1 + eps)
            plus = _answer_loss(model, probes)
            w.data[:, h * d:(h + 1) * d] = saved
            expected[layer, h] = -(plus - minus) / (2 * eps)
    assert torch.allclose(scores.double(), expected, rtol=1e-3, atol=1e-6)
    assert expected.abs().max() > 1e-3  # the heads do move the answer's loss
