"""Native save -> reload: exact logits, tied int8 heads, shards, the manifest, atomic writes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import make_tiny_model
from safetensors import safe_open

import compresskit
from compresskit.core.fsutil import OutputExistsError
from compresskit.export import native
from compresskit.export.native import save_native
from compresskit.kernels.modules import Int8Embedding, Int8Linear, QuantLinear

FAMILIES = ("llama", "qwen2", "mistral")



def _ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, 320, (2, 24), generator=g)


@torch.no_grad()
def _logits(model: nn.Module) -> torch.Tensor:
    return model(_ids()).logits


def _reload(path) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _assert_same_logits(a: nn.Module, b: nn.Module) -> None:
    la, lb = _logits(a), _logits(b)
    assert la.shape == lb.shape == (2, 24, 320)
    assert torch.isfinite(la).all()
    assert torch.equal(la, lb), f"max abs diff {(la - lb).abs().max().item()}"


def _safetensors_keys(path: Path) -> set[str]:
    keys: set[str] = set()
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as sf:
            keys.update(sf.keys())
    return keys


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quantized(family="llama", tie=True, **cfg):
    model = make_tiny_model(family, tie=tie)
    manifest = compresskit.quantize(model, group_size=32, **cfg)
    return model, manifest


@pytest.mark.parametrize("embed_bits", [8, 16])
@pytest.mark.parametrize("wbits", [2, 3, 4, 8])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("family", FAMILIES)
def test_roundtrip_exact_logits(family, tie, wbits, embed_bits, tmp_path, tiny_tokenizer):
    model, manifest = _quantized(family, tie, wbits=wbits, embed_bits=embed_bits)
    out = compresskit.save(model, tiny_tokenizer, tmp_path / "q")
    assert out == tmp_path / "q"

    reloaded = _reload(out)
    linears = {n: m for n, m in reloaded.named_modules() if isinstance(m, QuantLinear)}
    assert set(linears) == set(manifest.linears)
    assert all(m.bits == wbits and m.group_size == 32 for m in linears.values())
    emb, head = reloaded.model.embed_tokens, reloaded.lm_head
    if embed_bits == 8:
        assert isinstance(emb, Int8Embedding) and isinstance(head, Int8Linear)
        assert emb.weight.dtype == torch.int8
    else:
        assert type(emb) is nn.Embedding and type(head) is nn.Linear
    if tie:
        # the head shares the embedding's Parameter objects (one table in memory and on disk)
        assert head.weight is emb.weight
        if embed_bits == 8:
            assert head.weight_scale is emb.weight_scale
        assert "lm_head.weight" not in _safetensors_keys(out)
    else:
        assert head.weight is not emb.weight
        assert "lm_head.weight" in _safetensors_keys(out)
    _assert_same_logits(model, reloaded)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_load_model_api_roundtrip(tie, tmp_path, tiny_tokenizer):
    model, _ = _quantized("qwen2", tie, wbits=4, embed_bits=8)  # qwen2: q/k/v carry biases
    compresskit.save(model, tiny_tokenizer, tmp_path / "q")
    loaded, tok = compresskit.load_model(tmp_path / "q")
    assert tok.get_vocab() == tiny_tokenizer.get_vocab()
    assert isinstance(loaded.model.layers[0].self_attn.q_proj, QuantLinear)
    assert loaded.model.layers[0].self_attn.q_proj.bias is not None
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tie
    if tie:
        assert loaded.lm_head.weight_scale is loaded.model.embed_tokens.weight_scale
    _assert_same_logits(model, loaded)
    # the loaded checkpoint knows its recipe, so it saves again to the same tensors and manifest
    # (the file bytes may differ: safetensors writes its metadata dict in no fixed order)
    compresskit.save(loaded, tok, tmp_path / "again")
    first = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    second = json.loads((tmp_path / "again" / "config.json").read_text())["quantization_config"]
    for key in ("recipe", "linears", "embeddings", "skipped", "format", "format_version"):
        assert first[key] == second[key]
    assert first["files"]["model.safetensors"]["bytes"] == second["files"]["model.safetensors"]["bytes"]
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="pt") as a, \
            safe_open(str(tmp_path / "again" / "model.safetensors"), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            ta, tb = a.get_tensor(k), b.get_tensor(k)
            assert ta.dtype == tb.dtype and torch.equal(ta, tb), k


def test_sharded_save(tmp_path, tiny_tokenizer):
    model, manifest = _quantized("llama", True, wbits=4)
    out = save_native(model, tiny_tokenizer, tmp_path / "sharded", manifest, storage_dtype=torch.float32,
                      max_shard_bytes=20_000)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    n = len(shards)
    assert n >= 3
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (out / "model.safetensors").exists()

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    for shard in shards:
        with safe_open(str(out / shard), framework="pt") as sf:
            keys = set(sf.keys())
            assert keys == {k for k, v in index["weight_map"].items() if v == shard}
            assert index["metadata"]["total_size"] >= sum(
                sf.get_tensor(k).numel() * sf.get_tensor(k).element_size() for k in keys)
    sizes = {}
    for k, v in index["weight_map"].items():
        with safe_open(str(out / v), framework="pt") as sf:
            t = sf.get_tensor(k)
            sizes[k] = t.numel() * t.element_size()
    assert index["metadata"]["total_size"] == sum(sizes.values())

    files = json.loads((out / "config.json").read_text())["quantization_config"]["files"]
    assert set(files) == set(shards)
    for name, rec in files.items():
        assert rec == {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}

    _assert_same_logits(model, _reload(out))
    loaded, _ = compresskit.load_model(out)  # verify=True checks every shard's sha256
    _assert_same_logits(model, loaded)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_manifest_in_config(tmp_path, tiny_tokenizer):
    model, manifest = _quantized("mistral", True, wbits=3, sym=True)
    out = compresskit.save(model, tiny_tokenizer, tmp_path / "q", evaluation={"note": {"x": 1}})
    config = json.loads((out / "config.json").read_text())
    q = config["quantization_config"]
    assert q["quant_method"] == "compresskit"
    assert q["format"] == "gptq_v2"
    assert q["recipe"] == compresskit.QuantConfig(wbits=3, group_size=32, sym=True).to_dict()
    expected = {f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert len(q["linears"]) == 14 and set(q["linears"]) == expected
    assert all(v == {"bits": 3, "group_size": 32, "sym": True, "bias": False, "abits": 16} for v in q["linears"].values())
    assert q["embeddings"] == {"embed": "model.embed_tokens", "lm_head": "lm_head", "tied": True, "bits": 8}
    assert "evaluation" not in q and json.loads((out / "compresskit_evaluation.json").read_text()) == {"note": {"x": 1}}
    assert q["compresskit_version"] == compresskit.__version__
    on_disk = sorted(p.name for p in out.glob("*.safetensors"))
    assert on_disk == ["model.safetensors"] == sorted(q["files"])
    f = out / "model.safetensors"
    assert q["files"]["model.safetensors"] == {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    assert config["dtype"] == "float32"
    # the stored layout (format 2): packed ints under NAME.weight, fp16 scales, int8 table
    assert q["format_version"] == 2
    with safe_open(str(f), framework="pt") as sf:
        packed = sf.get_tensor("model.layers.0.self_attn.q_proj.weight")
        assert packed.dtype == torch.int32 and tuple(packed.shape) == (64 * 3 // 32, 64)  # not the float [64, 64]
        assert sf.get_tensor("model.layers.0.self_attn.q_proj.scales").dtype == torch.float16
        assert sf.get_tensor("model.embed_tokens.weight").dtype == torch.int8
        assert sf.get_tensor("model.embed_tokens.weight_scale").dtype == torch.float16
        assert "model.layers.0.self_attn.q_proj.qweight" not in sf.keys()
    # api.info reads the same manifest
    info = compresskit.info(out)
    assert info["quantization"]["quantized_linears"] == 14
    assert info["quantization"]["recipe"]["wbits"] == 3
    assert info["weights_bytes"] == f.stat().st_size


def test_bf16_source_is_stored_bf16(tmp_path, tiny_tokenizer):
    src = tmp_path / "src"
    make_tiny_model("llama").to(torch.bfloat16).save_pretrained(src)
    tiny_tokenizer.save_pretrained(src)
    model, tok = compresskit.load_model(src)
    assert next(model.parameters()).dtype == torch.float32
    compresskit.quantize(model, wbits=4, group_size=32, embed_bits=16)
    out = compresskit.save(model, tok, tmp_path / "q")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), framework="pt") as sf:
        assert sf.get_tensor("model.norm.weight").dtype == torch.bfloat16
        assert sf.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
        assert sf.get_tensor("model.layers.1.mlp.down_proj.scales").dtype == torch.float16
    loaded, _ = compresskit.load_model(out)
    _assert_same_logits(model, loaded)  # bf16 norms / embedding were bf16-exact already


def test_unquantized_save_reloads_plain(tmp_path, tiny_tokenizer):
    model = make_tiny_model("llama", tie=False)
    out = compresskit.save(model, tiny_tokenizer, tmp_path / "plain")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    reloaded = _reload(out)
    assert getattr(reloaded, "hf_quantizer", None) is None
    assert not any(isinstance(m, (QuantLinear, Int8Linear, Int8Embedding)) for m in reloaded.modules())
    assert type(reloaded.model.layers[0].mlp.down_proj) is nn.Linear
    _assert_same_logits(model, reloaded)
    assert compresskit.info(out)["quantization"] is None


def test_existing_dir_refused_then_overwritten(tmp_path, tiny_tokenizer):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    model, _ = _quantized("llama", True, wbits=4)
    with pytest.raises(OutputExistsError, match="overwrite"):
        compresskit.save(model, tiny_tokenizer, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"

    compresskit.save(model, tiny_tokenizer, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["q"]  # no .partial / .old leftovers
    _assert_same_logits(model, _reload(out))


def test_output_path_that_is_a_file_is_refused(tmp_path, tiny_tokenizer):
    target = tmp_path / "file"
    target.write_text("x")
    model, _ = _quantized("llama", True, wbits=4)
    with pytest.raises(OutputExistsError, match="is a file"):
        compresskit.save(model, tiny_tokenizer, target, overwrite=True)
    assert target.read_text() == "x"


def _failing_write(path, *args, **kwargs):
    """The disk fills up halfway through a weights file."""
    import errno

    path.write_bytes(b"\0" * 100)
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_failed_write_leaves_nothing(tmp_path, tiny_tokenizer, monkeypatch):
    parent = tmp_path / "parent"
    model, _ = _quantized("llama", True, wbits=4)
    monkeypatch.setattr(native, "_write_file", _failing_write)
    with pytest.raises(compresskit.CompresskitError, match="No space left on device.*nothing was written"):
        compresskit.save(model, tiny_tokenizer, parent / "q")
    assert not (parent / "q").exists()
    assert list(parent.iterdir()) == []  # no hidden .q.partial-* directory either


def test_failed_overwrite_keeps_the_old_dir(tmp_path, tiny_tokenizer, monkeypatch):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    model, _ = _quantized("llama", True, wbits=4)
    monkeypatch.setattr(native, "_write_file", _failing_write)
    with pytest.raises(compresskit.CompresskitError, match="No space left on device"):
        compresskit.save(model, tiny_tokenizer, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_folded_norms_keep_their_precision_when_the_source_is_bf16(tmp_path):
    """LET folds scales into RMSNorm weights: a bf16 source must not round them on save."""
    from compresskit.quant.omniquant import OmniQuantConfig

    model = make_tiny_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # a model loaded from a bf16 checkpoint
    compresskit.record(model).source.dtype = "bfloat16"
    ids = torch.randint(0, 320, (4, 32), generator=torch.Generator().manual_seed(0))
    compresskit.quantize(model, OmniQuantConfig(wbits=3, group_size=32, nsamples=4, seqlen=32, epochs=1, let=True, preset="published"), calib=ids)
    norm = model.model.layers[0].input_layernorm.weight
    assert not torch.equal(norm.to(torch.bfloat16).float(), norm)  # folding left non-bf16 values
    compresskit.save(model, None, tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.input_layernorm.weight").dtype == torch.float32
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16  # untouched tensors stay bf16
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_saving_converts_one_tensor_at_a_time(tmp_path, tiny_tokenizer, monkeypatch):
    """No copy of the whole state: when a tensor is converted for writing, no earlier converted one is alive
    (peak memory at save is the model's plus one tensor)."""
    import weakref

    model = make_tiny_model("llama").to(torch.bfloat16).float()  # float32 values exact in bf16: all narrowed
    compresskit.record(model).source.dtype = "bfloat16"
    alive: list[weakref.ref] = []
    peak = [0]
    real = native.stored

    def spy(name, t, dtype):
        out = real(name, t, dtype)
        peak[0] = max(peak[0], sum(r() is not None for r in alive))
        if out.data_ptr() != t.data_ptr():
            alive.append(weakref.ref(out))
        return out

    monkeypatch.setattr(native, "stored", spy)
    out = compresskit.save(model, tiny_tokenizer, tmp_path / "m")
    assert len(alive) >= 8 and peak[0] <= 1
    reloaded, _ = compresskit.load_model(out)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name  # bit for bit
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_without_compresskit_transformers_refuses_a_native_checkpoint(tmp_path, tiny_tokenizer):
    """transformers alone (no `import compresskit`: the quantization method is unknown to it) must not build
    a model with random linears from a native checkpoint: the packed words sit where it expects float weights,
    the shapes differ, and loading fails loudly."""
    import subprocess
    import sys

    model, _ = _quantized("llama", True, wbits=4)
    out = compresskit.save(model, tiny_tokenizer, tmp_path / "q")
    code = ("import sys; from transformers import AutoModelForCausalLM; "
            "AutoModelForCausalLM.from_pretrained(sys.argv[1]); print('LOADED')")
    run = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert run.returncode != 0 and "LOADED" not in run.stdout
    assert "ignore_mismatched_sizes" in run.stderr  # transformers' "size mismatch" error
    # with compresskit the same directory loads, exactly (test_roundtrip_exact_logits)
    reloaded, _ = compresskit.load_model(out)
    assert compresskit.record(reloaded).manifest.format_version == 2
