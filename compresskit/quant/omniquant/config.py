"""The OmniQuant pass's settings (registered as the ``omniquant`` quantize method by compresskit.api_passes)."""
from __future__ import annotations

from dataclasses import dataclass

from ...core.config import CalibratedConfig
from ...core.errors import ConfigError


CLIP_INITS = ("constant", "search")


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
    - ``clip_init``: where LWC starts: "constant" (the published 4.0, a clipping ratio of 0.982) or
      "search" (per row and group, the ratio with the least output error on the block's own inputs, as
      AWQ's auto-clip; weight-only without LET, else "constant" is used).
    - ``patience``: stop a block's training when its epoch loss has not fallen by 0.1% for this many
      epochs (0: run every epoch, as published); the best epoch's parameters are kept either way.
    - ``finetune_steps``: after the blocks, this many steps of end-to-end distillation against the parent
      that train only the group scales (the integer codes stay; ``compresskit.distill`` with
      ``quant_params_only``), at ``finetune_lr`` on windows of 1024 then 2048 tokens of ``calib``, with
      ``finetune_retrieval_mix`` of them retrieval exercises (0: OmniQuant alone, as published). The
      compresskit API runs this stage; the manifest's report holds it as ``distillation``.
    """

    method: str = "omniquant"
    lwc: bool = True
    let: bool | None = None
    epochs: int | None = None
    lr_lwc: float = 1e-2
    lr_let: float = 5e-3
    let_alpha: float | None = None
    max_retries: int = 2
    clip_init: str = "constant"
    patience: int = 0
    finetune_steps: int = 0
    finetune_lr: float = 1e-2
    finetune_retrieval_mix: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is None:
            object.__setattr__(self, "epochs", 40 if self.wbits == 2 else 20)
        if self.let is None:
            object.__setattr__(self, "let", self.abits < 16)
        if self.epochs < 0:
            raise ConfigError(f"epochs={self.epochs} must be >= 0")
        if self.clip_init not in CLIP_INITS:
            raise ConfigError(f"clip_init={self.clip_init!r} is unknown; use {' or '.join(CLIP_INITS)}")
        if self.patience < 0:
            raise ConfigError(f"patience={self.patience} must be >= 0 (0: no early stopping)")
        if self.finetune_steps < 0 or self.finetune_lr <= 0 or not 0 <= self.finetune_retrieval_mix < 1:
            raise ConfigError(f"finetune_steps={self.finetune_steps} must be >= 0, finetune_lr={self.finetune_lr} > 0 "
                              f"and finetune_retrieval_mix={self.finetune_retrieval_mix} in [0, 1)")
        if self.let_alpha is not None and not 0.0 <= self.let_alpha <= 1.0:
            raise ConfigError(f"let_alpha={self.let_alpha} must lie in [0, 1]")

    @property
    def alpha(self) -> float:
        if self.let_alpha is not None:
            return self.let_alpha
        return 0.75 if (self.wbits, self.abits) == (4, 4) else 0.5
