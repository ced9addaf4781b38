"""`compresskit.api.kv_sweep` and `compresskit kv`: the continuation perplexity against a plain forward, the
per-head (token by token) path against the uniform one, measured bytes, and the command's files and errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import compresskit
from compresskit.cli.main import app
from compresskit.kvcache import KVPolicy


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return compresskit.load_model(str(tiny_dir))


def test_continuation_ppl_with_nothing_dropped_matches_one_plain_forward(loaded):
    model, tok = loaded
    got = compresskit.api.continuation_ppl(model, tok, KVPolicy.parse("streaming:0"), 120, continuation=30)
    ids = tok(compresskit.api.heldout_text(), add_special_tokens=False)["input_ids"][:150]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, 119:149].float()
    ref = math.exp(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[120:150])).item())
    assert got == pytest.approx(ref, rel=1e-4)
    assert compresskit.api.continuation_ppl(model, tok, None, 120, continuation=30) == pytest.approx(ref, rel=1e-4)


def test_the_per_head_path_reads_the_continuation_as_the_uniform_one_does(loaded):
    """AdaKV budgets with a floor of the whole share keep what uniform budgets keep; the per-head layout reads
    the continuation token by token, the uniform one in one chunk: the perplexities agree."""
    model, tok = loaded
    uniform = compresskit.api.continuation_ppl(model, tok, KVPolicy.parse("tova:0.5"), 120, continuation=20)
    per_head = compresskit.api.continuation_ppl(model, tok, KVPolicy.parse("ada-tova:0.5,floor=1"), 120,
                                                continuation=20)
    assert per_head == pytest.approx(uniform, rel=1e-4)


def test_measured_bytes_follow_the_policy(loaded):
    model, tok = loaded
    full = compresskit.api.measure_cache(model, tok, None, 128, steps=4)
    half = compresskit.api.measure_cache(model, tok, KVPolicy.parse("snapkv:0.5"), 128, steps=4)
    per_token = full["bytes_prompt"] // 128
    assert half["bytes_prompt"] * 2 == full["bytes_prompt"]
    assert half["bytes_end"] == half["bytes_prompt"] + 4 * per_token and full["decode_tok_s"] > 0


def test_the_kv_command_writes_its_table_json_and_plots_and_refuses_to_overwrite(tiny_dir, tmp_path):
    out = tmp_path / "sweep"
    args = ["kv", str(tiny_dir), "--methods", "streaming,tova", "--ratios", "0.5", "--bits", "4", "--lengths",
            "160", "--tasks", "passkey", "--trials", "1", "--continuation", "16", "--no-cache", "--output", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "sweep.json").read_text())
    assert [r["policy"] for r in data["rows"]] == ["full", "streaming:0.5", "tova:0.5", "kivi:4"]
    assert all(r["bytes_prompt"] and r["ppl"] and "passkey" in r["scores"] for r in data["rows"])
    assert (out / "score_vs_ratio_passkey_160.png").is_file() and "| tova:0.5 | 160 |" in (out / "sweep.md").read_text()
    before = (out / "sweep.json").read_text()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output and (out / "sweep.json").read_text() == before
    bad = CliRunner().invoke(app, [*args[:2], "--methods", "h2o", "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown KV press 'h2o'" in bad.output and not (tmp_path / "x").exists()
