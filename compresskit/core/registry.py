"""The registry of passes: one `PassSpec` per thing compresskit can do to a model.

A pass is registered once, with its config class, its checks, its progress units, its run function and
whether it changes the weights; the Python API (`compresskit.apply`, `compresskit.quantize`), the
command line (``compresskit quantize --method``, ``compresskit apply``) and recipes (``- prune: {...}``)
all find it here, so adding a pass is one file plus one `register` call (docs/design.md).

Passes are grouped by ``kind``, the name a recipe uses (``quantize``, ``prune``, ``distill``, ...). A
kind with several methods (quantize: rtn, gptq, omniquant) names the method in its config's ``method``
field; a kind with one method is its own method name.

The built-in passes are registered by ``compresskit.api_passes`` when ``compresskit`` is imported.
This module imports nothing of compresskit's, so every room may read the registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator

from .errors import ConfigError


@dataclass(frozen=True)
class PassSpec:
    """What the front ends need to know of one pass.

    - ``kind``: the recipe's name for it (``quantize``); ``method``: its name within the kind (``rtn``;
      equal to ``kind`` for a kind with one method).
    - ``config``: its config class, a frozen dataclass with ``from_dict`` / ``to_dict`` (a `JsonConfig`)
      whose constructor checks every value (raising `ConfigError`).
    - ``run(ctx, config) -> dict``: does the work on ``ctx.model`` in place and returns a JSON-able
      summary of what it did; ``ctx`` is a `PassContext`.
    - ``units(ctx, config) -> int``: how many progress units ``run`` reports (default 1).
    - ``check(ctx, config)``: fails (with a `CompresskitError`) before any work when the pass cannot run
      on ``ctx.model`` (bad shapes, missing packages); default: no check.
    - ``changes_weights``: False for a pass that only attaches runtime behaviour (a KV-cache policy).
    - ``resumable``: the pass keeps its progress in ``ctx.state_dir``, and a rerun resumes from it.
    - ``needs_teacher``: the pass reads ``ctx.teacher`` (distillation).
    - ``verb``: what the progress bar says while it runs (``quantizing``); ``done``: what the model is
      called after it (``quantized``: "evaluating quantized").
    - ``key_neutral``: config fields that do not change the result (notes, resume cadence): a recipe
      rerun with only these changed reuses the pass's result.
    """

    kind: str
    method: str
    config: type
    run: Callable[[Any, Any], dict[str, Any]]
    units: Callable[[Any, Any], int] = lambda ctx, config: 1
    check: Callable[[Any, Any], None] | None = None
    changes_weights: bool = True
    resumable: bool = False
    needs_teacher: bool = False
    verb: str = "running"
    done: str = "compressed"
    key_neutral: tuple[str, ...] = ("extra",)
    description: str = ""

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in fields(self.config)]


@dataclass
class PassRegistry:
    """Kind -> method -> `PassSpec`, in registration order."""

    _specs: dict[str, dict[str, PassSpec]] = field(default_factory=dict)

    def register(self, spec: PassSpec, *, replace: bool = False) -> PassSpec:
        """Add ``spec``; registering a taken (kind, method) again is an error unless ``replace``."""
        methods = self._specs.setdefault(spec.kind, {})
        if spec.method in methods and not replace and methods[spec.method] != spec:
            raise ConfigError(f"a {spec.kind} pass named {spec.method!r} is already registered; pick another name "
                              "or pass replace=True")
        methods[spec.method] = spec
        return spec

    def unregister(self, kind: str, method: str | None = None) -> None:
        """Remove one method of ``kind`` (or the whole kind)."""
        if method is None or method == kind:
            self._specs.pop(kind, None)
        else:
            self._specs.get(kind, {}).pop(method, None)

    def kinds(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def methods(self, kind: str) -> tuple[str, ...]:
        return tuple(self._specs.get(kind, {}))

    def specs(self) -> Iterator[PassSpec]:
        for methods in self._specs.values():
            yield from methods.values()

    def has(self, kind: str) -> bool:
        return kind in self._specs

    def multi_method(self, kind: str) -> bool:
        """Whether ``kind`` picks its method through the config's ``method`` field."""
        methods = self._specs.get(kind, {})
        return len(methods) > 1 or any(m != kind for m in methods)

    def get(self, kind: str, method: str | None = None) -> PassSpec:
        """The spec of ``kind`` (and ``method``: default the kind's first method); `ConfigError` names
        the registered ones when there is no such pass."""
        methods = self._specs.get(kind)
        if not methods:
            raise ConfigError(f"unknown pass {kind!r}; passes: {', '.join(self._specs) or 'none registered'}")
        if method is None:
            return next(iter(methods.values()))
        if method not in methods:
            raise ConfigError(f"unknown method {method!r}; supported: {', '.join(methods)}")
        return methods[method]

    def spec_for(self, kind: str, settings: dict[str, Any] | Any) -> PassSpec:
        """The spec that ``settings`` (a dict or a config object) selects within ``kind``."""
        if not self.multi_method(kind):
            return self.get(kind)
        method = settings.get("method") if isinstance(settings, dict) else getattr(settings, "method", None)
        return self.get(kind, method if method is not None else self.methods(kind)[0])

    def spec_of(self, config: Any) -> PassSpec:
        """The spec whose config class ``config`` is an instance of (the most derived one)."""
        found = [s for s in self.specs() if type(config) is s.config]
        if not found:
            raise ConfigError(f"{type(config).__name__} is not the config of a registered pass")
        return found[0]


REGISTRY = PassRegistry()


def register(spec: PassSpec, *, replace: bool = False) -> PassSpec:
    """Register ``spec`` in the one registry (`REGISTRY`)."""
    return REGISTRY.register(spec, replace=replace)
