"""`DistillConfig`: the typed, versioned recipe of a distillation run (teacher -> compressed student).

Validated on construction, so a bad value fails before any model is touched, with a message that
names the problem and the fix. The sequence-length schedule is resolved to whole token counts when the
config is built, so the saved JSON holds the lengths that ran.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.config import ConfigError, JsonConfig

DISTILL_CONFIG_VERSION = 1
LR_SCHEDULES = ("cosine", "linear", "constant")
HIDDEN_LOSSES = ("cosine", "mse")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# parts of a float student that ``train_parts`` can name (empty: all of them); see distill.parts
TRAIN_PARTS = ("attention", "mlp", "norms", "embed", "lm_head")
MIN_SEQLEN = 16
RETRIEVAL_MIN_SEQLEN = 256  # a retrieval exercise (facts + questions) needs about half of such a window
# fields that do not change what is computed: a checkpoint written under other values still resumes
RESUME_NEUTRAL = ("checkpoint_every", "extra")


def _resolve_schedule(schedule: tuple, seqlen: int) -> tuple[int, ...]:
    """Lengths in tokens, ascending, ending at ``seqlen``; fractions (all <= 1) are of ``seqlen``."""
    if not schedule:
        return (seqlen,)
    values = [float(v) for v in schedule]
    if all(0 < v <= 1 for v in values):
        lengths = [max(MIN_SEQLEN, round(v * seqlen)) for v in values]
    elif all(v >= 1 and float(v).is_integer() for v in values):
        lengths = [int(v) for v in values]
    else:
        raise ConfigError(f"seqlen_schedule={list(schedule)} mixes fractions and token counts; give either "
                          "fractions of --seqlen (0.25,0.5,1) or lengths in tokens (1024,2048,4096)")
    if any(b <= a for a, b in zip(lengths, lengths[1:])):
        raise ConfigError(f"seqlen_schedule={lengths} must increase strictly (short to long)")
    if lengths[0] < MIN_SEQLEN:
        raise ConfigError(f"seqlen_schedule starts at {lengths[0]} tokens; the shortest stage needs {MIN_SEQLEN}")
    if lengths[-1] != seqlen:
        raise ConfigError(f"seqlen_schedule={lengths} must end at the longest length, --seqlen {seqlen} "
                          f"(distilling short only shrinks the usable context): append {seqlen}, or set "
                          f"--seqlen {lengths[-1]}")
    return tuple(lengths)


@dataclass(frozen=True)
class DistillConfig(JsonConfig):
    """How a compressed student learns from its parent (the teacher).

    Objective (per token, averaged): ``kl_weight * T^2 * KL(teacher_T || student_T)`` on logits at
    temperature ``temperature`` (forward KL, Minitron's recipe: T=1, no LM loss) + ``ce_weight *`` the
    student's next-token cross-entropy + ``hidden_weight *`` a hidden-state loss (``hidden_loss``:
    ``cosine`` = 1 - cos, or ``mse``) between each student layer in ``hidden_layers`` (student indices;
    empty = all) and the teacher layer it came from (pruned models record their kept layers).
    ``kl_chunk`` positions at a time go through the lm_head and KL (0 = the whole sequence at once),
    so the [seq, vocab] logits of both models never exist in full.

    Schedule: ``steps`` optimizer steps of ``batch_size`` x ``grad_accum`` sequences. ``seqlen`` is
    the longest (final) length; ``seqlen_schedule`` (token counts or fractions of ``seqlen``, ascending,
    ending at ``seqlen``) splits the steps into short-to-long stages, by ``schedule_fractions`` (default
    equal shares). AdamW at ``lr`` with ``warmup_steps`` linear warmup then ``lr_schedule`` down to
    ``min_lr_ratio * lr``; gradients clipped at ``max_grad_norm`` (0: off).

    Students: all float weights (default), or only those of ``train_parts`` (``attention``, ``mlp``,
    ``norms``, ``embed``, ``lm_head``; e.g. ``mlp`` for an MLP-pruned student keeps its attention, and
    with it the retrieval heads, as the parent had it); ``lora`` adapters of rank ``lora_rank`` on ``lora_targets``
    (merged into the weights at the end); or, for a quantized student, ``quant_params_only``: only the
    group scales are trained (the packed integer codes and zero points stay bit for bit), plus the
    RMSNorm weights with ``train_norms`` (the float side of OmniQuant's LET fold).

    Data: windows from ``data`` (a calibration source: ``builtin``, ``file:PATH``, ``generated``,
    ``hf:NAME``), drawn with ``seed``; ``retrieval_mix`` of them (a share, 0..1) become retrieval
    exercises: facts hidden at random depths of the window's text and asked for at its end
    (compresskit.calib.retrieval), so that distilling keeps the parent's long-range retrieval;
    ``retrieval_repeat`` of those exercises (a share, 0..1) hide their facts in one short passage of the
    text repeated instead (passkey-style haystacks: retrieval from repetitive context is not learnt from prose);
    ``retrieval_depth`` < 1 hides the facts in that first share of the text only (the longest distances
    from the questions; OmniQuant's long stage uses it). ``checkpoint_every`` N steps the full training state is saved
    (0: only when stopped early); a rerun with the same work directory resumes exactly.
    ``mixed_precision``: ``auto`` = bf16 on CUDA, fp32 on CPU (or what ``accelerate launch`` sets).
    """

    steps: int = 100
    seqlen: int = 4096
    seqlen_schedule: tuple[int, ...] = ()
    schedule_fractions: tuple[float, ...] = ()
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    hidden_loss: str = "cosine"
    hidden_layers: tuple[int, ...] = ()
    kl_chunk: int = 1024
    data: str = "builtin"
    retrieval_mix: float = 0.0
    retrieval_repeat: float = 0.0
    retrieval_depth: float = 1.0
    seed: int = 0
    train_parts: tuple[str, ...] = ()
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    quant_params_only: bool = False
    train_norms: bool = False
    gradient_checkpointing: bool = True
    checkpoint_every: int = 0
    mixed_precision: str = "auto"
    version: int = DISTILL_CONFIG_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "lora_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive whole number (e.g. --{_flag(name)} 1)")
        for name in ("warmup_steps", "checkpoint_every", "kl_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}={value!r} must be a whole number >= 0")
        if not isinstance(self.seqlen, int) or self.seqlen < MIN_SEQLEN:
            raise ConfigError(f"seqlen={self.seqlen!r} must be at least {MIN_SEQLEN} tokens (e.g. --seqlen 4096)")
        lengths = _resolve_schedule(tuple(self.seqlen_schedule), self.seqlen)
        object.__setattr__(self, "seqlen_schedule", lengths)
        object.__setattr__(self, "schedule_fractions", tuple(float(f) for f in self.schedule_fractions))
        if self.schedule_fractions:
            if len(self.schedule_fractions) != len(lengths):
                raise ConfigError(f"schedule_fractions has {len(self.schedule_fractions)} entries for "
                                  f"{len(lengths)} stages {list(lengths)}; give one share per stage")
            if any(f <= 0 for f in self.schedule_fractions) or abs(sum(self.schedule_fractions) - 1) > 1e-6:
                raise ConfigError(f"schedule_fractions={list(self.schedule_fractions)} must be positive and sum to 1")
        if len(lengths) > self.steps:
            raise ConfigError(f"{len(lengths)} schedule stages need at least {len(lengths)} steps (steps={self.steps})")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr={self.lr!r} must be positive (e.g. --lr 1e-4)")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup_steps={self.warmup_steps} must be smaller than steps={self.steps}")
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("hidden_loss", self.hidden_loss, HIDDEN_LOSSES)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        if self.max_grad_norm < 0:
            raise ConfigError(f"max_grad_norm={self.max_grad_norm} must be >= 0 (0 turns clipping off)")
        if not (isinstance(self.retrieval_mix, (int, float)) and 0.0 <= self.retrieval_mix <= 1.0):
            raise ConfigError(f"retrieval_mix={self.retrieval_mix!r} is the share of windows made retrieval "
                              "exercises: give a number in [0, 1] (e.g. --retrieval-mix 0.25)")
        if not (isinstance(self.retrieval_repeat, (int, float)) and 0.0 <= self.retrieval_repeat <= 1.0):
            raise ConfigError(f"retrieval_repeat={self.retrieval_repeat!r} is the share of retrieval exercises with a "
                              "repeated haystack: give a number in [0, 1] (e.g. --retrieval-repeat 0.5)")
        if not (isinstance(self.retrieval_depth, (int, float)) and 0.0 < self.retrieval_depth <= 1.0):
            raise ConfigError(f"retrieval_depth={self.retrieval_depth!r} is the share of the text the facts are hidden "
                              "in, from its start: give a number in (0, 1] (e.g. --retrieval-depth 0.5)")
        if self.retrieval_repeat and not self.retrieval_mix:
            raise ConfigError(f"retrieval_repeat={self.retrieval_repeat} shapes retrieval exercises and there are none: "
                              "set --retrieval-mix too (e.g. --retrieval-mix 0.5)")
        if self.retrieval_mix and lengths[0] < RETRIEVAL_MIN_SEQLEN:
            raise ConfigError(f"retrieval exercises need windows of at least {RETRIEVAL_MIN_SEQLEN} tokens and the "
                              f"first stage has {lengths[0]}: start --seqlen-schedule at {RETRIEVAL_MIN_SEQLEN} or "
                              "more, or set --retrieval-mix 0")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature} must be positive (Minitron uses 1)")
        for name in ("kl_weight", "ce_weight", "hidden_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if not (self.kl_weight or self.ce_weight or self.hidden_weight):
            raise ConfigError("every loss weight is 0; set --kl-weight (default 1), --ce-weight or --hidden-weight")
        object.__setattr__(self, "hidden_layers", tuple(int(i) for i in self.hidden_layers))
        if any(i < 0 for i in self.hidden_layers):
            raise ConfigError(f"hidden_layers={list(self.hidden_layers)} are student layer indices, >= 0")
        object.__setattr__(self, "train_parts", tuple(self.train_parts))
        unknown = [p for p in self.train_parts if p not in TRAIN_PARTS]
        if unknown:
            raise ConfigError(f"train_parts {unknown} unknown; name parts among {', '.join(TRAIN_PARTS)} "
                              "(--train-parts mlp,norms), or leave it empty to train every float weight")
        if self.train_parts and (self.lora or self.quant_params_only):
            raise ConfigError("--train-parts selects float weights of a fully trained student; with --lora use "
                              "--lora-targets, and --quant-params-only trains the scales")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.lora and not self.lora_targets:
            raise ConfigError("lora_targets is empty; name the linears that get adapters (e.g. q_proj,v_proj)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must lie in [0, 1)")
        if self.lora and self.quant_params_only:
            raise ConfigError("--lora and --quant-params-only exclude each other: a quantized student trains its "
                              "scales only (merged adapters would change the integer codes)")
        if self.train_norms and not self.quant_params_only:
            raise ConfigError("--train-norms applies to --quant-params-only (other students train every float "
                              "weight, norms included)")

    @property
    def name(self) -> str:
        """Short human name, e.g. ``distill-full-s4096x200`` or ``distill-lora16-s1024-2048x50``."""
        kind = (f"lora{self.lora_rank}" if self.lora else "qparams" if self.quant_params_only
                else "+".join(self.train_parts) or "full")
        return f"distill-{kind}-s{'-'.join(map(str, self.seqlen_schedule))}x{self.steps}"

    def stages(self) -> list[tuple[int, int]]:
        """``[(seqlen, steps), ...]`` of the schedule: every stage at least one step, summing to ``steps``."""
        lengths = self.seqlen_schedule
        shares = self.schedule_fractions or tuple(1 / len(lengths) for _ in lengths)
        bounds, acc = [0], 0.0
        for share in shares:
            acc += share
            bounds.append(round(acc * self.steps))
        bounds[-1] = self.steps
        for i in range(1, len(bounds) - 1):  # at least one step per stage, keeping the total
            bounds[i] = max(bounds[i], bounds[i - 1] + 1)
        for i in range(len(bounds) - 2, 0, -1):
            bounds[i] = min(bounds[i], bounds[i + 1] - 1)
        return [(length, bounds[i + 1] - bounds[i]) for i, length in enumerate(lengths)]

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step at the final length, on one process."""
        return self.batch_size * self.grad_accum * self.seqlen

    def resume_key(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to resume (everything that changes the computation)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_NEUTRAL}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("seqlen_schedule", "schedule_fractions", "hidden_layers", "train_parts", "lora_targets"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        cls.check_dict(d, "distillation recipe", DISTILL_CONFIG_VERSION)
        d = dict(d)
        for name in ("seqlen_schedule", "schedule_fractions", "hidden_layers", "train_parts", "lora_targets"):
            if name in d and d[name] is not None:
                d[name] = tuple(d[name])
        return cls(**d)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(f"{name}={value!r} is not supported; use one of {', '.join(options)} "
                          f"(--{_flag(name)})")
