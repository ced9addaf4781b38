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
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..core.arch import ArchSpec, get_module


@dataclass(frozen=True)
class RetrievalProbe:
    """``input_ids`` ``[seq]`` (prompt + answer); ``queries`` ``[n]`` the positions whose next token is an
    answer token; ``targets[j]`` the needle positions that hold the token query ``j`` must copy."""

    input_ids: torch.Tensor
    queries: torch.Tensor
    targets: tuple[torch.Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.targets) != len(self.queries):
            raise ValueError(f"a probe needs one target set per query: {len(self.queries)} queries, "
                             f"{len(self.targets)} target sets")
        for q, t in zip(self.queries.tolist(), self.targets):
            if len(t) == 0 or int(t.max()) > q:
                raise ValueError(f"needle positions {t.tolist()} must be non-empty and precede query {q}")


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
        raise ValueError("retrieval scoring needs at least one probe")
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
                    progress(f"retrieval probe {n}/{len(probes)}", 1)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out / len(probes)


def probe_from_answer(prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> RetrievalProbe:
    """A probe from a prompt that contains ``answer_ids`` (the needle) and ends where the answer begins.

    Every occurrence of the answer's token sequence in the prompt is a needle; query ``j`` (the position
    before answer token ``j``) targets token ``j`` of each occurrence. Raises ValueError if the answer's
    tokens do not occur in the prompt (tokenize the answer as it appears in the needle)."""
    prompt, answer = list(prompt_ids), list(answer_ids)
    n = len(answer)
    starts = [s for s in range(len(prompt) - n + 1) if prompt[s:s + n] == answer]
    if not starts or n == 0:
        raise ValueError("the answer's tokens do not occur in the prompt; tokenize the answer the way it "
                         "appears inside the needle (e.g. with its leading space)")
    ids = torch.tensor(prompt + answer, dtype=torch.long)
    queries = torch.arange(len(prompt) - 1, len(prompt) - 1 + n)
    targets = tuple(torch.tensor([s + j for s in starts]) for j in range(n))
    return RetrievalProbe(ids, queries, targets)
