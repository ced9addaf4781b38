"""A toy pass, written as a user would add one: its config class and its run function in one file. The
tests register it with one line (``compresskit.register(SCALE)``) and run it from the API, a recipe and the
command line (tests/test_registry.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from compresskit.api import PassContext
from compresskit.core.config import JsonConfig
from compresskit.core.errors import ConfigError
from compresskit.core.registry import PassSpec


@dataclass(frozen=True)
class ScaleConfig(JsonConfig):
    """Multiply the final norm's weight by ``factor`` (a change anyone can check in the saved weights)."""

    factor: float = 1.0
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.factor, (int, float)) or isinstance(self.factor, bool) or self.factor <= 0:
            raise ConfigError(f"factor={self.factor!r} must be a number > 0")

    @property
    def name(self) -> str:
        return f"scale-x{self.factor:g}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ScaleConfig":
        cls.check_dict(d, "scale pass", 1)
        return cls(**d)


def run_scale(ctx: PassContext, config: ScaleConfig) -> dict[str, Any]:
    with torch.no_grad():
        ctx.model.model.norm.weight.mul_(config.factor)
    ctx.progress(1, "scaled")
    return {"factor": config.factor}


SCALE = PassSpec("scale", "scale", ScaleConfig, run_scale, verb="scaling", description="a toy: scale the final norm")
