"""compressed-tensors pack-quantized export: the signed storage with the 2^(b-1) offset, tensors decoded
independently, compressed-tensors' own packing, and loading through transformers' compressed-tensors path."""
from __future__ import annotations

import json

import pytest
import torch
from _tiny import decode_compressed_tensors, dequantized_linears, logits, read_tensors, saved_quantized

import compresskit
from compresskit.export.compressed_tensors import (
    CT_BITS, from_signed, pack_quantized, pack_signed, quantization_config, to_signed, unpack_signed,
)
from compresskit.export.source import NotExpressibleError


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_signed_offset_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 2**bits, (8, 64), generator=g)
    s = to_signed(q, bits)
    assert s.dtype == torch.int8 and int(s.min()) >= -(2 ** (bits - 1)) and int(s.max()) < 2 ** (bits - 1)
    assert torch.equal(s.long(), q - 2 ** (bits - 1))
    assert torch.equal(from_signed(s, bits).long(), q)
    assert torch.equal(unpack_signed(pack_signed(s, bits), bits, 64), s)
    with pytest.raises(ValueError, match="out of range"):
        to_signed(torch.tensor([2**bits]), bits)


@pytest.mark.parametrize("bits", CT_BITS)
def test_packing_matches_compressed_tensors_own(bits):
    ct = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    g = torch.Generator().manual_seed(0)
    s = to_signed(torch.randint(0, 2**bits, (64, 64), generator=g), bits)
    theirs = ct.pack_to_int32(s, bits)  # packed along the last dim, as weight_packed is
    assert torch.equal(pack_signed(s, bits), theirs)
    assert torch.equal(ct.unpack_from_int32(theirs, bits, torch.Size([64, 64])).to(torch.int8), s)
    zero = s[:, :4].t().contiguous()  # [groups, out] -> packed along out (dim 0 of [out, groups])
    assert torch.equal(pack_signed(zero, bits).t(), ct.pack_to_int32(zero.t(), bits, packed_dim=0))


@pytest.mark.parametrize("sym", [False, True], ids=["asym", "sym"])
@pytest.mark.parametrize("bits", CT_BITS)
def test_exported_tensors_decode_to_the_quantized_weights(tmp_path, tiny_tokenizer, bits, sym):
    model, src = saved_quantized(tmp_path / "q", tiny_tokenizer, wbits=bits, sym=sym, tie=False)
    result = compresskit.export_model(src, "compressed-tensors", tmp_path / "out")
    tensors = read_tensors(result.path)
    for name, w in dequantized_linears(model).items():
        assert tensors[f"{name}.weight_packed"].dtype == torch.int32
        assert tensors[f"{name}.weight_shape"].tolist() == list(w.shape)
        assert (f"{name}.weight_zero_point" in tensors) == (not sym)
        assert torch.equal(decode_compressed_tensors(tensors, name, bits, sym), w), name
    assert tensors["lm_head.weight"].dtype == torch.float16  # untied int8 head: dequantized too
    cfg = json.loads((result.path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "pack-quantized"
    assert cfg["quantization_status"] == "compressed" and cfg["ignore"] == ["lm_head"]
    w = cfg["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["symmetric"], w["group_size"], w["strategy"], w["type"]) == (bits, sym, 32, "group", "int")


def test_per_channel_is_the_channel_strategy(tmp_path, tiny_tokenizer):
    model, src = saved_quantized(tmp_path / "q", tiny_tokenizer, group_size=-1)
    out = compresskit.export_model(src, "compressed-tensors", tmp_path / "out").path
    tensors = read_tensors(out)
    for name, w in dequantized_linears(model).items():
        assert tensors[f"{name}.weight_scale"].shape == (w.shape[0], 1)
        assert torch.equal(decode_compressed_tensors(tensors, name, 4, sym=False), w), name
    weights = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert (weights["strategy"], weights["group_size"]) == ("channel", None)


def test_pack_quantized_checks_shapes():
    with pytest.raises(ValueError, match="do not describe one linear"):
        pack_quantized(torch.zeros(8, 32, dtype=torch.int32), torch.zeros(2, 4, dtype=torch.int32),
                       torch.zeros(2, 16), 4, False, torch.float16)


def test_widths_vllm_does_not_run_are_noted_and_single_modules_ignored(tmp_path, tiny_tokenizer):
    _, src = saved_quantized(tmp_path / "w3", tiny_tokenizer, wbits=3)
    result = compresskit.export_model(src, "compressed-tensors", tmp_path / "x")
    assert any("vLLM's kernels for this format run 4 and 8-bit only" in n for n in result.notes)
    with pytest.raises(NotExpressibleError, match="stores 2, 3, 4, 8-bit weights, not 6-bit"):
        quantization_config(6, 32, False, ["lm_head"])
    _, skipped = saved_quantized(tmp_path / "skip", tiny_tokenizer, skip=("layers.1.mlp.down_proj",))
    out = compresskit.export_model(skipped, "compressed-tensors", tmp_path / "y").path
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert ignore == ["lm_head", "model.layers.1.mlp.down_proj"]  # one module, which GPTQ's config cannot say


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")  # the dequantize=True override
@pytest.mark.parametrize("bits,sym", [(4, False), (8, False), (4, True), (3, False)])
def test_transformers_compressed_tensors_path_gives_compresskits_logits(tmp_path, tiny_tokenizer, bits, sym):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    _, src = saved_quantized(tmp_path / "q", tiny_tokenizer, wbits=bits, group_size=32, sym=sym)
    ours, _ = compresskit.load_model(src)
    out = compresskit.export_model(src, "compressed-tensors", tmp_path / "out", dtype="float32").path
    # transformers 5.x with compressed-tensors 0.20 cannot keep ASYMMETRIC pack-quantized weights compressed:
    # its meta-device layout leaves weight_zero_point unpacked ([out, groups]) while checkpoints store it packed
    # (llm-compressor issue #1618); dequantize=True reads the same tensors through compressed-tensors' own
    # decompressor at load time. vLLM reads the packed zero points as they are.
    kw = {} if sym else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu", **kw).eval()
    a, b = logits(ours), logits(theirs)
    # same integer weights, float32 end to end: only the order of the float sums differs (measured ~2e-7)
    assert (a - b).abs().max().item() < 1e-5 * max(1.0, a.abs().max().item()), (a - b).abs().max().item()
