"""``compresskit prune`` on a tiny saved model: progress, table, a plain checkpoint, and bad inputs."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from compresskit.cli.main import app

SMALL = ["--nsamples", "2", "--seqlen", "64", "--retrieval-length", "200", "--retrieval-samples", "1"]
SMALL_EVAL = ["--tasks", "ppl,passkey", "--lengths", "200", "--ppl-windows", "1", "--passkey-trials", "1"]


def test_prune_prints_a_before_after_table_and_saves(tmp_path, tiny_dir):
    out = tmp_path / "pruned"
    result = CliRunner().invoke(app, ["prune", str(tiny_dir), "--mlp", "0.25", "--heads", "0.5", "--layers", "1",
                                      "--output", str(out), *SMALL, *SMALL_EVAL])
    assert result.exit_code == 0, result.output
    for needle in ("parameters (M)", "size (MB)", "perplexity @ 200", "passkey @ 200", "retrieval heads protected"):
        assert needle in result.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["intermediate_size"]) == (2, 2, 96)
    assert "evaluation" not in cfg["compresskit_pruning"]
    assert set(json.loads((out / "compresskit_evaluation.json").read_text())) == {"before", "after"}


def test_prune_without_protection(tmp_path, tiny_dir):
    out = tmp_path / "noprot"
    result = CliRunner().invoke(app, ["prune", str(tiny_dir), "--heads", "0.5", "--no-protect-retrieval",
                                      "--output", str(out), "--no-eval", *SMALL])
    assert result.exit_code == 0, result.output
    assert "retrieval heads protected" not in result.output
    assert json.loads((out / "config.json").read_text())["compresskit_pruning"]["recipe"]["protect_retrieval"] is False


def test_retrieval_score_choice_reaches_the_recipe(tmp_path, tiny_dir):
    default, attention = tmp_path / "default", tmp_path / "attention"
    for out, extra in ((default, []), (attention, ["--retrieval-score", "attention"])):
        result = CliRunner().invoke(app, ["prune", str(tiny_dir), "--heads", "0.5", "--output", str(out), "--no-eval",
                                          *SMALL, *extra])
        assert result.exit_code == 0, result.output
    recipes = [json.loads((d / "config.json").read_text())["compresskit_pruning"]["recipe"] for d in (default, attention)]
    assert [r["retrieval_score"] for r in recipes] == ["answer_loss", "attention"]
    bad = CliRunner().invoke(app, ["prune", str(tiny_dir), "--heads", "0.5", "--retrieval-score", "argmax",
                                   "--output", str(tmp_path / "bad"), "--no-eval", *SMALL])
    assert bad.exit_code != 0 and "retrieval_score='argmax' is not supported" in bad.output


@pytest.mark.parametrize("args,needle", [
    (["--heads", "0.3"], "nearest valid setting is --heads 0.5"),
    (["--heads", "0.9"], "leaves no query head"),
    (["--layers", "3"], "the most is --layers 2"),
    (["--mlp", "1.2"], "mlp=1.2 must be a fraction in [0, 1)"),
])
def test_bad_settings_are_one_line_errors_before_any_work(tmp_path, tiny_dir, args, needle):
    result = CliRunner().invoke(app, ["prune", str(tiny_dir), *args, "--output", str(tmp_path / "x"), *SMALL])
    assert result.exit_code == 2
    assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused(tmp_path, tiny_dir):
    (tmp_path / "exists").mkdir()
    result = CliRunner().invoke(app, ["prune", str(tiny_dir), "--mlp", "0.5", "--output", str(tmp_path / "exists")])
    assert result.exit_code == 2 and "already exists" in result.output


def test_info_shows_what_was_pruned(tmp_path, tiny_dir):
    out = tmp_path / "p"
    assert CliRunner().invoke(app, ["prune", str(tiny_dir), "--layers", "1", "--no-protect-retrieval", "--no-eval",
                                    "--output", str(out), *SMALL]).exit_code == 0
    result = CliRunner().invoke(app, ["info", str(out)])
    assert result.exit_code == 0 and "pruning" in result.output and "2 layers" in result.output
