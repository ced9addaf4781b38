"""PruneConfig: validation, JSON round trip, and the plan's GQA checks with the nearest valid setting."""
from __future__ import annotations

import pytest
from conftest import make_tiny_config

from compresskit.core.config import ConfigError
from compresskit.prune import PruneConfig, plan


def test_json_round_trip_and_name():
    cfg = PruneConfig(mlp=0.25, heads=0.5, layers=1, protect_retrieval=False, extra={"note": "x"})
    assert PruneConfig.from_json(cfg.to_json()) == cfg
    assert cfg.name == "prune-mlp25-heads50-l1-noprotect"
    assert PruneConfig().name == "prune-none"


@pytest.mark.parametrize("field,value,needle", [
    ("mlp", 1.0, "mlp=1.0 must be a fraction in [0, 1)"),
    ("heads", -0.1, "heads=-0.1 must be a fraction in [0, 1)"),
    ("layers", -1, "layers=-1"),
    ("head_unit", "kv", "head_unit='kv' is not supported"),
    ("nsamples", 0, "nsamples=0 must be positive"),
    ("protect_fraction", 1.5, "protect_fraction=1.5"),
    ("retrieval_score", "argmax", "retrieval_score='argmax' is not supported; use one of attention, answer_loss"),
])
def test_bad_values_are_one_line_errors(field, value, needle):
    with pytest.raises(ConfigError, match=None) as e:
        PruneConfig(**{field: value})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_field_and_newer_version_refused():
    with pytest.raises(ConfigError, match="unknown PruneConfig field"):
        PruneConfig.from_dict({"mlpp": 0.1})
    with pytest.raises(ConfigError, match="upgrade compresskit"):
        PruneConfig.from_dict({"version": 99})


def test_plan_counts_for_4_heads_over_2_kv():
    p = plan(PruneConfig(heads=0.5, mlp=0.25, layers=1), make_tiny_config())
    assert (p.keep_heads_per_group, p.keep_groups, p.keep_heads) == (1, 2, 2)
    assert p.keep_intermediate == 96 and p.keep_layers == 1 and p.head_dim == 16


def test_plan_for_6_heads_over_2_kv_and_whole_groups():
    cfg = make_tiny_config(hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    assert plan(PruneConfig(heads=0.33), cfg).keep_heads == 4
    assert plan(PruneConfig(heads=0.67), cfg).keep_heads == 2
    p = plan(PruneConfig(heads=0.5, head_unit="group"), cfg)
    assert (p.keep_groups, p.keep_heads_per_group, p.keep_heads) == (1, 3, 3)


def test_ratio_breaking_gqa_names_the_nearest_valid_setting():
    cfg = make_tiny_config(hidden_size=96, num_attention_heads=6, num_key_value_heads=2)
    with pytest.raises(ConfigError) as e:
        plan(PruneConfig(heads=0.2), cfg)  # 1.2 -> 1 head: not the same count in both groups
    assert "not a whole number per each of the 2 KV groups" in str(e.value)
    assert "nearest valid setting is --heads 0.33" in str(e.value)


def test_ratio_leaving_no_head_or_layer_or_group_is_refused():
    cfg = make_tiny_config()
    with pytest.raises(ConfigError, match="leaves no query head; the nearest valid setting is --heads 0.5"):
        plan(PruneConfig(heads=0.9), cfg)
    with pytest.raises(ConfigError, match="the most is --layers 1"):
        plan(PruneConfig(layers=2), cfg)
    with pytest.raises(ConfigError, match="removes all 2 KV groups; the nearest valid setting is --heads 0.5"):
        plan(PruneConfig(heads=0.8, head_unit="group"), cfg)


def test_head_count_stock_transformers_refuses_is_refused():
    # Llama's config requires hidden_size % num_attention_heads == 0 even with head_dim written:
    # 99 hidden with 9 heads loads, with 6 it does not, with 3 it does
    cfg = make_tiny_config(hidden_size=99, num_attention_heads=9, num_key_value_heads=3, head_dim=12)
    with pytest.raises(ConfigError) as e:
        plan(PruneConfig(heads=0.33), cfg)
    assert "leaves 6 query heads, which LlamaConfig does not accept" in str(e.value)
    assert "valid: 0, 0.67" in str(e.value)
    assert plan(PruneConfig(heads=0.67), cfg).keep_heads == 3
