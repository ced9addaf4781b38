"""GPTQ export: v1/v2 zero points, tensors decoded independently, the config loaders read, what cannot be
expressed, and loading through transformers' own GPTQ path (optimum + GPTQModel) on CPU."""
from __future__ import annotations

import json
import os

import pytest
import torch
from _tiny import decode_gptq, dequantized_linears, logits, read_tensors, saved_quantized
from conftest import make_tiny_model

import compresskit
from compresskit.core.fsutil import OutputExistsError
from compresskit.core.packing import pack_int
from compresskit.export.gptq import zeros_v1_to_v2, zeros_v2_to_v1
from compresskit.export.source import NotExpressibleError

BITS = (2, 3, 4, 8)


@pytest.mark.parametrize("bits", BITS)
def test_v1_stores_zero_minus_one_and_round_trips(bits):
    g = torch.Generator().manual_seed(bits)
    z = torch.randint(1, 2**bits, (3, 64), generator=g)  # [groups, out], every zero >= 1
    v2 = pack_int(z, bits)
    v1 = zeros_v2_to_v1(v2, bits, 64, "layer")
    from _tiny import decode_columns

    assert torch.equal(decode_columns(v1.t(), bits, 64).t(), z - 1)  # read back by the test's own decoder
    assert torch.equal(zeros_v1_to_v2(v1, bits, 64), v2)


def test_v1_refuses_a_zero_point_of_zero_naming_the_layer():
    z = torch.full((2, 32), 5)
    z[1, 7] = 0
    with pytest.raises(NotExpressibleError, match=r"model\.layers\.3\.mlp\.up_proj: zero point 0 \(group 1, output "
                                                  r"channel 7.*--format gptq"):
        zeros_v2_to_v1(pack_int(z, 4), 4, 32, "model.layers.3.mlp.up_proj")


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("fmt", ["gptq", "gptq-v1"])
def test_exported_tensors_decode_to_the_quantized_weights(tmp_path, tiny_tokenizer, bits, fmt):
    sym = fmt == "gptq-v1"  # symmetric zero points (2^(b-1)) are always storable in v1
    model, src = saved_quantized(tmp_path / "q", tiny_tokenizer, wbits=bits, sym=sym)
    result = compresskit.export_model(src, fmt, tmp_path / "out")
    tensors = read_tensors(result.path)
    for name, w in dequantized_linears(model).items():
        assert tensors[f"{name}.qweight"].dtype == tensors[f"{name}.qzeros"].dtype == torch.int32
        assert tensors[f"{name}.scales"].dtype == torch.float16 and tensors[f"{name}.g_idx"].dtype == torch.int32
        assert torch.equal(decode_gptq(tensors, name, bits, v1=fmt == "gptq-v1"), w), name
    # the int8-row embedding is dequantized to float16 (tied head: one table)
    emb = model.model.embed_tokens
    expected = (emb.weight.float() * emb.weight_scale.float()[:, None]).half()
    assert torch.equal(tensors["model.embed_tokens.weight"], expected) and "lm_head.weight" not in tensors
    assert any("dequantized to float16" in n for n in result.notes)


@pytest.mark.parametrize("fmt", ["gptq", "gptq-v1"])
def test_per_channel_tensors_decode_too(tmp_path, tiny_tokenizer, fmt):
    model, src = saved_quantized(tmp_path / "q", tiny_tokenizer, group_size=-1, sym=True)
    result = compresskit.export_model(src, fmt, tmp_path / "out")
    tensors = read_tensors(result.path)
    for name, w in dequantized_linears(model).items():
        assert tensors[f"{name}.scales"].shape[0] == 1 and int(tensors[f"{name}.g_idx"].max()) == 0
        assert torch.equal(decode_gptq(tensors, name, 4, v1=fmt == "gptq-v1"), w), name
    assert json.loads((result.path / "config.json").read_text())["quantization_config"]["group_size"] == -1
    assert any("per-channel" in n for n in result.notes)


def test_config_carries_what_gptq_loaders_read_and_where_it_came_from(tmp_path, tiny_tokenizer):
    _, src = saved_quantized(tmp_path / "q", tiny_tokenizer, wbits=4, group_size=64)
    out = compresskit.export_model(src, "gptq", tmp_path / "out").path
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization_config"]
    assert {k: q[k] for k in ("quant_method", "bits", "group_size", "sym", "desc_act", "checkpoint_format",
                              "pack_dtype", "lm_head")} == {
        "quant_method": "gptq", "bits": 4, "group_size": 64, "sym": False, "desc_act": False,
        "checkpoint_format": "gptq_v2", "pack_dtype": "int32", "lm_head": False}
    assert q["meta"]["quantizer"][0].startswith("compresskit:") and "modules_in_block_to_quantize" not in q
    record = cfg["compresskit_export"]
    assert record["format"] == "gptq" and record["source"] == src.resolve().name  # no local path
    assert record["recipe"]["wbits"] == 4 and "model.safetensors" in record["source_files"]
    assert cfg["dtype"] == "float16"
    for f in ("tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (out / f).is_file(), f
    v1 = compresskit.export_model(src, "gptq-v1", tmp_path / "v1", dtype="float32").path  # no zero of 0 here
    v1cfg = json.loads((v1 / "config.json").read_text())
    assert v1cfg["quantization_config"]["checkpoint_format"] == "gptq" and v1cfg["dtype"] == "float32"
    assert v1cfg["compresskit_export"]["format"] == "gptq-v1"


def test_skipped_linears_become_modules_in_block_to_quantize(tmp_path, tiny_tokenizer):
    _, src = saved_quantized(tmp_path / "q", tiny_tokenizer, skip=("down_proj",))
    out = compresskit.export_model(src, "gptq", tmp_path / "out").path
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["modules_in_block_to_quantize"] == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                  "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"]]
    assert read_tensors(out)["model.layers.0.mlp.down_proj.weight"].dtype == torch.float16
    _, src2 = saved_quantized(tmp_path / "q2", tiny_tokenizer, skip=("layers.1.mlp.down_proj",))
    with pytest.raises(NotExpressibleError, match="only in some blocks.*compressed-tensors"):
        compresskit.export_model(src2, "gptq", tmp_path / "out2")


def test_what_gptq_cannot_express_is_refused_with_the_fix(tmp_path, tiny_tokenizer):
    plain = tmp_path / "pruned"
    model = make_tiny_model("llama", num_hidden_layers=3)
    compresskit.prune_model(model, layers=1, protect_retrieval=False, calib=torch.randint(0, 320, (2, 32)))
    compresskit.save(model, tiny_tokenizer, plain)
    with pytest.raises(NotExpressibleError, match="pruned float checkpoint.*quantize it first"):
        compresskit.export_model(plain, "gptq", tmp_path / "x")
    _, wa = saved_quantized(tmp_path / "w4a8", tiny_tokenizer, wbits=4, abits=8)
    with pytest.raises(NotExpressibleError, match="activations to 8 bits.*--weights-only"):
        compresskit.export_model(wa, "gptq", tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing written by a refused export
    result = compresskit.export_model(wa, "gptq", tmp_path / "x", weights_only=True)
    assert any("full precision" in n for n in result.notes)
    assert any("full precision" in n for n in
               json.loads((result.path / "config.json").read_text())["compresskit_export"]["notes"])


def test_a_pruned_then_quantized_model_exports_as_a_standard_smaller_model(tmp_path, tiny_tokenizer):
    model = make_tiny_model("llama", num_hidden_layers=3)
    compresskit.prune_model(model, layers=1, mlp=0.25, protect_retrieval=False, calib=torch.randint(0, 320, (2, 32)))
    compresskit.quantize(model, wbits=4, group_size=32)
    src = compresskit.save(model, tiny_tokenizer, tmp_path / "pq")
    result = compresskit.export_model(src, "gptq", tmp_path / "out")
    cfg = json.loads((result.path / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["intermediate_size"]) == (2, 96) and "compresskit_pruning" in cfg
    assert any("structurally pruned by compresskit to uniform widths (2 layers" in n for n in result.notes)
    assert (result.path / "pruning.json").is_file()
    tensors = read_tensors(result.path)
    for name, w in dequantized_linears(model).items():
        assert torch.equal(decode_gptq(tensors, name, 4, v1=False), w), name


def test_existing_output_is_refused_unless_overwrite(tmp_path, tiny_tokenizer):
    _, src = saved_quantized(tmp_path / "q", tiny_tokenizer)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists.*--overwrite"):
        compresskit.export_model(src, "gptq", tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "mine"
    compresskit.export_model(src, "gptq", tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep").exists() and (tmp_path / "out" / "config.json").is_file()
    with pytest.raises(ValueError, match="unknown export format"):
        compresskit.export_model(src, "awq", tmp_path / "z")


# --- transformers' own GPTQ path --------------------------------------------------------------------

@pytest.mark.parametrize("fmt,bits,sym", [("gptq", 4, False), ("gptq-v1", 4, True), ("gptq-v1", 4, False),
                                          ("gptq", 3, False), ("gptq", 8, False), ("gptq", 2, True)])
def test_transformers_gptq_path_gives_compresskits_logits(tmp_path, tiny_tokenizer, monkeypatch, fmt, bits, sym):
    pytest.importorskip("optimum")
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", os.environ.get("GPTQMODEL_CPU_WORKERS", "2"))  # 1-2 core machines
    pytest.importorskip("gptqmodel")
    import torch._dynamo
    from transformers import AutoModelForCausalLM

    model, src = saved_quantized(tmp_path / "q", tiny_tokenizer, wbits=bits, group_size=32, sym=sym)
    ours, _ = compresskit.load_model(src)
    out = compresskit.export_model(src, fmt, tmp_path / "out", dtype="float32").path
    # GPTQModel's CPU TorchLinear (2/3/8-bit) torch.compiles its dequantization on load (30-90 s here);
    # eager gives the same numbers
    with torch._dynamo.config.patch(disable=True):
        theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu").eval()
        assert type(theirs.model.layers[0].self_attn.q_proj).__module__.startswith("gptqmodel.")
        a, b = logits(ours), logits(theirs)
    # identical integer weights and scales, but GPTQModel keeps scales (and so its dequantized weights) in
    # float16 (its buffers' dtype): each weight is rounded to fp16 (relative 2^-11), which leaves ~1e-4 on
    # logits of magnitude ~1 here (measured 1.1e-4 to 1.7e-4); a wrong zero point or layout gives O(1)
    assert (a - b).abs().max().item() < 1e-3 * max(1.0, a.abs().max().item()), (a - b).abs().max().item()


def test_transformers_gptq_path_keeps_the_skipped_linears_in_float(tmp_path, tiny_tokenizer, monkeypatch):
    pytest.importorskip("optimum")
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", os.environ.get("GPTQMODEL_CPU_WORKERS", "2"))
    pytest.importorskip("gptqmodel")
    from transformers import AutoModelForCausalLM

    _, src = saved_quantized(tmp_path / "q", tiny_tokenizer, skip=("down_proj",))
    ours, _ = compresskit.load_model(src)
    out = compresskit.export_model(src, "gptq", tmp_path / "out", dtype="float32").path
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu").eval()
    mlp = theirs.model.layers[1].mlp
    assert type(mlp.down_proj) is torch.nn.Linear and type(mlp.up_proj).__module__.startswith("gptqmodel.")
    a, b = logits(ours), logits(theirs)
    assert (a - b).abs().max().item() < 1e-3 * max(1.0, a.abs().max().item())  # fp16 dequantization, as above


def test_gptqmodel_dequantizes_per_channel_exports_to_compresskits_weights(tmp_path, tiny_tokenizer, monkeypatch):
    """Per-channel: GPTQModel's own dequantization of the loaded tensors is compresskit's weights (to its float16
    rounding). Its CPU forward for them (TorchFusedLinear, 7.7) is wrong, which is GPTQModel's (docs/formats.md)."""
    pytest.importorskip("optimum")
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", os.environ.get("GPTQMODEL_CPU_WORKERS", "2"))
    pytest.importorskip("gptqmodel")
    from transformers import AutoModelForCausalLM

    model, src = saved_quantized(tmp_path / "q", tiny_tokenizer, group_size=-1)
    out = compresskit.export_model(src, "gptq", tmp_path / "out", dtype="float32").path
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu").eval()
    for name, w in dequantized_linears(model).items():
        got = theirs.get_submodule(name).dequantize_weight().float().t()
        assert torch.equal(got, w.half().float()), name
