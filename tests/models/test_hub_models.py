"""Hub ids as input, through the local hub (tests/hub_server.py): a snapshot is downloaded once (config,
tokenizer, safetensors), sizes and the source dtype come from it, ``org/name@rev`` / ``--revision`` pick
a branch, and a repo with only pickle weights or an unknown id is a one-line refusal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from hub_server import TOKEN, HubServer
from typer.testing import CliRunner

import compresskit
from compresskit import api
from compresskit.cli.main import app
from compresskit.models import ModelNotFoundError


@pytest.fixture
def hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    with HubServer() as server:
        monkeypatch.setattr(c, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


def _files(model, tokenizer, directory: Path) -> dict[str, bytes]:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def bf16_repo(hub, tmp_path, tiny_tokenizer):
    """org/tiny: a bf16 tiny llama on main, other weights on branch v2."""
    main = make_tiny_model("llama", seed=0).to(torch.bfloat16)
    hub.add("org/tiny", _files(main, tiny_tokenizer, tmp_path / "main"))
    hub.add("org/tiny", _files(make_tiny_model("llama", seed=1).to(torch.bfloat16), tiny_tokenizer, tmp_path / "v2"),
            branch="v2")
    return main


def test_a_hub_id_loads_from_its_snapshot_with_sizes_and_source_dtype(bf16_repo, hub):
    model, _ = compresskit.load_model("org/tiny")
    source = compresskit.record(model).source
    assert source.name == "org/tiny" and source.dtype == "bfloat16" and Path(source.path).is_dir()
    ref = bf16_repo.model.layers[0].mlp.up_proj.weight.float()
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, ref)
    weights = sum(len(v) for k, v in hub.files("org/tiny").items() if k.endswith(".safetensors"))
    assert api.checkpoint_bytes("org/tiny") == weights > 0
    other, _ = compresskit.load_model("org/tiny@v2")
    assert not torch.equal(other.model.layers[0].mlp.up_proj.weight, ref)


def test_quantize_a_hub_id_keeps_its_dtype_sizes_and_names_it_as_base(bf16_repo, hub, tmp_path):
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["quantize", "org/tiny", "--revision", "v2", "-o", str(out), "--group-size", "32",
                                      "--no-eval"])
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output and " 0.0 " not in result.output  # sizes came from the snapshot
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["_name_or_path"] == "org/tiny"
    assert config["quantization_config"]["base_model"] == "org/tiny"
    assert "base_model: org/tiny" in (out / "README.md").read_text()


def test_pickle_only_and_unknown_repos_are_refused_in_one_line(hub, tmp_path, tiny_tokenizer):
    files = _files(make_tiny_model("llama"), tiny_tokenizer, tmp_path / "m")
    files = {("pytorch_model.bin" if k.endswith(".safetensors") else k): v for k, v in files.items()}
    hub.add("org/pickled", files)
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        compresskit.load_model("org/pickled")
    result = CliRunner().invoke(app, ["eval", "org/nothing-here", "--tasks", "ppl"])
    assert result.exit_code == 2 and result.stderr.startswith("error: could not get 'org/nothing-here'")
    assert "Traceback" not in result.output


def test_export_and_eval_take_a_hub_id(hub, tmp_path, tiny_tokenizer):
    model = make_tiny_model("llama")
    compresskit.quantize(model, wbits=4, group_size=32)
    saved = compresskit.save(model, tiny_tokenizer, tmp_path / "q")
    hub.add("org/tiny-w4", {str(p.relative_to(saved)): p.read_bytes() for p in saved.rglob("*") if p.is_file()})
    out = tmp_path / "gptq"
    result = CliRunner().invoke(app, ["export", "org/tiny-w4", "--format", "gptq", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    result = CliRunner().invoke(app, ["eval", "org/tiny-w4", "--tasks", "ppl", "--lengths", "64", "--ppl-windows", "1",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["rows"][0]["task"] == "ppl"
