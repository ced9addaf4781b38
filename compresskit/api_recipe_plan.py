"""Planning a recipe (compresskit.api_recipe runs the plan): every check that can be made before any work,
and the stage keys that let a rerun skip what is done.

A stage's key is a hash of its pass's settings (those that change its result) and of its input's key, the
first input being the model itself (its path, config and weight files); so a changed setting reruns that
stage and every stage after it, and nothing before it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .api_passes import PassContext
from .core.arch import get_arch
from .core.errors import CompresskitError, ConfigError
from .core.registry import REGISTRY
from .core.version import __version__
from .eval import RULER_TASKS
from .eval.passkey import passkey_min_length
from .eval.ruler import ruler_min_length
from .kvcache import KVPolicy
from .models import resolve_model
from .models.loading import read_config
from .prune import plan
from .prune.apply import update_shape
from .recipe import Pass, Recipe, RecipeError, load_recipe, model_passes, parse_overrides

STAGE_VERSION = 1
MARKER = ".compresskit-recipe"  # marks a directory as a recipe work directory (stale stages in it may be removed)


@dataclass
class Stage:
    """One pass of the plan: ``position`` (1-based, the implicit save included), its ``key``, where its
    result lives (``path``: a checkpoint directory, an evaluation JSON, the output, a push record), the
    keys it reads (``inputs``), the model it works on (``model``: the recipe's model or a stage directory)
    and its ``state``: ``cached`` (done before), ``run`` or ``skip`` (not needed: what reads it is done)."""

    position: int
    step: Pass
    key: str
    path: Path
    inputs: tuple[str, ...]
    model: str
    state: str = "run"

    @property
    def kind(self) -> str:
        return self.step.kind

    @property
    def label(self) -> str:
        return f"{self.position} {self.kind}"


@dataclass
class RecipePlan:
    """A validated recipe, its work directory and its stages in order. ``in_memory``: a one-pass run
    (``compresskit quantize`` ...) that keeps no stage results; ``record_recipe``: the output holds the
    resolved recipe (``recipe.yaml``, ``config.json``'s ``compresskit_recipe``); ``title``: the report's."""

    recipe: Recipe
    work_dir: Path
    stages: list[Stage]
    overrides: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    in_memory: bool = False
    record_recipe: bool = True
    title: str = ""

    def stage(self, key: str) -> Stage:
        return next(s for s in self.stages if s.key == key)

    def to_rows(self) -> list[list[str]]:
        """A header and one row per stage: position, pass, what it does, key, state, result path."""
        words = {"run": "to run", "cached": "done before", "skip": "not needed"}
        return [["#", "pass", "settings", "key", "state", "result"]] + [
            [str(s.position), s.kind, s.step.name, s.key, words[s.state], str(s.path)] for s in self.stages]


def digest(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(name: str) -> dict[str, Any]:
    """What a model's key is made of: its resolved path, config.json and weight files (name, size, mtime);
    a hub id by its name."""
    path = Path(resolve_model(name))
    if not path.is_dir():
        return {"hub": str(path)}
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.glob("*.safetensors"))
    config = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()
    return {"path": str(path.resolve()), "config": config, "weights": weights}


# --- checks that read the model's config ----------------------------------------------------------------

def _model_config(name: str, what: str) -> tuple[Any, str | None]:
    try:
        config = read_config(resolve_model(name))
        get_arch(config)
        return config, None
    except (CompresskitError, OSError, ValueError) as e:
        return None, f"{what}: {e}"


def _context(config: Any) -> int | None:
    return getattr(config, "max_position_embeddings", None)


def _seqlen_problem(p: Pass, seqlen: int, config: Any, who: str = "model") -> list[str]:
    context = _context(config)
    if context is not None and seqlen > context:
        return [f"{p.label}, field seqlen: seqlen={seqlen} exceeds the {who}'s context ({context} tokens); use "
                f"seqlen: {context} or less"]
    return []


def _layer_problems(p: Pass, config: Any, pruned: bool) -> list[str]:
    """The quantize pass checked against every linear of the model as it will be then (built on the meta
    device from the config, the earlier prune passes' shapes applied)."""
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001  a model transformers cannot build from its config alone: checked when it runs
        return []
    try:
        REGISTRY.spec_for(p.kind, p.config).check(PassContext(model), p.config)
    except ConfigError as e:
        return [f"{p.label}: {e}" + (" (widths after the prune pass)" if pruned else "")]
    return []


def shape_problems(recipe: Recipe, config: Any, teachers: Mapping[str, Any]) -> list[str]:
    """Walk the passes over the model's config: prune ratios against its shape (then the pruned shape),
    sequence lengths against its context, quantization settings against every linear."""
    config = copy.deepcopy(config)
    out: list[str] = []
    quantized = getattr(config, "quantization_config", None) is not None
    pruned = False
    for p in recipe.passes:
        if p.config is None:
            continue
        if p.kind in ("prune", "quantize") and quantized:
            out.append(f"{p.label}: the model {recipe.model} is already quantized; start from its full-precision "
                       "parent")
            continue
        if p.kind == "prune":
            out += _seqlen_problem(p, p.config.seqlen, config)
            try:
                shape = plan(p.config, config)
            except ConfigError as e:
                out.append(f"{p.label}: {e}")
                continue
            update_shape(config, n_heads=shape.keep_heads, n_kv=shape.keep_groups, head_dim=shape.head_dim,
                         intermediate=shape.keep_intermediate)
            config.num_hidden_layers, pruned = shape.keep_layers, True
        elif p.kind == "distill":
            out += _seqlen_problem(p, p.config.seqlen, config, "student" if p.teacher else "model")
            teacher = teachers.get(p.teacher) if p.teacher else None  # the recipe's model has the student's context
            if teacher is not None:
                out += _seqlen_problem(p, p.config.seqlen, teacher, "teacher")
                if teacher.vocab_size != config.vocab_size:
                    out.append(f"{p.label}, field teacher: the teacher's vocabulary ({teacher.vocab_size}) differs "
                               f"from the model's ({config.vocab_size}); distill from the model it was made from")
        elif p.kind == "quantize":
            if getattr(p.config, "seqlen", None) is not None:
                out += _seqlen_problem(p, p.config.seqlen, config)
            out += _layer_problems(p, config, pruned)
            quantized = True
    return out


def prompt_problems(recipe: Recipe, tokenizer: Any, context: int | None) -> list[str]:
    """Prompt lengths the tokenizer cannot fit: passkey and RULER eval lengths, and the passkey prompts
    that score retrieval heads when pruning."""
    out: list[str] = []
    for p in recipe.passes:
        if p.config is None:
            continue
        if p.kind == "eval" and p.config.kv is not None:
            try:
                KVPolicy.parse(p.config.kv)
            except ConfigError as e:
                out.append(f"{p.label}, field kv: {e}")
        if p.kind == "prune" and p.config.needs_retrieval:
            length = min(p.config.retrieval_length, (context or p.config.retrieval_length) - 8)
            need = passkey_min_length(tokenizer)
            if length < need:
                out.append(f"{p.label}, field retrieval_length: the retrieval probes are passkey prompts of {length} "
                           f"tokens, and this tokenizer needs {need}; use retrieval_length: {need} or more")
        if p.kind == "eval":
            for task in p.config.tasks:
                if task != "passkey" and task not in RULER_TASKS:
                    continue
                need = passkey_min_length(tokenizer) if task == "passkey" else ruler_min_length(tokenizer, task)
                short = [n for n in p.config.lengths if n < need]
                if short:
                    out.append(f"{p.label}, field lengths: {task} at {', '.join(map(str, short))} tokens is too short "
                               f"(the prompt needs {need} with this tokenizer); use lengths of {need} or more")
    return out


# --- stages and their keys ------------------------------------------------------------------------------

def build_stages(recipe: Recipe, work: Path, model_key: str, teacher_keys: Mapping[str, str]) -> list[Stage]:
    """The stages of ``recipe`` with their keys and result paths (state ``run``; see `mark_states`)."""
    stages: list[Stage] = []
    key, source = model_key, recipe.model
    evals: dict[str, Stage] = {}
    save_key = ""
    for position, p in enumerate(recipe.passes, 1):
        base = {"pass": p.kind, "settings": p.key_settings(), "stage_version": STAGE_VERSION,
                "compresskit": __version__}
        if p.kind in model_passes():
            spec = REGISTRY.spec_for(p.kind, p.config)
            extra = {"teacher": teacher_keys[p.teacher or recipe.model]} if spec.needs_teacher else {}
            k = digest(base | {"input": key} | extra)
            stage = Stage(position, p, k, work / f"{p.kind}-{k}", (key,), source)
            key, source = k, str(stage.path)
        elif p.kind == "eval":
            k = digest(base | {"model": key, "parent": teacher_keys.get(_baseline(p) or "", model_key)})
            stage = Stage(position, p, k, work / f"eval-{k}.json", (key,), source)
            evals[key] = stage
        elif p.kind == "save":
            ev = evals.get(key)
            gate = None if ev is None else {n: getattr(ev.step.config, n) for n in ("max_drop", "max_ppl_increase")}
            save_key = digest(base | {"model": key, "eval": None if ev is None else ev.key, "gate": gate})
            stage = Stage(position, p, save_key, Path(recipe.output), (key,) + ((ev.key,) if ev else ()), source)
        else:  # push
            k = digest(base | {"save": save_key})
            stage = Stage(position, p, k, work / f"push-{k}.json", (save_key,), recipe.output)
        stages.append(stage)
    return stages


def saved_key(output: Path) -> str | None:
    """The save key a recipe wrote into ``output/config.json`` (None: not a recipe's output)."""
    config = output / "config.json"
    if not config.is_file():
        return None
    try:
        return (json.loads(config.read_text()).get("compresskit_recipe") or {}).get("key")
    except json.JSONDecodeError:
        return None


def is_done(stage: Stage) -> bool:
    if stage.kind in model_passes():
        return (stage.path / "config.json").is_file()
    if stage.kind == "save":
        return saved_key(stage.path) == stage.key
    return stage.path.is_file()


def mark_states(stages: list[Stage]) -> None:
    """``cached`` for what is done; ``run`` for the save, push and gates still to do and for what they read
    (back to the first cached input); ``skip`` for the rest (e.g. everything when the output is up to date)."""
    needed: set[str] = set()
    save_done = False
    for s in reversed(stages):
        done = is_done(s)
        if s.kind == "save":
            save_done = done
        if done:
            s.state = "cached"
        elif s.kind in ("save", "push") or (s.kind == "eval" and not save_done) or s.key in needed:
            s.state = "run"
        else:
            s.state = "skip"
        if s.state == "run":
            needed.update(s.inputs)


def _path_problems(recipe: Recipe, stages: list[Stage], overwrite: bool, in_memory: bool = False) -> list[str]:
    out: list[str] = []
    output, work = Path(recipe.output), recipe.work_path
    save = next(s for s in stages if s.kind == "save")
    if output.exists() and save.state != "cached":
        if not output.is_dir():
            out.append(f"output: {output} exists and is a file; choose a directory path (--set output=DIR)")
        elif not overwrite:
            what = "another recipe or other settings" if saved_key(output) else "something other than this recipe"
            out.append(f"output: {output} already exists (written by {what}); pass --overwrite (overwrite=True) to "
                       "replace it, or choose another output (--set output=DIR)")
    if in_memory:  # a one-pass run keeps nothing in a work directory
        return out
    o, w = output.absolute(), work.absolute()
    if w == o or o in w.parents:
        out.append(f"work_dir: {work} is inside the output {output}, which is replaced when it is saved; put the "
                   "work directory beside it (the default is OUTPUT.recipe-work)")
    if work.exists() and not work.is_dir():
        out.append(f"work_dir: {work} is a file; choose a directory (--work-dir DIR)")
    elif work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
        out.append(f"work_dir: {work} exists and was not made by compresskit run (no {MARKER} in it); choose "
                   "another (--work-dir DIR) or empty it")
    return out


def plan_recipe(recipe: str | os.PathLike | Recipe | Mapping[str, Any], *,
                overrides: Sequence[str] | Mapping[str, Any] | None = None,
                work_dir: str | os.PathLike | None = None, overwrite: bool = False, in_memory: bool = False,
                record_recipe: bool = True, title: str = "") -> RecipePlan:
    """Validate ``recipe`` (a file, a shipped name, a mapping or a `Recipe`) with ``overrides``
    (``["quantize.wbits=3"]`` or ``{"quantize.wbits": 3}``) against the model, and plan its stages.
    Nothing is run or written. Every problem found is raised at once as one `RecipeError`. ``in_memory``
    plans a run that keeps no stage results (every stage runs); see `RecipePlan` for the rest."""
    parsed, problems = load_recipe(recipe, overrides)
    values = parse_overrides(overrides)[0]
    source = parsed.source if parsed is not None else str(recipe if not isinstance(recipe, Mapping) else "<recipe>")
    if parsed is None:
        raise RecipeError(source, problems, one_pass=in_memory)
    if work_dir is not None:
        parsed = replace(parsed, work_dir=str(work_dir))
    config, problem = _model_config(parsed.model, "model")
    problems += [problem] if problem else []
    teachers: dict[str, Any] = {parsed.model: config} if config is not None else {}
    for p in parsed.passes:
        other, what = (p.teacher, "teacher") if p.kind in model_passes() else (_baseline(p), "baseline")
        if other and other not in teachers:
            teacher, problem = _model_config(other, f"{p.label}, field {what}")
            problems += [problem] if problem else []
            if teacher is not None:
                teachers[other] = teacher
    if config is not None:
        problems += shape_problems(parsed, config, teachers)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(parsed.model))
        problems += prompt_problems(parsed, tokenizer, _context(config))
    if problems or any(p.config is None for p in parsed.passes):
        raise RecipeError(source, problems, one_pass=in_memory)
    keys = {name: digest(model_identity(name)) for name in teachers}
    stages = build_stages(parsed, parsed.work_path, keys[parsed.model], keys)
    if not in_memory:
        mark_states(stages)
    problems += _path_problems(parsed, stages, overwrite, in_memory)
    if problems:
        raise RecipeError(source, problems, one_pass=in_memory)
    return RecipePlan(parsed, parsed.work_path, stages, values, overwrite, in_memory, record_recipe, title)


def _baseline(p: Pass) -> str | None:
    return getattr(p.config, "baseline", None) if p.kind == "eval" and p.config is not None else None
