"""One declarative description per model family of where things live.

Passes ask an `ArchSpec` where the decoder blocks, embeddings, norms and linears are, and which
linears read the same input (the groups OmniQuant's LET and pruning work on), instead of matching
substrings of module names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from .errors import CompresskitError


class UnsupportedArchitectureError(CompresskitError, ValueError):
    """The model's family has no ArchSpec; the message lists the supported families."""


@dataclass(frozen=True)
class LinearGroup:
    """Linears that read the same input, and what produces that input.

    ``source`` is a path inside the block: a norm (input_layernorm -> q/k/v) or a linear
    (v_proj -> o_proj); ``None`` when nothing foldable feeds the group (down_proj).
    """

    source: str | None
    linears: tuple[str, ...]


@dataclass(frozen=True)
class ArchSpec:
    """Where the parts of a decoder-only transformer live. Paths are dotted module paths."""

    family: str
    model_types: tuple[str, ...]
    blocks: str
    embed: str
    final_norm: str
    lm_head: str
    attention: str
    q_proj: str
    k_proj: str
    v_proj: str
    o_proj: str
    gate_proj: str
    up_proj: str
    down_proj: str
    input_norm: str
    post_attention_norm: str

    @property
    def groups(self) -> tuple[LinearGroup, ...]:
        return (
            LinearGroup(self.input_norm, (self.q_proj, self.k_proj, self.v_proj)),
            LinearGroup(self.v_proj, (self.o_proj,)),
            LinearGroup(self.post_attention_norm, (self.gate_proj, self.up_proj)),
            LinearGroup(None, (self.down_proj,)),
        )

    @property
    def block_linears(self) -> tuple[str, ...]:
        """Every linear of a block, in execution order."""
        return tuple(name for g in self.groups for name in g.linears)

    def blocks_of(self, model: nn.Module) -> nn.ModuleList:
        return get_module(model, self.blocks)

    def quantizable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Full path -> module for every block linear of ``model``, in order."""
        out: dict[str, nn.Linear] = {}
        for i, block in enumerate(self.blocks_of(model)):
            for rel in self.block_linears:
                out[f"{self.blocks}.{i}.{rel}"] = get_module(block, rel)
        return out


def _llama_like(family: str, model_types: tuple[str, ...]) -> ArchSpec:
    return ArchSpec(
        family=family,
        model_types=model_types,
        blocks="model.layers",
        embed="model.embed_tokens",
        final_norm="model.norm",
        lm_head="lm_head",
        attention="self_attn",
        q_proj="self_attn.q_proj",
        k_proj="self_attn.k_proj",
        v_proj="self_attn.v_proj",
        o_proj="self_attn.o_proj",
        gate_proj="mlp.gate_proj",
        up_proj="mlp.up_proj",
        down_proj="mlp.down_proj",
        input_norm="input_layernorm",
        post_attention_norm="post_attention_layernorm",
    )


# Llama, Qwen2 and Mistral share one layout today; each keeps its own entry so that a family whose
# layout drifts gets its own paths without touching the others.
LLAMA = _llama_like("llama", ("llama",))
QWEN2 = _llama_like("qwen2", ("qwen2",))
MISTRAL = _llama_like("mistral", ("mistral",))
ARCHITECTURES: tuple[ArchSpec, ...] = (LLAMA, QWEN2, MISTRAL)


def supported_model_types() -> list[str]:
    return [t for spec in ARCHITECTURES for t in spec.model_types]


def get_arch(model_or_config: Any) -> ArchSpec:
    """The ArchSpec for a model or config, or an error naming the supported families."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} is not supported; compresskit supports: "
        f"{', '.join(supported_model_types())}"
    )


def get_module(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(root, parent_path), name, module)
