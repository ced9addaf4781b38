"""The OmniQuant pass's settings (registered as the ``omniquant`` quantize method by compresskit.api_passes)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from ...core.config import CalibratedConfig
from ...core.errors import ConfigError


CLIP_INITS = ("constant", "search")
LINEAR_ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # fields of ArchSpec
PRESETS = ("auto", "published", "cpu")
PRESET_FIELDS = ("nsamples", "seqlen", "epochs", "clip_init", "patience", "retrieval_mix", "finetune_steps",
                 "finetune_long_steps")


def preset_values(preset: str, wbits: int, abits: int = 16) -> dict[str, Any]:
    """The settings ``preset`` gives the fields in `PRESET_FIELDS` that were left unset.

    - ``published``: the paper's scripts (128 x 2048 tokens, 20 epochs, 40 for W2, LWC from 4.0, no early
      stopping, no end-to-end stage): about 10 hours for SmolLM2-135M on a 2-core CPU.
    - ``cpu``: the budgeted pipeline measured best within 60 minutes on a 2-core CPU for SmolLM2-135M
      (bench/results/quality_budget.md): the searched clipping start, a few block epochs with early
      stopping, then the end-to-end scales-only stage and its short long-window stage (weight-only configs:
      with simulated activation quantization neither runs).
    """
    if preset == "published":
        return dict(nsamples=128, seqlen=2048, epochs=40 if wbits == 2 else 20, clip_init="constant", patience=0,
                    retrieval_mix=0.0, finetune_steps=0, finetune_long_steps=0)
    if preset == "cpu":
        return dict(nsamples=CPU_NSAMPLES, seqlen=CPU_SEQLEN, epochs=CPU_EPOCHS, clip_init="search", patience=2,
                    retrieval_mix=CPU_RETRIEVAL_MIX, finetune_steps=CPU_FINETUNE_STEPS if abits >= 16 else 0,
                    finetune_long_steps=CPU_FINETUNE_LONG_STEPS if abits >= 16 else 0)
    raise ConfigError(f"preset={preset!r} is unknown; use {', '.join(PRESETS)}")


CPU_NSAMPLES, CPU_SEQLEN, CPU_EPOCHS, CPU_FINETUNE_STEPS = 16, 2048, 5, 80
CPU_RETRIEVAL_MIX = 0.0
CPU_FINETUNE_LONG_STEPS = 8
FINETUNE_CONTEXT = 2048  # the end-to-end stage's longest windows
FINETUNE_LONG_CONTEXT = 4096  # the long stage's windows


@dataclass(frozen=True)
class OmniQuantConfig(CalibratedConfig):
    """OmniQuant (Shao et al., ICLR 2024): learnable weight clipping and equivalent transformation,
    trained block by block against the full-precision block's output.

    - ``preset``: what the settings left unset (None) become: "published" (the paper's), "cpu" (the
      budgeted pipeline for a CPU, see `preset_values`) or "auto" (the default: "published" for a model on
      a GPU, "cpu" otherwise, decided by `resolved` when the pass runs; the manifest holds the outcome).
      The fields it fills: ``nsamples``, ``seqlen``, ``epochs``, ``clip_init``, ``patience``,
      ``finetune_steps``; a value given explicitly always wins.
    - ``lwc`` / ``let``: learn clipping factors / equivalent-transformation scales. ``let=None``
      (the default) resolves as the published scripts run it: on for weight-activation configs,
      off for weight-only ones (on SmolLM2-135M W4 it cost passkey accuracy; see bench/README.md).
    - ``epochs``: passes over the calibration samples per block (published: 20, or 40 for W2).
      ``epochs=0`` with ``lwc=False`` is SmoothQuant-style scaling followed by rounding.
    - ``lr_lwc`` / ``lr_let``: AdamW learning rates (published 1e-2 / 5e-3), no weight decay.
    - ``let_alpha``: SmoothQuant migration strength for the LET init (None: 0.75 for W4A4, else 0.5).
    - ``max_retries``: on a NaN/inf loss, restore the block's last good parameters and retry with
      the learning rates divided by 10, this many times; then fall back to RTN for that block.
    - ``clip_init``: where LWC starts: "constant" (the published 4.0, a clipping ratio of 0.982) or
      "search" (per row and group, the ratio with the least output error on the block's own inputs, as
      AWQ's auto-clip; weight-only without LET, else "constant" is used).
    - ``clip_search_skip``: linears (by role: ``q_proj`` ... ``down_proj``, as the architecture map names
      them) that the search leaves at the constant start: by default v_proj. Searched clipping of the values
      costs retrieval (SmolLM2-135M W4 g64: passkey at 2K / 4K 70% / 30% searched everywhere, 100% / 100%
      with v_proj skipped, at a lower perplexity; docs/quantization.md).
    - ``retrieval_mix``: the share of the block stage's calibration windows made retrieval exercises
      (facts hidden in the window and asked for at its end, `compresskit.calib.retrieval.with_retrieval`),
      ``retrieval_repeat`` of those with a repeated haystack: the blocks then learn on attention that
      copies from far back, which plain prose rarely exercises (published: 0). Needs the tokenizer and
      windows of a few hundred tokens at least.
    - ``patience``: stop a block's training when its epoch loss has not fallen by 0.1% for this many
      epochs (0: run every epoch, as published); the best epoch's parameters are kept either way.
    - ``finetune_steps``: after the blocks, this many steps of end-to-end distillation against the parent
      that train only the group scales (the integer codes stay; ``compresskit.distill`` with
      ``quant_params_only``), at ``finetune_lr`` on windows of half then all of ``finetune_seqlen`` tokens
      of ``calib`` (capped at the model's context), with
      ``finetune_retrieval_mix`` of them retrieval exercises (0: OmniQuant alone, as published),
      ``finetune_retrieval_repeat`` of those with a repeated haystack (compresskit.calib.retrieval). The
      compresskit API runs this stage; the manifest's report holds it as ``distillation``.
    - ``finetune_long_steps``: then this many steps more on windows of ``finetune_long_seqlen`` tokens
      (capped at the model's context; skipped when that is no longer than ``finetune_seqlen``), each a
      retrieval exercise whose facts sit in the part of the window no shorter window reaches (its first
      ``1 - finetune_seqlen / finetune_long_seqlen``), at a third of ``finetune_lr``: the earlier stage
      never asks for a fact more than ``finetune_seqlen`` tokens back, and a quantized model can lose
      exactly that (SmolLM2-135M W4 g64 missed the passkey at 4K only with the key in the first 7%).
      The report holds it as ``long_distillation``.
    """

    method: str = "omniquant"
    preset: str = "auto"
    nsamples: int | None = None
    seqlen: int | None = None
    lwc: bool = True
    let: bool | None = None
    epochs: int | None = None
    lr_lwc: float = 1e-2
    lr_let: float = 5e-3
    let_alpha: float | None = None
    max_retries: int = 2
    clip_init: str | None = None
    clip_search_skip: tuple[str, ...] = ("v_proj",)
    patience: int | None = None
    retrieval_mix: float | None = None
    retrieval_repeat: float = 0.5
    finetune_steps: int | None = None
    finetune_lr: float = 3e-3
    finetune_seqlen: int = FINETUNE_CONTEXT
    finetune_retrieval_mix: float = 0.5
    finetune_retrieval_repeat: float = 0.5
    finetune_long_steps: int | None = None
    finetune_long_seqlen: int = FINETUNE_LONG_CONTEXT

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"preset={self.preset!r} is unknown; use {', '.join(PRESETS)}")
        # "auto" keeps its unset fields None until `resolved` knows the device; they are checked here with
        # the published values, which every preset's values pass as well
        preset = "published" if self.preset == "auto" else self.preset
        unset = [name for name in PRESET_FIELDS if getattr(self, name) is None]
        for name, value in preset_values(preset, self.wbits, self.abits).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        super().__post_init__()
        self._check()
        if self.preset == "auto":
            for name in unset:
                object.__setattr__(self, name, None)

    def resolved(self, device_type: str, context: int | None = None) -> "OmniQuantConfig":
        """This config with ``preset="auto"`` decided for a model on ``device_type`` ("cuda", "cpu", ...):
        the published settings on a GPU, the ``cpu`` preset elsewhere; the settings given explicitly stay.
        For a model whose ``context`` is short, an unset ``seqlen`` is capped at it, and an unset
        ``finetune_steps`` is 0 below 2048 tokens (the stage's windows, with room for retrieval exercises), an
        unset ``finetune_long_steps`` 0 when the context is no longer than ``finetune_seqlen``."""
        if self.preset != "auto":
            return self
        preset = "published" if device_type in ("cuda", "xpu") else "cpu"
        seqlen, steps, long_steps = self.seqlen, self.finetune_steps, self.finetune_long_steps
        if context is not None:
            if seqlen is None:
                seqlen = min(preset_values(preset, self.wbits, self.abits)["seqlen"], context)
            if steps is None and context < FINETUNE_CONTEXT:
                steps = 0
            if long_steps is None and context <= self.finetune_seqlen:
                long_steps = 0
        return replace(self, preset=preset, seqlen=seqlen, finetune_steps=steps, finetune_long_steps=long_steps)

    @property
    def is_resolved(self) -> bool:
        return self.preset != "auto"

    def settings_line(self) -> str:
        """The calibration settings in words (e.g. for a note of which preset ran)."""
        start = "the search" if self.clip_init == "search" else "4.0"
        mix = f" ({self.retrieval_mix:.0%} retrieval exercises)" if self.retrieval_mix else ""
        return (f"{self.nsamples} x {self.seqlen} calibration tokens{mix}, {self.epochs} epochs per block (patience "
                f"{self.patience}), clipping from {start}, {self.finetune_steps} end-to-end steps"
                + (f" + {self.finetune_long_steps} at {self.finetune_long_seqlen} tokens" if self.finetune_long_steps else ""))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OmniQuantConfig":
        # a saved recipe (it carries a version) from before presets ran with the published defaults
        if "version" in d and "preset" not in d:
            d = {"preset": "published", **d}
        return super().from_dict(d)

    def _check(self) -> None:
        object.__setattr__(self, "clip_search_skip", tuple(self.clip_search_skip))
        unknown = sorted(set(self.clip_search_skip) - set(LINEAR_ROLES))
        if unknown:
            raise ConfigError(f"clip_search_skip: unknown linear role(s) {unknown}; use some of {', '.join(LINEAR_ROLES)}")
        if self.let is None:
            object.__setattr__(self, "let", self.abits < 16)
        if self.epochs < 0:
            raise ConfigError(f"epochs={self.epochs} must be >= 0")
        if self.clip_init not in CLIP_INITS:
            raise ConfigError(f"clip_init={self.clip_init!r} is unknown; use {' or '.join(CLIP_INITS)}")
        if self.patience < 0:
            raise ConfigError(f"patience={self.patience} must be >= 0 (0: no early stopping)")
        if not 0 <= self.retrieval_mix <= 1 or not 0 <= self.retrieval_repeat <= 1:
            raise ConfigError(f"retrieval_mix={self.retrieval_mix} and retrieval_repeat={self.retrieval_repeat} are "
                              "shares of the calibration windows: use values in [0, 1]")
        if self.finetune_seqlen < FINETUNE_CONTEXT:
            raise ConfigError(f"finetune_seqlen={self.finetune_seqlen} must be >= {FINETUNE_CONTEXT} (the stage's "
                              "windows hold retrieval exercises; finetune_steps=0 turns the stage off)")
        if (self.finetune_steps < 0 or self.finetune_lr <= 0 or not 0 <= self.finetune_retrieval_mix < 1
                or not 0 <= self.finetune_retrieval_repeat <= 1):
            raise ConfigError(f"finetune_steps={self.finetune_steps} must be >= 0, finetune_lr={self.finetune_lr} > 0, "
                              f"finetune_retrieval_mix={self.finetune_retrieval_mix} in [0, 1) and "
                              f"finetune_retrieval_repeat={self.finetune_retrieval_repeat} in [0, 1]")
        if self.finetune_long_steps < 0:
            raise ConfigError(f"finetune_long_steps={self.finetune_long_steps} must be >= 0 (0: no long-window stage)")
        if self.finetune_long_steps and self.finetune_long_seqlen <= self.finetune_seqlen:
            raise ConfigError(f"finetune_long_seqlen={self.finetune_long_seqlen} must be longer than finetune_seqlen="
                              f"{self.finetune_seqlen} (its stage trains the longer distances), or set "
                              "finetune_long_steps=0")
        if self.let_alpha is not None and not 0.0 <= self.let_alpha <= 1.0:
            raise ConfigError(f"let_alpha={self.let_alpha} must lie in [0, 1]")

    @property
    def alpha(self) -> float:
        if self.let_alpha is not None:
            return self.let_alpha
        return 0.75 if (self.wbits, self.abits) == (4, 4) else 0.5
