"""Retrieval-head scores (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context
Factuality"), attention-mass variant.

A probe is one needle prompt with its answer appended (teacher forcing): at every query position that
predicts an answer token, a head scores the attention mass it puts on the needle positions holding
that same token (the token being copied). Scores are averaged over the answer tokens and probes.

Only the probed query rows are computed: a pre-forward hook on each attention module takes the
hidden states and the rotary (cos, sin) the model hands it, projects q for the few query positions
and k for the whole prompt, applies RoPE (Llama/Qwen2/Mistral rotate halves), and forms
softmax(q k^T / sqrt(d)) over the causal (and, where the layer has one, sliding-window) span. No
L x L attention matrix is built. The result matches eager attention's weights (tests/prune).

`answer_loss_scores` is the other score (Michel et al. 2019, "Are Sixteen Heads Really Better than
One?", head-mask gradients, here on the answer tokens of the same probes): a gate of 1 multiplies each
head's output (the o_proj input); ``-dL/dgate`` is the first-order estimate of how much the
teacher-forced loss of the answer rises when the head is removed. It sees the whole retrieval circuit
(the heads that copy and the heads that prepare the copy, such as previous-token heads), not only the
heads whose attention lands on the needle.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.arch import ArchSpec, get_module
from ..core.errors import ConfigError, InputError


@dataclass(frozen=True)
class RetrievalProbe:
    """``input_ids`` ``[seq]`` (prompt + answer); ``queries`` ``[n]`` the positions whose next token is an
    answer token; ``targets[j]`` the needle positions that hold the token query ``j`` must copy."""

    input_ids: torch.Tensor
    queries: torch.Tensor
    targets: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.queries):
            raise InputError(f"a probe needs one target set per query: {len(self.queries)} queries, "
                             f"{len(self.targets)} target sets")
        for q, t in zip(self.queries.tolist(), self.targets):
            if len(t) == 0 or int(t.max()) > q:
                raise InputError(f"needle positions {t.tolist()} must be non-empty and precede query {q}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` ``[heads, seq, d]`` rotated by ``cos``/``sin`` ``[seq, d]``."""
    return x * cos + rotate_half(x) * sin


def query_attention(q: torch.Tensor, k: torch.Tensor, query_pos: torch.Tensor, scaling: float,
                    window: int | None = None) -> torch.Tensor:
    """Attention probabilities ``[heads, n, seq]`` of ``q`` ``[heads, n, d]`` at positions ``query_pos``
    over keys ``k`` ``[kv_heads, seq, d]`` (GQA: query head h reads kv head h // (heads / kv_heads)),
    causal, optionally limited to the last ``window`` keys."""
    groups = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(groups, dim=0)
    logits = torch.einsum("hnd,htd->hnt", q.float(), k.float()) * scaling
    pos = torch.arange(k.shape[1], device=k.device)
    allowed = pos[None, :] <= query_pos[:, None]
    if window is not None:
        allowed &= pos[None, :] > query_pos[:, None] - window
    return logits.masked_fill(~allowed[None], float("-inf")).softmax(dim=-1)


def copy_mass(probs: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[heads, n, seq]`` probabilities -> ``[heads]``: mean over queries of the mass on each query's targets."""
    per_query = [probs[:, j, t].sum(dim=-1) for j, t in enumerate(targets)]
    return torch.stack(per_query, dim=1).mean(dim=1)


def _layer_window(config, i: int) -> int | None:
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or (types is not None and types[i] != "sliding_attention"):
        return None
    return int(window)


def _hook(spec: ArchSpec, attn: nn.Module, probe_state: dict, out: torch.Tensor, i: int, window: int | None,
          n_heads: int, n_kv: int) -> Callable:
    q_proj, k_proj = get_module(attn, _rel(spec.q_proj, spec)), get_module(attn, _rel(spec.k_proj, spec))

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"] if "position_embeddings" in kwargs else args[1]
        probe: RetrievalProbe = probe_state["probe"]
        queries = probe.queries.to(hidden.device)
        h = hidden[0].float()
        d = cos.shape[-1]
        k = k_proj(hidden[0]).float().view(-1, n_kv, d).transpose(0, 1)
        q = q_proj(hidden[0, queries]).float().view(-1, n_heads, d).transpose(0, 1)
        k = apply_rope(k, cos[0].float(), sin[0].float())
        q = apply_rope(q, cos[0, queries].float(), sin[0, queries].float())
        probs = query_attention(q, k, queries, getattr(attn, "scaling", d ** -0.5), window)
        out[i] += copy_mass(probs, [t.to(h.device) for t in probe.targets]).cpu()

    return hook


def _rel(path: str, spec: ArchSpec) -> str:
    """A block-relative path (``self_attn.q_proj``) made relative to the attention module."""
    return path[len(spec.attention) + 1:]


def retrieval_scores(model: nn.Module, spec: ArchSpec, probes: Sequence[RetrievalProbe], *,
                     progress: Callable[..., None] | None = None) -> torch.Tensor:
    """``[layers, query heads]``: mean copy mass per head over ``probes``."""
    if not probes:
        raise InputError("retrieval scoring needs at least one probe")
    blocks = spec.blocks_of(model)
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    out = torch.zeros(len(blocks), n_heads)
    state: dict = {}
    handles = [get_module(block, spec.attention).register_forward_pre_hook(
        _hook(spec, get_module(block, spec.attention), state, out, i, _layer_window(cfg, i), n_heads, n_kv),
        with_kwargs=True) for i, block in enumerate(blocks)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for n, probe in enumerate(probes, 1):
                state["probe"] = probe
                model(input_ids=probe.input_ids[None].to(device), use_cache=False)
                if progress is not None:
                    progress(1, f"retrieval probe {n}/{len(probes)}")
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out / len(probes)


def answer_loss_scores(model: nn.Module, spec: ArchSpec, probes: Sequence[RetrievalProbe], *,
                       progress: Callable[..., None] | None = None) -> torch.Tensor:
    """``[layers, query heads]``: mean over ``probes`` of ``-dL/dg``, L the mean cross-entropy of the
    answer tokens, g a per-head gate (all ones) on each o_proj input. One forward and backward per probe;
    the model's weights get no gradients and are left as they were."""
    if not probes:
        raise InputError("retrieval scoring needs at least one probe")
    blocks = spec.blocks_of(model)
    n_heads = model.config.num_attention_heads
    gates = torch.ones(len(blocks), n_heads, requires_grad=True)

    def gate_hook(i: int) -> Callable:
        def hook(_module, args):
            x = args[0]
            gated = x.view(*x.shape[:-1], n_heads, -1) * gates[i].to(x.device, x.dtype)[:, None]
            return (gated.view(x.shape), *args[1:])
        return hook

    handles = [get_module(block, spec.o_proj).register_forward_pre_hook(gate_hook(i)) for i, block in enumerate(blocks)]
    params = list(model.parameters())
    grad_flags = [p.requires_grad for p in params]
    device = params[0].device
    was_training = model.training
    model.eval()
    total = torch.zeros(len(blocks), n_heads)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            for n, probe in enumerate(probes, 1):
                ids = probe.input_ids[None].to(device)
                first = int(probe.queries.min())
                logits = model(input_ids=ids, use_cache=False, logits_to_keep=ids.shape[1] - first).logits[0]
                rows = (probe.queries - first).to(device)
                loss = torch.nn.functional.cross_entropy(logits[rows].float(), ids[0, probe.queries.to(device) + 1])
                (grad,) = torch.autograd.grad(loss, gates)
                total -= grad
                if progress is not None:
                    progress(1, f"retrieval probe {n}/{len(probes)}")
    finally:
        for h in handles:
            h.remove()
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return total / len(probes)


def head_retrieval_scores(model: nn.Module, spec: ArchSpec, probes: Sequence[RetrievalProbe], method: str, *,
                          progress: Callable[..., None] | None = None) -> torch.Tensor:
    """``[layers, query heads]`` by ``method``: ``"attention"`` (`retrieval_scores`) or ``"answer_loss"``
    (`answer_loss_scores`); higher means more needed for retrieval."""
    scorers = {"attention": retrieval_scores, "answer_loss": answer_loss_scores}
    if method not in scorers:
        raise ConfigError(f"unknown retrieval score {method!r}; use one of {', '.join(scorers)}")
    return scorers[method](model, spec, probes, progress=progress)


def probe_from_answer(prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> RetrievalProbe:
    """A probe from a prompt that contains ``answer_ids`` (the needle) and ends where the answer begins.

    Every occurrence of the answer's token sequence in the prompt is a needle; query ``j`` (the position
    before answer token ``j``) targets token ``j`` of each occurrence. Raises `InputError` if the answer's
    tokens do not occur in the prompt (tokenize the answer as it appears in the needle)."""
    prompt, answer = list(prompt_ids), list(answer_ids)
    n = len(answer)
    starts = [s for s in range(len(prompt) - n + 1) if prompt[s:s + n] == answer]
    if not starts or n == 0:
        raise InputError("the answer's tokens do not occur in the prompt; tokenize the answer the way it "
                         "appears inside the needle (e.g. with its leading space)")
    ids = torch.tensor(prompt + answer, dtype=torch.long)
    queries = torch.arange(len(prompt) - 1, len(prompt) - 1 + n)
    targets = tuple(torch.tensor([s + j for s in starts]) for j in range(n))
    return RetrievalProbe(ids, queries, targets)
