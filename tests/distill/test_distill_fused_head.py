"""The fused head loss (gradient formed in the forward pass) against autograd through full logits:
tied embeddings, a frozen head, no-grad evaluation, half precision, and when it must not be used."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compresskit.distill import head_losses, next_token_labels, token_kl
from compresskit.distill.fused_head import fused_head_sums

HIDDEN, VOCAB = 12, 40


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference(sh, th, ws, wt, temperature, ids):
    """Mean KL and mean next-token CE through full logits, by autograd."""
    s_logits, t_logits = sh @ ws.T, (th @ wt.T).detach()
    kl = token_kl(s_logits, t_logits, temperature).mean()
    ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    return kl, ce


def test_tied_embedding_gets_the_head_gradient_and_the_lookup_gradient():
    """A tied lm_head: the weight's gradient sums the head's (fused) and the embedding lookup's."""
    g = _gen(1)
    embed = torch.nn.Embedding(VOCAB, HIDDEN)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    head.weight = embed.weight  # tied, as SmolLM2
    t_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    ids = torch.randint(0, VOCAB, (2, 9), generator=g)
    mix = torch.randn(HIDDEN, HIDDEN, generator=g)

    def loss(fused: bool) -> torch.Tensor:
        sh = torch.tanh(embed(ids) @ mix)
        th = torch.randn(2, 9, HIDDEN, generator=_gen(2))
        sums = head_losses(sh, th, head, t_head, labels=next_token_labels(ids), chunk=4, fused=fused)
        return sums.kl_mean() + 0.3 * sums.ce_mean()

    results = []
    for fused in (True, False):
        embed.weight.grad = None
        value = loss(fused)
        value.backward()
        results.append((float(value.detach()), embed.weight.grad.clone()))
    (v_fused, g_fused), (v_ref, g_ref) = results
    assert v_fused == pytest.approx(v_ref, rel=1e-5)
    assert torch.allclose(g_fused, g_ref, atol=1e-6)
    assert float(g_fused.abs().sum()) > 0


def test_a_frozen_head_gets_no_gradient_and_the_hidden_gradient_is_unchanged():
    g = _gen(3)
    ws = torch.randn(VOCAB, HIDDEN, generator=g)  # requires_grad False: a frozen (e.g. untrained embed) head
    wt = torch.randn(VOCAB, HIDDEN, generator=g)
    sh = torch.randn(1, 7, HIDDEN, generator=g, requires_grad=True)
    th = torch.randn(1, 7, HIDDEN, generator=g)
    kl, _ = fused_head_sums(sh, th, ws, wt, temperature=1.5, chunk=3)
    (kl / 7).backward()
    ours = sh.grad.clone()
    sh.grad = None
    ref = token_kl(sh @ ws.T, th @ wt.T, 1.5).mean()
    ref.backward()
    assert float(kl / 7) == pytest.approx(float(ref), rel=1e-5)
    assert torch.allclose(ours, sh.grad, atol=1e-6)
    assert ws.grad is None and wt.grad is None


def test_without_gradients_it_only_computes_the_values():
    g = _gen(4)
    head, t_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False), torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    sh, th = torch.randn(2, 5, HIDDEN, generator=g), torch.randn(2, 5, HIDDEN, generator=g)
    ids = torch.randint(0, VOCAB, (2, 5), generator=g)
    with torch.no_grad():
        sums = head_losses(sh, th, head, t_head, temperature=2.0, labels=next_token_labels(ids), chunk=3)
        kl, ce = _reference(sh, th, head.weight, t_head.weight, 2.0, ids)
    assert not sums.kl.requires_grad
    assert torch.allclose(sums.kl_mean(), kl, atol=1e-5) and torch.allclose(sums.ce_mean(), ce, atol=1e-5)


def test_half_precision_heads_give_gradients_in_their_dtype_close_to_float32():
    g = _gen(5)
    ws32, wt32 = torch.randn(VOCAB, HIDDEN, generator=g), torch.randn(VOCAB, HIDDEN, generator=g)
    sh32, th32 = torch.randn(1, 6, HIDDEN, generator=g), torch.randn(1, 6, HIDDEN, generator=g)
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        ws = ws32.to(dtype).detach().requires_grad_()
        sh = sh32.to(dtype).detach().requires_grad_()
        kl, _ = fused_head_sums(sh, th32.to(dtype), ws, wt32.to(dtype), chunk=4)
        kl.backward()
        assert kl.dtype == torch.float32 and sh.grad.dtype == dtype and ws.grad.dtype == dtype
        grads[dtype] = (float(kl), sh.grad.float(), ws.grad.float())
    (k32, h32, w32), (k16, h16, w16) = grads[torch.float32], grads[torch.bfloat16]
    assert k16 == pytest.approx(k32, rel=5e-2)
    for a, b in ((h16, h32), (w16, w32)):
        assert float((a - b).norm() / b.norm()) < 5e-2


def test_heads_it_cannot_fuse_take_the_autograd_path_with_the_same_result():
    """A head with a bias is not bias-free: the autograd path runs it (and the result is still right)."""
    g = _gen(6)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=True)
    t_head = torch.nn.Linear(HIDDEN, VOCAB, bias=True)
    sh = torch.randn(1, 8, HIDDEN, generator=g, requires_grad=True)
    th = torch.randn(1, 8, HIDDEN, generator=g)
    sums = head_losses(sh, th, head, t_head, chunk=3)
    sums.kl_mean().backward()
    assert head.bias.grad is not None  # only autograd through the module reaches the bias
    ref = token_kl(head(sh), t_head(th).detach()).mean()
    assert torch.allclose(sums.kl_mean(), ref, atol=1e-6)


def test_mismatched_head_weights_are_an_error():
    with pytest.raises(ValueError, match="do not fit hidden states"):
        fused_head_sums(torch.zeros(1, 2, HIDDEN), torch.zeros(1, 2, HIDDEN), torch.zeros(VOCAB, HIDDEN),
                        torch.zeros(VOCAB + 1, HIDDEN))
