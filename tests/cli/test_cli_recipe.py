"""``compresskit run``: a shipped recipe on a tiny model (tiny sizes through --set), one progress display
with a line per stage, reruns that skip what is done, --dry-run, one error listing every problem, and a
failing gate that saves nothing unless --force."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import save_trained_tiny
from typer.testing import CliRunner

from compresskit import api
from compresskit.cli import recipe as recipe_cli
from compresskit.cli.main import app

TINY = ["quantize.nsamples=2", "quantize.seqlen=32", "quantize.epochs=1", "quantize.calib=generated",
        "eval.tasks=[ppl,passkey]", "eval.lengths=[200]", "eval.ppl_windows=1", "eval.passkey_trials=1"]


def _run(*args: str, model: Path, out: Path, sets: list[str] = TINY):
    sets = [f"model={model}", f"output={out}", *sets]
    return CliRunner().invoke(app, ["run", *args, *[a for s in sets for a in ("--set", s)]])


def test_the_help_names_every_shipped_recipe():
    assert set(recipe_cli.SHIPPED.split(", ")) == set(api.shipped_recipes())
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "--dry-run" in result.output and "serve-4bit" in result.output


def test_run_shows_every_stage_and_a_rerun_skips_them(tmp_path, tiny_dir):
    out = tmp_path / "out"
    sets = [*TINY, "eval.max_drop=100", "eval.max_ppl_increase=1000"]
    result = _run("serve-4bit", model=tiny_dir, out=out, sets=sets)
    assert result.exit_code == 0, result.output
    for needle in ("ok 1/3 quantize: omniquant-w4g64: done in", "ok 2/3 eval ppl,passkey @ 200", "ok 3/3 save: done in",
                   "recipe serve-4bit", "ran quantize, eval, save", "gate: passed"):
        assert needle in result.output, needle
    assert (out / "recipe.yaml").is_file() and (out / "evaluation" / "report.json").is_file()
    again = _run("serve-4bit", model=tiny_dir, out=out, sets=sets)
    assert again.exit_code == 0, again.output
    assert again.output.count(": done before (") == 3 and "ran nothing (every stage was done before)" in again.output
    plan = _run("serve-4bit", "--dry-run", model=tiny_dir, out=out, sets=[*sets, "quantize.wbits=8"])
    assert plan.exit_code == 2 and "--overwrite" in plan.output  # a new setting: the output would be replaced
    plan = _run("serve-4bit", "--dry-run", "--overwrite", model=tiny_dir, out=out, sets=[*sets, "quantize.wbits=8"])
    assert plan.exit_code == 0, plan.output
    assert plan.output.count("to run") == 3 and "omniquant-w8g64" in plan.output
    assert api.info(out)["quantization"]["name"] == "omniquant-w4g64"  # a dry run changes nothing


def test_problems_are_one_error_before_any_work(tmp_path, tiny_dir):
    out = tmp_path / "out"
    result = _run("smallest-4k-passkey", model=tiny_dir, out=out, sets=["quantize.wbits=5", "prune.mlpp=0.1"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # the terminal wraps long lines
    # passes with bad settings are not checked against the model (their config does not exist); the others are
    for needle in ("3 problems, nothing was run", "pass 1 (prune), field mlpp: unknown field 'mlpp' of prune: did "
                   "you mean mlp?", "pass 3 (quantize), field wbits: wbits=5 is not supported",
                   "pass 2 (distill), field seqlen: seqlen=4096 exceeds the model's context (512 tokens)"):
        assert needle in text, needle
    assert "Traceback" not in result.output
    assert not out.exists() and not Path(f"{out}.recipe-work").exists()


def test_an_unknown_recipe_names_the_shipped_ones(tmp_path):
    result = CliRunner().invoke(app, ["run", "serve-5bit"])
    assert result.exit_code == 2 and "no recipe file 'serve-5bit'" in result.output
    assert "serve-4bit" in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_trained_tiny(tmp_path_factory.mktemp("cli-recipe") / "tiny", tiny_tokenizer)


def test_a_failing_gate_exits_3_and_saves_nothing_unless_forced(tmp_path, trained):
    out = tmp_path / "out"
    sets = [*TINY, "quantize.wbits=2", "quantize.group_size=-1", "eval.max_ppl_increase=1"]
    result = _run("serve-4bit", model=trained, out=out, sets=sets)
    assert result.exit_code == 3, result.output
    text = " ".join(result.output.split())
    assert "not saved:" in text and "gate failed: ppl@200" in text and "rerun with --force" in text
    assert not out.exists() and Path(f"{out}.gate-report", "report.md").is_file()
    forced = _run("serve-4bit", "--force", model=trained, out=out, sets=sets)
    assert forced.exit_code == 0, forced.output
    assert "ran save" in forced.output and "(saved with --force)" in forced.output
    assert api.info(out)["quantization"]["evaluation"]["gate"]["forced"] is True
