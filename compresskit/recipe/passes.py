"""The passes of a recipe and their settings: `EvalPass`, `SavePass` and `PushPass` (the runner's own steps;
every other pass is a registered one, compresskit.core.registry, and uses its config class as it is),
`Pass` (one entry of a recipe) and `check_settings`, which finds every problem of a pass's settings through its config class.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Callable

import yaml

from ..core.config import JsonConfig
from ..core.errors import ConfigError
from ..core.registry import REGISTRY
from ..eval.settings import EvalSettings

RECIPE_VERSION = 1
STEPS = ("eval", "save", "push")  # what the runner does itself; every other pass is a registered one


def pass_names() -> tuple[str, ...]:
    """What a recipe may list: the registered passes (compresskit.core.registry), then eval, save, push."""
    return REGISTRY.kinds() + STEPS


def model_passes() -> tuple[str, ...]:
    """The registered passes, which work on the model (a stage result is a checkpoint directory)."""
    return REGISTRY.kinds()


class RecipeError(ConfigError):
    """A recipe that cannot run; ``problems`` lists every one found, each naming its pass, field and fix."""

    def __init__(self, source: str, problems: Sequence[str], *, one_pass: bool = False) -> None:
        self.source, self.problems = source, list(problems)
        n = len(self.problems)
        if one_pass:  # a command's own options (compresskit quantize ...): no recipe, pass or field to name
            super().__init__("; ".join(_PASS_LABEL.sub("", p) for p in self.problems))
            return
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}, nothing was run:\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


_PASS_LABEL = re.compile(r"^(?:pass \d+ \(\w+\)(?:, field \w+)?|model|output): ")


class RecipeLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` as a string; this loader reads it as a float (as YAML 1.2 and Python do)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def yaml_value(text: str) -> Any:
    """A YAML scalar or flow value (``4``, ``3e-4``, ``true``, ``[ppl, passkey]``), as a recipe reads it."""
    return yaml.load(text, Loader=RecipeLoader)


@dataclass(frozen=True)
class EvalPass(EvalSettings):
    """An evaluation of the current model against the recipe's original model (or ``baseline``), and its gate.

    The `EvalSettings` fields (tasks x lengths as `compresskit eval` runs them) plus ``max_drop`` (points;
    perplexity in percent unless ``max_ppl_increase``), which makes it a gate: a failing gate stops the
    recipe before anything is saved. Without it the scores are recorded only. ``baseline`` names the model
    to compare with (default: the recipe's model; ``compresskit distill`` compares with its teacher)."""

    tasks: tuple[str, ...] = ("ppl", "passkey")
    ppl_windows: int = 4
    max_drop: float | None = None
    max_ppl_increase: float | None = None
    baseline: str | None = None

    _tasks_hint = " (tasks: [ppl, passkey])"
    _lengths_hint = " (lengths: [4096])"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("max_drop", "max_ppl_increase"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"{name}={value!r} must be a number >= 0 (points; perplexity: percent)")
        if self.baseline is not None and (not isinstance(self.baseline, str) or not self.baseline.strip()):
            raise ConfigError(f"baseline={self.baseline!r} must name a model (default: the recipe's model)")

    @property
    def gated(self) -> bool:
        return self.max_drop is not None or self.max_ppl_increase is not None

    @property
    def settings(self) -> EvalSettings:
        """The evaluation settings alone (no gate)."""
        return EvalSettings(**{f.name: getattr(self, f.name) for f in fields(EvalSettings)})

    @property
    def name(self) -> str:
        gate = ""
        if self.gated:
            ppl = self.max_ppl_increase if self.max_ppl_increase is not None else self.max_drop
            gate = f", gate max drop {self.max_drop if self.max_drop is not None else 2.0:g}, ppl +{ppl:g}%"
        return f"eval {','.join(self.tasks)} @ {','.join(map(str, self.lengths))}{gate}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalPass":
        cls.check_dict(d, "eval pass", RECIPE_VERSION)
        return super().from_dict(d)


@dataclass(frozen=True)
class SavePass(JsonConfig):
    """Write the final model to the recipe's ``output`` (atomically, with the resolved recipe as
    ``recipe.yaml`` and the last evaluation of that model). ``keep_work_dir: false`` deletes the work
    directory after a successful save (and push): a rerun then starts from scratch."""

    keep_work_dir: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.keep_work_dir, bool):
            raise ConfigError(f"keep_work_dir={self.keep_work_dir!r} must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SavePass":
        cls.check_dict(d, "save pass", RECIPE_VERSION)
        return cls(**d)


PUSH_FORMATS = ("auto", "native", "gptq", "gptq-v1", "compressed-tensors")  # compresskit.api_publish.push


@dataclass(frozen=True)
class PushPass(JsonConfig):
    """Push the saved output to the hub model repo ``repo`` (NAME or NAMESPACE/NAME) in one commit; the
    token comes from ``compresskit run --token``, ``HF_TOKEN`` or ``hf auth login`` (never the recipe).
    ``format``: ``auto`` pushes a quantized output as GPTQ (loads without compresskit), ``native``
    compresskit's own format, or ``gptq`` / ``gptq-v1`` / ``compressed-tensors``."""

    repo: str = ""
    private: bool = False
    revision: str | None = None
    overwrite: bool = False
    endpoint: str | None = None
    format: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.repo, str) or not self.repo.strip():
            raise ConfigError("repo is missing: name the hub model repo (repo: NAME or repo: NAMESPACE/NAME)")
        if self.repo.count("/") > 1 or any(c.isspace() for c in self.repo):
            raise ConfigError(f"repo={self.repo!r} is not a hub repo name; use NAME or NAMESPACE/NAME")
        for name in ("private", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.format not in PUSH_FORMATS:
            raise ConfigError(f"format={self.format!r} is not one of {', '.join(PUSH_FORMATS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PushPass":
        cls.check_dict(d, "push pass", RECIPE_VERSION)
        return cls(**d)


@dataclass(frozen=True)
class Pass:
    """One pass of a recipe: its ``kind`` (prune, distill, ...), its 1-based ``index`` in the recipe (0 for
    the implicit save) and its validated ``config`` (None when its settings had problems). A distill pass
    may name its ``teacher`` (default: the recipe's model)."""

    kind: str
    index: int
    config: Any
    teacher: str | None = None

    @property
    def label(self) -> str:
        return f"pass {self.index} ({self.kind})" if self.index else f"{self.kind} (implicit, at the end)"

    @property
    def name(self) -> str:
        """What the pass does, e.g. ``omniquant-w4g64`` or ``eval passkey @ 4096, gate ...``."""
        if self.kind == "save":
            return "save"
        if self.kind == "push":
            return f"push {self.config.repo}" if self.config is not None else "push"
        return getattr(self.config, "name", self.kind)

    def settings(self) -> dict[str, Any]:
        """The resolved settings as the recipe writes them (``version`` and an empty ``extra`` left out)."""
        d = {k: v for k, v in self.config.to_dict().items() if k != "version" and not (k == "extra" and not v)}
        return d | ({"teacher": self.teacher} if self.teacher else {})

    def key_settings(self) -> dict[str, Any]:
        """The settings that change this pass's result (its stage key): no resume cadence, notes or gate."""
        neutral = {"eval": {"cache", "max_drop", "max_ppl_increase"}, "save": {"keep_work_dir"},
                   "push": {"overwrite"}}.get(self.kind)
        if neutral is None:
            neutral = set(REGISTRY.spec_for(self.kind, self.config).key_neutral)
        return {k: v for k, v in self.settings().items() if k not in neutral}


# --- settings of one pass ---------------------------------------------------------------------------

def _known_fields(kind: str, settings: dict[str, Any]) -> list[str]:
    return [f.name for f in fields(_config_class(kind, settings))] + (["teacher"] if kind == "distill" else [])


_STEP_CONFIGS = {"eval": EvalPass, "save": SavePass, "push": PushPass}


def _builder(kind: str) -> Callable[[dict[str, Any]], Any]:
    if kind in _STEP_CONFIGS:
        return _STEP_CONFIGS[kind].from_dict
    if REGISTRY.multi_method(kind):
        return lambda d: REGISTRY.spec_for(kind, d).config.from_dict(d)
    return REGISTRY.get(kind).config.from_dict


def _error(build: Callable[[dict[str, Any]], Any], d: dict[str, Any]) -> str | None:
    try:
        build(d)
    except (ConfigError, ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}" if isinstance(e, TypeError) else str(e)
    return None


def _wrong_type(kind: str, settings: dict[str, Any], field: str) -> str:
    value = settings[field]
    defaults = {f.name: f.default for f in fields(_config_class(kind, settings)) if f.default is not MISSING}
    want = defaults.get(field)
    hint = f"; e.g. {field}: {want!r}" if want not in (None, (), "") else ""
    return f"{field}={value!r} has the wrong type ({type(value).__name__}){hint}"


def _config_class(kind: str, settings: dict[str, Any]) -> type:
    return _STEP_CONFIGS[kind] if kind in _STEP_CONFIGS else REGISTRY.spec_for(kind, settings).config


def _culprit(build: Callable[[dict[str, Any]], Any], d: dict[str, Any], message: str) -> str | None:
    """The field an error is about: of the fields whose removal changes the error, the one the message
    names first (``warmup_steps=50 must be smaller than steps=20`` is about warmup_steps)."""
    involved = [k for k in d if k != "method" and _error(build, {j: v for j, v in d.items() if j != k}) != message]

    def named_at(k: str) -> int:
        found = re.search(rf"(?<![\w-]){re.escape(k)}\b", message)
        return found.start() if found else len(message)

    return min(involved, key=named_at) if involved else None


def check_settings(kind: str, settings: dict[str, Any]) -> tuple[Any, list[tuple[str | None, str]]]:
    """``(config or None, [(field, problem), ...])`` for one pass's settings. Every problem is found, not
    just the first: after each error of the config class, the field it is about (the first one whose
    removal changes the error) is set aside and the rest is checked again."""
    if REGISTRY.multi_method(kind) and settings.get("method", REGISTRY.methods(kind)[0]) not in REGISTRY.methods(kind):
        return None, [("method", f"unknown method {settings['method']!r}; use one of "
                                 f"{', '.join(REGISTRY.methods(kind))}")]
    known = _known_fields(kind, settings)
    problems: list[tuple[str | None, str]] = []
    for k in settings:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.append((str(k), f"unknown field {k!r} of {kind}: {hint}known fields: {', '.join(known)}"))
    d = {k: v for k, v in settings.items() if k in known and k != "teacher"}
    build = _builder(kind)
    while True:
        message = _error(build, d)
        if message is None:
            return (build(d) if not problems else None), problems
        culprit = _culprit(build, d, message)
        if message.startswith("TypeError") and culprit is not None:
            message = _wrong_type(kind, d, culprit)
        problems.append((culprit, message))
        if culprit is None:
            return None, problems
        d = {k: v for k, v in d.items() if k != culprit}
