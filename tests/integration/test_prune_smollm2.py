"""Pruning the real embedded model (SmolLM2-135M: 30 layers, 9 query / 3 KV heads, MLP 1536), kept short."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import compresskit
from compresskit import api

pytestmark = pytest.mark.integration


def test_one_third_of_the_heads_with_protection_saves_a_plain_llama(tmp_path):
    model, tok = compresskit.load_model("smollm2-135m")
    before = api.parameter_count(model)
    record = compresskit.prune_model(model, heads=0.33, mlp=0.25, nsamples=1, seqlen=512, retrieval_length=512,
                                     retrieval_samples=1, tokenizer=tok)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads, model.config.head_dim) == (6, 3, 64)
    assert model.config.intermediate_size == 1152
    protected = record["retrieval"]["protected"]
    assert len(protected) == 14
    # every protected head is kept where its KV group has room (2 of 3 heads stay in each group)
    for layer in {p[0] for p in protected}:
        kept = set(record["kept_query_heads"][str(layer)])
        for g in range(3):
            in_group = [h for lay, h in protected if lay == layer and h // 3 == g]
            assert len(kept & set(in_group)) == min(len(in_group), 2)
    assert record["retrieval"]["protected_kept"] == all(
        h in record["kept_query_heads"][str(lay)] for lay, h in protected)
    assert api.parameter_count(model) == record["params_after"] < 0.85 * before
    out = api.save(model, tok, tmp_path / "p")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["head_dim"] == 64
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.isfinite(reloaded(ids).logits).all()
