"""The model card every saved artifact carries: parent, licence, recipe, sizes, the evaluation as
model-index results, the plots; written without any network."""
from __future__ import annotations

import json
import socket

import pytest
import torch
from _tiny import saved_quantized
from conftest import make_tiny_model
from huggingface_hub import ModelCard

import compresskit
from compresskit.api_publish import card_parent
from compresskit.eval import EvalReport, EvalRow


def _report(ppl: float, passkey: float) -> EvalReport:
    trials = [{"depth": d, "correct": passkey >= 50} for d in (0.1, 0.5, 0.9)]
    return EvalReport([EvalRow("ppl", 200, ppl, "ppl", False),
                       EvalRow("passkey", 200, passkey, "acc", True, {"trials": trials})], 1.0)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the card tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def parent_dir(tmp_path, tiny_tokenizer):
    """A local parent checkpoint with its own card (MIT licence)."""
    path = tmp_path / "parent"
    make_tiny_model("llama").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    (path / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a parent\n")
    return path


def test_quantized_save_writes_a_card_with_the_evaluation(tmp_path, parent_dir, no_network):
    model, tok = compresskit.load_model(parent_dir)
    before, after = _report(10.0, 100.0), _report(10.5, 66.7)
    compresskit.quantize(model, wbits=4, group_size=32)
    comparison = compresskit.compare(before, after, max_drop=50)
    out = compresskit.save(model, tok, tmp_path / "q", evaluation={"before": before, "after": after,
                                                                   "gate": comparison.to_dict()})
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "mit"  # carried from the parent's card
    assert data["library_name"] == "transformers" and "quantized" in data["tags"] and "4-bit" in data["tags"]
    assert data["compresskit"]["parent"]["source"] == parent_dir.name  # a local path by its last part only
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("compresskit/ppl", "perplexity"): 10.5, ("compresskit/passkey", "accuracy"): 66.7}
    assert card.data.model_name == "q"
    text = card.text
    assert "| passkey | 200 | 100.0% | 66.7% | -33.3 pts | -50 pts | yes |" in text
    assert "| ppl | 200 | 10.000 | 10.500 | +5.0% | +50% | yes |" in text
    assert "Gate: passed" in text and '"wbits": 4' in text and "import compresskit" in text
    parent_mb = sum(p.stat().st_size for p in parent_dir.glob("*.safetensors")) / 1e6
    assert f"| parent weights | {parent_mb:.1f} MB |" in text


def test_card_links_the_plots_once_the_report_is_written(tmp_path, tiny_tokenizer, no_network):
    pytest.importorskip("matplotlib")
    _, out = saved_quantized(tmp_path / "q", tiny_tokenizer)
    before, after = _report(10.0, 100.0), _report(11.0, 100.0)
    compresskit.write_eval_report(out / "evaluation", after, before, compresskit.compare(before, after))
    compresskit.write_card(out)
    text = (out / "README.md").read_text()
    assert "![ppl_vs_length](evaluation/ppl_vs_length.png)" in text
    assert "![heatmap_passkey](evaluation/heatmap_passkey.png)" in text and "evaluation/report.md" in text
    assert len(ModelCard.load(out / "README.md").data.eval_results) == 2


def test_embedded_parent_is_the_hub_model_with_its_licence():
    parent = card_parent("smollm2-135m", None)
    assert parent.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and parent.license == "apache-2.0"
    hub = card_parent("someorg/some-model", None)
    assert hub.base_model == "someorg/some-model" and hub.source == "someorg/some-model"


def test_pruned_and_unevaluated_cards(tmp_path, tiny_tokenizer, no_network):
    model = make_tiny_model("llama", num_hidden_layers=3)
    compresskit.prune_model(model, layers=1, protect_retrieval=False, calib=torch.randint(0, 320, (2, 32)))
    out = compresskit.save(model, tiny_tokenizer, tmp_path / "p",
                           evaluation={"before": _report(10.0, 100.0), "after": _report(12.0, 100.0)})
    card = ModelCard.load(out / "README.md")
    assert "pruned" in card.data.tags and "quantized" not in card.data.tags
    assert "Pruning (full record in `pruning.json`)" in card.text
    assert "| ppl | 200 | 10.000 | 12.000 | +20.0% |" in card.text
    plain = compresskit.save(make_tiny_model("llama"), tiny_tokenizer, tmp_path / "plain",
                             evaluation={"note": {"x": 1}})
    card = ModelCard.load(plain / "README.md")
    assert card.data.eval_results is None and "Not evaluated" in card.text


def test_export_card_keeps_the_parent_and_says_what_changed(tmp_path, parent_dir, no_network):
    model, tok = compresskit.load_model(parent_dir)
    compresskit.quantize(model, wbits=4, group_size=32)
    src = compresskit.save(model, tok, tmp_path / "q", evaluation={"before": _report(10.0, 100.0),
                                                                    "after": _report(10.2, 100.0)})
    out = compresskit.export_model(src, "gptq", tmp_path / "gptq").path
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit" and card.data.compresskit["kind"] == "gptq"
    assert "Exported by compresskit from `q` as gptq" in card.text and "dequantized to float16" in card.text
    assert "optimum gptqmodel" in card.text and len(card.data.eval_results) == 2
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"


def test_a_distilled_model_card_names_the_teacher(tmp_path, tiny_tokenizer, no_network):
    model = make_tiny_model("llama")
    model.config.compresskit_distillation = {"teacher": "smollm2-135m", "steps": 28, "tokens": 57344,
                                             "recipe": {"lr": 3e-4}}
    out = compresskit.save(model, tiny_tokenizer, tmp_path / "d")
    card = ModelCard.load(out / "README.md")
    assert "distilled" in card.data.tags and "distilled from `smollm2-135m` (28 steps, 57344 tokens)" in card.text
    assert "Distillation (full record in `distillation.json`)" in card.text
