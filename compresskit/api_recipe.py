"""Recipes in the Python API (re-exported by compresskit.api): run a YAML list of passes
(compresskit.recipe) by composing the other API calls, one stage per pass, each stage's result kept in
the work directory (compresskit.api_recipe_plan keys them), so a rerun does only what changed.

    import compresskit
    result = compresskit.run_recipe("serve-4bit", overrides=["output=smollm2-w4", "quantize.epochs=5"])
    result.output   # the saved model, with recipe.yaml beside its weights
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .api_recipe_plan import MARKER, RecipePlan, Stage, plan_recipe
from .core.fsutil import write_json_atomic
from .core.version import __version__
from .recipe import Recipe, RecipeError, shipped_recipes  # noqa: F401  (the API surface)

# what `compresskit run` may delete from its own work directory once a run succeeded: results of stages
# that are no longer in the recipe, and their resumable states
_STAGE_ENTRY = re.compile(r"^(?:(?:prune|distill|quantize)-[0-9a-f]{16}(?:\.state)?|(?:eval|push)-[0-9a-f]{16}\.json)$")


@dataclass(frozen=True)
class RecipeEvent:
    """What `run_recipe` reports to ``progress``: ``kind`` is ``start`` (``n``: the stage's work units),
    ``advance`` (``n`` units done, ``message``), ``done`` (``seconds``), ``cached`` (done before), ``skip``
    (not needed) or ``note`` (``message``, e.g. resuming)."""

    kind: str
    stage: Stage
    n: int = 0
    message: str = ""
    seconds: float = 0.0


@dataclass
class RecipeResult:
    """A finished run: the plan (each stage's ``state`` as it was found), what ran and how long it took,
    the saved ``output``, the gate of the saved model (``comparison``) and the push."""

    plan: RecipePlan
    output: Path
    seconds: dict[int, float] = field(default_factory=dict)  # position -> seconds, of the stages that ran
    comparison: Any = None
    push: Any = None

    @property
    def ran(self) -> list[str]:
        return [s.kind for s in self.plan.stages if s.position in self.seconds]


class GateFailedError(RuntimeError):
    """An eval pass's gate failed: nothing was saved. ``report`` holds the comparison
    (OUTPUT.gate-report); rerunning with ``force=True`` (--force) saves anyway."""

    def __init__(self, stage: Stage, comparison: Any, report: Path) -> None:
        self.stage, self.comparison, self.report = stage, comparison, report
        super().__init__(f"pass {stage.step.index} ({stage.step.name}): gate {comparison.summary()}; nothing saved; "
                         f"report in {report}; rerun with --force (force=True) to save anyway")


@dataclass
class _Run:
    plan: RecipePlan
    emit: Callable[[RecipeEvent], None]
    force: bool
    overwrite: bool
    token: str | None
    evaluations: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)  # eval key -> parent, child, gate
    push: Any = None

    def start(self, stage: Stage, units: int) -> None:
        self.emit(RecipeEvent("start", stage, n=units))

    def advance(self, stage: Stage, n: int = 1, message: str | None = None) -> None:
        self.emit(RecipeEvent("advance", stage, n=n, message=message or ""))

    def note(self, stage: Stage, message: str) -> None:
        self.emit(RecipeEvent("note", stage, message=message))


def _load(source: str):
    """A model and tokenizer from the recipe's model or a stage directory (its pruning / distillation
    records put back, so the final save carries them on)."""
    from . import api

    model, tok = api.load_model(source)
    for name, attr in (("pruning.json", "compresskit_pruning"), ("distillation.json", "compresskit_distillation")):
        record = Path(source) / name
        if record.is_file():
            setattr(model, attr, json.loads(record.read_text()))
    return model, tok


def _prune(run: _Run, s: Stage) -> None:
    from . import api

    model, tok = _load(s.model)
    run.start(s, api.prune_units(model, s.step.config))
    api.prune(model, s.step.config, tokenizer=tok, progress=lambda message=None, n=1: run.advance(s, n, message))
    api.save(model, tok, s.path, overwrite=True)


def _quantize(run: _Run, s: Stage) -> None:
    from . import api
    from .core.config import OmniQuantConfig

    model, tok = _load(s.model)
    config = s.step.config
    state = s.path.with_name(s.path.name + ".state") if isinstance(config, OmniQuantConfig) else None
    if state is not None and state.exists():
        run.note(s, f"resuming from {state}")
    run.start(s, api.progress_units(model, config))
    api.quantize(model, config, tokenizer=tok, work_dir=state,
                 progress=lambda message=None, n=1: run.advance(s, n, message))
    api.save(model, tok, s.path, overwrite=True)
    if state is not None:
        shutil.rmtree(state, ignore_errors=True)


def _distill(run: _Run, s: Stage) -> None:
    from . import api

    config = s.step.config
    api.check_distill_dependencies(config)
    teacher, teacher_tok = api.load_model(s.step.teacher or run.plan.recipe.model)
    model, tok = _load(s.model)
    api.check_distill(model, teacher, config)
    state = s.path.with_name(s.path.name + ".state")
    if api.has_distill_checkpoint(state):
        run.note(s, f"resuming from {state}")
    run.start(s, config.steps)
    seen = [0]

    def on_step(step: int, total: int, info: dict) -> None:
        run.advance(s, step - seen[0], f"loss {info['loss']:.4f}, seq {info['seqlen']}")
        seen[0] = step

    api.distill(model, teacher, config, tokenizer=teacher_tok, work_dir=state, progress=on_step)
    del teacher
    api.save(model, tok, s.path, overwrite=True)
    shutil.rmtree(state, ignore_errors=True)


def _eval(run: _Run, s: Stage) -> None:
    """Score the recipe's original model (rows it had scored before come from the eval cache) and the
    stage's model with the same settings; both reports go into the stage's result file."""
    from . import api

    config, original = s.step.config, run.plan.recipe.model
    kwargs, text = config.evaluate_kwargs(), api.heldout_text()
    counts = {k: kwargs[k] for k in ("ppl_windows", "passkey_trials", "samples", "longbench_path", "longbench_limit")}
    model, tok = api.load_model(original)
    units = api.eval_units(tok, config.tasks, config.lengths, text=text, **counts)
    run.start(s, units * (1 if s.model == original else 2))
    parent = api.evaluate(model, tok, text=text, progress=lambda n: run.advance(s, n), **kwargs)
    child = parent
    if s.model != original:
        del model
        model, tok = _load(s.model)
        child = api.evaluate(model, tok, text=text, progress=lambda n: run.advance(s, n), **kwargs)
    write_json_atomic(s.path, {"parent": parent.to_dict(), "compressed": child.to_dict(), "model": s.model,
                               "settings": config.to_dict()})


def _check_gate(run: _Run, s: Stage) -> None:
    """The eval stage's verdict under its gate (the scores come from its result file); a failure stops the
    run unless forced."""
    from . import api
    from .eval import EvalReport

    data = json.loads(s.path.read_text())
    parent, child = EvalReport.from_dict(data["parent"]), EvalReport.from_dict(data["compressed"])
    config = s.step.config
    comparison = api.compare(parent, child, max_drop=config.max_drop, max_ppl_increase=config.max_ppl_increase)
    run.evaluations[s.key] = (parent, child, comparison)
    if comparison.gate is not None and not comparison.passed and not run.force:
        recipe = run.plan.recipe
        report = Path(recipe.output + ".gate-report")
        api.write_eval_report(report, child, parent, comparison,
                              meta={"title": f"{recipe.name}: {s.step.name} on {recipe.model}: NOT SAVED"})
        raise GateFailedError(s, comparison, report)


def recipe_yaml(plan: RecipePlan) -> str:
    """The resolved recipe as it is saved beside the weights (``recipe.yaml``)."""
    recipe = plan.recipe
    sets = " ".join(f"--set {k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                    for k, v in plan.overrides.items())
    head = (f"# compresskit {__version__} ran this recipe ({recipe.source}{' ' + sets if sets else ''}), every setting "
            "resolved.\n# Run it again: compresskit run recipe.yaml\n")
    return head + recipe.to_yaml()


def _save(run: _Run, s: Stage) -> None:
    from . import api
    from .models import resolve_model

    plan, recipe = run.plan, run.plan.recipe
    model, tok = _load(s.model)
    run.start(s, 1)
    source = getattr(model, "compresskit_source", None) or {}
    # the card's parent is the recipe's model, not the last stage directory
    model.compresskit_source = {**source, "name": recipe.model, "path": resolve_model(recipe.model)}
    model.config.compresskit_recipe = {
        "name": recipe.name, "key": s.key, "compresskit_version": __version__,
        "stages": [{"pass": t.kind, "name": t.step.name, "key": t.key} for t in plan.stages if t.position < s.position]}
    files: dict[str, Any] = {"recipe.yaml": recipe_yaml(plan)}
    evaluation, report = None, None
    if len(s.inputs) > 1:
        parent, child, comparison = run.evaluations[s.inputs[1]]
        evaluation = {"before": parent, "after": child,
                      "gate": {**comparison.to_dict(), "forced": bool(run.force and not comparison.passed)}}
        report = plan.work_dir / f".report-{uuid.uuid4().hex[:8]}"
        api.write_eval_report(report, child, parent, comparison, meta={"title": f"{recipe.name}: {recipe.model} -> "
                                                                                f"{recipe.output}"})
        files["evaluation"] = report
    try:
        api.save(model, tok, recipe.output, overwrite=run.overwrite, evaluation=evaluation, files=files)
    finally:
        if report is not None:
            shutil.rmtree(report, ignore_errors=True)
    run.advance(s, 1)


def _push(run: _Run, s: Stage) -> None:
    from . import api

    config = s.step.config
    run.start(s, 1)
    run.push = api.push(run.plan.recipe.output, config.repo, private=config.private, revision=config.revision,
                        token=run.token, overwrite=config.overwrite, endpoint=config.endpoint)
    write_json_atomic(s.path, run.push.to_dict())
    run.advance(s, 1)


_RUNNERS: dict[str, Callable[[_Run, Stage], None]] = {
    "prune": _prune, "distill": _distill, "quantize": _quantize, "eval": _eval, "save": _save, "push": _push}


def _prepare_work_dir(plan: RecipePlan) -> None:
    """The marked work directory with the resolved recipe in it (files rewritten only when they change, so
    a rerun that finds everything done touches nothing)."""
    work = plan.work_dir
    work.mkdir(parents=True, exist_ok=True)
    for name, text in ((MARKER, "a compresskit run work directory: stage results, reused by reruns\n"),
                       ("recipe.yaml", recipe_yaml(plan))):
        path = work / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        tmp = work / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def _clean_work_dir(plan: RecipePlan) -> None:
    """After a successful run: drop stage results of this work directory that the recipe no longer has."""
    keep = {s.path.name for s in plan.stages} | {s.path.name + ".state" for s in plan.stages}
    for entry in plan.work_dir.iterdir():
        if _STAGE_ENTRY.match(entry.name) and entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def run_recipe(recipe: str | os.PathLike | Recipe | Mapping[str, Any] | RecipePlan, *,
               overrides: Sequence[str] | Mapping[str, Any] | None = None,
               work_dir: str | os.PathLike | None = None, progress: Callable[[RecipeEvent], None] | None = None,
               force: bool = False, overwrite: bool = False, token: str | None = None) -> RecipeResult:
    """Run ``recipe`` (a YAML file, a shipped name such as ``"serve-4bit"``, a mapping or a `Recipe`) with
    ``overrides`` (``["quantize.wbits=3", "output=DIR"]`` or a mapping). Everything is validated first
    (`plan_recipe`: one `RecipeError` listing every problem). Each stage's result is written atomically
    into the work directory (``work_dir``, default ``OUTPUT.recipe-work``) under its key; a stage whose
    result is there is not run again, an interrupted distill or OmniQuant stage resumes from its state.
    A failing eval gate raises `GateFailedError` and saves nothing unless ``force``. The output (with
    ``recipe.yaml``, the resolved recipe) replaces an existing directory only with ``overwrite``, unless it
    already holds this recipe's result (then nothing is written). ``token`` is for the push pass. A
    `RecipePlan` from `plan_recipe` runs as it was planned (its overrides, work dir and overwrite)."""
    if isinstance(recipe, RecipePlan):
        plan = recipe
    else:
        plan = plan_recipe(recipe, overrides=overrides, work_dir=work_dir, overwrite=overwrite)
    run = _Run(plan, progress if progress is not None else (lambda event: None), force, plan.overwrite, token)
    _prepare_work_dir(plan)
    result = RecipeResult(plan, Path(plan.recipe.output))
    for s in plan.stages:
        if s.state != "run":
            run.emit(RecipeEvent(s.state, s))
        else:
            t0 = time.perf_counter()
            _RUNNERS[s.kind](run, s)
            result.seconds[s.position] = time.perf_counter() - t0
            run.emit(RecipeEvent("done", s, seconds=result.seconds[s.position]))
        if s.kind == "eval" and s.state != "skip":
            _check_gate(run, s)
    save = next(s for s in plan.stages if s.kind == "save")
    if len(save.inputs) > 1 and save.inputs[1] in run.evaluations:
        result.comparison = run.evaluations[save.inputs[1]][2]
    result.push = run.push
    _clean_work_dir(plan)
    if not save.step.config.keep_work_dir:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
    return result
