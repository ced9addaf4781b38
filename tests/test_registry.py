"""The registry of passes (compresskit.core.registry) and the one runner: a pass added in one file plus one
registration line runs from the API, a recipe and the command line; the built-in passes are found there."""
from __future__ import annotations

import json

import pytest
import torch
from _toy_pass import SCALE, ScaleConfig
from conftest import quantize_two_ways
from safetensors.torch import load_file
from typer.testing import CliRunner

import compresskit
from compresskit import api
from compresskit.cli.main import app
from compresskit.core.errors import ConfigError
from compresskit.core.registry import REGISTRY, PassRegistry, PassSpec


@pytest.fixture
def toy():
    compresskit.register(SCALE)  # the one registration line
    yield SCALE
    REGISTRY.unregister("scale")


def _norm(path) -> torch.Tensor:
    return load_file(str(path / "model.safetensors"))["model.norm.weight"]


def test_builtin_passes_are_registered_with_their_configs():
    assert REGISTRY.kinds()[:3] == ("quantize", "prune", "distill")
    assert REGISTRY.methods("quantize") == ("rtn", "gptq", "omniquant")
    assert REGISTRY.get("quantize", "omniquant").config is compresskit.OmniQuantConfig
    assert REGISTRY.get("quantize", "omniquant").resumable and not REGISTRY.get("quantize", "rtn").resumable
    assert REGISTRY.get("distill").needs_teacher
    # a config names its method; the registry builds the right class from a dict
    assert type(compresskit.QuantConfig.from_dict({"method": "gptq"})) is compresskit.GPTQConfig
    with pytest.raises(ConfigError, match="unknown method 'awq'; supported: rtn, gptq, omniquant"):
        compresskit.QuantConfig.from_dict({"method": "awq"})


def test_registering_a_taken_name_is_refused():
    registry = PassRegistry()
    registry.register(SCALE)
    other = PassSpec("scale", "scale", ScaleConfig, lambda ctx, c: {})
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(other)
    assert registry.register(other, replace=True) is other


def test_a_new_pass_runs_from_the_api(toy, tiny_dir):
    model, tok = compresskit.load_model(str(tiny_dir))
    before = model.model.norm.weight.detach().clone()
    calls = []
    summary = compresskit.apply(model, "scale", factor=0.5, progress=lambda n, message: calls.append((n, message)))
    assert summary == {"factor": 0.5} and calls == [(1, "scaled")]
    torch.testing.assert_close(model.model.norm.weight, before * 0.5, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="factor=-1 must be a number > 0"):
        compresskit.apply(model, "scale", factor=-1)


def test_a_new_pass_runs_in_a_recipe_and_a_rerun_finds_it_done(toy, tiny_dir, tmp_path):
    recipe = {"model": str(tiny_dir), "output": str(tmp_path / "out"), "passes": [{"scale": {"factor": 0.25}}]}
    result = compresskit.run_recipe(recipe)
    assert result.ran == ["scale", "save"] and result.results[1] == {"factor": 0.25}
    torch.testing.assert_close(_norm(tmp_path / "out"), _norm(tiny_dir) * 0.25, rtol=0, atol=0)
    again = compresskit.run_recipe(recipe)
    assert again.ran == []  # the stage's key is its config: nothing changed, nothing runs
    with pytest.raises(api.RecipeError, match="unknown field 'facter' of scale: did you mean factor"):
        api.plan_recipe({**recipe, "passes": [{"scale": {"facter": 2}}]})


def test_a_new_pass_runs_from_the_command_line(toy, tiny_dir, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["apply", "scale", str(tiny_dir), "--set", "factor=2", "--output", str(out),
                                      "--no-eval"])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(_norm(out), _norm(tiny_dir) * 2, rtol=0, atol=0)
    bad = CliRunner().invoke(app, ["apply", "scale", str(tiny_dir), "--set", "size=2", "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "scale has no field 'size'" in bad.output and "factor" in bad.output


def test_an_unknown_pass_is_named_with_the_registered_ones(tiny_dir, tmp_path):
    result = CliRunner().invoke(app, ["apply", "sharpen", str(tiny_dir), "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown pass 'sharpen'" in result.output and "quantize" in result.output


def test_quantize_and_the_equivalent_recipe_write_the_same_checkpoint(tiny_dir, tmp_path):
    """`compresskit quantize` is a one-pass recipe run in memory; `compresskit run` keeps each stage in a work
    directory and saves again from it. Both write byte-identical weights and the same manifest."""
    a, b = quantize_two_ways(str(tiny_dir), tmp_path, 32)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    qa, qb = (json.loads((d / "config.json").read_text())["quantization_config"] for d in (a, b))
    assert qa == qb
