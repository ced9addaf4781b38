"""A pruned model saves as a plain float checkpoint that stock transformers loads, without compresskit."""
from __future__ import annotations

import json
import subprocess
import sys

import torch
from conftest import make_tiny_model

import compresskit
from compresskit import api

PLAIN = """
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = torch.tensor([[3, 7, 11, 19, 23, 5, 8, 13]])
with torch.no_grad():
    torch.save(m(ids).logits, sys.argv[2])
assert not any(k.startswith("compresskit") for k in sys.modules), "compresskit was imported"
"""


def test_save_then_plain_transformers_load_gives_the_same_logits(tmp_path, tiny_tokenizer):
    model = make_tiny_model("qwen2", num_hidden_layers=3, hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    record = compresskit.prune_model(model, mlp=0.25, heads=0.33, layers=1, nsamples=2, seqlen=64,
                                     retrieval_length=160, retrieval_samples=1, tokenizer=tiny_tokenizer)
    out = api.save(model, tiny_tokenizer, tmp_path / "pruned")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 16)
    assert (cfg["intermediate_size"], cfg["num_hidden_layers"], len(cfg["layer_types"])) == (96, 2, 2)
    assert cfg["compresskit_pruning"]["recipe"]["heads"] == 0.33
    assert cfg["compresskit_pruning"]["kept_layers"] == record["kept_layers"]
    sidecar = json.loads((out / "pruning.json").read_text())
    assert len(sidecar["kept_mlp_channels"]["0"]) == 96 and "importance" in sidecar
    proc = subprocess.run([sys.executable, "-c", PLAIN, str(out), str(tmp_path / "l.pt")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        expected = model(torch.tensor([[3, 7, 11, 19, 23, 5, 8, 13]])).logits
    assert torch.equal(torch.load(tmp_path / "l.pt"), expected)


def test_a_pruned_model_quantizes_with_the_existing_pass(tiny_tokenizer):
    model = make_tiny_model("llama")
    compresskit.prune_model(model, mlp=0.5, heads=0.5, protect_retrieval=False, nsamples=1, seqlen=64,
                            tokenizer=tiny_tokenizer)
    manifest = compresskit.quantize(model, compresskit.QuantConfig(wbits=4, group_size=32))
    assert len(manifest.linears) == 14
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_info_shows_the_pruning_summary(tmp_path, tiny_tokenizer):
    model = make_tiny_model("llama")
    compresskit.prune_model(model, layers=1, protect_retrieval=False, nsamples=1, seqlen=64, tokenizer=tiny_tokenizer)
    api.save(model, tiny_tokenizer, tmp_path / "p")
    info = api.info(tmp_path / "p")
    assert info["layers"] == 1 and info["pruning"]["recipe"]["layers"] == 1
