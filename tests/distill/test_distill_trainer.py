"""The accelerate loop on tiny models: it lowers the KL, trains only what it is given, schedules the
learning rate and sequence length, and an interrupted + resumed run equals an uninterrupted one."""
from __future__ import annotations

import copy

import pytest
import torch
from _distill_pairs import mean_kl, perturbed_student, pruned_student, teacher, token_stream, windows_fn

from compresskit.core.config import ConfigError
from compresskit.distill import DistillConfig, lr_lambda, run_distillation

HELD_OUT = token_stream(8 * 64, seed=77).view(8, 64)


@pytest.fixture(scope="module")
def pair():
    t = teacher()
    return t, pruned_student(t)


def _floats(model):
    return [p for p in model.parameters() if p.is_floating_point()]


def test_distillation_lowers_the_kl_and_reports_each_step(pair):
    t = pair[0]
    s = perturbed_student(t)
    before = mean_kl(s, t, HELD_OUT)
    config = DistillConfig(seqlen=64, steps=30, batch_size=4, lr=3e-3, warmup_steps=3)
    seen = []
    result = run_distillation(s, t, config, windows_fn(token_stream()), trainable=_floats(s),
                              progress=lambda step, total, info: seen.append((step, total, info)))
    after = mean_kl(s, t, HELD_OUT)
    assert after < 0.6 * before, (before, after)
    assert result.steps == 30 and result.tokens == 30 * 4 * 64 and not result.interrupted
    assert [x[0] for x in seen] == list(range(1, 31)) and seen[-1][1] == 30
    assert {"loss", "kl", "lr", "seqlen", "tokens_per_s"} <= set(seen[-1][2])
    assert result.history[-1]["kl"] < result.history[0]["kl"]
    assert not s.training and not t.training  # handed back in eval mode
    assert not s.is_activation_checkpointing


def test_only_the_given_parameters_train(pair):
    t, s0 = pair
    s = copy.deepcopy(s0)
    mlp = [p for n, p in s.named_parameters() if ".mlp." in n]
    others = {n: p.detach().clone() for n, p in s.named_parameters() if ".mlp." not in n}
    run_distillation(s, t, DistillConfig(seqlen=32, steps=2, lr=1e-2), windows_fn(token_stream()), trainable=mlp)
    assert all(torch.equal(p, others[n]) for n, p in s.named_parameters() if n in others)
    assert not all(torch.equal(a, b) for a, b in zip(mlp, [p for n, p in s0.named_parameters() if ".mlp." in n]))


def test_gradient_checkpointing_and_kl_chunks_do_not_change_the_gradient(pair):
    from compresskit.distill import Objective

    t, s0 = pair
    ids = token_stream(2 * 64, seed=5).view(2, 64)
    grads = []
    for gc, chunk in ((False, 0), (True, 16)):
        s = copy.deepcopy(s0).train()
        if gc:
            s.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        objective = Objective.build(s, t, DistillConfig(seqlen=64, kl_chunk=chunk, ce_weight=0.3, hidden_weight=0.5))
        loss, _ = objective(s, t, ids)
        loss.backward()
        grads.append([p.grad for p in _floats(s)])
    assert all(g is not None for g in grads[0])
    assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-5) for a, b in zip(*grads))


def test_hidden_and_cross_entropy_terms_are_logged(pair):
    t, s0 = pair
    s = copy.deepcopy(s0)
    config = DistillConfig(seqlen=32, steps=2, lr=1e-3, ce_weight=0.5, hidden_weight=1.0, hidden_loss="mse")
    result = run_distillation(s, t, config, windows_fn(token_stream()), trainable=_floats(s))
    rec = result.history[-1]
    assert {"kl", "ce", "hidden", "loss"} <= set(rec)
    assert rec["loss"] == pytest.approx(rec["kl"] + 0.5 * rec["ce"] + rec["hidden"], rel=1e-5)


def test_lr_schedules():
    cos = lr_lambda(DistillConfig(steps=10, warmup_steps=2, min_lr_ratio=0.1))
    assert [cos(0), cos(1), cos(2)] == [0.5, 1.0, 1.0] and cos(9) == pytest.approx(0.1)
    assert all(cos(i) >= cos(i + 1) for i in range(2, 9))
    lin = lr_lambda(DistillConfig(steps=5, lr_schedule="linear", min_lr_ratio=0.0))
    assert [lin(i) for i in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert lr_lambda(DistillConfig(steps=5, lr_schedule="constant"))(4) == 1.0


def test_short_to_long_schedule_runs_each_stage_in_order(pair):
    t, s0 = pair
    s = copy.deepcopy(s0)
    asked = []

    def samples(seqlen, n, stage):
        asked.append((seqlen, n, stage))
        return windows_fn(token_stream())(seqlen, n, stage)

    config = DistillConfig(seqlen=64, seqlen_schedule=(0.25, 0.5, 1), schedule_fractions=(0.25, 0.25, 0.5), steps=4,
                           grad_accum=2, lr=1e-3)
    result = run_distillation(s, t, config, samples, trainable=_floats(s))
    assert asked == [(16, 2, 0), (32, 2, 1), (64, 4, 2)]
    assert [h["seqlen"] for h in result.history] == [16, 32, 64, 64]
    assert result.tokens == 2 * (16 + 32 + 64 + 64)


RESUME = DistillConfig(seqlen=32, seqlen_schedule=(16, 32), steps=6, grad_accum=2, lr=3e-3, warmup_steps=1,
                       checkpoint_every=2)


def test_interrupted_and_resumed_equals_uninterrupted(pair, tmp_path):
    t, s0 = pair
    samples = windows_fn(token_stream())
    whole = copy.deepcopy(s0)
    full = run_distillation(whole, t, RESUME, samples, trainable=_floats(whole))

    first = copy.deepcopy(s0)
    part = run_distillation(first, t, RESUME, samples, trainable=_floats(first), work_dir=tmp_path, stop_after=4)
    assert part.interrupted and part.steps == 4 and (tmp_path / "checkpoint").is_dir()
    assert not all(torch.equal(a, b) for a, b in zip(_floats(first), _floats(whole)))

    # a fresh process would start from the saved student: the state comes from the checkpoint
    resumed_model = copy.deepcopy(s0)
    torch.manual_seed(1234)  # RNG, optimizer, scheduler and data position are restored from the state
    resumed = run_distillation(resumed_model, t, RESUME, samples, trainable=_floats(resumed_model),
                               work_dir=tmp_path)
    assert resumed.resumed_from == 4 and resumed.steps == 6 and not resumed.interrupted
    assert resumed.tokens == full.tokens
    for a, b in zip(_floats(resumed_model), _floats(whole)):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), float((a - b).abs().max())
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], abs=1e-6)
    assert [h["lr"] for h in resumed.history] == pytest.approx([h["lr"] for h in full.history])


def test_a_checkpoint_of_other_settings_is_refused(pair, tmp_path):
    t, s0 = pair
    s = copy.deepcopy(s0)
    samples = windows_fn(token_stream())
    run_distillation(s, t, RESUME, samples, trainable=_floats(s), work_dir=tmp_path, stop_after=2)
    other = DistillConfig.from_dict({**RESUME.to_dict(), "lr": 1e-2, "checkpoint_every": 3})
    with pytest.raises(ConfigError, match=r"different settings \(lr: 0.003 -> 0.01\)"):
        run_distillation(copy.deepcopy(s0), t, other, samples, work_dir=tmp_path)
    # checkpoint_every does not change the computation: resuming under another value is fine
    same = DistillConfig.from_dict({**RESUME.to_dict(), "checkpoint_every": 0})
    s2 = copy.deepcopy(s0)
    assert run_distillation(s2, t, same, samples, trainable=_floats(s2), work_dir=tmp_path).resumed_from == 2


def test_a_nan_loss_stops_before_the_step_and_keeps_the_last_good_state(pair, tmp_path, monkeypatch):
    from compresskit.distill import trainer
    from compresskit.distill.trainer import DistillDivergedError

    t, s0 = pair
    build, calls = trainer.Objective.build, [0]

    def poisoned(*args, **kwargs):
        real = build(*args, **kwargs)

        def objective(model, teacher, ids):
            calls[0] += 1
            loss, parts = real(model, teacher, ids)
            return (loss * float("nan") if calls[0] == 7 else loss), parts  # step 4 (2 micro-batches a step)
        return objective

    monkeypatch.setattr(trainer.Objective, "build", poisoned)
    s = copy.deepcopy(s0)
    with pytest.raises(DistillDivergedError, match="diverged at step 4 of 6.*state after step 3 is saved"):
        run_distillation(s, t, RESUME, windows_fn(token_stream()), trainable=_floats(s), work_dir=tmp_path)
    assert all(bool(torch.isfinite(p).all()) for p in _floats(s))  # the NaN step never touched the weights
    assert not all(torch.equal(a, b) for a, b in zip(_floats(s), _floats(s0)))  # the 3 good steps did
    assert (tmp_path / "checkpoint").is_dir()
