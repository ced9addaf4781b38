"""KV-cache policies through the API and the command line: evaluation under a policy, its own cache rows,
and bad policies as one-line errors."""
from __future__ import annotations

import json

import pytest

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
    args = ["eval", str(tiny_dir), "--tasks", "passkey", "--lengths", "200", "--passkey-trials", "1", "--no-cache"]
    result = CliRunner().invoke(app, [*args, "--kv", "snapkv:0.5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["meta"]["kv"] == "snapkv:0.5" and data["model"]["rows"][0]["task"] == "passkey"
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
                                      "streaming:0.5", "--tasks", "passkey", "--lengths", "200", "--passkey-trials",
                                      "2", "--no-cache", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["compresskit_kv"]["name"] == "streaming:0.5"
    assert json.loads((out / "compresskit_evaluation.json").read_text())["gate"]
    card = (out / "README.md").read_text()
    assert "streaming:0.5" in card and "## KV cache at long context" in card
    rows = saved["compresskit_kv"]["memory"]["rows"]
    assert [r["tokens"] for r in rows] == [4096, 8192, 32768] and all(r["policy"] * 2 < r["full"] * 1.01 for r in rows)
    assert f"| 32,768 | {rows[2]['full'] / 1e6:.1f} MB | {rows[2]['policy'] / 1e6:.1f} MB (0.50x)" in card
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


@pytest.mark.parametrize("spec", [None, "snapkv:0.5", "ada-tova:0.5", "kivi:4", "snapkv:0.5+kivi:2"])
def test_layout_bytes_equal_a_real_cache_after_a_prompt(tiny_dir, spec):
    """`kv_memory` (measured on the layout, no model run) against a cache after a real 200-token prompt and
    one generated token."""
    import torch

    model, tok = compresskit.load_model(str(tiny_dir))
    policy = compresskit.api.KVPolicy.parse(spec or "streaming:0")
    cache = policy.cache_for(model)  # with the model's rotary frequencies: kivi keeps positions after eviction
    ids = torch.randint(3, 300, (1, 200), generator=torch.Generator().manual_seed(0))
    with compresskit.compress_kv(model, policy):
        model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0, cache=cache)
    row = compresskit.api.kv_memory(model, spec, lengths=(200,), dtype="float32")["rows"][0]
    assert compresskit.api.cache_bytes(cache) == (row["policy"] if spec else row["full"])


def test_eval_command_scores_retrieval_heads_and_the_kv_pass_saves_them(tiny_dir, tmp_path):
    args = ["eval", str(tiny_dir), "--tasks", "passkey", "--lengths", "200", "--passkey-trials", "1", "--no-cache"]
    result = CliRunner().invoke(app, [*args, "--kv", "retrieval-heads:0.5"])
    assert result.exit_code == 0, result.output
    assert "retrieval-heads:0.5" in result.output
    model, tok = compresskit.load_model(str(tiny_dir))
    out = tmp_path / "rh"
    compresskit.apply(model, "kv", tokenizer=tok, press="retrieval-heads", ratio=0.5)
    heads = compresskit.api.attached_policy(model).options["heads"]
    compresskit.save(model, tok, out)
    again, _ = compresskit.load_model(str(out))
    assert heads and compresskit.api.attached_policy(again).options["heads"] == heads  # saved, not scored again
