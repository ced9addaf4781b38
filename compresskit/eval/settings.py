"""`EvalSettings`: what one evaluation runs (tasks x lengths and their knobs). The command line, the
Python API and recipes all build this one object; `compresskit.evaluate` runs it, and a recipe's eval
pass (`compresskit.recipe.EvalPass`) is these settings plus a gate."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..core.config import JsonConfig
from ..core.errors import ConfigError
from .suite import DEFAULT_TASKS, validate_tasks

SETTINGS_VERSION = 1


@dataclass(frozen=True)
class EvalSettings(JsonConfig):
    """Tasks x lengths and their knobs.

    - ``tasks``: see ``compresskit.eval.TASKS`` (and ``longbench:<dataset>``, which needs
      ``longbench_path``); ``lengths``: prompt lengths in tokens.
    - ``ppl_windows``: perplexity windows per length; ``passkey_trials``: passkey depths per length;
      ``samples``: prompts per RULER task and length; ``seed``.
    - ``longbench_path`` / ``longbench_limit``: LongBench jsonl directory and the first N records.
    - ``cache``: reuse rows scored before for the same weights and settings (True, False or a directory).
    - ``kv``: a KV-cache policy the model generates under (``snapkv:0.5``; compresskit.kvcache), or None
      for the full cache. Rows scored under a policy are cached apart from full-cache rows.
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
    lengths: tuple[int, ...] = (1024,)
    ppl_windows: int = 8
    passkey_trials: int = 5
    samples: int = 5
    seed: int = 0
    longbench_path: str | None = None
    longbench_limit: int | None = None
    cache: Any = True
    kv: Any = None  # a spec string, a dict or a KVPolicy

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "tasks", validate_tasks(tuple(self.tasks)))
        except ValueError as e:
            raise ConfigError(f"{e}{self._tasks_hint}") from None
        lengths = tuple(self.lengths)
        if not lengths or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths):
            raise ConfigError(f"lengths={list(lengths)} must be a non-empty list of token counts{self._lengths_hint}")
        object.__setattr__(self, "lengths", lengths)
        for name in ("ppl_windows", "passkey_trials", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a whole number >= 1")
        if self.longbench_path is not None:
            object.__setattr__(self, "longbench_path", str(self.longbench_path))

    _tasks_hint = ""
    _lengths_hint = ""

    def evaluate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `compresskit.evaluate` (every field of these settings)."""
        return {f.name: getattr(self, f.name) for f in fields(EvalSettings)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tasks": list(self.tasks), "lengths": list(self.lengths)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EvalSettings":
        cls.check_dict(d, "evaluation", SETTINGS_VERSION)
        d = dict(d)
        for name in ("tasks", "lengths"):
            if isinstance(d.get(name), (str, int)):
                d[name] = (d[name],)  # `tasks: passkey` means one task
        return cls(**d)
