"""The loss functions against references computed another way, chunked == unchunked (values and
gradients), and the hidden-state mapping after layer removal."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model

from compresskit.distill import (
    DistillConfig, Objective, head_losses, hidden_state_loss, layer_map, next_token_labels, token_kl,
)


def _logits(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def test_token_kl_equals_kl_div_and_a_manual_sum():
    s, t = _logits(0, 2, 5, 11), _logits(1, 2, 5, 11)
    ours = token_kl(s, t)
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1)
    p, q = F.softmax(t, -1).double(), F.softmax(s, -1).double()
    manual = (p * (p.log() - q.log())).sum(-1)
    assert ours.shape == (2, 5)
    assert torch.allclose(ours, ref, atol=1e-6) and torch.allclose(ours.double(), manual, atol=1e-5)
    assert float(token_kl(t, t).abs().max()) < 1e-6  # zero against itself
    assert bool((ours > 0).all())


def test_temperature_softens_both_sides_and_scales_by_t_squared():
    s, t = _logits(2, 3, 7), _logits(3, 3, 7)
    for temp in (0.5, 2.0, 4.0):
        ref = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True,
                       reduction="none").sum(-1) * temp**2
        assert torch.allclose(token_kl(s, t, temp), ref, atol=1e-6)
    # T^2 keeps the gradient scale: as T grows, T^2 * KL approaches the logit-matching limit
    # (1/(2V)) * sum((s - mean s) - (t - mean t))^2 (Hinton et al.)
    centered = (s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))
    limit = centered.pow(2).sum(-1) / (2 * s.shape[-1])
    assert torch.allclose(token_kl(s, t, 200.0), limit, rtol=2e-2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        token_kl(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="different positions"):
        head_losses(torch.zeros(1, 4, 8), torch.zeros(1, 5, 8), lambda h: h, lambda h: h)


def test_next_token_labels():
    ids = torch.tensor([[5, 6, 7, 8]])
    assert next_token_labels(ids).tolist() == [[6, 7, 8, -100]]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 7, 0])
def test_chunked_head_losses_equal_the_unchunked_computation(chunk, fused):
    """Values and gradients (w.r.t. hidden states and the student head) match the full-logit loss, on
    the fused path (gradient formed in the forward pass) and through autograd."""
    g = torch.Generator().manual_seed(0)
    hidden, vocab, batch, seq = 16, 50, 2, 13
    s_head, t_head = torch.nn.Linear(hidden, vocab, bias=False), torch.nn.Linear(hidden, vocab, bias=False)
    sh = torch.randn(batch, seq, hidden, generator=g, requires_grad=True)
    th = torch.randn(batch, seq, hidden, generator=g)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = next_token_labels(ids)
    sums = head_losses(sh, th, s_head, t_head, temperature=2.0, labels=labels, chunk=chunk, fused=fused)
    loss = sums.kl_mean() + 0.5 * sums.ce_mean()
    loss.backward()
    grads = (sh.grad.clone(), s_head.weight.grad.clone())
    sh.grad, s_head.weight.grad = None, None

    s_logits, t_logits = s_head(sh), t_head(th).detach()
    kl = token_kl(s_logits, t_logits, 2.0).mean()
    ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
    (kl + 0.5 * ce).backward()
    assert sums.kl_tokens == batch * seq and sums.ce_tokens == batch * (seq - 1)
    assert torch.allclose(sums.kl_mean(), kl, atol=1e-5) and torch.allclose(sums.ce_mean(), ce, atol=1e-5)
    assert torch.allclose(grads[0], sh.grad, atol=1e-6) and torch.allclose(grads[1], s_head.weight.grad, atol=1e-6)
    assert t_head.weight.grad is None  # the teacher never gets a gradient


def test_chunks_keep_only_one_chunk_of_logits_for_backward():
    """With recomputation (the autograd path), the tensors saved for backward are the hidden-state
    chunks, not [seq, vocab]."""
    hidden, vocab, seq = 8, 1000, 64
    head = torch.nn.Linear(hidden, vocab, bias=False)
    sh = torch.randn(1, seq, hidden, requires_grad=True)
    th = torch.randn(1, seq, hidden)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        head_losses(sh, th, head, head, chunk=8, fused=False).kl_mean()
    assert max(saved) < seq * vocab / 4  # nothing close to the full logits


def test_hidden_state_loss_kinds():
    s, t = _logits(4, 2, 5, 8), _logits(5, 2, 5, 8)
    cos = 1 - (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    assert torch.allclose(hidden_state_loss(s, t, "cosine"), cos.mean(), atol=1e-6)
    assert torch.allclose(hidden_state_loss(s, t, "mse"), F.mse_loss(s, t), atol=1e-6)
    assert float(hidden_state_loss(s, s, "cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(hidden_state_loss(s, 3 * s, "cosine")) == pytest.approx(0.0, abs=1e-6)  # scale-free
    with pytest.raises(ValueError, match="not supported"):
        hidden_state_loss(s, t, "l1")


def test_layer_map_follows_layer_removal():
    assert layer_map(3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert layer_map(3, 5, kept_layers=[0, 2, 4]) == [(0, 0), (1, 2), (2, 4)]
    assert layer_map(3, 5, kept_layers=[0, 2, 4], layers=[2]) == [(2, 4)]
    with pytest.raises(ValueError, match="records no kept_layers"):
        layer_map(3, 5)
    with pytest.raises(ValueError, match="does not describe this student"):
        layer_map(2, 5, kept_layers=[0, 2, 4])
    with pytest.raises(ValueError, match="outside the student's 3 layers"):
        layer_map(3, 5, kept_layers=[0, 2, 4], layers=[3])


def test_objective_compares_each_pruned_layer_with_the_teacher_layer_it_came_from():
    """Drop the middle layer of a 3-layer teacher: student layer 0 is teacher layer 0 exactly (loss 0)
    and student layer 1 is compared with teacher layer 2 (found by the hooks on the right blocks)."""
    from compresskit.core.arch import get_arch
    from compresskit.prune.apply import keep_layers

    teacher = make_tiny_model("llama", num_hidden_layers=3)
    student = copy.deepcopy(teacher)
    ids = torch.randint(0, 320, (2, 32), generator=torch.Generator().manual_seed(0))
    keep_layers(student, get_arch(student), torch.tensor([0, 2]))  # what prune does for --layers 1
    student.config.compresskit_pruning = {"kept_layers": [0, 2]}
    config = DistillConfig(seqlen=32, hidden_weight=1.0, kl_weight=1.0)
    objective = Objective.build(student, teacher, config)
    assert objective.mapping == [(0, 0), (1, 2)]
    only_first = Objective.build(student, teacher, DistillConfig(seqlen=32, hidden_weight=1.0, hidden_layers=(0,)))
    with torch.no_grad():
        _, parts = only_first(student, teacher, ids)
        _, both = objective(student, teacher, ids)
    assert parts["hidden"] == pytest.approx(0.0, abs=1e-6)  # layer 0 is unchanged by removing another layer
    assert both["hidden"] > 1e-4
    with torch.no_grad():  # the KL part equals the KL of the full logits of the two models
        ref = token_kl(student(ids).logits, teacher(ids).logits).mean()
    assert both["kl"] == pytest.approx(float(ref), rel=1e-4)  # float32 sums in another order
