"""Learnable equivalent transformation (LET): per-channel scales that move difficulty between
activations and weights without changing the block's function.

Pairs (Llama / Qwen2 / Mistral):
- ``qkv``: input_layernorm -> q/k/v: ``norm.w / s``, ``W[:, j] * s[j]``;
- ``fc1``: post_attention_layernorm -> gate/up, likewise;
- ``vo``: v_proj -> o_proj: ``W_v[j, :] / s[j]``, and every query head's o_proj columns are scaled by
  the ``s`` of the KV head it reads (correct for GQA, where the original code breaks);
- ``qk``: ``W_q`` rows / s, ``W_k`` rows * s (so q.k is unchanged). ``s`` has one value per rotary
  pair (channels ``d`` and ``d + head_dim/2``, HF's rotate_half layout), so the scaling commutes
  with RoPE and the transformation is exact; query heads use their KV head's ``s`` (GQA).
down_proj gets none. Llama-family norms have no bias, so there are no shifts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...core.arch import ArchSpec

LET_MIN = 1e-2


@dataclass(frozen=True)
class Geometry:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: Any) -> "Geometry":
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, heads, getattr(config, "num_key_value_heads", None) or heads, head_dim)

    @property
    def n_rep(self) -> int:
        return self.heads // self.kv_heads


def clamp_ste(s: torch.Tensor, minimum: float = LET_MIN) -> torch.Tensor:
    return (s.clamp(min=minimum) - s).detach() + s


def per_query_head(s_kv: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``[kv_heads * head_dim]`` -> ``[heads * head_dim]``: each query head takes its KV head's values."""
    return s_kv.view(geo.kv_heads, 1, geo.head_dim).expand(geo.kv_heads, geo.n_rep, geo.head_dim).reshape(-1)


def rotary_tied(s_half: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """``[kv_heads * head_dim/2]`` -> ``[kv_heads * head_dim]`` with channel d and d + head_dim/2 equal."""
    h = s_half.view(geo.kv_heads, geo.head_dim // 2)
    return torch.cat([h, h], dim=-1).reshape(-1)


def _smooth(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    s = act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def init_let(stats: dict[str, torch.Tensor], params: dict[str, torch.Tensor], arch: ArchSpec, geo: Geometry,
             alpha: float) -> dict[str, torch.Tensor]:
    """SmoothQuant-style starting scales from per-channel activation maxima (``stats``: absmax of the
    inputs of q_proj, o_proj and gate_proj) and the weights' column maxima; q/k starts at 1."""
    def col_absmax(*names: str) -> torch.Tensor:
        return torch.stack([params[f"{n}.weight"].abs().amax(dim=0) for n in names]).amax(dim=0)

    o_act = stats["o"].view(geo.kv_heads, geo.n_rep, geo.head_dim).amax(dim=1).reshape(-1)
    o_w = col_absmax(arch.o_proj).view(geo.kv_heads, geo.n_rep, geo.head_dim).amax(dim=1).reshape(-1)
    return {
        "qkv": _smooth(stats["qkv"], col_absmax(arch.q_proj, arch.k_proj, arch.v_proj), alpha),
        "fc1": _smooth(stats["fc1"], col_absmax(arch.gate_proj, arch.up_proj), alpha),
        "vo": _smooth(o_act, o_w, alpha),
        "qk": torch.ones(geo.kv_heads * geo.head_dim // 2),
    }


def apply_let(params: dict[str, torch.Tensor], let: dict[str, torch.Tensor], arch: ArchSpec,
              geo: Geometry) -> dict[str, torch.Tensor]:
    """Transformed block parameters (a new dict; differentiable in ``let``). Keys are block-relative
    names such as ``self_attn.q_proj.weight``; absent biases are simply absent."""
    p = dict(params)
    s_qkv, s_fc1, s_vo = (clamp_ste(let[k]) for k in ("qkv", "fc1", "vo"))
    s_k = clamp_ste(rotary_tied(let["qk"], geo))
    s_q = per_query_head(s_k, geo)

    p[f"{arch.input_norm}.weight"] = params[f"{arch.input_norm}.weight"] / s_qkv
    p[f"{arch.post_attention_norm}.weight"] = params[f"{arch.post_attention_norm}.weight"] / s_fc1
    row_scale = {arch.q_proj: 1 / s_q, arch.k_proj: s_k, arch.v_proj: 1 / s_vo}
    for name, r in row_scale.items():
        p[f"{name}.weight"] = params[f"{name}.weight"] * s_qkv[None, :] * r[:, None]
        if f"{name}.bias" in params:
            p[f"{name}.bias"] = params[f"{name}.bias"] * r
    p[f"{arch.o_proj}.weight"] = params[f"{arch.o_proj}.weight"] * per_query_head(s_vo, geo)[None, :]
    for name in (arch.gate_proj, arch.up_proj):
        p[f"{name}.weight"] = params[f"{name}.weight"] * s_fc1[None, :]
    return p
