"""The manifest every quantized artifact carries: config.json's ``quantization_config``.

It names the storage format and its version, the full recipe, and every quantized module with its
own settings, so a loader never has to guess anything from file or module names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, QuantConfig
from .formats import FORMAT_VERSION

QUANT_METHOD = "compresskit"
LINEAR_FORMAT = "gptq_v2"  # GPTQ layout with exact zero points


@dataclass
class LinearEntry:
    bits: int
    group_size: int
    sym: bool
    bias: bool = False
    abits: int = 16  # < 16: inputs are fake-quantized per token at run time (simulated W-A)

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "sym": self.sym, "bias": self.bias,
                "abits": self.abits}


@dataclass
class EmbeddingEntry:
    """int8-row embedding (and lm_head); ``tied`` when the lm_head shares the embedding's table."""

    embed: str
    lm_head: str | None
    tied: bool
    bits: int = 8

    def to_dict(self) -> dict[str, Any]:
        return {"embed": self.embed, "lm_head": self.lm_head, "tied": self.tied, "bits": self.bits}


@dataclass
class QuantManifest:
    recipe: QuantConfig
    linears: dict[str, LinearEntry]
    embeddings: EmbeddingEntry | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    compresskit_version: str = ""
    format_version: int = FORMAT_VERSION
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"bytes", "sha256"}
    evaluation: dict[str, Any] | None = None
    base_model: str | None = None
    report: dict[str, Any] | None = None  # what the method did (per-block losses, fallbacks, timings)
    attention_abits: int = 16  # < 16: q, k (after RoPE) and v fake-quantized per token (simulated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "format": LINEAR_FORMAT,
            "format_version": self.format_version,
            "compresskit_version": self.compresskit_version,
            "recipe": self.recipe.to_dict(),
            "linears": {k: v.to_dict() for k, v in self.linears.items()},
            "embeddings": self.embeddings.to_dict() if self.embeddings else None,
            "skipped": dict(self.skipped),
            "files": dict(self.files),
            "evaluation": self.evaluation,
            "base_model": self.base_model,
            "report": self.report,
            "attention_abits": self.attention_abits,
        }

    def config_dict(self) -> dict[str, Any]:
        """What ``config.json``'s ``quantization_config`` holds: what a loader needs. The evaluation and the
        method's report are saved in their own files (`compresskit.core.record.EVALUATION_FILE`,
        ``REPORT_FILE``)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("evaluation", "report")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantManifest":
        if d.get("quant_method") != QUANT_METHOD:
            raise ConfigError(f"not a compresskit manifest (quant_method={d.get('quant_method')!r})")
        version = int(d.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"checkpoint format version {version} is newer than this compresskit reads ({FORMAT_VERSION}); "
                "upgrade compresskit"
            )
        emb = d.get("embeddings")
        return cls(
            recipe=QuantConfig.from_dict(d["recipe"]),
            linears={k: LinearEntry(**v) for k, v in d.get("linears", {}).items()},
            embeddings=EmbeddingEntry(**emb) if emb else None,
            skipped=dict(d.get("skipped", {})),
            compresskit_version=d.get("compresskit_version", ""),
            format_version=version,
            files=dict(d.get("files", {})),
            evaluation=d.get("evaluation"),
            base_model=d.get("base_model"),
            report=d.get("report"),
            attention_abits=int(d.get("attention_abits", 16)),
        )
