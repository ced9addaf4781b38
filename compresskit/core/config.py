"""Typed, versioned configuration objects that serialize to JSON.

A `QuantConfig` is the full recipe of a quantization pass. It is validated on construction, so a bad
value fails before any model is touched, with a message that names the problem and the fix.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError
from .registry import REGISTRY

SUPPORTED_WBITS = (2, 3, 4, 8)
SUPPORTED_ABITS = (4, 6, 8, 16)
SUPPORTED_EMBED_BITS = (8, 16)
CONFIG_VERSION = 1


class JsonConfig:
    """JSON round-trip for config dataclasses that define ``to_dict`` / ``from_dict``."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str):
        return cls.from_dict(json.loads(s))

    @classmethod
    def build(cls, config=None, **overrides: Any):
        """A validated config from a config of this class, a dict and/or keyword overrides."""
        if config is None:
            return cls.from_dict(overrides)
        if isinstance(config, dict):
            return cls.from_dict({**config, **overrides})
        return cls.from_dict({**config.to_dict(), **overrides}) if overrides else config

    @classmethod
    def check_dict(cls, d: dict[str, Any], what: str, current_version: int) -> None:
        """Refuse fields ``cls`` does not have and a ``version`` newer than ``current_version``
        (``what`` names the recipe in the message, e.g. "pruning recipe")."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {sorted(unknown)}; known: {sorted(known)}")
        version = d.get("version", current_version)
        if version > current_version:
            raise ConfigError(f"this {what} has version {version}, newer than this compresskit understands "
                              f"({current_version}); upgrade compresskit")


@dataclass(frozen=True)
class QuantConfig(JsonConfig):
    """What to quantize and how.

    - ``wbits``: weight bits, one of 2, 3, 4, 8.
    - ``group_size``: input channels sharing one scale/zero; ``-1`` means per output channel.
      It must be a positive multiple of 32 (the packing word holds 32 values at every width).
    - ``sym``: symmetric quantization (zero point fixed at 2^(bits-1), GPTQ convention).
    - ``ragged_last_group``: allow a last group smaller than ``group_size`` when the input width is
      not a multiple of it (e.g. SmolLM2's 576 with 128). Off by default, because most serving
      kernels require whole groups; when off, such a layer is an error that suggests sizes that fit.
    - ``embed_bits``: 8 stores the token embedding (and a tied or untied lm_head) as int8 with one
      fp16 scale per row; 16 keeps them in the model's float dtype. On small models the embedding
      is a third of the checkpoint, so 8 is the default.
    - ``skip``: module names (exact or suffix after a dot) that stay in full precision.
    - ``extra``: free-form JSON-able notes carried with the recipe (never read by compresskit).
    """

    method: str = "rtn"
    wbits: int = 4
    group_size: int = 128
    sym: bool = False
    abits: int = 16
    ragged_last_group: bool = False
    embed_bits: int = 8
    skip: tuple[str, ...] = ()
    version: int = CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = REGISTRY.get("quantize", self.method).config.__name__  # ConfigError for an unknown method
        if type(self) is not REGISTRY.get("quantize", self.method).config:
            raise ConfigError(f"method {self.method!r} is configured with {want}(...) "
                              f"(or QuantConfig.from_dict({{'method': {self.method!r}, ...}}))")
        if self.wbits == 6 and self.abits < 16:
            pass  # W6A6: 6-bit weights exist for weight-activation recipes (packed 16 values in 3 words)
        elif self.wbits not in SUPPORTED_WBITS:
            raise ConfigError(
                f"wbits={self.wbits} is not supported; use one of {', '.join(map(str, SUPPORTED_WBITS))}"
            )
        if self.abits not in SUPPORTED_ABITS:
            raise ConfigError(f"abits={self.abits} is not supported; use one of {SUPPORTED_ABITS}")
        check_group_size(self.group_size)
        if self.embed_bits not in SUPPORTED_EMBED_BITS:
            raise ConfigError(f"embed_bits={self.embed_bits} is not supported; use 8 or 16")
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def name(self) -> str:
        """Short human name, e.g. ``rtn-w4g64`` or ``rtn-w4pc-sym``."""
        g = "pc" if self.group_size == -1 else f"g{self.group_size}"
        a = "" if self.abits == 16 else f"a{self.abits}"
        return f"{self.method}-w{self.wbits}{a}{g}{'-sym' if self.sym else ''}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QuantConfig":
        """Build the config class of ``d["method"]`` (``QuantConfig`` for rtn), as registered."""
        method = d.get("method", "rtn")
        if cls is QuantConfig:
            target = REGISTRY.get("quantize", method).config
            if target is not QuantConfig:
                return target.from_dict(d)  # its own from_dict (e.g. reading an older saved recipe)
        cls.check_dict(d, "recipe's config", CONFIG_VERSION)
        d = dict(d)
        d["skip"] = tuple(d.get("skip", ()))
        return cls(**d)



@dataclass(frozen=True)
class CalibratedConfig(QuantConfig):
    """Settings shared by methods that calibrate on data: ``nsamples`` x ``seqlen`` tokens from
    ``calib`` (see ``compresskit.calib.parse_source``), ``batch_size`` samples per step, ``seed``."""

    nsamples: int = 128
    seqlen: int = 2048
    calib: str = "builtin"
    batch_size: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("nsamples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be positive")
        if self.seqlen < 2:
            raise ConfigError(f"seqlen={self.seqlen} must be at least 2")
        if self.nsamples % self.batch_size:
            raise ConfigError(f"nsamples={self.nsamples} must be a multiple of batch_size={self.batch_size}")


def check_group_size(group_size: int) -> None:
    if group_size == -1:
        return
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
        raise ConfigError(
            f"group_size={group_size} is not supported; use -1 (per channel) or a positive multiple of 32 "
            "such as 32, 64 or 128"
        )


def dividing_group_sizes(in_features: int, limit: int = 1024) -> list[int]:
    """Group sizes (multiples of 32) that divide ``in_features``, smallest first."""
    return [g for g in range(32, min(in_features, limit) + 1, 32) if in_features % g == 0]
