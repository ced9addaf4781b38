"""OmniQuant on tiny models: exact LET (GQA + RoPE), LWC gradients and packing, the block loop,
weight-activation, resume, NaN recovery and determinism."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer
from torch.func import functional_call

import compresskit
from compresskit.core.arch import get_arch, get_module
from compresskit.core.config import ConfigError, QuantConfig
from compresskit.core.errors import InputError
from compresskit.quant.omniquant import OmniQuantConfig
from compresskit.core.manifest import LinearEntry
from compresskit.core.quant_math import dequantize
from compresskit.kernels.modules import QuantLinear
from compresskit.quant.omniquant.block import NO_CLIP, BlockQuantizer
from compresskit.quant.omniquant.let import Geometry, apply_let
from compresskit.quant.omniquant.lwc import lwc_fake_quantize, lwc_pack

SMALL = dict(wbits=3, group_size=32, epochs=3, nsamples=4, seqlen=32, batch_size=2, embed_bits=16, let=True,
             preset="published")


def _ids(n=4, length=32, seed=0):
    return torch.randint(0, 320, (n, length), generator=torch.Generator().manual_seed(seed))


def _block_io(model):
    x = torch.randn(2, 12, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(12)[None]
    return x, {"position_embeddings": model.model.rotary_emb(x, pos), "position_ids": pos}


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_let_is_an_exact_equivalence_for_gqa_and_rope(family, kv_heads):
    model = make_tiny_model(family, num_key_value_heads=kv_heads)
    block, arch, geo = model.model.layers[0], get_arch(model), Geometry.from_config(model.config)
    x, kw = _block_io(model)
    with torch.no_grad():
        ref = block(x, **kw)
    g = torch.Generator().manual_seed(2)
    let = {"qkv": torch.rand(64, generator=g) + 0.3, "fc1": torch.rand(64, generator=g) + 0.3,
           "vo": torch.rand(kv_heads * 16, generator=g) + 0.3, "qk": torch.rand(kv_heads * 8, generator=g) + 0.3}
    params = {k: v.detach() for k, v in block.named_parameters()}
    new = apply_let(params, let, arch, geo)
    assert not torch.allclose(new[f"{arch.q_proj}.weight"], params[f"{arch.q_proj}.weight"])
    with torch.no_grad():
        out = functional_call(block, new, (x,), kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_untied_qk_scaling_would_not_commute_with_rope():
    """The reason the q/k scale is tied across rotary pairs: an untied one changes the output."""
    model = make_tiny_model("llama")
    block, arch, geo = model.model.layers[0], get_arch(model), Geometry.from_config(model.config)
    x, kw = _block_io(model)
    params = {k: v.detach() for k, v in block.named_parameters()}
    s = torch.linspace(0.5, 2.0, geo.kv_heads * geo.head_dim)  # one value per channel, not per pair
    s_q = s.view(geo.kv_heads, 1, -1).expand(geo.kv_heads, geo.n_rep, -1).reshape(-1)
    bad = dict(params)
    bad[f"{arch.k_proj}.weight"] = params[f"{arch.k_proj}.weight"] * s[:, None]
    bad[f"{arch.q_proj}.weight"] = params[f"{arch.q_proj}.weight"] / s_q[:, None]
    with torch.no_grad():
        assert not torch.allclose(functional_call(block, bad, (x,), kw), block(x, **kw), atol=1e-4)


def test_lwc_gradients_reach_the_clipping_factors_and_pack_matches_fake_quant():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(3))
    entry = LinearEntry(bits=3, group_size=32, sym=False)
    up, low = torch.full((64, 3), 1.5, requires_grad=True), torch.full((64, 3), 1.5, requires_grad=True)
    lwc_fake_quantize(w, up, low, entry).sub(w).pow(2).sum().backward()
    assert up.grad.abs().sum() > 0 and low.grad.abs().sum() > 0
    packed = lwc_pack(w, up.detach(), low.detach(), entry)
    q, zero, scale = packed.unpack()
    fake = lwc_fake_quantize(w, up.detach(), low.detach(), entry)
    # packing rounds the scale to fp16: the values agree to that rounding, except that a code sitting
    # on a rounding boundary may move by one step
    step = float(scale.float().max())
    diff = (dequantize(q, scale, zero, 32) - fake).abs()
    assert float(diff.max()) <= 1.01 * step
    assert float((diff > 0.01 * step).float().mean()) < 0.01
    # clipping at sigmoid(1.5) = 0.82 of the range: no dequantized value exceeds the clipped max
    assert dequantize(q, scale, zero, 32).max() <= w.max() * 0.82 + float(scale.float().max())


def test_omniquant_beats_rtn_and_its_block_losses_fall():
    model = make_tiny_model("llama")
    ids = _ids(8, 64)
    with torch.no_grad():
        ref = model(ids).logits
    rtn = copy.deepcopy(model)
    compresskit.quantize(rtn, QuantConfig(wbits=3, group_size=32, embed_bits=16))
    omni = copy.deepcopy(model)
    cfg = OmniQuantConfig(**{**SMALL, "epochs": 10, "nsamples": 8, "seqlen": 64})
    manifest = compresskit.quantize(omni, cfg, calib=ids)

    def err(m):
        with torch.no_grad():
            return float((m(ids).logits - ref).pow(2).mean() / ref.pow(2).mean())

    assert err(omni) < err(rtn)
    for block in manifest.report["blocks"]:
        assert block["epochs"] == 10 and block["last_loss"] < block["first_loss"] and not block["fallback"]
    assert all(isinstance(omni.get_submodule(n), QuantLinear) for n in manifest.linears)


@pytest.mark.parametrize("abits", [16, 8])
def test_saved_omniquant_model_reloads_with_identical_logits(tmp_path, abits):
    model = make_tiny_model("qwen2")
    compresskit.quantize(model, OmniQuantConfig(**{**SMALL, "abits": abits, "embed_bits": 8}), calib=_ids())
    compresskit.save(model, None, tmp_path / "m")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    q = reloaded.model.layers[1].mlp.down_proj
    assert isinstance(q, QuantLinear) and q.abits == abits
    ids = _ids(2, 16, seed=5)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_weight_activation_quantizes_linear_inputs():
    model = make_tiny_model("llama")
    compresskit.quantize(model, OmniQuantConfig(**{**SMALL, "wbits": 8, "abits": 4, "epochs": 1}), calib=_ids())
    lin = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, lin.in_features)
    lin.abits = 16
    exact = lin(x)
    lin.abits = 4
    assert not torch.allclose(lin(x), exact)


def _packed(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith(("qweight", "qzeros", "scales"))}


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg = OmniQuantConfig(**SMALL)
    full = make_tiny_model("llama")
    compresskit.quantize(full, cfg, calib=_ids())

    def interrupt(n, message=None):
        if message.startswith("block 2/2"):
            raise KeyboardInterrupt

    first = make_tiny_model("llama")
    with pytest.raises(KeyboardInterrupt):
        compresskit.quantize(first, cfg, calib=_ids(), work_dir=tmp_path / "state", progress=interrupt)
    assert (tmp_path / "state" / "block_000.json").is_file() and not (tmp_path / "state" / "block_001.json").exists()
    messages = []
    resumed = make_tiny_model("llama")
    compresskit.quantize(resumed, cfg, calib=_ids(), work_dir=tmp_path / "state",
                         progress=lambda n, m=None: messages.append((m, n)))
    assert messages[0] == ("block 1/2: resumed", cfg.epochs)
    a, b = _packed(full), _packed(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="different run"):
        compresskit.quantize(make_tiny_model("llama"), OmniQuantConfig(**{**SMALL, "wbits": 4}), calib=_ids(),
                             work_dir=tmp_path / "state")


def test_runs_are_deterministic_for_a_seed():
    a, b = make_tiny_model("mistral"), make_tiny_model("mistral")
    for m in (a, b):
        compresskit.quantize(m, OmniQuantConfig(**SMALL), calib=_ids())
    pa, pb = _packed(a), _packed(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def test_nan_loss_retries_with_lower_lr_then_falls_back_to_rtn(monkeypatch):
    real_forward = BlockQuantizer.forward
    calls = {"n": 0}

    def flaky(self, params, x, kwargs):  # the first two micro-batches of the run produce NaN
        calls["n"] += 1
        out = real_forward(self, params, x, kwargs)
        return out * float("nan") if calls["n"] <= 2 else out

    monkeypatch.setattr(BlockQuantizer, "forward", flaky)
    model = make_tiny_model("llama")
    report = compresskit.quantize(model, OmniQuantConfig(**SMALL), calib=_ids()).report
    assert report["blocks"][0]["retries"] == 2 and not report["blocks"][0]["fallback"]
    assert report["blocks"][0]["epochs"] == SMALL["epochs"]

    monkeypatch.setattr(BlockQuantizer, "forward", lambda self, p, x, kw: real_forward(self, p, x, kw) * float("nan"))
    model = make_tiny_model("llama")
    report = compresskit.quantize(model, OmniQuantConfig(**SMALL), calib=_ids()).report
    assert report["fallback_blocks"] == [0, 1]
    assert all(b["fallback"] for b in report["blocks"])
    rtn = make_tiny_model("llama")
    compresskit.quantize(rtn, QuantConfig(wbits=3, group_size=32, embed_bits=16))
    ids = _ids(2, 16, seed=7)
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    # the fallback is min/max rounding without the zero-in-range constraint; close to RTN's result
    with torch.no_grad():
        assert float((logits - rtn(ids).logits).abs().max()) < 0.5 * float(logits.abs().max())


def test_calibration_longer_than_the_context_is_refused():
    model = make_tiny_model("llama")
    with pytest.raises(ValueError, match="exceeds the model's context 512"):
        compresskit.quantize(model, OmniQuantConfig(**{**SMALL, "seqlen": 600}), calib=_ids(4, 600))


def test_no_clip_factor_is_plain_min_max():
    assert torch.sigmoid(torch.tensor(NO_CLIP)) == 1.0


def test_training_keeps_the_parameters_of_the_best_epoch(monkeypatch):
    model = make_tiny_model("llama")
    arch, geo = get_arch(model), Geometry.from_config(model.config)
    entries = {arch.down_proj: LinearEntry(3, 32, False)}
    bq = BlockQuantizer(model.model.layers[0], arch, geo, OmniQuantConfig(**SMALL), entries)
    state = bq.init_state(None)
    losses = iter([3.0, 1.0, 2.0])

    def fake_epoch(self, st, opt, q, fp, kw):  # each epoch moves the parameters by +1
        with torch.no_grad():
            st.lwc[arch.down_proj]["up"].add_(1.0)
        return next(losses)

    monkeypatch.setattr(BlockQuantizer, "_epoch", fake_epoch)
    start = float(state.lwc[arch.down_proj]["up"][0, 0])
    trained, report = bq.train(state, None, None, {})
    assert report.losses == [3.0, 1.0, 2.0]
    assert float(trained.lwc[arch.down_proj]["up"][0, 0]) == start + 2  # the end of epoch 2, the best


def test_clip_search_picks_the_ratio_with_the_least_output_error():
    from compresskit.quant.omniquant.lwc import search_clip

    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 64, generator=g)
    w[0, 5] = 6.0  # an outlier weight: clipping it is worth it when its input is quiet
    x = torch.randn(256, 64, generator=g) * torch.linspace(0.2, 2.0, 64)  # inputs of unequal energy
    entry = LinearEntry(3, 32, False)
    found = torch.sigmoid(search_clip(w, x.t() @ x / 256, entry, grid=11)["up"])
    # reference: each ratio's error as the squared output difference on the samples, group by group
    ratios = torch.linspace(1.0, 0.5, 11)
    errs = []
    for r in ratios.tolist():
        f = torch.full((6, 2), torch.logit(torch.tensor(r)).item() if r < 1 else 30.0)
        d = w - lwc_fake_quantize(w, f, f, entry)
        errs.append(torch.stack([((x[:, s] @ d[:, s].t()) ** 2).mean(0) for s in (slice(0, 32), slice(32, 64))], 1))
    best = ratios[torch.stack(errs).argmin(0)].clamp(max=0.995)
    assert torch.allclose(found, best, atol=1e-4)
    assert found[0, 0] < 0.995  # the outlier's group is clipped


def test_searched_clipping_starts_closer_than_the_constant_start():
    model = make_tiny_model("llama")
    ids = _ids(8, 64)
    with torch.no_grad():
        ref = model(ids).logits
    errors = {}
    for init in ("constant", "search"):
        m = copy.deepcopy(model)
        cfg = OmniQuantConfig(**{**SMALL, "let": False, "epochs": 0, "nsamples": 8, "seqlen": 64, "clip_init": init})
        compresskit.quantize(m, cfg, calib=ids)
        with torch.no_grad():
            errors[init] = float((m(ids).logits - ref).pow(2).mean())
    assert errors["search"] < errors["constant"], errors


def test_clip_search_leaves_v_proj_at_the_constant_start_unless_told():
    model = make_tiny_model("llama")
    ids = _ids(8, 64)
    arch = get_arch(model)
    packed = {}
    for name, extra in (("constant", {"clip_init": "constant"}), ("search", {"clip_init": "search"}),
                        ("everywhere", {"clip_init": "search", "clip_search_skip": []})):
        m = copy.deepcopy(model)
        cfg = OmniQuantConfig(**{**SMALL, "let": False, "epochs": 0, "nsamples": 8, "seqlen": 64, **extra})
        compresskit.quantize(m, cfg, calib=ids)
        block = m.model.layers[0]
        packed[name] = {role: get_module(block, getattr(arch, role)).scales.clone()
                        for role in ("q_proj", "v_proj", "o_proj", "down_proj")}
    # v_proj is skipped by default: the constant start, exactly
    assert torch.equal(packed["search"]["v_proj"], packed["constant"]["v_proj"])
    assert not torch.equal(packed["everywhere"]["v_proj"], packed["constant"]["v_proj"])
    for role in ("q_proj", "o_proj", "down_proj"):
        assert not torch.equal(packed["search"][role], packed["constant"][role])
    cfg = OmniQuantConfig(**{**SMALL, "clip_search_skip": ["v_proj", "o_proj"]})
    assert cfg.clip_search_skip == ("v_proj", "o_proj") and QuantConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown linear role.*'value'"):
        OmniQuantConfig(**{**SMALL, "clip_search_skip": ["value"]})


def test_training_stops_when_the_block_loss_stalls(monkeypatch):
    model = make_tiny_model("llama")
    arch, geo = get_arch(model), Geometry.from_config(model.config)
    entries = {arch.down_proj: LinearEntry(3, 32, False)}
    bq = BlockQuantizer(model.model.layers[0], arch, geo, OmniQuantConfig(**{**SMALL, "epochs": 10, "patience": 2}),
                        entries)
    losses = iter([3.0, 2.0, 1.9995, 1.9999, 1.0, 1.0])  # 2.0 -> 1.9995 is less than 0.1% better
    monkeypatch.setattr(BlockQuantizer, "_epoch", lambda self, *a: next(losses))
    _, report = bq.train(bq.init_state(None), None, None, {})
    assert report.losses == [3.0, 2.0, 1.9995, 1.9999] and report.stopped_early and report.epochs == 4
    with pytest.raises(ConfigError, match="clip_init='best' is unknown"):
        OmniQuantConfig(**{**SMALL, "clip_init": "best"})


def test_the_end_to_end_stage_trains_the_scales_and_keeps_the_codes():
    model = make_tiny_model("llama")
    tok = make_tiny_tokenizer()
    base = dict(SMALL, let=False, epochs=1, nsamples=8, seqlen=64, calib="builtin")
    alone, tuned = copy.deepcopy(model), copy.deepcopy(model)
    compresskit.quantize(alone, OmniQuantConfig(**base), tokenizer=tok)
    manifest = compresskit.quantize(tuned, OmniQuantConfig(**base, finetune_steps=3), tokenizer=tok)
    stage = manifest.report["distillation"]
    assert stage["steps"] == 3 and stage["recipe"]["quant_params_only"] and stage["recipe"]["retrieval_mix"] == 0.5
    name = next(iter(manifest.linears))
    a, t = alone.get_submodule(name), tuned.get_submodule(name)
    assert torch.equal(a.qweight, t.qweight) and torch.equal(a.qzeros, t.qzeros)  # the codes stay
    assert not torch.equal(a.scales, t.scales)  # the scales learned
    # closer to the parent than the block stage alone, on text neither stage saw (the report's first and last
    # KL are of different batches: too noisy a check for 3 steps)
    ids = tok(compresskit.api.heldout_text()[:3000], return_tensors="pt").input_ids[:, :128]

    def kl_to_parent(m):
        with torch.no_grad():
            p, q = model(ids).logits.log_softmax(-1), m(ids).logits.log_softmax(-1)
        return float((p.exp() * (p - q)).sum(-1).mean())

    assert kl_to_parent(tuned) < kl_to_parent(alone)
    with pytest.raises(ConfigError, match="finetune_steps=-1"):
        OmniQuantConfig(**{**SMALL, "finetune_steps": -1})
    # the stage's distillation settings come from the finetune_* fields
    from compresskit.api_passes import finetune_config

    stage_cfg = finetune_config(OmniQuantConfig(**SMALL, finetune_steps=8, finetune_lr=1e-3, finetune_retrieval_repeat=0.5))
    assert (stage_cfg.steps, stage_cfg.lr, stage_cfg.retrieval_mix, stage_cfg.retrieval_repeat) == (8, 1e-3, 0.5, 0.5)
    assert finetune_config(OmniQuantConfig(**SMALL, finetune_steps=8, finetune_retrieval_mix=0,
                                           finetune_retrieval_repeat=0.5)).retrieval_repeat == 0
    with pytest.raises(ConfigError, match="finetune_retrieval_repeat=1.5"):
        OmniQuantConfig(**{**SMALL, "finetune_retrieval_repeat": 1.5})
    # the stage's windows: finetune_seqlen, capped at the model's context, half of it first
    long = finetune_config(OmniQuantConfig(**SMALL, finetune_steps=8, finetune_seqlen=4096), context=8192)
    assert (long.seqlen, long.seqlen_schedule) == (4096, (2048, 4096))
    assert finetune_config(OmniQuantConfig(**SMALL, finetune_steps=8, finetune_seqlen=4096), context=2048).seqlen == 2048
    with pytest.raises(ConfigError, match="finetune_seqlen=1024 must be >= 2048"):
        OmniQuantConfig(**{**SMALL, "finetune_seqlen": 1024})


def test_the_long_stage_trains_on_far_facts_after_the_end_to_end_stage():
    """With a context longer than the end-to-end stage's windows, ``finetune_long_steps`` more steps run on
    windows of ``finetune_long_seqlen`` tokens, each a retrieval exercise with its facts in the part of the
    window the shorter one cannot reach; the report keeps both stages; the codes stay."""
    from compresskit.api_passes import long_finetune_config

    model, tok = make_tiny_model("llama"), make_tiny_tokenizer()
    model.config.max_position_embeddings = 4096
    base = dict(SMALL, let=False, epochs=1, nsamples=4, seqlen=64, calib="builtin", finetune_steps=2)
    short, both = copy.deepcopy(model), copy.deepcopy(model)
    compresskit.quantize(short, OmniQuantConfig(**base), tokenizer=tok)
    manifest = compresskit.quantize(both, OmniQuantConfig(**base, finetune_long_steps=2), tokenizer=tok)
    first, long = manifest.report["distillation"], manifest.report["long_distillation"]
    assert first["steps"] == 2 and first["recipe"]["seqlen"] == 2048 and first["recipe"]["retrieval_depth"] == 1.0
    assert long["steps"] == 2 and long["recipe"]["seqlen"] == 4096
    assert (long["recipe"]["retrieval_mix"], long["recipe"]["retrieval_depth"]) == (1.0, 0.5)
    passes = compresskit.record(both).passes  # one distill pass, the long stage inside it
    assert [p.kind for p in passes] == ["quantize", "distill"] and passes[1].summary["long_stage"] == long
    assert len(passes[1].detail["long_stage"]["history"]) == 2
    name = next(iter(manifest.linears))
    a, b = short.get_submodule(name), both.get_submodule(name)
    assert torch.equal(a.qweight, b.qweight) and not torch.equal(a.scales, b.scales)  # codes kept, scales moved
    # its settings: capped at the context, facts beyond the shorter windows' reach, a third of the rate
    cfg = OmniQuantConfig(**SMALL, finetune_steps=8, finetune_long_steps=4, finetune_lr=3e-3)
    stage = long_finetune_config(cfg, context=3072)
    assert (stage.steps, stage.seqlen, stage.retrieval_mix, stage.lr) == (4, 3072, 1.0, 1e-3)
    assert stage.retrieval_depth == pytest.approx(1 - 2048 / 3072) and stage.quant_params_only
    assert long_finetune_config(cfg, context=2048) is None  # no longer than the end-to-end windows
    assert long_finetune_config(OmniQuantConfig(**SMALL, finetune_steps=8), context=8192) is None  # published: 0


def test_retrieval_mix_turns_that_share_of_the_block_stage_windows_into_exercises(monkeypatch):
    from compresskit import api_passes
    from compresskit.api_models import calibration_ids
    from compresskit.calib.retrieval import with_retrieval

    model, tok = make_tiny_model("llama"), make_tiny_tokenizer()
    seen = []

    def capture(model, config, ids, **kwargs):  # the block stage itself is tested above: only its windows here
        seen.append(ids)
        raise RuntimeError("captured")

    monkeypatch.setattr(api_passes, "quantize_omniquant", capture)
    cfg = OmniQuantConfig(**{**SMALL, "nsamples": 4, "seqlen": 512, "calib": "builtin", "finetune_steps": 0,
                             "retrieval_mix": 0.5})
    for config in (cfg, replace(cfg, retrieval_mix=0.0)):
        with pytest.raises(RuntimeError, match="captured"):
            compresskit.quantize(model, config, tokenizer=tok)
    plain = calibration_ids(model, tok, cfg)
    assert torch.equal(seen[1], plain)  # no mix: the windows as drawn
    assert torch.equal(seen[0], with_retrieval(tok, plain, 0.5, seed=cfg.seed, repeat=cfg.retrieval_repeat))
    changed = [i for i in range(4) if not torch.equal(seen[0][i], plain[i])]
    assert len(changed) == 2 and seen[0].shape == plain.shape
    question = tok("Question:", add_special_tokens=False)["input_ids"]
    for i in changed:  # each exercise ends in its questions and answers
        row = seen[0][i].tolist()
        assert any(row[j:j + len(question)] == question for j in range(len(row) - 200, len(row)))
    with pytest.raises(InputError, match="retrieval_mix writes its facts.*tokenizer"):
        compresskit.quantize(model, cfg, calib=plain)
    with pytest.raises(ConfigError, match="retrieval_mix=1.5"):
        OmniQuantConfig(**{**SMALL, "retrieval_mix": 1.5})
    assert OmniQuantConfig(wbits=3, preset="published").retrieval_mix == 0.0
