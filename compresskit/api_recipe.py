"""Recipes in the Python API (re-exported by compresskit.api): run a YAML list of passes
(compresskit.recipe) through the one runner (compresskit.runner), each stage's result kept in the work
directory (compresskit.api_recipe_plan keys them), so a rerun does only what changed; and `run_pass`, the
one-pass recipe (pass, evaluation and gate, save, push) that ``compresskit quantize / prune / distill`` run
in memory.

    import compresskit
    result = compresskit.run_recipe("serve-4bit", overrides=["output=smollm2-w4", "quantize.epochs=5"])
    result.output   # the saved model, with recipe.yaml beside its weights
"""
from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .api_recipe_plan import MARKER, RecipePlan, plan_recipe
from .core.registry import REGISTRY
from .kvcache import KVPolicy
from .recipe import Recipe, RecipeError, shipped_recipes  # noqa: F401  (the API surface)
from .runner import GateFailedError, RecipeEvent, RecipeResult, Runner, recipe_yaml  # noqa: F401  (the API surface)



def _stage_entry() -> re.Pattern:
    """What `compresskit run` may delete from its own work directory once a run succeeded: results of stages
    that are no longer in the recipe (of any registered pass), and their resumable states."""
    kinds = "|".join(re.escape(k) for k in REGISTRY.kinds())
    return re.compile(rf"^(?:(?:{kinds})-[0-9a-f]{{16}}(?:\.state)?|(?:eval|push)-[0-9a-f]{{16}}\.json)$")


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
        if _stage_entry().match(entry.name) and entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def run_recipe(recipe: str | os.PathLike | Recipe | Mapping[str, Any] | RecipePlan, *,
               overrides: Sequence[str] | Mapping[str, Any] | None = None,
               work_dir: str | os.PathLike | None = None, progress: Callable[[RecipeEvent], None] | None = None,
               force: bool = False, overwrite: bool = False, token: str | None = None, device: str = "auto",
               dtype: str = "auto") -> RecipeResult:
    """Run ``recipe`` (a YAML file, a shipped name such as ``"serve-4bit"``, a mapping or a `Recipe`) with
    ``overrides`` (``["quantize.wbits=3", "output=DIR"]`` or a mapping). Everything is validated first
    (`plan_recipe`: one `RecipeError` listing every problem). Each stage's result is written atomically
    into the work directory (``work_dir``, default ``OUTPUT.recipe-work``) under its key; a stage whose
    result is there is not run again, an interrupted distill or OmniQuant stage resumes from its state.
    A failing eval gate raises `GateFailedError` and saves nothing unless ``force``. The output (with
    ``recipe.yaml``, the resolved recipe) replaces an existing directory only with ``overwrite``, unless it
    already holds this recipe's result (then nothing is written). ``token`` is for the push pass; ``device``
    and ``dtype`` are where and in what the models load (`load_model`: a GPU in bf16 when there is one). A
    `RecipePlan` from `plan_recipe` runs as it was planned (its overrides, work dir and overwrite)."""
    if isinstance(recipe, RecipePlan):
        plan = recipe
    else:
        plan = plan_recipe(recipe, overrides=overrides, work_dir=work_dir, overwrite=overwrite)
    _prepare_work_dir(plan)
    result = Runner(plan, progress if progress is not None else (lambda event: None), force, token,
                    device=device, dtype=dtype).run()
    _clean_work_dir(plan)
    save = next(s for s in plan.stages if s.kind == "save")
    if not save.step.config.keep_work_dir:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
    return result


def one_pass_recipe(model: str, output: str | os.PathLike, kind: str, config: Any, *,
                    evaluation: Mapping[str, Any] | None = None, push: Mapping[str, Any] | None = None,
                    teacher: str | None = None, name: str | None = None, kv: Any = None) -> dict[str, Any]:
    """The recipe of one pass: ``kind`` with ``config`` (a config object or its fields), then a KV-cache
    policy ``kv`` (a spec such as ``"snapkv:0.5"``, saved with the model; None: the full cache), an eval pass
    with ``evaluation`` (`EvalPass` fields: settings, gate, baseline; None: no evaluation), save, and a
    push with ``push`` (`PushPass` fields; None: no push)."""
    settings = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    settings = {k: v for k, v in settings.items() if k != "version"} | ({"teacher": teacher} if teacher else {})
    passes: list[dict[str, Any]] = [{kind: settings}]
    if kv is not None:
        passes.append({"kv": {k: v for k, v in KVPolicy.parse(kv).to_dict().items() if k != "version"}})
    if evaluation is not None:
        passes.append({"eval": dict(evaluation)})
    passes.append({"save": {"keep_work_dir": False}})
    if push is not None:
        passes.append({"push": dict(push)})
    return {"name": name or kind, "model": str(model), "output": str(output), "passes": passes}


def run_pass(model: str, output: str | os.PathLike, kind: str, config: Any, *,
             evaluation: Mapping[str, Any] | None = None, push: Mapping[str, Any] | None = None,
             teacher: str | None = None, overwrite: bool = False, force: bool = False, token: str | None = None,
             state_dir: str | os.PathLike | None = None, keep_state: bool = False, data: Any = None,
             main_process: bool = True, record_ungated: bool = True, options: Mapping[str, Any] | None = None,
             title: str = "", kv: Any = None, device: str = "auto", dtype: str = "auto",
             progress: Callable[[RecipeEvent], None] | None = None) -> RecipeResult:
    """Load ``model``, run the registered pass ``kind`` with ``config`` on it in memory, evaluate it against
    its parent (``evaluation``: `EvalPass` fields, or None), stop if the gate fails (`GateFailedError`,
    unless ``force``), save it to ``output`` (with the evaluation report and card) and push it (``push``:
    `PushPass` fields). ``kv`` adds a KV-cache policy after the pass: the model is evaluated (and the gate
    judges it) generating under it, and it is saved with the model. ``device`` / ``dtype``: where and in what
    the models load (`load_model`). This is `run_recipe` of `one_pass_recipe`, with no stage results kept: what
    ``compresskit quantize / prune / distill`` do. A resumable pass keeps its state in ``state_dir``
    (default ``OUTPUT.METHOD-state``; removed after success unless ``keep_state``)."""
    recipe = one_pass_recipe(model, output, kind, config, evaluation=evaluation, push=push, teacher=teacher, kv=kv)
    plan = plan_recipe(recipe, overwrite=overwrite, in_memory=True, record_recipe=False, title=title)
    runner = Runner(plan, progress if progress is not None else (lambda event: None), force, token, data=data,
                    state_dir=None if state_dir is None else Path(state_dir), keep_state=keep_state,
                    main_process=main_process, record_ungated=record_ungated, options=dict(options or {}),
                    device=device, dtype=dtype)
    return runner.run()
