"""``compresskit.distill_model`` / ``api.distill``: full, LoRA and quantization-parameters-only students on
tiny models, what is saved, and the checks that fail before any work."""
from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from _distill_pairs import mean_kl, perturbed_student, pruned_student, teacher, token_stream
from conftest import make_tiny_model

import compresskit
from compresskit import api, api_distill
from compresskit.core.config import ConfigError
from compresskit.kernels.modules import QuantLinear, set_kernel_backend

HELD_OUT = token_stream(8 * 64, seed=77).view(8, 64)


@pytest.fixture(scope="module")
def pair():
    t = teacher()
    return t, pruned_student(t)


def test_full_student_through_the_api(pair, tmp_path, tiny_tokenizer):
    t, s0 = pair
    s = copy.deepcopy(s0)
    before = mean_kl(s, t, HELD_OUT)
    result = compresskit.distill_model(s, t, data=token_stream(), seqlen=64, steps=20, batch_size=4, lr=3e-4,
                                       warmup_steps=3)
    assert mean_kl(s, t, HELD_OUT) < before
    summary = compresskit.record(s).last("distill").detail
    assert summary["steps"] == 20 and summary["kl_last"] < summary["kl_first"] and len(summary["history"]) == 20
    assert result.steps == 20
    out = api.save(s, tiny_tokenizer, tmp_path / "distilled", evaluation={"after": {"rows": []}})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["compresskit_distillation"]["recipe"]["steps"] == 20 and "evaluation" not in cfg["compresskit_distillation"]
    assert json.loads((out / "compresskit_evaluation.json").read_text()) == {"after": {"rows": []}}
    assert json.loads((out / "distillation.json").read_text())["history"][0]["step"] == 1
    assert (out / "pruning.json").is_file()  # the pruning record travels along
    info = api.info(out)
    assert info["distillation"]["name"] == "distill-full-s64x20"
    reloaded, _ = compresskit.load_model(out)
    with torch.no_grad():
        assert torch.allclose(reloaded(HELD_OUT).logits, s(HELD_OUT).logits, atol=1e-5)


def test_trained_weights_are_rounded_to_the_storage_dtype(pair):
    t, s0 = pair
    s = copy.deepcopy(s0)
    compresskit.record(s).source.dtype = "bfloat16"  # as the embedded model's checkpoint
    compresskit.distill_model(s, t, data=token_stream(), seqlen=32, steps=2, lr=1e-3)
    assert all(torch.equal(p, p.to(torch.bfloat16).float()) for p in s.parameters())


def test_lora_student_is_merged_into_plain_weights(pair):
    pytest.importorskip("peft")
    t, s0 = pair[0], perturbed_student(pair[0])
    s = copy.deepcopy(s0)
    cls = type(s)
    before = mean_kl(s, t, HELD_OUT)
    compresskit.distill_model(s, t, data=token_stream(), seqlen=64, steps=20, batch_size=4, lr=1e-2, lora=True,
                              lora_rank=8, warmup_steps=3)
    assert type(s) is cls
    assert not any(type(m).__module__.startswith("peft") for m in s.modules())
    assert not any("lora" in n for n, _ in s.named_parameters())
    assert mean_kl(s, t, HELD_OUT) < 0.9 * before
    changed = [n for (n, a), b in zip(s.named_parameters(), s0.parameters()) if not torch.equal(a, b)]
    assert changed and all(n.endswith("_proj.weight") for n in changed)  # adapters were on the block linears only
    assert torch.equal(s.model.embed_tokens.weight, s0.model.embed_tokens.weight)  # no adapter there


def test_lora_merged_logits_equal_the_adapter_model(pair):
    pytest.importorskip("peft")
    from compresskit.distill import DistillConfig, apply_lora, merge_lora, run_distillation
    from compresskit.api_distill import sampler

    t, s0 = pair
    s = copy.deepcopy(s0)
    config = DistillConfig(seqlen=32, steps=3, lr=1e-2, lora=True, lora_rank=4)
    peft_model = apply_lora(s, config)
    run_distillation(peft_model, t, config, sampler(None, token_stream(), seed=0))
    assert any(float(p.abs().sum()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)  # trained
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=HELD_OUT).logits
    merged = merge_lora(peft_model)
    assert merged is s and not any(type(m).__module__.startswith("peft") for m in merged.modules())
    with torch.no_grad():
        assert torch.allclose(merged(HELD_OUT).logits, adapter_logits, atol=1e-5)
        assert not torch.allclose(merged(HELD_OUT).logits, s0(HELD_OUT).logits, atol=1e-3)


def test_missing_peft_says_how_to_install_it(monkeypatch):
    from compresskit.distill import MissingDependencyError

    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` fail
    with pytest.raises(MissingDependencyError, match="pip install peft"):
        api.check_distill_dependencies(api.make_distill_config(lora=True))
    assert issubclass(MissingDependencyError, api.USER_ERRORS)  # reported as a one-line user error


def _packed_state(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith(("qweight", "qzeros", "g_idx"))}


def test_quant_params_only_keeps_the_codes_learns_the_scales_and_reloads(tmp_path, tiny_tokenizer):
    """RTN W3 g64 with every scale made 25% too large: distillation of the scales alone brings them
    back towards RTN's and lowers the KL, without changing one integer code."""
    t = teacher()
    s = copy.deepcopy(t)
    compresskit.quantize(s, compresskit.QuantConfig(wbits=3, group_size=64))
    set_kernel_backend(s, "reference")
    rtn_scales = {n: b.clone() for n, b in s.named_buffers() if n.endswith("scales")}
    with torch.no_grad():
        for m in s.modules():
            if isinstance(m, QuantLinear):
                m.scales.copy_((m.scales * 1.25).half().float())
    codes = _packed_state(s)
    scales = {n: b.clone() for n, b in s.named_buffers() if n.endswith("scales")}
    before = mean_kl(s, t, HELD_OUT)
    compresskit.distill_model(s, t, data=token_stream(), seqlen=64, steps=20, batch_size=4, lr=5e-2,
                              quant_params_only=True, warmup_steps=3)
    assert sum(isinstance(m, QuantLinear) for m in s.modules()) == 14
    after_codes = _packed_state(s)
    assert after_codes.keys() == codes.keys() and all(torch.equal(after_codes[k], codes[k]) for k in codes)
    changed = [n for n, b in s.named_buffers() if n.endswith("scales") and not torch.equal(b, scales[n])]
    assert len(changed) == len(scales)
    ratio = torch.cat([(b / rtn_scales[n]).flatten() for n, b in s.named_buffers() if n in rtn_scales])
    assert float(ratio.median()) < 1.15  # from 1.25, back towards RTN's own scales
    after = mean_kl(s, t, HELD_OUT)
    assert after < 0.75 * before, (before, after)
    assert compresskit.record(s).manifest.report["distillation"]["scales"]["layers"] == 14

    out = api.save(s, tiny_tokenizer, tmp_path / "w3-distilled")
    reloaded, _ = compresskit.load_model(out, backend="reference")
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(sorted(_packed_state(reloaded).items()),
                                                           sorted(codes.items())))
    with torch.no_grad():
        assert torch.allclose(reloaded(HELD_OUT).logits, s(HELD_OUT).logits, atol=1e-5)
    info = api.info(out)
    assert info["quantization"]["calibration"]["distillation"]["steps"] == 20


def test_quant_params_only_with_norms():
    t = teacher()
    s = copy.deepcopy(t)
    compresskit.quantize(s, compresskit.QuantConfig(wbits=4, group_size=64, embed_bits=16))
    norm = s.model.norm.weight.detach().clone()
    compresskit.distill_model(s, t, data=token_stream(), seqlen=32, steps=3, lr=1e-2, quant_params_only=True,
                              train_norms=True)
    assert not torch.equal(s.model.norm.weight, norm)
    assert torch.equal(s.model.embed_tokens.weight, t.model.embed_tokens.weight)  # float embedding stays frozen


@pytest.mark.parametrize("what,needle", [
    ("quantized-without-flag", "pass --quant-params-only"),
    ("flag-without-quantized", "has no quantized layer"),
    ("too-long", "exceeds the student's context (512 tokens)"),
    ("vocab", "vocabulary (256) differs from the teacher's (320)"),
    ("quantized-teacher", "the teacher is quantized"),
])
def test_checks_before_any_work(what, needle):
    t, s = make_tiny_model("llama"), make_tiny_model("llama")
    kwargs = dict(seqlen=64)
    if what == "quantized-without-flag":
        compresskit.quantize(s, compresskit.QuantConfig(wbits=4, group_size=64))
    elif what == "flag-without-quantized":
        kwargs["quant_params_only"] = True
    elif what == "too-long":
        kwargs["seqlen"] = 1024
    elif what == "vocab":
        s = make_tiny_model("llama", vocab_size=256)
    else:
        compresskit.quantize(t, compresskit.QuantConfig(wbits=4, group_size=64))
        compresskit.quantize(s, compresskit.QuantConfig(wbits=4, group_size=64))
        kwargs["quant_params_only"] = True
    with pytest.raises(ConfigError) as e:
        compresskit.distill_model(s, t, data=token_stream(), **kwargs)
    assert needle in str(e.value)


def test_text_sources_need_the_tokenizer(pair):
    t, s = pair
    with pytest.raises(ValueError, match="needs the tokenizer"):
        compresskit.distill_model(copy.deepcopy(s), t, data="builtin", seqlen=32, steps=1)


def test_import_stays_light():
    """Importing compresskit loads neither peft nor the data or quantization-training modules (accelerate
    comes with transformers anyway)."""
    import subprocess

    code = ("import sys, compresskit; print([m for m in ('peft', 'compresskit.calib', 'compresskit.quant.qat') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.splitlines()[-1] == "[]", out


def test_train_parts_trains_only_the_named_parts(pair):
    t, s0 = pair
    s = copy.deepcopy(s0)
    start = {n: p.detach().clone() for n, p in s.named_parameters()}
    before = mean_kl(s, t, HELD_OUT)
    compresskit.distill_model(s, t, data=token_stream(), seqlen=64, steps=10, batch_size=4, lr=3e-4,
                              train_parts=("mlp",))
    assert mean_kl(s, t, HELD_OUT) < before
    changed = {n for n, p in s.named_parameters() if not torch.equal(p, start[n])}
    mlp = {n for n in start if ".mlp." in n}
    assert changed == mlp  # every MLP weight moved, nothing else did (attention, norms, embeddings)
    assert compresskit.record(s).last("distill").detail["name"] == "distill-mlp-s64x10"


def test_retrieval_mix_reaches_the_training_windows(tiny_tokenizer):
    draw = api_distill.sampler(tiny_tokenizer, "builtin", seed=0, retrieval_mix=0.5)
    plain = api_distill.sampler(tiny_tokenizer, "builtin", seed=0)
    mixed, base = draw(1000, 4, 1), plain(1000, 4, 1)
    texts = [tiny_tokenizer.decode(w) for w in mixed]
    assert sum("Question: What is the" in t for t in texts) == 2
    assert sum(torch.equal(a, b) for a, b in zip(mixed, base)) == 2  # the others are the plain windows
    with pytest.raises(ValueError, match="tokenizer"):
        api_distill.sampler(None, token_stream(), seed=0, retrieval_mix=0.5)
    # retrieval_repeat: the same windows become exercises, half of them with a repeated haystack
    rep = api_distill.sampler(tiny_tokenizer, "builtin", seed=0, retrieval_mix=0.5, retrieval_repeat=0.5)(1000, 4, 1)
    assert [torch.equal(a, b) for a, b in zip(rep, base)] == [torch.equal(a, b) for a, b in zip(mixed, base)]
    assert sum(not torch.equal(a, b) for a, b in zip(rep, mixed)) == 1
