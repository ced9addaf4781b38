"""Typed, versioned configuration objects that serialize to JSON.

A `QuantConfig` is the full recipe of a quantization pass. It is validated on construction, so a bad
value fails before any model is touched, with a message that names the problem and the fix.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SUPPORTED_WBITS = (2, 3, 4, 8)
SUPPORTED_ABITS = (4, 6, 8, 16)
SUPPORTED_METHODS = ("rtn", "omniquant", "gptq")
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


class ConfigError(ValueError):
    """A configuration value is out of range; the message says which value and what is accepted."""


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
        if self.method not in SUPPORTED_METHODS:
            raise ConfigError(f"unknown method {self.method!r}; supported: {', '.join(SUPPORTED_METHODS)}")
        if type(self) is not METHOD_CONFIGS[self.method]:
            want = METHOD_CONFIGS[self.method].__name__
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
        """Build the config class of ``d["method"]`` (``QuantConfig`` for rtn)."""
        method = d.get("method", "rtn")
        if method not in SUPPORTED_METHODS:
            raise ConfigError(f"unknown method {method!r}; supported: {', '.join(SUPPORTED_METHODS)}")
        if cls is QuantConfig and d.get("method") in METHOD_CONFIGS:
            cls = METHOD_CONFIGS[d["method"]]
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


@dataclass(frozen=True)
class OmniQuantConfig(CalibratedConfig):
    """OmniQuant (Shao et al., ICLR 2024): learnable weight clipping and equivalent transformation,
    trained block by block against the full-precision block's output.

    - ``lwc`` / ``let``: learn clipping factors / equivalent-transformation scales. ``let=None``
      (the default) resolves as the published scripts run it: on for weight-activation configs,
      off for weight-only ones (on SmolLM2-135M W4 it cost passkey accuracy; see bench/README.md).
    - ``epochs``: passes over the calibration samples per block; None (the default) resolves to the
      published 20, or 40 for W2, when the config is built, so the saved JSON holds the number.
      ``epochs=0`` with ``lwc=False`` is SmoothQuant-style scaling followed by rounding.
    - ``lr_lwc`` / ``lr_let``: AdamW learning rates (published 1e-2 / 5e-3), no weight decay.
    - ``let_alpha``: SmoothQuant migration strength for the LET init (None: 0.75 for W4A4, else 0.5).
    - ``max_retries``: on a NaN/inf loss, restore the block's last good parameters and retry with
      the learning rates divided by 10, this many times; then fall back to RTN for that block.
    """

    method: str = "omniquant"
    lwc: bool = True
    let: bool | None = None
    epochs: int | None = None
    lr_lwc: float = 1e-2
    lr_let: float = 5e-3
    let_alpha: float | None = None
    max_retries: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is None:
            object.__setattr__(self, "epochs", 40 if self.wbits == 2 else 20)
        if self.let is None:
            object.__setattr__(self, "let", self.abits < 16)
        if self.epochs < 0:
            raise ConfigError(f"epochs={self.epochs} must be >= 0")
        if self.let_alpha is not None and not 0.0 <= self.let_alpha <= 1.0:
            raise ConfigError(f"let_alpha={self.let_alpha} must lie in [0, 1]")

    @property
    def alpha(self) -> float:
        if self.let_alpha is not None:
            return self.let_alpha
        return 0.75 if (self.wbits, self.abits) == (4, 4) else 0.5


@dataclass(frozen=True)
class GPTQConfig(CalibratedConfig):
    """GPTQ (Frantar et al., 2023): column-by-column rounding with second-order error compensation,
    one linear group at a time on the quantized stream. ``damp`` is the fraction of the mean Hessian
    diagonal added for stability; ``block_size`` columns are updated lazily together."""

    method: str = "gptq"
    damp: float = 0.01
    block_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.damp < 1:
            raise ConfigError(f"damp={self.damp} must lie in (0, 1)")
        if self.block_size < 1:
            raise ConfigError(f"block_size={self.block_size} must be positive")


METHOD_CONFIGS: dict[str, type[QuantConfig]] = {
    "rtn": QuantConfig, "omniquant": OmniQuantConfig, "gptq": GPTQConfig,
}


def fields_for_method(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to the fields that ``values["method"]``'s config class accepts (front ends
    collect every option; each method takes its own). An unknown method passes through unchanged,
    so the config reports it."""
    cls = METHOD_CONFIGS.get(values.get("method", "rtn"))
    if cls is None:
        return dict(values)
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


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
