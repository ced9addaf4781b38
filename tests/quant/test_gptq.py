"""GPTQ: exact reduction to RTN for a diagonal Hessian, lower output error than RTN otherwise."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_model

import compresskit
from compresskit.core.config import QuantConfig
from compresskit.quant.gptq import GPTQConfig
from compresskit.core.manifest import LinearEntry
from compresskit.core.quant_math import compute_qparams, dequantize, quantize
from compresskit.kernels.modules import QuantLinear
from compresskit.quant.gptq import gptq_quantize


@pytest.mark.parametrize("bits,group_size,sym", [(4, 32, False), (3, -1, False), (4, 64, True), (2, 32, False)])
def test_diagonal_hessian_reduces_to_round_to_nearest(bits, group_size, sym):
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    h = torch.diag(torch.rand(128, generator=torch.Generator().manual_seed(1)) + 0.5)
    q, scale, zero, _ = gptq_quantize(w, h, LinearEntry(bits, group_size, sym), block_size=48)
    # GPTQ rounds with float32 scales (as the reference and GPTQModel) and stores them as fp16
    s_ref, z_ref = compute_qparams(w, bits, group_size, sym, fp16_scale=False)
    assert torch.equal(scale, s_ref) and torch.equal(zero, z_ref)
    assert torch.equal(q, quantize(w, s_ref, z_ref, bits, group_size))


def _column_by_column(w: torch.Tensor, h: torch.Tensor, bits: int, gs: int, block: int, damp: float = 0.01):
    """GPTQ as the paper states it, in float64: each column's rounding error goes to every later column at
    once (no lazy block update); a group's min/max parameters come from W as the ``block``-column block holding
    the group's first column began (what the reference code's lazy update makes them)."""
    n = w.shape[1]
    W = w.double().clone()
    H = h.double() + damp * torch.diag(h).double().mean() * torch.eye(n, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i in range(n):
        if i % block == 0:
            start = W.clone()
        if i % gs == 0:
            s, z = compute_qparams(start[:, i:i + gs].float(), bits, -1, False, fp16_scale=False)
            s, z = s[:, 0].double(), z[:, 0].double()
        Q[:, i] = torch.clamp(torch.round(W[:, i] / s) + z, 0, 2**bits - 1)
        err = (W[:, i] - s * (Q[:, i] - z)) / U[i, i]
        W[:, i:] -= err[:, None] * U[i, i:][None, :]
    return Q


@pytest.mark.parametrize("bits,seed", [(3, 0), (4, 1), (2, 2)])
def test_gptq_rounds_as_the_column_by_column_reference(bits, seed):
    """The blocked float32 loop gives the codes of the plain statement of the algorithm (in float64): the same
    as GPTQModel's on the same Hessian (bench/results/quant_peers.md checks that against GPTQModel itself)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 256, generator=g)
    x = torch.randn(4096, 256, generator=g) @ (torch.randn(256, 256, generator=g) * 0.3 + torch.eye(256))
    h = 2 * x.t() @ x / x.shape[0]
    q, _, _, _ = gptq_quantize(w, h, LinearEntry(bits, 32, False), block_size=64)
    assert torch.equal(q.double(), _column_by_column(w, h, bits, 32, 64))


def test_correlated_inputs_get_lower_output_error_than_rtn():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 128, generator=g)
    mix = torch.randn(128, 128, generator=g) * 0.3 + torch.eye(128)
    x = torch.randn(2048, 128, generator=g) @ mix  # strongly correlated input channels
    h = 2 * x.t() @ x / x.shape[0]
    entry = LinearEntry(3, 32, False)
    q, scale, zero, _ = gptq_quantize(w, h, entry)
    s_r, z_r = compute_qparams(w, 3, 32, False)
    w_rtn = dequantize(quantize(w, s_r, z_r, 3, 32), s_r, z_r, 32)
    w_gptq = dequantize(q, scale, zero, 32)
    err = lambda wq: float((x @ (w - wq).t()).pow(2).mean())
    assert err(w_gptq) < 0.8 * err(w_rtn)
    # act-order with static groups: the group parameters are RTN's, g_idx stays i // 32, error stays low
    q, scale, zero, _ = gptq_quantize(w, h, entry, act_order=True)
    s_32, z_32 = compute_qparams(w, 3, 32, False, fp16_scale=False)
    assert torch.equal(scale, s_32) and torch.equal(zero, z_32)
    assert err(dequantize(q, scale, zero, 32)) < 0.8 * err(w_rtn)


def test_gptq_on_a_tiny_model_beats_rtn_and_round_trips(tmp_path):
    model = make_tiny_model("qwen2")
    ids = torch.randint(0, 320, (8, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    rtn, gptq = copy.deepcopy(model), copy.deepcopy(model)
    compresskit.quantize(rtn, QuantConfig(wbits=3, group_size=32))
    manifest = compresskit.quantize(gptq, GPTQConfig(wbits=3, group_size=32, nsamples=8, seqlen=64), calib=ids)
    assert all(isinstance(gptq.get_submodule(n), QuantLinear) for n in manifest.linears)

    def err(m):
        with torch.no_grad():
            return float((m(ids).logits - ref).pow(2).mean())

    assert err(gptq) < err(rtn)
    compresskit.save(gptq, None, tmp_path / "g")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "g", dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, gptq(ids).logits)


def test_hessian_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match in_features=32"):
        gptq_quantize(torch.randn(8, 32), torch.eye(16), LinearEntry(4, 32, False))


def test_act_order_reduces_to_round_to_nearest_on_a_diagonal_hessian():
    w = torch.randn(32, 96, generator=torch.Generator().manual_seed(3))
    h = torch.diag(torch.rand(96, generator=torch.Generator().manual_seed(4)) + 0.5)  # a non-trivial order
    q, scale, zero, _ = gptq_quantize(w, h, LinearEntry(4, 32, False), act_order=True)
    s_ref, z_ref = compute_qparams(w, 4, 32, False)
    assert torch.equal(q, quantize(w, s_ref, z_ref, 4, 32))


def test_a_hessian_that_does_not_factor_gets_more_damping():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 64, generator=g)  # 4 tokens for 64 inputs: rank 4, singular in float32
    h = 2 * x.t() @ x / 4
    with pytest.raises(RuntimeError):  # what GPTQ did before: a crash deep in torch
        torch.linalg.cholesky(h + 1e-9 * torch.diag(h).mean() * torch.eye(64))
    q, scale, zero, damp = gptq_quantize(torch.randn(16, 64, generator=g), h, LinearEntry(4, 32, False), damp=1e-9)
    assert 1e-9 < damp <= 1e-5 and torch.isfinite(scale).all() and q.max() <= 15
    with pytest.raises(ValueError, match="does not factor"):
        gptq_quantize(torch.randn(16, 64), torch.full((64, 64), float("nan")), LinearEntry(4, 32, False))


def test_gptq_reports_act_order_and_raised_damping():
    model = make_tiny_model("llama")
    ids = torch.randint(0, 320, (2, 32), generator=torch.Generator().manual_seed(0))
    cfg = GPTQConfig(wbits=4, group_size=32, nsamples=2, seqlen=32, act_order=True)
    manifest = compresskit.quantize(model, cfg, calib=ids)
    report = manifest.to_dict()["report"]
    assert report["act_order"] is True and report["act_group_aware"] is False and isinstance(report["damping_raised"], dict)


def _group_aware_reference(diag: torch.Tensor, gs: int) -> list[int]:
    """Group-aware reordering written out as its paper states it, one group at a time."""
    n = diag.numel()
    groups = [list(range(s, min(s + gs, n))) for s in range(0, n, gs)]
    whole = [g for g in groups if len(g) == gs]
    whole.sort(key=lambda g: -max(float(diag[i]) for i in g))  # stable: ties keep the natural order
    order = [i for g in whole for i in sorted(g, key=lambda i: -float(diag[i]))]
    tail = [g for g in groups if len(g) < gs]
    return order + [i for g in tail for i in sorted(g, key=lambda i: -float(diag[i]))]


@pytest.mark.parametrize("n,gs", [(128, 32), (100, 32), (64, 64)])
def test_group_aware_order_keeps_groups_whole_and_sorts_by_the_diagonal(n, gs):
    from compresskit.quant.gptq import group_aware_order

    diag = torch.rand(n, generator=torch.Generator().manual_seed(n))
    order = group_aware_order(diag, gs)
    assert order.tolist() == _group_aware_reference(diag, gs)
    assert sorted(order.tolist()) == list(range(n))
    for start in range(0, n - n % gs, gs):  # every run of gs positions is one natural group
        assert len({int(c) // gs for c in order[start:start + gs]}) == 1


def test_group_aware_gptq_is_rtn_on_a_diagonal_hessian_and_beats_it_otherwise():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(32, 96, generator=g)
    h = torch.diag(torch.rand(96, generator=g) + 0.5)
    entry = LinearEntry(4, 32, False)
    q, scale, zero, _ = gptq_quantize(w, h, entry, act_group_aware=True)
    s_ref, z_ref = compute_qparams(w, 4, 32, False, fp16_scale=False)
    assert torch.equal(scale, s_ref) and torch.equal(zero, z_ref)
    assert torch.equal(q, quantize(w, s_ref, z_ref, 4, 32))
    # correlated inputs with a few loud channels: lower output error than RTN and than plain GPTQ's order
    w = torch.randn(64, 128, generator=g)
    loud = torch.ones(128)
    loud[torch.randperm(128, generator=g)[:8]] = 8.0
    x = (torch.randn(4096, 128, generator=g) @ (torch.randn(128, 128, generator=g) * 0.3 + torch.eye(128))) * loud
    h = 2 * x.t() @ x / x.shape[0]
    entry = LinearEntry(3, 32, False)
    err = lambda q, s, z: float((x @ (w - dequantize(q, s, z, 32)).t()).pow(2).mean())
    s_r, z_r = compute_qparams(w, 3, 32, False)
    rtn = err(quantize(w, s_r, z_r, 3, 32), s_r, z_r)
    q, s, z, _ = gptq_quantize(w, h, entry, act_group_aware=True)
    assert err(q, s, z) < 0.8 * rtn
    assert s.shape == s_r.shape  # natural groups: g_idx stays i // group_size


def test_group_aware_order_is_the_default_unless_act_order():
    assert GPTQConfig(wbits=4).act_group_aware is True  # GPTQModel's default
    assert GPTQConfig(wbits=4, act_order=True).act_group_aware is False
    plain = GPTQConfig(wbits=4, act_group_aware=False)
    assert plain.act_group_aware is False and GPTQConfig.from_dict(plain.to_dict()) == plain
    assert GPTQConfig.from_dict(GPTQConfig(wbits=4).to_dict()).act_group_aware is True


def test_act_order_and_act_group_aware_are_exclusive():
    with pytest.raises(ValueError, match="set one of them"):
        GPTQConfig(wbits=4, group_size=32, act_order=True, act_group_aware=True)


def _gptq_with_plain_hooks(model, ids, entry: LinearEntry, batch_size: int) -> dict[str, torch.Tensor]:
    """GPTQ (group-aware order) over a whole model written another way: each linear group's inputs caught by hooks
    on full-model forwards, quantized linears kept as float32-scale dense weights (inputs fake-quantized for W-A) while the
    rest is calibrated. Returns linear name -> codes."""
    from compresskit.core.arch import get_arch, get_module
    from compresskit.core.quant_math import quantize_activations

    arch, codes = get_arch(model), {}
    if entry.abits < 16:  # W-A recipes also fake-quantize q/k/v inside attention (not GPTQ's business)
        from compresskit.quant.apply import enable_activation_quantization

        enable_activation_quantization(model, QuantConfig(wbits=entry.bits, abits=entry.abits))
    for i, block in enumerate(arch.blocks_of(model)):
        for group in arch.groups:
            grams = {n: torch.zeros(()) for n in group.linears}
            hooks = []
            for n in group.linears:
                def hook(m, args, n=n):
                    a = args[0].reshape(-1, args[0].shape[-1])
                    grams[n] = grams[n] + a.t() @ a
                hooks.append(get_module(block, n).register_forward_pre_hook(hook))
            with torch.no_grad():
                for chunk in ids.split(batch_size):
                    model(chunk)
            for h in hooks:
                h.remove()
            for n in group.linears:
                lin = get_module(block, n)
                q, s, z, _ = gptq_quantize(lin.weight, 2 * grams[n] / ids.numel(), entry, act_group_aware=True)
                lin.weight.data = dequantize(q, s, z, entry.group_size)
                if entry.abits < 16:
                    lin.register_forward_pre_hook(lambda m, a: (quantize_activations(a[0], entry.abits),))
                codes[f"{arch.blocks}.{i}.{n}"] = q
    return codes


@pytest.mark.parametrize("abits", [16, 8])
def test_the_calibration_stream_is_float32_scale_weights_and_the_result_is_packed(abits):
    from compresskit.core.formats import unpack_int

    model = make_tiny_model("llama")
    ids = torch.randint(0, 320, (4, 32), generator=torch.Generator().manual_seed(0))
    ref = _gptq_with_plain_hooks(copy.deepcopy(model), ids, LinearEntry(3, 32, False, abits=abits), batch_size=2)
    cfg = GPTQConfig(wbits=3, group_size=32, nsamples=4, seqlen=32, abits=abits, batch_size=2)
    manifest = compresskit.quantize(model, cfg, calib=ids)
    assert set(manifest.linears) == set(ref)
    for name, q_ref in ref.items():
        lin = model.get_submodule(name)
        assert isinstance(lin, QuantLinear) and not lin._forward_pre_hooks  # packed, no calibration hook left
        q = unpack_int(lin.qweight.t(), 3, q_ref.shape[1])
        assert torch.equal(q, q_ref), name
