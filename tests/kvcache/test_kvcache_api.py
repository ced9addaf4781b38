"""KV-cache policies through the API and the command line: evaluation under a policy, its own cache rows,
and bad policies as one-line errors."""
from __future__ import annotations

import json

from typer.testing import CliRunner

import compresskit
from compresskit.cli.main import app

SMALL = dict(tasks=["passkey"], lengths=[200], passkey_trials=2, cache=False)


def test_evaluate_under_a_policy_generates_with_the_evicting_cache(tiny_dir):
    model, tok = compresskit.load_model(str(tiny_dir))
    calls = []
    real = model.generate

    def spy(*args, **kwargs):
        calls.append(type(kwargs.get("cache")).__name__ if kwargs.get("cache") is not None else None)
        return real(*args, **kwargs)

    model.generate = spy
    try:
        full = compresskit.evaluate(model, tok, **SMALL)
        assert calls and set(calls) == {None}
        calls.clear()
        pressed = compresskit.evaluate(model, tok, **SMALL, kv="streaming:0.5")
    finally:
        del model.generate
    assert calls and set(calls) == {"Cache"}  # every generation got the evicting cache
    assert [r.task for r in pressed.rows] == [r.task for r in full.rows] == ["passkey"]


def test_rows_under_a_policy_are_cached_apart_from_full_cache_rows(tiny_dir, tmp_path):
    model, tok = compresskit.load_model(str(tiny_dir))
    kw = {**SMALL, "cache": tmp_path}
    compresskit.evaluate(model, tok, **kw)
    first = set(tmp_path.iterdir())
    again = compresskit.evaluate(model, tok, **kw)
    assert set(tmp_path.iterdir()) == first and again.rows[0].cached  # the full-cache row is reused
    pressed = compresskit.evaluate(model, tok, **kw, kv="snapkv:0.5")
    assert not pressed.rows[0].cached and len(set(tmp_path.iterdir())) == len(first) + 1


def test_eval_command_takes_a_policy_and_refuses_a_bad_one(tiny_dir, tmp_path):
    out = tmp_path / "r.json"
    args = ["eval", str(tiny_dir), "--tasks", "passkey", "--lengths", "200", "--passkey-trials", "1", "--no-cache"]
    result = CliRunner().invoke(app, [*args, "--kv", "snapkv:0.5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "snapkv:0.5" in result.output and json.loads(out.read_text())["rows"][0]["task"] == "passkey"
    bad = CliRunner().invoke(app, [*args, "--kv", "snapkv:1.5"])
    assert bad.exit_code == 2 and "ratio=1.5 must lie in [0, 1)" in bad.output and "Traceback" not in bad.output


def test_a_recipe_gate_compares_the_policy_with_the_parents_full_cache(tiny_dir, tmp_path):
    recipe = {"model": str(tiny_dir), "output": str(tmp_path / "out"), "passes": [
        {"eval": {"tasks": ["passkey"], "lengths": [200], "passkey_trials": 2, "kv": "streaming:0.5",
                  "cache": False}}]}
    result = compresskit.run_recipe(recipe)
    ev = result.evaluation
    assert ev.parent is not ev.child  # the model under the policy is scored apart from its full-cache self
    with __import__("pytest").raises(compresskit.api.RecipeError, match="field kv: unknown KV press 'h2o'"):
        compresskit.plan_recipe({**recipe, "passes": [{"eval": {"kv": "h2o:0.5"}}]})


def test_a_policy_saved_with_the_model_comes_back_with_it(tiny_dir, tmp_path):
    """`compresskit quantize --kv`: the gate judges the model generating under the policy against the parent's
    full cache, the policy is saved (config.json, card) and `load_model` applies it."""
    out = tmp_path / "w8kv"
    result = CliRunner().invoke(app, ["quantize", str(tiny_dir), "--wbits", "8", "--group-size", "32", "--kv",
                                      "streaming:0.5", "--eval", "passkey", "--lengths", "200", "--passkey-trials",
                                      "2", "--no-cache", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["compresskit_kv"]["name"] == "streaming:0.5" and saved["quantization_config"]["evaluation"]["gate"]
    assert "streaming:0.5" in (out / "README.md").read_text()
    model, _ = compresskit.load_model(str(out))
    assert compresskit.api.attached_policy(model).name == "streaming:0.5"
    assert [p.kind for p in compresskit.record(model).passes] == ["quantize", "kv"]
    compresskit.attach_kv(model, None)
    assert compresskit.api.attached_policy(model) is None and "generate" not in model.__dict__
    bad = CliRunner().invoke(app, ["quantize", str(tiny_dir), "--kv", "streaming:2", "--no-eval", "--output",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 2 and "must lie in [0, 1)" in bad.output and not (tmp_path / "x").exists()


def test_the_kv_pass_runs_from_the_api_and_a_recipe(tiny_dir, tmp_path):
    model, tok = compresskit.load_model(str(tiny_dir))
    summary = compresskit.apply(model, "kv", press="snapkv", ratio=0.25)
    assert summary["name"] == "snapkv:0.25" and compresskit.api.attached_policy(model).name == "snapkv:0.25"
    recipe = {"model": str(tiny_dir), "output": str(tmp_path / "out"),
              "passes": [{"kv": {"press": "tova", "ratio": 0.5, "bits": 4}}]}
    result = compresskit.run_recipe(recipe)
    assert result.ran == ["kv", "save"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["compresskit_kv"]["name"] == "tova:0.5+kivi:4"
