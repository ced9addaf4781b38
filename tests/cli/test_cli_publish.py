"""``compresskit export`` / ``compresskit push`` and ``--push-to-hub`` on tiny saved models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_tiny_model
from hub_server import TOKEN, HubServer  # tests/hub_server.py: the local hub
from typer.testing import CliRunner

import compresskit
from compresskit.cli.main import app


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_tokenizer) -> Path:
    model = make_tiny_model("llama")
    compresskit.quantize(model, wbits=4, group_size=32)
    return compresskit.save(model, tiny_tokenizer, tmp_path_factory.mktemp("cli") / "q")


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants

    with HubServer() as server:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.endpoint)  # what HF_ENDPOINT sets
        yield server


@pytest.mark.parametrize("fmt,key", [("gptq", "gptq"), ("gptq-v1", "gptq"),
                                     ("compressed-tensors", "compressed-tensors")])
def test_export_writes_the_format_and_refuses_an_existing_output(tmp_path, quantized, fmt, key):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(quantized), "--format", fmt, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "dequantized to float16" in result.output and "MB of weights" in result.output
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == key
    again = CliRunner().invoke(app, ["export", str(quantized), "--format", fmt, "--output", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output and "Traceback" not in again.output


def test_export_of_a_float_model_says_what_to_do(tmp_path, tiny_dir):
    result = CliRunner().invoke(app, ["export", str(tiny_dir), "--output", str(tmp_path / "x")])
    assert result.exit_code == 2 and "quantize it first" in result.output and not (tmp_path / "x").exists()
    bad = CliRunner().invoke(app, ["export", str(tiny_dir), "--format", "awq", "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown export format" in bad.output


def test_push_command(hub, quantized):
    args = ["push", str(quantized), "--repo", "tester/q", "--token", TOKEN]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "in one commit" in result.output and "README.md" in hub.files("tester/q")
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "nothing pushed" in again.output
    denied = CliRunner().invoke(app, ["push", str(quantized), "--repo", "tester/q", "--token", "nope"])
    assert denied.exit_code == 2 and "--token" in denied.output and "Traceback" not in denied.output


def test_quantize_prune_export_distill_push_to_hub(hub, tmp_path, tiny_dir):
    out = tmp_path / "w4"
    result = CliRunner().invoke(app, ["quantize", str(tiny_dir), "--group-size", "32", "--no-eval", "--output",
                                      str(out), "--push-to-hub", "tester/w4", "--private", "--token", TOKEN])
    assert result.exit_code == 0, result.output
    assert hub.repos["tester/w4"].private
    pushed = json.loads(hub.files("tester/w4")["config.json"])  # a quantized model goes as GPTQ by default
    assert pushed["quantization_config"]["quant_method"] == "gptq" and "compresskit_export" in pushed
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "compresskit"
    native = CliRunner().invoke(app, ["push", str(out), "--repo", "tester/w4-native", "--format", "native",
                                      "--token", TOKEN])
    assert native.exit_code == 0, native.output
    assert hub.files("tester/w4-native")["config.json"] == (out / "config.json").read_bytes()
    pruned = tmp_path / "p"
    result = CliRunner().invoke(app, ["prune", str(tiny_dir), "--layers", "1", "--no-protect-retrieval", "--no-eval",
                                      "--nsamples", "2", "--seqlen", "64", "--output", str(pruned),
                                      "--push-to-hub", "tester/p", "--token", TOKEN])
    assert result.exit_code == 0, result.output
    assert hub.files("tester/p")["README.md"] == (pruned / "README.md").read_bytes()
    export = CliRunner().invoke(app, ["export", str(out), "--output", str(tmp_path / "g"), "--push-to-hub", "tester/g",
                                      "--token", TOKEN])
    assert export.exit_code == 0, export.output
    assert "quant_method" in hub.files("tester/g")["config.json"].decode()
    distilled = tmp_path / "d"  # the pruned model as the student of the original
    result = CliRunner().invoke(app, ["distill", "--teacher", str(tiny_dir), "--student", str(pruned), "--seqlen", "64",
                                      "--steps", "1", "--no-eval", "--output", str(distilled),
                                      "--push-to-hub", "tester/d", "--token", TOKEN])
    assert result.exit_code == 0, result.output
    assert hub.files("tester/d")["model.safetensors"] == (distilled / "model.safetensors").read_bytes()


def test_quantize_card_carries_the_gate_table_and_links_the_plots(tmp_path, tiny_dir):
    pytest.importorskip("matplotlib")
    from huggingface_hub import ModelCard

    out = tmp_path / "evaluated"
    result = CliRunner().invoke(app, ["quantize", str(tiny_dir), "--group-size", "32", "--output", str(out),
                                      "--tasks", "ppl,passkey", "--lengths", "200", "--ppl-windows", "1",
                                      "--passkey-trials", "1", "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    card = ModelCard.load(out / "README.md")
    assert {r.dataset_type for r in card.data.eval_results} == {"compresskit/ppl", "compresskit/passkey"}
    assert "![ppl_vs_length](evaluation/ppl_vs_length.png)" in card.text and "Gate: passed" in card.text
    assert (out / "evaluation" / "ppl_vs_length.png").is_file()
