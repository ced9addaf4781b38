"""DistillConfig: defaults, the short-to-long schedule, stage splits, JSON round trip, and clear errors."""
from __future__ import annotations

import pytest

from compresskit.core.config import ConfigError
from compresskit.distill import DistillConfig


def test_defaults_follow_minitron():
    c = DistillConfig()
    assert (c.temperature, c.kl_weight, c.ce_weight, c.hidden_weight) == (1.0, 1.0, 0.0, 0.0)
    assert c.seqlen_schedule == (4096,) and c.stages() == [(4096, 100)]
    assert c.name == "distill-full-s4096x100"


@pytest.mark.parametrize("schedule,lengths", [
    ((1024, 2048, 4096), (1024, 2048, 4096)),
    ((0.25, 0.5, 1), (1024, 2048, 4096)),
    ((0.25, 1.0), (1024, 4096)),
    ((), (4096,)),
])
def test_schedule_resolves_to_tokens_ending_at_seqlen(schedule, lengths):
    c = DistillConfig(seqlen=4096, seqlen_schedule=schedule, steps=12)
    assert c.seqlen_schedule == lengths
    assert c.stages()[-1][0] == 4096 and sum(n for _, n in c.stages()) == 12


def test_stage_shares():
    c = DistillConfig(seqlen=2048, seqlen_schedule=(512, 1024, 2048), schedule_fractions=(0.5, 0.3, 0.2), steps=10)
    assert c.stages() == [(512, 5), (1024, 3), (2048, 2)]
    tight = DistillConfig(seqlen=2048, seqlen_schedule=(512, 1024, 2048), schedule_fractions=(0.98, 0.01, 0.01),
                          steps=3)
    assert [n for _, n in tight.stages()] == [1, 1, 1]
    assert [n for _, n in DistillConfig(seqlen=64, seqlen_schedule=(32, 64), steps=7).stages()] == [4, 3]


def test_json_round_trip_keeps_resolved_values():
    c = DistillConfig(seqlen=2048, seqlen_schedule=(0.5, 1), hidden_weight=0.5, hidden_layers=(0, 3), lora=True,
                      lora_targets=("q_proj", "v_proj"), extra={"note": "x"})
    back = DistillConfig.from_json(c.to_json())
    assert back == c and back.seqlen_schedule == (1024, 2048) and back.lora_targets == ("q_proj", "v_proj")
    assert DistillConfig.from_dict(c.to_dict()).resume_key() == c.resume_key()
    assert "checkpoint_every" not in c.resume_key()


@pytest.mark.parametrize("kwargs,needle", [
    (dict(steps=0), "steps=0 must be a positive whole number"),
    (dict(seqlen=8), "seqlen=8 must be at least 16"),
    (dict(seqlen=4096, seqlen_schedule=(1024, 2048)), "must end at the longest length, --seqlen 4096"),
    (dict(seqlen=4096, seqlen_schedule=(2048, 1024, 4096)), "must increase strictly"),
    (dict(seqlen=4096, seqlen_schedule=(0.5, 2048)), "mixes fractions and token counts"),
    (dict(seqlen=4096, seqlen_schedule=(1024, 4096), schedule_fractions=(1.0,)), "one share per stage"),
    (dict(seqlen=4096, seqlen_schedule=(1024, 4096), schedule_fractions=(0.6, 0.6)), "sum to 1"),
    (dict(seqlen=64, seqlen_schedule=(16, 32, 64), steps=2), "need at least 3 steps"),
    (dict(lr=0), "lr=0 must be positive"),
    (dict(temperature=0), "temperature=0 must be positive"),
    (dict(kl_weight=0), "every loss weight is 0"),
    (dict(hidden_loss="l1"), "hidden_loss='l1' is not supported; use one of cosine, mse"),
    (dict(lr_schedule="step"), "use one of cosine, linear, constant"),
    (dict(lora=True, quant_params_only=True), "--lora and --quant-params-only exclude each other"),
    (dict(train_norms=True), "--train-norms applies to --quant-params-only"),
    (dict(warmup_steps=100, steps=100), "warmup_steps=100 must be smaller than steps=100"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio=1.5 must lie in [0, 1]"),
    (dict(mixed_precision="fp8"), "use one of auto, no, bf16, fp16"),
])
def test_bad_values_name_the_problem_and_the_fix(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        DistillConfig(**kwargs)
    assert needle in str(e.value)


def test_unknown_fields_and_newer_versions_are_refused():
    with pytest.raises(ConfigError, match="unknown DistillConfig field"):
        DistillConfig.from_dict({"stpes": 3})
    with pytest.raises(ConfigError, match="upgrade compresskit"):
        DistillConfig.from_dict({"version": 99})


def test_train_parts_are_checked_and_round_trip():
    c = DistillConfig(train_parts=["mlp", "norms"])
    assert c.train_parts == ("mlp", "norms") and DistillConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="train_parts \\['mpl'\\] unknown.*attention, mlp, norms"):
        DistillConfig(train_parts=("mpl",))
    with pytest.raises(ConfigError, match="--lora-targets"):
        DistillConfig(train_parts=("mlp",), lora=True)


def test_retrieval_mix_is_a_share():
    assert DistillConfig(retrieval_mix=0.25).retrieval_mix == 0.25
    for bad in (-0.1, 1.5, "a"):
        with pytest.raises(ConfigError, match="retrieval_mix=.* give a number in \\[0, 1\\]"):
            DistillConfig(retrieval_mix=bad)
    with pytest.raises(ConfigError, match="at least 256 tokens and the first stage has 128"):
        DistillConfig(retrieval_mix=0.25, seqlen=1024, seqlen_schedule=(128, 1024))


def test_retrieval_repeat_is_a_share_of_the_exercises():
    assert DistillConfig(retrieval_mix=0.5, retrieval_repeat=0.5).retrieval_repeat == 0.5
    for bad in (-0.1, 2, "a"):
        with pytest.raises(ConfigError, match="retrieval_repeat=.* give a number in \\[0, 1\\]"):
            DistillConfig(retrieval_mix=0.5, retrieval_repeat=bad)
    with pytest.raises(ConfigError, match="there are none: set --retrieval-mix"):
        DistillConfig(retrieval_repeat=0.5)
