"""A recipe file: the `Recipe` (model, output, work directory, passes), read from YAML with `--set`
overrides applied; `load_recipe` returns every problem it finds (`RecipeError` lists them at once).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..core.errors import MissingFileError
from ..core.registry import REGISTRY
from .passes import pass_names, RECIPE_VERSION, Pass, RecipeError, SavePass, RecipeLoader, check_settings, yaml_value

TOP_FIELDS = ("version", "name", "description", "model", "output", "work_dir", "passes")
SHIPPED_DIR = Path(__file__).parent / "shipped"


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: the ``model`` to start from, the ``output`` to write, the ``passes`` in order
    (a save is appended when the recipe has none), and where stage results are kept (``work_dir``,
    default ``OUTPUT.recipe-work``)."""

    model: str
    output: str
    passes: tuple[Pass, ...]
    name: str = "recipe"
    description: str = ""
    work_dir: str | None = None
    version: int = RECIPE_VERSION
    source: str = "<recipe>"

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir) if self.work_dir else Path(self.output + ".recipe-work")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"version": self.version, "name": self.name}
        if self.description:
            d["description"] = self.description
        d |= {"model": self.model, "output": self.output}
        if self.work_dir:
            d["work_dir"] = self.work_dir
        return d | {"passes": [{p.kind: p.settings()} for p in self.passes]}

    def to_yaml(self) -> str:
        """The resolved recipe (every setting spelled out): ``compresskit run`` reads it back as it is."""
        return dump_yaml(self.to_dict())


def dump_yaml(d: dict[str, Any]) -> str:
    """A recipe dict as compresskit writes it (keys in order, short lists inline)."""
    return yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=100)


# --- the recipe ---------------------------------------------------------------------------------------

def _pass_entry(i: int, item: Any) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """``(kind, settings, problem)`` of one list item of ``passes``."""
    if isinstance(item, str):
        item = {item: {}}
    if not isinstance(item, dict) or len(item) != 1:
        got = f"keys {', '.join(map(str, item))}" if isinstance(item, dict) else type(item).__name__
        return None, None, (f"pass {i}: each list item is one pass as `- NAME: {{settings}}` "
                            f"(e.g. `- prune: {{mlp: 0.25}}`), got {got}")
    (kind, settings), = item.items()
    if kind not in pass_names():
        close = difflib.get_close_matches(str(kind), pass_names(), n=1)
        return None, None, (f"pass {i}: unknown pass {kind!r}; " + (f"did you mean {close[0]}? " if close else "")
                            + f"passes: {', '.join(pass_names())}")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        return kind, None, f"pass {i} ({kind}): its settings must be a mapping (`- {kind}: {{field: value}}`), " \
                           f"got {settings!r}"
    return kind, dict(settings), None


def _order_problems(passes: list[Pass]) -> list[str]:
    """What the order of the passes (as the recipe lists them) makes impossible."""
    out: list[str] = []
    kinds = [p.kind for p in passes]
    for kind in ("save", "push", "quantize"):
        if kinds.count(kind) > 1:
            where = ", ".join(str(p.index) for p in passes if p.kind == kind)
            why = "the model is quantized after the first" if kind == "quantize" else "the recipe has one output"
            out.append(f"passes {where}: {kind} appears {kinds.count(kind)} times; keep one ({why})")
    save = kinds.index("save") if "save" in kinds else None
    if save is not None:
        out += [f"{p.label}: only push may follow save; move it before pass {passes[save].index} (save)"
                for p in passes[save + 1:] if p.kind != "push"]
        if "push" in kinds[:save]:
            out.append(f"{passes[kinds.index('push')].label}: push comes after save (it uploads the saved output)")
    quantized = compressed = False
    for p in passes:
        if p.kind == "prune" and quantized:
            out.append(f"{p.label}: prune a float model: move it before the quantize pass")
        if p.kind == "distill" and p.config is not None:
            if not compressed and not p.teacher:
                out.append(f"{p.label}: distill trains a compressed student from the original: put it after a "
                           "prune or quantize pass (or name another teacher)")
            elif quantized and not p.config.quant_params_only:
                out.append(f"{p.label}: the model is quantized by then, so only its scales can train: set "
                           "quant_params_only: true (or move distill before quantize)")
            elif not quantized and p.config.quant_params_only and not p.teacher:  # else: the pass checks the model
                out.append(f"{p.label}: quant_params_only trains the scales of a quantized model, and no quantize "
                           "pass comes before it: move it after quantize, or drop quant_params_only")
        quantized |= p.kind == "quantize"
        compressed |= p.kind in ("prune", "quantize")
    return out


def _distill_defaults(settings: dict[str, Any]) -> dict[str, Any]:
    """A distill pass saves its resumable state every tenth of its steps unless told otherwise."""
    steps = settings.get("steps", REGISTRY.get("distill").config.steps)
    if "checkpoint_every" not in settings and isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
        return settings | {"checkpoint_every": max(1, round(steps / 10))}
    return settings


def _text_field(raw: dict[str, Any], name: str, problems: list[str], required: bool, hint: str) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            problems.append(f"{name}: missing; {hint}")
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{name}={value!r} must be a non-empty string; {hint}")
        return None
    return value


def parse_recipe(raw: Any, source: str = "<recipe>", name: str | None = None) -> tuple[Recipe | None, list[str]]:
    """``(recipe, problems)`` from the mapping a recipe file holds. The recipe is None when the top level
    is unusable; otherwise it holds every pass (``config`` None for a pass with problems)."""
    if not isinstance(raw, dict):
        return None, [f"a recipe is a mapping with model, output and passes, got {type(raw).__name__}"]
    problems: list[str] = []
    for k in raw:
        if k not in TOP_FIELDS:
            close = difflib.get_close_matches(str(k), TOP_FIELDS, n=1)
            problems.append(f"{k}: unknown recipe field; " + (f"did you mean {close[0]}? " if close else "")
                            + f"fields: {', '.join(TOP_FIELDS)}")
    version = raw.get("version", RECIPE_VERSION)
    if not isinstance(version, int) or version < 1:
        problems.append(f"version={version!r} must be a whole number (version: {RECIPE_VERSION})")
    elif version > RECIPE_VERSION:
        problems.append(f"version {version} is newer than this compresskit reads ({RECIPE_VERSION}); "
                        "upgrade compresskit")
    model = _text_field(raw, "model", problems, True, "name the model to compress (model: smollm2-135m, a "
                        "directory or a hub id; or --set model=NAME)")
    output = _text_field(raw, "output", problems, True,
                         "name the directory to write (output: DIR; or --set output=DIR)")
    work_dir = _text_field(raw, "work_dir", problems, False, "a directory for the stage results")
    title = _text_field(raw, "name", problems, False, "a short name of the recipe")
    description = _text_field(raw, "description", problems, False, "one line on what the recipe is for")
    items = raw.get("passes")
    if not isinstance(items, list) or not items:
        problems.append("passes: missing or empty; list the passes, e.g. `passes: [{quantize: {wbits: 4}}]`")
        items = []
    passes = []
    for i, item in enumerate(items, 1):
        kind, settings, problem = _pass_entry(i, item)
        if problem:
            problems.append(problem)
        if kind is None or settings is None:
            continue
        if kind == "distill":
            settings = _distill_defaults(settings)
        config, found = check_settings(kind, settings)
        label = f"pass {i} ({kind})"
        problems += [f"{label}{f', field {f}' if f else ''}: {m}" for f, m in found]
        teacher = settings.get("teacher") if kind == "distill" else None
        if teacher is not None and (not isinstance(teacher, str) or not teacher.strip()):
            problems.append(f"{label}, field teacher: {teacher!r} must name a model (default: the recipe's model)")
            teacher = None
        passes.append(Pass(kind, i, config, teacher))
    problems += _order_problems(passes)
    if passes and not any(p.kind == "save" for p in passes):
        push = next((n for n, p in enumerate(passes) if p.kind == "push"), len(passes))
        passes.insert(push, Pass("save", 0, SavePass()))
    if model is None or output is None:
        return None, problems
    return Recipe(model=model, output=output, passes=tuple(passes), name=title or name or "recipe",
                  description=description or "", work_dir=work_dir, version=RECIPE_VERSION, source=source), problems


# --- overrides ------------------------------------------------------------------------------------------

def parse_overrides(items: Sequence[str] | Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """``{"quantize.wbits": 3, ...}`` from ``["quantize.wbits=3", ...]`` (pass fields read as YAML, top-level
    fields as text) or a mapping."""
    if not items:
        return {}, []
    if isinstance(items, Mapping):
        return dict(items), []
    out, problems = {}, []
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item}: expected KEY=VALUE, e.g. --set quantize.wbits=3 or --set output=DIR")
            continue
        if "." not in key:  # top-level fields are text (a directory may be called 2024)
            out[key.strip()] = text
            continue
        try:
            out[key.strip()] = yaml_value(text)
        except yaml.YAMLError as e:
            problems.append(f"--set {item}: the value is not YAML ({str(e).splitlines()[0]})")
    return out, problems


def _locate(items: list[Any], address: str) -> tuple[int | None, str | None]:
    """The position in ``items`` of the pass ``address`` names (a pass name, or its 1-based position)."""
    kinds = [next(iter(it)) if isinstance(it, dict) and len(it) == 1 else it if isinstance(it, str) else None
             for it in items]
    if address.isdigit():
        n = int(address)
        return (n - 1, None) if 1 <= n <= len(items) else (None, f"the recipe has {len(items)} passes, no pass {n}")
    where = [i for i, k in enumerate(kinds) if k == address]
    if len(where) == 1:
        return where[0], None
    if not where:
        listed = ", ".join(f"{i + 1} {k}" for i, k in enumerate(kinds))
        return None, f"the recipe has no {address} pass (passes: {listed}); add it to the recipe file"
    return None, (f"the recipe has {len(where)} {address} passes (at {', '.join(str(i + 1) for i in where)}); "
                  f"address one by its position, e.g. {where[0] + 1}.FIELD")


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The recipe mapping with ``overrides`` applied: top-level fields (``output``) and ``PASS.FIELD`` where
    PASS is a pass name or its 1-based position (``quantize.wbits``, ``2.steps``)."""
    raw = dict(raw)
    items = [dict(it) if isinstance(it, dict) else it for it in (raw.get("passes") or [])]
    problems = []
    for key, value in overrides.items():
        address, dot, name = key.partition(".")
        if not dot:
            if key == "passes" or key not in TOP_FIELDS:
                problems.append(f"--set {key}: not a recipe field to set; set model, output, work_dir, name, "
                                "description, or PASS.FIELD (quantize.wbits=3)")
            else:
                raw[key] = value
            continue
        pos, problem = _locate(items, address)
        if problem or pos is None or not name:
            problems.append(f"--set {key}: {problem or 'name the field, e.g. quantize.wbits=3'}")
            continue
        item = items[pos]
        if isinstance(item, str):
            item = {item: {}}
        (kind, settings), = item.items()
        items[pos] = {kind: {**(settings or {}), name: value}}
    if "passes" in raw or items:
        raw["passes"] = items
    return raw, problems


# --- files ----------------------------------------------------------------------------------------------

def shipped_recipes() -> dict[str, Path]:
    """Name -> file of the recipes shipped with compresskit (``compresskit run serve-4bit``)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def recipe_file(name_or_path: str | Path) -> Path:
    """A recipe file: a path, or the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise MissingFileError(f"no recipe file {str(name_or_path)!r} and no shipped recipe of that name; shipped: "
                            f"{', '.join(shipped) or 'none'}")


def read_recipe_file(path: Path) -> Any:
    """The mapping a recipe file holds (``RecipeError`` on a YAML syntax error, with its line)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RecipeError(str(path), [f"not valid YAML{where}: {getattr(e, 'problem', None) or e}"]) from None


def load_recipe(recipe: str | Path | Recipe | Mapping[str, Any],
                overrides: Sequence[str] | Mapping[str, Any] | None = None) -> tuple[Recipe | None, list[str]]:
    """``(recipe, problems)`` from a file, a shipped name, a mapping, or a `Recipe` (re-checked with the
    overrides applied)."""
    if isinstance(recipe, Recipe):
        source, name, raw = recipe.source, recipe.name, recipe.to_dict()
    elif isinstance(recipe, Mapping):
        source, name, raw = "<recipe>", None, dict(recipe)
    else:
        path = recipe_file(recipe)
        source, name, raw = str(path), path.stem, read_recipe_file(path)
    values, problems = parse_overrides(overrides)
    if isinstance(raw, dict):
        raw, more = apply_overrides(raw, values)
        problems += more
    parsed, more = parse_recipe(raw, source, name)
    return (None if parsed is None else replace(parsed, source=source)), problems + more
