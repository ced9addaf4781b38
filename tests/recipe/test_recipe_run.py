"""compresskit.api_recipe: the shipped recipes run on a tiny model (set to tiny sizes with --set
overrides), with stage results that a rerun reuses, a gate that refuses to save, and resuming."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _recipes import SERVE, SMALLEST, copy_run, mtimes, paths
from conftest import save_trained_tiny

from compresskit import api
from compresskit.recipe import load_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_trained_tiny(tmp_path_factory.mktemp("recipe") / "tiny", tiny_tokenizer)


class Events(list):
    def __call__(self, event):
        self.append(event)

    def of(self, *kinds: str) -> list[str]:
        return [e.stage.kind for e in self if e.kind in kinds]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, trained):
    """smallest-4k-passkey (prune -> distill -> quantize -> eval -> save) run once, at tiny sizes."""
    root = tmp_path_factory.mktemp("smallest")
    events = Events()
    result = api.run_recipe("smallest-4k-passkey", overrides=[*paths(trained, root / "out"), *SMALLEST],
                            progress=events)
    return result, events, root / "out.recipe-work", root / "out"


def test_the_stages_run_in_order_and_the_output_loads(finished):
    result, events, work, out = finished
    assert events.of("start") == events.of("done") == ["prune", "distill", "quantize", "eval", "save"]
    assert result.ran == ["prune", "distill", "quantize", "eval", "save"] and result.output == out
    assert result.comparison.passed and result.comparison.gate.max_ppl_increase == 1e6
    info = api.info(out)
    assert info["quantization"]["name"] == "omniquant-w4g32" and info["quantization"]["quantized_linears"] == 21
    assert info["pruning"]["params_after"] < info["pruning"]["params_before"]
    assert info["distillation"]["steps"] == 2
    model, _ = api.load_model(out)
    assert (model.config.intermediate_size, model.config.num_attention_heads) == (96, 2)  # mlp 0.25, heads 0.5
    for name in ("pruning.json", "distillation.json", "recipe.yaml", "evaluation/report.json", "README.md"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "Recipe (`recipe.yaml`" in card and "- distill:" in card and "passkey@200" in card
    saved, problems = load_recipe(out / "recipe.yaml")  # the resolved recipe reads back as it ran
    ran = result.plan.recipe.to_dict()  # local paths are saved by their last part (nothing private is pushed)
    assert problems == [] and saved.to_dict() == ran | {"model": Path(ran["model"]).name, "output": out.name}
    assert saved.passes[2].config.group_size == 32 and saved.passes[1].config.steps == 2
    config = json.loads((out / "config.json").read_text())
    assert config["compresskit_recipe"]["key"] == result.plan.stages[-1].key
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) == sorted(
        [s.path.name for s in result.plan.stages[:4]] + ["recipe.yaml"])


def test_a_rerun_does_no_work(finished, monkeypatch):
    result, _, work, out = finished
    before = mtimes(work), mtimes(out)
    loads = []
    monkeypatch.setattr(api, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("a model was loaded"))
    events = Events()
    again = api.run_recipe("smallest-4k-passkey", overrides=[*paths(result.plan.recipe.model, out), *SMALLEST],
                           progress=events)  # in place, as the user reruns it
    assert again.ran == [] and loads == [] and events.of("cached") == ["prune", "distill", "quantize", "eval", "save"]
    assert (mtimes(work), mtimes(out)) == before


def test_a_changed_setting_reruns_its_stage_and_those_after_only(finished, tmp_path):
    result, _, work, out = finished
    work, out = copy_run(work, out, tmp_path)
    sets = [*paths(result.plan.recipe.model, out, work), *SMALLEST, "quantize.wbits=8"]
    with pytest.raises(api.RecipeError, match="already exists .written by another recipe or other settings"):
        api.plan_recipe("smallest-4k-passkey", overrides=sets)
    kept = {s.kind: mtimes(work / s.path.name) for s in result.plan.stages[:2]}
    events = Events()
    again = api.run_recipe("smallest-4k-passkey", overrides=sets, progress=events, overwrite=True)
    assert events.of("cached") == ["prune", "distill"] and again.ran == ["quantize", "eval", "save"]
    assert {s.kind: mtimes(work / s.path.name) for s in result.plan.stages[:2]} == kept
    assert api.info(out)["quantization"]["name"] == "omniquant-w8g32"
    old_quantize = work / result.plan.stages[2].path.name
    assert not old_quantize.exists() and again.plan.stages[2].path.is_dir()  # the replaced stage is cleaned up


def test_a_failing_gate_saves_nothing_unless_forced(finished, tmp_path):
    result, _, work, _ = finished
    work, out = copy_run(work, None, tmp_path)
    sets = [*paths(result.plan.recipe.model, out, work), *SMALLEST, "eval.max_drop=0", "eval.max_ppl_increase=5"]
    events = Events()
    with pytest.raises(api.GateFailedError, match=r"pass 4 \(eval .*\): gate failed: ppl@200 \+.*nothing saved; "
                                                  r"report in .*out.gate-report; rerun with --force") as err:
        api.run_recipe("smallest-4k-passkey", overrides=sets, progress=events)
    assert events.of("cached") == ["prune", "distill", "quantize", "eval"]  # a new gate reuses the scores
    assert not out.exists() and (err.value.report / "report.md").is_file()
    forced = api.run_recipe("smallest-4k-passkey", overrides=sets, force=True)
    assert forced.ran == ["save"] and not forced.comparison.passed
    gate = api.info(out)["quantization"]["evaluation"]["gate"]
    assert gate["forced"] is True and gate["passed"] is False


def test_an_interrupted_distill_stage_resumes(tmp_path, trained):
    recipe = {"model": str(trained), "output": str(tmp_path / "out"), "passes": [
        {"prune": {"mlp": 0.5, "protect_retrieval": False, "nsamples": 2, "seqlen": 32, "calib": "generated"}},
        {"distill": {"steps": 3, "seqlen": 32, "checkpoint_every": 1, "data": "generated"}}]}

    def stop_at_step_2(event):
        if event.kind == "advance" and event.stage.kind == "distill" and "loss" in event.message and stop_at_step_2.n:
            stop_at_step_2.n -= 1
            if not stop_at_step_2.n:
                raise KeyboardInterrupt

    stop_at_step_2.n = 2
    with pytest.raises(KeyboardInterrupt):
        api.run_recipe(recipe, progress=stop_at_step_2)
    assert not (tmp_path / "out").exists()
    events = Events()
    result = api.run_recipe(recipe, progress=events)
    assert events.of("cached") == ["prune"] and result.ran == ["distill", "save"]
    assert [e.message for e in events if e.kind == "note"] == [f"resuming from {result.plan.stages[1].path}.state"]
    assert api.info(tmp_path / "out")["distillation"]["resumed_from"] == 1
    assert not Path(f"{result.plan.stages[1].path}.state").exists()  # removed once the stage is saved


def test_serve_4bit_on_a_tiny_model(tmp_path, tiny_dir):
    events = Events()
    result = api.run_recipe("serve-4bit", overrides=[*paths(tiny_dir, tmp_path / "out"), *SERVE], progress=events)
    assert events.of("done") == ["quantize", "eval", "save"]
    info = api.info(tmp_path / "out")
    assert info["quantization"]["name"] == "omniquant-w4g64" and info["quantization"]["quantized_linears"] == 21
    assert info["quantization"]["recipe"]["epochs"] == 1 and result.comparison.passed
    assert (tmp_path / "out" / "recipe.yaml").read_text().count("- ") >= 3


def test_push_pass_pushes_once(tmp_path, tiny_dir, monkeypatch):
    import huggingface_hub.constants
    from hub_server import TOKEN, HubServer

    recipe = {"model": str(tiny_dir), "output": str(tmp_path / "out"),
              "passes": [{"quantize": {"group_size": 32}}, {"save": {"keep_work_dir": True}},
                         {"push": {"repo": "tester/r", "private": True}}]}
    with HubServer() as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        result = api.run_recipe(recipe, token=TOKEN)
        assert result.ran == ["quantize", "save", "push"] and not result.push.up_to_date
        assert {"recipe.yaml", "README.md", "model.safetensors"} <= set(hub.files("tester/r"))
        commits = len(hub.repos["tester/r"].log)
        again = api.run_recipe(recipe, token=TOKEN)
        assert again.ran == [] and len(hub.repos["tester/r"].log) == commits


def test_keep_work_dir_false_removes_it_after_saving(tmp_path, tiny_dir):
    recipe = {"model": str(tiny_dir), "output": str(tmp_path / "out"),
              "passes": [{"quantize": {"group_size": 32}}, {"save": {"keep_work_dir": False}}]}
    api.run_recipe(recipe)
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out.recipe-work").exists()
