"""The one runner: a planned recipe (compresskit.api_recipe_plan) run stage by stage. ``compresskit run``,
``compresskit quantize / prune / distill`` (one-pass recipes) and the Python API all come through here.

The model stays in memory from stage to stage. With a work directory (``compresskit run``) each stage's
result is also written there under its key, so a rerun skips what is done; a one-pass run (``in_memory``)
writes nothing but the output (and the state directory of a resumable pass until it finishes).

Every weight pass is a registered `PassSpec` (compresskit.core.registry); eval, save and push are the
runner's own steps. What happens is reported to ``progress`` as `RecipeEvent`s.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .api_eval import compare, eval_units, evaluate, write_eval_report
from .api_models import heldout_text, load_model, save
from .api_passes import PassContext
from .api_publish import public_fields, public_name, push
from .api_recipe_plan import RecipePlan, Stage
from .core.fsutil import usual_mode, write_json_atomic
from .core.record import Evaluation, Source, record_of
from .core.registry import REGISTRY
from .core.version import __version__
from .eval import EvalReport
from .eval.settings import EvalSettings
from .models import resolve_model
from .recipe.schema import dump_yaml


@dataclass(frozen=True)
class RecipeEvent:
    """What the runner reports to ``progress``: ``kind`` is ``start`` (the stage begins: ``n`` work units),
    ``phase`` (a part of it begins: ``label`` says what, e.g. ``evaluating original``, ``n`` its units; 0
    while loading or saving), ``advance`` (``n`` units done, ``message``), ``done`` (the stage finished:
    ``seconds``), ``cached`` (done before), ``skip`` (not needed) or ``note`` (``message``, e.g. resuming).
    A one-pass run in memory scores the parent before the pass changes the model, so the eval stage's
    first phases come before the pass's stage."""

    kind: str
    stage: Stage
    n: int = 0
    message: str = ""
    seconds: float = 0.0
    label: str = ""


@dataclass
class EvalOutcome:
    """One eval stage's reports: ``parent`` (what the gate compares with: the recipe's model, or the
    eval's ``baseline``), ``start`` (the recipe's model, when the baseline is another model), ``child``
    (the stage's model) and the gate's ``comparison``."""

    parent: EvalReport
    child: EvalReport | None = None
    start: EvalReport | None = None
    comparison: Any = None

    def record(self, forced: bool, with_gate: bool = True) -> Evaluation:
        """The model record's `Evaluation` of this outcome (the gate's verdict unless ``with_gate`` is False and
        nothing was gated)."""
        out: dict[str, Any] = {}
        if self.start is not None:
            out["teacher"] = self.parent
        out |= {"before": self.start if self.start is not None else self.parent, "after": self.child}
        if with_gate or self.comparison.gate is not None:
            out["gate"] = {**self.comparison.to_dict(), "forced": bool(forced and not self.comparison.passed)}
        return Evaluation.of(out)

    @property
    def before(self) -> EvalReport:
        return self.start if self.start is not None else self.parent


class GateFailedError(RuntimeError):
    """An eval pass's gate failed: nothing was saved. ``comparison`` and ``evaluation`` hold the scores,
    ``report`` the written report (OUTPUT.gate-report), ``result`` the run so far; rerunning with
    ``force=True`` (--force) saves. Not a `CompresskitError`: the input was fine, the model did not pass."""

    def __init__(self, stage: Stage, evaluation: EvalOutcome, report: Path) -> None:
        self.stage, self.evaluation, self.comparison, self.report = stage, evaluation, evaluation.comparison, report
        self.result: RecipeResult | None = None
        super().__init__(f"pass {stage.step.index} ({stage.step.name}): gate {self.comparison.summary()}; nothing "
                         f"saved; report in {report}; rerun with --force (force=True) to save anyway")


@dataclass
class RecipeResult:
    """A finished run: the plan (each stage's ``state`` as it was found), what ran and how long it took,
    each pass's summary (``results``, by position) and the seconds of its own work (``pass_seconds``: a
    stage run in memory also scores the parent first), the saved ``output``, the evaluation of the saved
    model and its gate (``evaluation``, ``comparison``) and the push."""

    plan: RecipePlan
    output: Path
    seconds: dict[int, float] = field(default_factory=dict)  # position -> seconds, of the stages that ran
    pass_seconds: dict[int, float] = field(default_factory=dict)  # position -> seconds of the pass's own work
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    evaluation: EvalOutcome | None = None
    push: Any = None

    @property
    def comparison(self) -> Any:
        return None if self.evaluation is None else self.evaluation.comparison

    @property
    def ran(self) -> list[str]:
        return [s.kind for s in self.plan.stages if s.position in self.seconds]


def recipe_yaml(plan: RecipePlan) -> str:
    """The resolved recipe as it is saved beside the weights (``recipe.yaml``)."""
    recipe = plan.recipe
    leaf = lambda key: key.rpartition(".")[2]  # noqa: E731 (quantize.calib -> calib)
    shown = {k: public_fields({leaf(k): v})[leaf(k)] for k, v in plan.overrides.items() if leaf(k) != "work_dir"}
    sets = " ".join(f"--set {k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                    for k, v in shown.items())
    again = "compresskit run recipe.yaml"
    if public_name(recipe.model) != recipe.model:
        again += " --set model=DIR (a local model is named by its directory's last part)"
    head = (f"# compresskit {__version__} ran this recipe ({public_name(recipe.source)}{' ' + sets if sets else ''}), "
            f"every setting resolved.\n# Run it again: {again}\n")
    return head + dump_yaml(public_fields(recipe.to_dict()))


@dataclass
class Runner:
    """Runs ``plan``: see the module's docstring. ``data`` overrides the passes' calibration / training
    source (token ids from the API); ``state_dir`` is the resumable pass's state directory of a one-pass
    run (default ``OUTPUT.METHOD-state``), kept after success with ``keep_state``; ``main_process`` False
    (another rank of ``accelerate launch``) stops after the passes: only the main process evaluates, saves
    and pushes. ``record_ungated`` False: an evaluation without a gate is saved without a gate verdict."""

    plan: RecipePlan
    emit: Callable[[RecipeEvent], None] = lambda event: None
    force: bool = False
    token: str | None = None
    data: Any = None
    state_dir: Path | None = None
    keep_state: bool = False
    main_process: bool = True
    record_ungated: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"  # where models load and passes run (compresskit.api.resolve_device)
    dtype: str = "auto"  # what they load in (compresskit.api.resolve_dtype)
    _current: tuple[Any, Any, str] | None = None  # model, tokenizer, the key of what it holds
    _aux: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    _evaluations: dict[str, EvalOutcome] = field(default_factory=dict)
    _result: RecipeResult | None = None

    @property
    def in_memory(self) -> bool:
        return self.plan.in_memory

    # --- models -----------------------------------------------------------------------------------------
    def _model_at(self, s: Stage):
        """The model ``s`` works on: the one in memory when it holds ``s``'s input, else loaded."""
        if self._current is not None and self._current[2] == s.inputs[0]:
            return self._current[0], self._current[1]
        self._current = None  # free it before loading the next
        self.emit(RecipeEvent("phase", s, label=f"loading {s.model}"))
        model, tok = load_model(s.model, device=self.device, dtype=self.dtype)  # its record comes with it
        self._current = (model, tok, s.inputs[0])
        return model, tok

    def _other(self, s: Stage, name: str):
        """A model other than the one being compressed (a teacher, the recipe's original, a baseline),
        loaded once."""
        if name not in self._aux:
            self.emit(RecipeEvent("phase", s, label=f"loading {name}"))
            self._aux[name] = load_model(name, device=self.device, dtype=self.dtype)
        return self._aux[name]

    # --- passes -----------------------------------------------------------------------------------------
    def _state_dir(self, s: Stage, method: str) -> Path:
        if not self.in_memory:
            return s.path.with_name(s.path.name + ".state")
        output = Path(self.plan.recipe.output)
        return self.state_dir or output.with_name(f"{output.name}.{method}-state")

    def _pass(self, s: Stage) -> None:
        config = s.step.config
        spec = REGISTRY.spec_for(s.kind, config)
        model, tok = self._model_at(s)
        teacher = self._other(s, s.step.teacher or self.plan.recipe.model) if spec.needs_teacher else (None, None)
        state = self._state_dir(s, spec.method) if spec.resumable else None
        ctx = PassContext(model, tok, self.data, state, teacher[0], teacher[1],
                          progress=lambda n=1, message=None: self.emit(RecipeEvent("advance", s, n=n,
                                                                                   message=message or "")),
                          note=lambda message: self.emit(RecipeEvent("note", s, message=message)),
                          options=dict(self.options), reporting=self.main_process)
        if spec.check is not None:
            spec.check(ctx, config)
        if self.in_memory and self.main_process:
            self._evaluate_parents(s, model, tok)
        if state is not None and state.exists() and any(state.iterdir()):
            ctx.note(f"resuming from {state}")
        units = spec.units(ctx, config)
        self.emit(RecipeEvent("start", s, n=units))
        self.emit(RecipeEvent("phase", s, n=units, label=f"{spec.verb} {s.step.name}"))
        t0 = time.perf_counter()
        self._result.results[s.position] = spec.run(ctx, config)
        self._result.pass_seconds[s.position] = time.perf_counter() - t0
        if not self.in_memory:
            save(model, tok, s.path, overwrite=True)
        self._current = (model, tok, s.key)
        if state is not None and not self.keep_state:
            shutil.rmtree(state, ignore_errors=True)

    # --- evaluation -------------------------------------------------------------------------------------
    def _evaluate(self, s: Stage, model: Any, tok: Any, label: str, parent: bool = True) -> EvalReport:
        """Score ``model`` with the eval stage's settings; a parent (``parent``) keeps the full KV cache, the
        stage's model runs under the stage's KV policy, if any."""
        settings = s.step.config.settings
        if parent and settings.kv is not None:
            settings = EvalSettings(**{**settings.__dict__, "kv": None})
        text = heldout_text()
        self.emit(RecipeEvent("phase", s, n=eval_units(tok, settings, text), label=f"evaluating {label}"))
        return evaluate(model, tok, settings, text=text, progress=lambda n: self.emit(RecipeEvent("advance", s, n=n)))

    def _evaluate_parents(self, first: Stage, model: Any, tok: Any) -> None:
        """Before the first pass of a run in memory changes the model: score it (and the baselines) for
        every eval stage after ``first``, as the eval stage would find them."""
        for s in self.plan.stages:
            if s.position <= first.position or s.kind != "eval" or s.key in self._evaluations or s.state != "run":
                continue
            baseline = s.step.config.baseline
            if baseline is None:
                self._evaluations[s.key] = EvalOutcome(self._evaluate(s, model, tok, "original"))
            else:
                parent = self._evaluate(s, *self._other(s, baseline), "teacher")
                self._evaluations[s.key] = EvalOutcome(parent, start=self._evaluate(s, model, tok, "student"))

    def _eval(self, s: Stage) -> None:
        """Score the stage's model and what it is compared with (rows scored before come from the eval
        cache); in a work directory both reports go into the stage's result file."""
        original, baseline = self.plan.recipe.model, s.step.config.baseline
        ev = self._evaluations.get(s.key)
        model, tok = self._model_at(s)
        alone = ev is None and s.model == original and baseline is None and s.step.config.kv is None
        count = 1 if alone else 1 + (
            0 if ev is not None else 1 if baseline is None else 2)
        self.emit(RecipeEvent("start", s, n=count * eval_units(tok, s.step.config.settings)))
        if ev is None:
            if s.model == original and baseline is None:  # nothing ran before: the original is the child
                ev = EvalOutcome(self._evaluate(s, model, tok, "original"))
                ev.child = ev.parent if s.step.config.kv is None else self._evaluate(s, model, tok, "original",
                                                                                     parent=False)
            elif baseline is None:
                ev = EvalOutcome(self._evaluate(s, *self._other(s, original), "original"))
            else:
                ev = EvalOutcome(self._evaluate(s, *self._other(s, baseline), "teacher"),
                                start=self._evaluate(s, *self._other(s, original), "student"))
        if ev.child is None:
            ev.child = self._evaluate(s, model, tok, self._done_label(s), parent=False)
        self._evaluations[s.key] = ev
        if not self.in_memory:
            write_json_atomic(s.path, {"parent": ev.parent.to_dict(), "compressed": ev.child.to_dict(),
                                       "model": s.model, "settings": s.step.config.to_dict(),
                                       **({"start": ev.start.to_dict()} if ev.start is not None else {})})

    def _done_label(self, s: Stage) -> str:
        """What the model an eval stage scores is called: after the last pass before it (``quantized``)."""
        passes = [t for t in self.plan.stages if t.position < s.position and REGISTRY.has(t.kind)]
        return REGISTRY.spec_for(passes[-1].kind, passes[-1].step.config).done if passes else "compressed"

    def _gate(self, s: Stage) -> None:
        """The eval stage's verdict under its gate; a failure stops the run unless forced."""
        ev = self._evaluations.get(s.key)
        if ev is None:  # done before: the scores are in its result file
            data = json.loads(s.path.read_text())
            ev = EvalOutcome(EvalReport.from_dict(data["parent"]), EvalReport.from_dict(data["compressed"]),
                            EvalReport.from_dict(data["start"]) if "start" in data else None)
            self._evaluations[s.key] = ev
        config = s.step.config
        ev.comparison = compare(ev.parent, ev.child, max_drop=config.max_drop, max_ppl_increase=config.max_ppl_increase)
        if ev.comparison.gate is not None and not ev.comparison.passed and not self.force:
            recipe = self.plan.recipe
            report = Path(recipe.output + ".gate-report")
            write_eval_report(report, ev.child, ev.parent, ev.comparison,
                              meta={"title": f"{recipe.name}: {s.step.name} on {recipe.model}: NOT SAVED"})
            raise GateFailedError(s, ev, report)

    # --- save and push ----------------------------------------------------------------------------------
    def _save(self, s: Stage) -> None:
        plan, recipe = self.plan, self.plan.recipe
        model, tok = self._model_at(s)
        self.emit(RecipeEvent("start", s, n=1))
        self.emit(RecipeEvent("phase", s, label=f"saving {recipe.output}"))
        rec = record_of(model)
        # the card's parent is the recipe's model, not the last stage directory
        rec.source = Source(recipe.model, resolve_model(recipe.model), rec.source.dtype)
        files: dict[str, Any] = {}
        if plan.record_recipe:
            rec.recipe = {
                "name": recipe.name, "key": s.key, "compresskit_version": __version__,
                "stages": [{"pass": t.kind, "name": t.step.name, "key": t.key} for t in plan.stages
                           if t.position < s.position]}
            files["recipe.yaml"] = recipe_yaml(plan)
        ev = self._evaluations.get(s.inputs[1]) if len(s.inputs) > 1 else None
        report = None
        if ev is not None:
            self._result.evaluation = ev
            parent = plan.work_dir if not self.in_memory else Path(recipe.output).absolute().parent
            parent.mkdir(parents=True, exist_ok=True)
            report = Path(tempfile.mkdtemp(prefix=f".report-{uuid.uuid4().hex[:8]}", dir=parent))
            usual_mode(report)  # mkdtemp makes it 0700; the saved evaluation/ is read like the rest
            title = (f"{recipe.name}: {public_name(recipe.model)} -> {public_name(recipe.output)}"
                     if plan.record_recipe else plan.title)
            write_eval_report(report, ev.child, ev.parent, ev.comparison, meta={"title": title})
            files["evaluation"] = report
        try:
            save(model, tok, recipe.output, overwrite=plan.overwrite,
                 evaluation=None if ev is None else ev.record(self.force, self.record_ungated), files=files)
        finally:
            if report is not None:
                shutil.rmtree(report, ignore_errors=True)
        self.emit(RecipeEvent("advance", s, n=1))

    def _push(self, s: Stage) -> None:
        config = s.step.config
        self.emit(RecipeEvent("start", s, n=1))
        self.emit(RecipeEvent("phase", s, label=f"pushing {self.plan.recipe.output} to {config.repo}"))
        self._result.push = push(self.plan.recipe.output, config.repo, private=config.private,
                                 revision=config.revision, token=self.token, overwrite=config.overwrite,
                                 endpoint=config.endpoint, format=config.format)
        if not self.in_memory:
            write_json_atomic(s.path, self._result.push.to_dict())
        self.emit(RecipeEvent("advance", s, n=1))

    # --- the run ----------------------------------------------------------------------------------------
    def run(self) -> RecipeResult:
        self._result = RecipeResult(self.plan, Path(self.plan.recipe.output))
        steps = {"eval": self._eval, "save": self._save, "push": self._push}
        for s in self.plan.stages:
            if not self.main_process and s.kind in steps:
                break  # only the main process evaluates, saves and pushes
            if s.state != "run":
                self.emit(RecipeEvent(s.state, s))
            else:
                t0 = time.perf_counter()
                steps.get(s.kind, self._pass)(s)
                self._result.seconds[s.position] = time.perf_counter() - t0
                self.emit(RecipeEvent("done", s, seconds=self._result.seconds[s.position]))
            if s.kind == "eval" and s.state != "skip":
                try:
                    self._gate(s)
                except GateFailedError as e:
                    e.result = self._result
                    raise
        save_stage = next(s for s in self.plan.stages if s.kind == "save")
        if self._result.evaluation is None and len(save_stage.inputs) > 1:
            self._result.evaluation = self._evaluations.get(save_stage.inputs[1])
        return self._result
