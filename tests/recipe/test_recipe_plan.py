"""compresskit.api_recipe_plan: a recipe checked against the model before anything runs (one error with
every problem), and stage keys that change for a stage and those after it only."""
from __future__ import annotations

import pytest
from _recipes import SMALLEST, paths

from compresskit import api


def _plan(recipe, model, out, *sets, **kw):
    return api.plan_recipe(recipe, overrides=[*paths(model, out), *sets], **kw)


def test_the_shipped_recipe_on_a_small_model_lists_every_problem_at_once(tmp_path, tiny_dir):
    with pytest.raises(api.RecipeError) as err:
        _plan("smallest-4k-passkey", tiny_dir, tmp_path / "out")
    problems = err.value.problems
    assert problems == [
        "pass 1 (prune), field seqlen: seqlen=2048 exceeds the model's context (512 tokens); use seqlen: 512 or less",
        "pass 1 (prune): --heads 0.33 removes 1 of 4 query heads, not a whole number per each of the 2 KV groups; "
        "the nearest valid setting is --heads 0.5 (2 heads, 1 per group); valid: 0, 0.5",
        "pass 2 (distill), field seqlen: seqlen=4096 exceeds the model's context (512 tokens); use seqlen: 512 or less",
    ]  # the quantize pass sets no seqlen: its preset fits the calibration windows to the model's context
    assert "3 problems, nothing was run" in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.recipe-work").exists()


def test_shapes_after_pruning_and_prompt_lengths_are_checked(tmp_path, tiny_dir):
    sets = [s for s in SMALLEST if not s.startswith(("quantize.group_size", "prune.retrieval_length"))]
    with pytest.raises(api.RecipeError) as err:
        _plan("smallest-4k-passkey", tiny_dir, tmp_path / "out", *sets, "eval.lengths=[64, 200]",
              "prune.retrieval_length=64")
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 3, text
    # half the heads go: o_proj reads 2 heads x 16 = 32 features, which 64 does not divide
    assert ("pass 3 (quantize): model.layers.0.self_attn.o_proj: group_size 64 does not divide in_features=32. Use a "
            "group size that divides it (32)") in text and "(widths after the prune pass)" in text
    assert "pass 1 (prune), field retrieval_length: the retrieval probes are passkey prompts of 64 tokens" in text
    assert "pass 4 (eval), field lengths: passkey at 64 tokens is too short" in text
    assert "pass 4 (eval), field lengths: ppl" not in text


def test_a_missing_model_is_listed_with_the_other_problems(tmp_path):
    with pytest.raises(api.RecipeError) as err:
        api.plan_recipe({"model": str(tmp_path / "nope"), "output": str(tmp_path / "o"),
                         "passes": [{"quantize": {"wbits": 5}}, {"push": {}}]})
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("pass 1 (quantize), field wbits: wbits=5 is not supported")
    assert problems[1].startswith("pass 2 (push): repo is missing")
    assert problems[2].startswith(f"model: no model at {str(tmp_path / 'nope')!r}")


def test_a_missing_teacher_names_its_field(tmp_path, tiny_dir):
    with pytest.raises(api.RecipeError, match=r"pass 2 \(distill\), field teacher: no model at"):
        api.plan_recipe({"model": str(tiny_dir), "output": str(tmp_path / "o"),
                         "passes": [{"prune": {"mlp": 0.5}}, {"distill": {"teacher": str(tmp_path / "t")}}]})


def test_an_existing_output_or_foreign_work_dir_is_refused(tmp_path, tiny_dir):
    recipe = {"model": str(tiny_dir), "output": str(tmp_path / "out"),
              "passes": [{"quantize": {"wbits": 4, "group_size": 32}}]}
    (tmp_path / "out").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(api.RecipeError) as err:
        api.plan_recipe(recipe, work_dir=tmp_path / "mine")
    assert err.value.problems == [
        f"output: {tmp_path / 'out'} already exists (written by something other than this recipe); pass --overwrite "
        "(overwrite=True) to replace it, or choose another output (--set output=DIR)",
        f"work_dir: {tmp_path / 'mine'} exists and was not made by compresskit run (no .compresskit-recipe in it); "
        "choose another (--work-dir DIR) or empty it"]
    with pytest.raises(api.RecipeError, match="is inside the output"):
        api.plan_recipe(recipe, work_dir=tmp_path / "out" / "work", overwrite=True)
    plan = api.plan_recipe(recipe, overwrite=True)
    assert [s.state for s in plan.stages] == ["run", "run"] and plan.work_dir == tmp_path / "out.recipe-work"
    assert not plan.work_dir.exists()  # planning writes nothing


def _keys(tiny_dir, out, *sets):
    plan = _plan("smallest-4k-passkey", tiny_dir, out, *SMALLEST, *sets)
    return {s.kind: s.key for s in plan.stages}


def test_a_changed_setting_changes_the_keys_of_its_stage_and_those_after(tmp_path, tiny_dir):
    base = _keys(tiny_dir, tmp_path / "o")
    assert len(set(base.values())) == 5
    assert _keys(tiny_dir, tmp_path / "elsewhere") == base  # paths are not part of any key
    wbits = _keys(tiny_dir, tmp_path / "o", "quantize.wbits=8")
    assert [k for k in base if base[k] != wbits[k]] == ["quantize", "eval", "save"]
    steps = _keys(tiny_dir, tmp_path / "o", "distill.steps=3")
    assert [k for k in base if base[k] != steps[k]] == ["distill", "quantize", "eval", "save"]
    gate = _keys(tiny_dir, tmp_path / "o", "eval.max_drop=1")  # the scores are reused; the verdict is not
    assert [k for k in base if base[k] != gate[k]] == ["save"]
    assert _keys(tiny_dir, tmp_path / "o", "distill.checkpoint_every=1", "eval.cache=false") == base


def test_the_model_s_weights_are_part_of_every_key(tmp_path, tiny_dir):
    import shutil

    model = shutil.copytree(tiny_dir, tmp_path / "model")
    before = _keys(model, tmp_path / "o")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes, new file: the key does not trust it
    after = _keys(model, tmp_path / "o")
    assert all(before[k] != after[k] for k in before)
