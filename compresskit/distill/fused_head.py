"""Logit distillation through two bias-free lm_heads with the gradient formed in the forward pass.

The plain way (`losses.head_losses` with module heads) lets autograd differentiate
``matmul -> log_softmax -> KL`` and, to bound memory, recomputes every chunk's logits (both models'!)
in the backward pass: per chunk of positions that is six ``[chunk, hidden] x [hidden, vocab]`` matmuls
and a dozen passes over ``[chunk, vocab]`` tensors. The gradient of the KL with respect to the
student's logits is known in closed form, ``T * (softmax(s / T) - softmax(t / T))`` (and
``softmax(s) - onehot`` for cross-entropy), so each chunk here runs the two logit matmuls once,
turns the logits into that gradient in place, and multiplies it back into the hidden-state and weight
gradients at once (the fused linear cross-entropy / JSD of Liger-Kernel, in plain torch). The
backward pass only scales the stored gradients. Peak memory: a few ``[chunk, vocab]`` float32 tensors
plus one ``[vocab, hidden]`` float32 gradient per loss when the student's head is trained.

Equal to the autograd computation up to float summation order (tests/distill/test_distill_fused_head.py).
"""
from __future__ import annotations

import torch

IGNORE = -100


def _chunk(sh: torch.Tensor, th: torch.Tensor, ws: torch.Tensor, wt: torch.Tensor, labels: torch.Tensor | None,
           temperature: float, want_grad: bool):
    """KL and CE sums of one chunk ``[n, hidden]`` and, with ``want_grad``, their gradients with respect
    to the student's logits ``[n, vocab]`` (float32; ``None`` without)."""
    t = float(temperature)
    zs = (sh @ ws.T).float()
    with torch.no_grad():
        log_p = torch.log_softmax((th @ wt.T).float().div_(t), dim=-1)
    s = zs / t if t != 1.0 else zs
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    p = log_p.exp()
    d = log_p.sub_(s).add_(lse)  # log p - log q, with log q = s - lse(s)
    kl = (t * t) * (p.unsqueeze(-2) @ d.unsqueeze(-1)).sum()
    del d, log_p
    ce = zs.new_zeros(())
    g_ce = None
    if labels is not None:
        valid = labels != IGNORE
        rows = valid.nonzero().squeeze(-1)
        picked = zs[rows, labels[rows]]
        lse1 = lse if t == 1.0 else torch.logsumexp(zs, dim=-1, keepdim=True)
        ce = (lse1.squeeze(-1)[rows] - picked).sum()
        if want_grad:
            g_ce = (zs - lse1).exp_()
            g_ce[~valid] = 0.0
            g_ce[rows, labels[rows]] -= 1.0
    g_kl = None
    if want_grad:
        g_kl = s.sub_(lse).exp_().sub_(p).mul_(t)  # zs (or s = zs / T) is not needed any more
    return kl, ce, g_kl, g_ce


class _FusedHeadLosses(torch.autograd.Function):
    """``(kl_sum, ce_sum)`` of flattened hidden states ``[n, hidden]``; gradients for ``sh`` and ``ws``."""

    @staticmethod
    def forward(ctx, sh, th, ws, wt, labels, temperature, chunk, with_ce):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        n = sh.shape[0]
        step = n if chunk <= 0 else chunk
        kl = sh.new_zeros((), dtype=torch.float32)
        ce = sh.new_zeros((), dtype=torch.float32)
        grads = {}
        if need_h:
            grads["h_kl"] = torch.empty_like(sh)
            grads["h_ce"] = torch.empty_like(sh) if with_ce else None
        if need_w:
            grads["w_kl"] = torch.zeros_like(ws, dtype=torch.float32)
            grads["w_ce"] = torch.zeros_like(ws, dtype=torch.float32) if with_ce else None
        for a in range(0, n, step):
            h = sh[a:a + step]
            k, c, g_kl, g_ce = _chunk(h, th[a:a + step], ws, wt, labels[a:a + step] if with_ce else None,
                                      temperature, need_h or need_w)
            kl, ce = kl + k, ce + c
            for name, g in (("kl", g_kl), ("ce", g_ce)):
                if g is None:
                    continue
                if need_h:
                    grads[f"h_{name}"][a:a + step] = (g.to(ws.dtype) @ ws).to(sh.dtype)
                if need_w:
                    grads[f"w_{name}"].addmm_(g.T, h.float())
        ctx.grads, ctx.dtypes = grads, {"h": sh.dtype, "w": ws.dtype}
        return kl, ce

    @staticmethod
    def backward(ctx, go_kl, go_ce):
        g, ctx.grads = ctx.grads, None

        def combine(kind: str):
            if f"{kind}_kl" not in g:
                return None
            out = g[f"{kind}_kl"] * go_kl
            if g[f"{kind}_ce"] is not None:
                out = out + g[f"{kind}_ce"] * go_ce
            return out.to(ctx.dtypes[kind])

        return combine("h"), None, combine("w"), None, None, None, None, None


def fused_head_sums(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, student_weight: torch.Tensor,
                    teacher_weight: torch.Tensor, *, temperature: float = 1.0, labels: torch.Tensor | None = None,
                    chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(T^2 * KL sum, CE sum)`` over all positions of ``[batch, seq, hidden]`` hidden states through
    bias-free heads ``[vocab, hidden]`` (CE over labelled positions; 0 without ``labels``)."""
    if student_weight.shape != teacher_weight.shape or student_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(f"lm_head weights {tuple(student_weight.shape)} / {tuple(teacher_weight.shape)} do not "
                         f"fit hidden states of width {student_hidden.shape[-1]}")
    sh = student_hidden.reshape(-1, student_hidden.shape[-1])
    th = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    with_ce = labels is not None
    lab = labels.reshape(-1) if with_ce else sh.new_zeros(0, dtype=torch.long)
    return _FusedHeadLosses.apply(sh, th, student_weight, teacher_weight.detach(), lab, float(temperature),
                                  int(chunk), with_ce)
