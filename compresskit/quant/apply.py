"""Plan which linears a config quantizes, and install packed results into the model.

Planning checks every layer before any is touched, so a bad setting fails with nothing modified.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..core.progress import Progress
from ..core.version import __version__
from ..core.arch import ArchSpec, get_arch, get_module, set_module
from ..core.config import ConfigError, QuantConfig
from ..core.formats import GPTQPacked, Int8Rows, check_layer_shape
from ..core.manifest import EmbeddingEntry, LinearEntry, QuantManifest
from ..core.quant_math import quantize_rows_int8
from ..kernels.attention import enable_qkv_quantization
from ..kernels.convert import tie_int8_head
from ..kernels.modules import Int8Embedding, Int8Linear, QuantLinear



@dataclass
class LayerPlan:
    name: str
    module: nn.Linear
    entry: LinearEntry


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def plan_embeddings(model: nn.Module, cfg: QuantConfig, arch: ArchSpec) -> bool:
    """Whether the embedding (and lm_head) become int8 rows; raises before changing anything."""
    if cfg.embed_bits == 16 or _matches(arch.embed, cfg.skip) or _matches(arch.lm_head, cfg.skip):
        return False
    if isinstance(get_module(model, arch.embed), Int8Embedding):
        raise ConfigError(f"{arch.embed} is already quantized; start from the full-precision model")
    head = get_module(model, arch.lm_head)
    if getattr(head, "bias", None) is not None:
        raise ConfigError(f"{arch.lm_head} has a bias, which int8 rows do not store; use embed_bits=16")
    return True


def plan_linears(model: nn.Module, cfg: QuantConfig) -> tuple[list[LayerPlan], dict[str, str]]:
    """The linears to quantize and the ones skipped (with why); raises before changing anything."""
    arch = get_arch(model)
    plans, skipped = [], {}
    if not plan_embeddings(model, cfg, arch) and cfg.embed_bits == 8:
        skipped[arch.embed] = skipped[arch.lm_head] = "in skip list (embeddings stay in float)"
    for name, module in arch.quantizable_linears(model).items():
        if isinstance(module, QuantLinear):
            raise ConfigError(f"{name} is already quantized; start from the full-precision model")
        if _matches(name, cfg.skip):
            skipped[name] = "in skip list"
            continue
        check_layer_shape(name, module.in_features, module.out_features, cfg.wbits, cfg.group_size,
                          cfg.ragged_last_group)
        entry = LinearEntry(cfg.wbits, cfg.group_size, cfg.sym, module.bias is not None, cfg.abits)
        plans.append(LayerPlan(name, module, entry))
    return plans, skipped


def install_linear(model: nn.Module, plan: LayerPlan, packed: GPTQPacked) -> None:
    bias = None if plan.module.bias is None else plan.module.bias.detach()
    qlin = QuantLinear.from_packed(packed, bias, dtype=plan.module.weight.dtype, abits=plan.entry.abits)
    set_module(model, plan.name, qlin.to(plan.module.weight.device))


def quantize_embeddings(model: nn.Module, arch: ArchSpec) -> EmbeddingEntry:
    """int8 rows for the token embedding and the lm_head (sharing one table when tied)."""
    emb = get_module(model, arch.embed)
    head = get_module(model, arch.lm_head) if arch.lm_head else None
    tied = head is not None and head.weight is emb.weight
    entry = EmbeddingEntry(embed=arch.embed, lm_head=arch.lm_head if head is not None else None, tied=tied)
    dtype, device = emb.weight.dtype, emb.weight.device

    def int8(weight: torch.Tensor) -> Int8Rows:
        q, scale = quantize_rows_int8(weight.detach())
        return Int8Rows(q, scale.to(dtype))

    new_emb = Int8Embedding(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, dtype=dtype, device=device)
    new_emb.load_rows(int8(emb.weight))
    set_module(model, arch.embed, new_emb)
    if head is not None:
        new_head = Int8Linear(head.in_features, head.out_features, dtype=dtype, device=device)
        set_module(model, arch.lm_head, new_head)
        if tied:
            tie_int8_head(model, entry)
        else:
            new_head.load_rows(int8(head.weight))
    return entry


def quantize_linears(
    model: nn.Module,
    cfg: QuantConfig,
    quantize_weight: Callable[[torch.Tensor, LinearEntry], GPTQPacked],
    progress: Progress | None = None,
) -> QuantManifest:
    """Quantize every planned linear with ``quantize_weight`` (one layer at a time), then embeddings."""
    plans, skipped = plan_linears(model, cfg)
    arch = get_arch(model)
    enable_activation_quantization(model, cfg)
    for plan in plans:
        packed = quantize_weight(plan.module.weight.detach(), plan.entry)
        install_linear(model, plan, packed)
        if progress:
            progress(1, plan.name)
    embeddings = quantize_embeddings(model, arch) if plan_embeddings(model, cfg, arch) else None
    return build_manifest(model, cfg, plans, skipped, embeddings)


def enable_activation_quantization(model: nn.Module, cfg: QuantConfig) -> None:
    """For W-A recipes: q/k/v inside attention are fake-quantized per token too (linear inputs are
    handled by QuantLinear). Called after planning, so a bad setting changes nothing."""
    if cfg.abits < 16:
        enable_qkv_quantization(model, get_arch(model), cfg.abits)


def build_manifest(model: nn.Module, cfg: QuantConfig, plans: list[LayerPlan], skipped: dict[str, str],
                   embeddings: EmbeddingEntry | None, report: dict | None = None) -> QuantManifest:
    """The manifest of a finished quantization pass."""
    return QuantManifest(
        recipe=cfg,
        linears={p.name: p.entry for p in plans},
        embeddings=embeddings,
        skipped=skipped,
        compresskit_version=__version__,
        base_model=getattr(model.config, "_name_or_path", None) or None,
        report=report,
        attention_abits=cfg.abits,
    )
