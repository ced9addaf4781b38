"""compresskit.recipe: parsing a recipe, --set overrides, and problems collected (not stopped at the first),
each naming its pass and field. No model is read here."""
from __future__ import annotations

import pytest

from compresskit.recipe import (
    EvalPass, PushPass, Recipe, RecipeError, load_recipe, parse_overrides, recipe_file, shipped_recipes,
)
from compresskit.recipe.schema import read_recipe_file


def _load(raw, overrides=None):
    return load_recipe(raw, overrides)


def test_a_recipe_parses_into_typed_passes_with_an_implicit_save():
    raw = {"version": 1, "model": "m", "output": "o",
           "passes": [{"prune": {"mlp": 0.25}}, {"distill": {"steps": 20, "seqlen": 2048, "lr": "3e-4"}},
                      {"quantize": {"method": "omniquant", "wbits": 4, "group_size": 64}},
                      {"eval": {"tasks": "passkey", "lengths": [4096], "max_drop": 2}}]}
    recipe, problems = _load(raw)
    assert problems == ["pass 2 (distill), field lr: lr='3e-4' must be positive (e.g. --lr 1e-4)"]
    raw["passes"][1]["distill"]["lr"] = 3e-4
    recipe, problems = _load(raw)
    assert problems == []
    assert [p.kind for p in recipe.passes] == ["prune", "distill", "quantize", "eval", "save"]
    assert recipe.passes[-1].index == 0 and recipe.work_path.name == "o.recipe-work"
    prune, distill, quantize, ev, _ = (p.config for p in recipe.passes)
    assert prune.mlp == 0.25 and type(quantize).__name__ == "OmniQuantConfig" and quantize.preset == "auto"
    assert quantize.epochs is None and quantize.resolved("cuda").epochs == 20  # decided on the device it runs on
    assert distill.checkpoint_every == 2  # a tenth of the steps unless the recipe says
    assert isinstance(ev, EvalPass) and ev.tasks == ("passkey",) and ev.gated


def test_yaml_reads_exponents_as_numbers(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: m\noutput: o\npasses:\n  - prune: {mlp: 0.25}\n  - distill: {lr: 3e-4, steps: 10}\n")
    recipe, problems = load_recipe(path)
    assert problems == [] and recipe.passes[1].config.lr == 3e-4 and recipe.name == "r"


def test_every_problem_is_listed_with_its_pass_and_field():
    raw = {"model": "m", "output": "o", "colour": "blue",
           "passes": [{"prune": {"mlp": 1.5, "heads": "a", "layrs": 2}},
                      {"distill": {"steps": 20, "warmup_steps": 50}},
                      {"quantize": {"method": "omniquant", "wbits": 5, "group_size": 100, "nsamples": 3,
                                    "batch_size": 2}},
                      {"eval": {"tasks": ["ppl", "foo"], "lengths": [0]}},
                      "push", {"bogus": {}}, {"prune": {}, "save": {}}]}
    _, problems = _load(raw)
    text = "\n".join(problems)
    for needle in ("colour: unknown recipe field",
                   "pass 1 (prune), field layrs: unknown field 'layrs' of prune: did you mean layers?",
                   "pass 1 (prune), field mlp: mlp=1.5 must be a fraction in [0, 1)",
                   "pass 1 (prune), field heads: heads='a' must be a fraction",
                   "pass 2 (distill), field warmup_steps: warmup_steps=50 must be smaller than steps=20",
                   "pass 3 (quantize), field wbits: wbits=5 is not supported",
                   "pass 3 (quantize), field group_size: group_size=100 is not supported",
                   "pass 3 (quantize), field nsamples: nsamples=3 must be a multiple of batch_size=2",
                   "pass 4 (eval), field tasks: unknown eval task(s) ['foo']",
                   "pass 4 (eval), field lengths: lengths=[0]",
                   "pass 5 (push): repo is missing",
                   "pass 6: unknown pass 'bogus'",
                   "pass 7: each list item is one pass"):
        assert needle in text, needle
    assert len(problems) == 13, text


@pytest.mark.parametrize("passes,needle", [
    ([{"quantize": {}}, {"prune": {}}], "pass 2 (prune): prune a float model: move it before the quantize pass"),
    ([{"distill": {}}], "pass 1 (distill): distill trains a compressed student from the original"),
    ([{"quantize": {}}, {"distill": {}}], "set quant_params_only: true"),
    ([{"prune": {}}, {"distill": {"quant_params_only": True}}], "no quantize pass comes before it"),
    ([{"quantize": {}}, {"quantize": {}}], "passes 1, 2: quantize appears 2 times"),
    ([{"save": {}}, {"prune": {}}], "pass 2 (prune): only push may follow save"),
    ([{"push": {"repo": "me/x"}}, {"save": {}}], "pass 1 (push): push comes after save"),
    ([], "passes: missing or empty"),
])
def test_impossible_orders_are_problems(passes, needle):
    _, problems = _load({"model": "m", "output": "o", "passes": passes})
    assert any(needle in p for p in problems), problems


def test_missing_model_and_output_say_how_to_set_them():
    recipe, problems = _load({"passes": [{"prune": {"mlp": 0.25}}]})
    assert recipe is None
    assert any(p.startswith("model: missing") and "--set model=NAME" in p for p in problems)
    assert any(p.startswith("output: missing") and "--set output=DIR" in p for p in problems)
    _, problems = _load({"version": 2, "model": "m", "output": "o", "passes": ["save"]})
    assert problems == ["version 2 is newer than this compresskit reads (1); upgrade compresskit"]


def test_overrides_address_a_pass_by_name_or_position():
    raw = {"model": "m", "output": "o", "passes": [{"eval": {}}, {"quantize": {"wbits": 4}}, {"eval": {}}]}
    recipe, problems = _load(raw, ["quantize.wbits=3", "3.lengths=[1024, 4096]", "output=elsewhere",
                                   "quantize.group_size=-1"])
    assert problems == []
    assert recipe.output == "elsewhere" and recipe.passes[1].config.wbits == 3
    assert recipe.passes[1].config.group_size == -1 and recipe.passes[2].config.lengths == (1024, 4096)
    assert raw["passes"][1] == {"quantize": {"wbits": 4}}  # the caller's mapping is not changed
    _, problems = _load(raw, ["eval.lengths=[1]", "prune.mlp=0.5", "9.x=1", "passes=[]", "nonsense"])
    assert len(problems) == 5, problems
    for needle in ("--set eval.lengths: the recipe has 2 eval passes (at 1, 3); address one by its position, e.g. "
                   "1.FIELD", "--set prune.mlp: the recipe has no prune pass (passes: 1 eval, 2 quantize, 3 eval)",
                   "--set 9.x: the recipe has 3 passes, no pass 9", "--set passes: not a recipe field to set",
                   "--set nonsense: expected KEY=VALUE"):
        assert any(p.startswith(needle) for p in problems), needle
    assert parse_overrides({"quantize.wbits": 3}) == ({"quantize.wbits": 3}, [])
    assert parse_overrides(["output=2024", "eval.lengths=[1024,4096]"])[0] == {"output": "2024",
                                                                               "eval.lengths": [1024, 4096]}


def test_the_resolved_yaml_reads_back_to_the_same_recipe():
    raw = {"model": "m", "output": "o", "passes": [{"prune": {"mlp": 0.25}}, {"distill": {"steps": 30, "lr": 3e-4}},
                                                   {"quantize": {"method": "gptq", "group_size": 64}},
                                                   {"eval": {"max_drop": 1}}, {"push": {"repo": "me/x"}}]}
    recipe, _ = _load(raw)
    again, problems = _load(read_recipe_text(recipe.to_yaml()))
    assert problems == [] and again.to_dict() == recipe.to_dict()
    assert [p.kind for p in again.passes] == ["prune", "distill", "quantize", "eval", "save", "push"]
    reparsed, problems = load_recipe(recipe, ["quantize.wbits=3"])  # a Recipe, checked again with overrides
    assert problems == [] and reparsed.passes[2].config.wbits == 3 and isinstance(reparsed, Recipe)


def read_recipe_text(text):
    import yaml

    from compresskit.recipe.passes import RecipeLoader

    return yaml.load(text, Loader=RecipeLoader)


def test_yaml_syntax_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: m\npasses:\n  - prune: {mlp: 0.25\n")
    with pytest.raises(RecipeError, match=r"(?s)bad.yaml: 1 problem.*not valid YAML at line 4"):
        read_recipe_file(path)


def test_shipped_recipes_are_found_by_name_and_valid():
    shipped = shipped_recipes()
    assert {"serve-4bit", "smallest-4k-passkey"} <= set(shipped)
    for name in shipped:
        recipe, problems = load_recipe(name)
        assert problems == [], (name, problems)
        assert recipe.name == name and recipe.model == "smollm2-135m" and recipe.passes[-1].kind == "save"
    assert recipe_file("serve-4bit") == shipped["serve-4bit"]
    with pytest.raises(FileNotFoundError, match="no recipe file 'serve-5bit'.*shipped: .*serve-4bit"):
        recipe_file("serve-5bit")


def test_push_needs_a_repo_name():
    with pytest.raises(Exception, match="repo is missing"):
        PushPass()
    with pytest.raises(Exception, match="not a hub repo name"):
        PushPass(repo="a/b/c")
    assert PushPass(repo="me/x", private=True).to_dict()["private"] is True
