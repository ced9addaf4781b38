"""Exports of the real embedded model (SmolLM2-135M, RTN W4 g64) loaded through transformers' own paths.

bench/export.py measures the same on three prompts for every format and dtype (bench/results/export.md).
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

import compresskit

pytestmark = pytest.mark.integration
PROMPT = "There is an important info hidden inside a lot of irrelevant text. The pass key is 71432."


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    model, tok = compresskit.load_model("smollm2-135m")
    compresskit.quantize(model, compresskit.QuantConfig(wbits=4, group_size=64))
    path = compresskit.save(model, tok, tmp_path_factory.mktemp("export") / "smollm2-w4g64")
    ours, _ = compresskit.load_model(path, backend="dense")  # exact float32 reference
    return path, tok, _logits(ours, tok)


@torch.inference_mode()
def _logits(model, tok) -> torch.Tensor:
    return model(tok(PROMPT, return_tensors="pt").input_ids).logits.float()[0]


def test_card_names_the_base_model_and_licence(native):
    path, _, _ = native
    card = ModelCard.load(path / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert "| these weights | 86." in card.text and "0.32x the parent" in card.text


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")  # the dequantize=True override
def test_compressed_tensors_export_loads_in_transformers_with_compresskits_logits(native, tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import CompressedTensorsConfig

    path, tok, ref = native
    out = compresskit.export_model(path, "compressed-tensors", tmp_path / "ct", dtype="float32").path
    # asymmetric: transformers' compressed path cannot take packed zero points yet (docs/formats.md)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu",
                                                  quantization_config=CompressedTensorsConfig(dequantize=True))
    got = _logits(theirs, tok)
    # the same weights in float32: only the summation order differs (bench: 5.9e-5 on logits up to ~36)
    assert (got - ref).abs().max().item() < 1e-3
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"


def test_gptq_exports_load_through_optimum_and_gptqmodel(native, tmp_path, monkeypatch):
    pytest.importorskip("optimum")
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", os.environ.get("GPTQMODEL_CPU_WORKERS", "2"))
    pytest.importorskip("gptqmodel")
    path, tok, ref = native
    for fmt in ("gptq", "gptq-v1"):  # RTN W4 g64 of SmolLM2 has no zero point of 0: v1 is expressible
        out = compresskit.export_model(path, fmt, tmp_path / fmt).path
        theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, device_map="cpu")
        got = _logits(theirs, tok)
        # GPTQModel dequantizes in float16 (its scales' dtype) and the export's embedding is float16: on
        # logits up to ~36 that moves them by ~0.04 (bench/results/export.md: 0 against compresskit's weights
        # rounded the same way); the argmax is unchanged everywhere
        assert (got - ref).abs().max().item() < 0.15, fmt
        assert torch.equal(got.argmax(-1), ref.argmax(-1)), fmt
