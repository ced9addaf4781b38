"""core.config: validation, JSON round-trip, versioning, names; core.manifest round-trip."""
from __future__ import annotations

import json

import pytest

from compresskit.core.config import CONFIG_VERSION, ConfigError, QuantConfig, check_group_size, dividing_group_sizes
from compresskit.core.formats import FORMAT_VERSION
from compresskit.core.manifest import EmbeddingEntry, LinearEntry, QuantManifest


def test_defaults():
    cfg = QuantConfig()
    assert (cfg.method, cfg.wbits, cfg.group_size, cfg.sym, cfg.abits, cfg.embed_bits) == ("rtn", 4, 128, False, 16, 8)
    assert cfg.skip == () and cfg.version == CONFIG_VERSION


@pytest.mark.parametrize(
    "cfg",
    [
        QuantConfig(),
        QuantConfig(wbits=3, group_size=64, sym=True, skip=["lm_head", "down_proj"], extra={"note": "x", "n": 3}),
        QuantConfig(wbits=2, group_size=-1, ragged_last_group=True, embed_bits=16),
        QuantConfig(wbits=8, group_size=32),
    ],
)
def test_json_round_trip(cfg):
    s = cfg.to_json()
    d = json.loads(s)
    assert isinstance(d["skip"], list)
    back = QuantConfig.from_json(s)
    assert back == cfg
    assert isinstance(back.skip, tuple)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


def test_skip_list_becomes_tuple():
    cfg = QuantConfig(skip=["a", "b"])
    assert cfg.skip == ("a", "b")
    hash(cfg.skip)


def test_frozen():
    cfg = QuantConfig()
    with pytest.raises(AttributeError):
        cfg.wbits = 8  # type: ignore[misc]


@pytest.mark.parametrize("wbits", [1, 5, 6, 16])
def test_bad_wbits(wbits):
    with pytest.raises(ConfigError) as ei:
        QuantConfig(wbits=wbits)
    msg = str(ei.value)
    assert f"wbits={wbits}" in msg
    for b in ("2", "3", "4", "8"):
        assert b in msg.split("use one of", 1)[1]


@pytest.mark.parametrize("gs", [100, 0, -2, 48, 16, 129])
def test_bad_group_size(gs):
    with pytest.raises(ConfigError, match=f"group_size={gs}"):
        QuantConfig(group_size=gs)
    with pytest.raises(ConfigError):
        check_group_size(gs)


@pytest.mark.parametrize("gs", [-1, 32, 64, 96, 128, 1024])
def test_good_group_size(gs):
    assert QuantConfig(group_size=gs).group_size == gs


def test_six_bit_weights_only_with_activation_quantization():
    assert QuantConfig(wbits=6, abits=6, group_size=-1).name == "rtn-w6a6pc"
    with pytest.raises(ConfigError, match="wbits=6"):
        QuantConfig(wbits=6)


def test_abits_values():
    assert QuantConfig(abits=8).name == "rtn-w4a8g128"  # RTN W-A is the baseline OmniQuant is measured against
    with pytest.raises(ConfigError, match="abits=5"):
        QuantConfig(abits=5)


def test_omniquant_config_round_trips_through_the_method_dispatch():
    from compresskit.quant.omniquant import OmniQuantConfig

    cfg = OmniQuantConfig(wbits=3, group_size=64, epochs=2, nsamples=8, seqlen=256, batch_size=2)
    back = QuantConfig.from_json(cfg.to_json())
    assert type(back) is OmniQuantConfig and back == cfg
    assert OmniQuantConfig(wbits=4, abits=4).alpha == 0.75 and cfg.alpha == 0.5
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        OmniQuantConfig(nsamples=5, batch_size=2)
    with pytest.raises(ConfigError, match="let_alpha"):
        OmniQuantConfig(let_alpha=1.5)


def test_omniquant_published_preset_follows_the_width():
    from compresskit.quant.omniquant import OmniQuantConfig

    assert OmniQuantConfig(wbits=2, preset="published").epochs == 40  # published: 40 epochs for W2, 20 otherwise
    assert OmniQuantConfig(wbits=3, preset="published").epochs == 20
    assert OmniQuantConfig(wbits=2, epochs=5, preset="published").epochs == 5
    cfg = OmniQuantConfig(wbits=2, preset="published")
    assert json.loads(cfg.to_json())["epochs"] == 40  # the saved recipe holds the number, not None
    assert QuantConfig.from_json(cfg.to_json()) == cfg


def test_omniquant_auto_preset_is_decided_by_the_device_and_explicit_values_win():
    from compresskit.quant.omniquant import OmniQuantConfig
    from compresskit.quant.omniquant.config import preset_values

    auto = OmniQuantConfig(wbits=3, epochs=7)
    assert auto.preset == "auto" and auto.nsamples is None and auto.finetune_steps is None and not auto.is_resolved
    gpu, cpu = auto.resolved("cuda"), auto.resolved("cpu")
    assert gpu.preset == "published" and (gpu.nsamples, gpu.seqlen, gpu.clip_init, gpu.finetune_steps) == (128, 2048,
                                                                                                           "constant", 0)
    want = preset_values("cpu", 3)
    assert cpu.preset == "cpu" and cpu.is_resolved
    assert {k: getattr(cpu, k) for k in want if k != "epochs"} == {k: v for k, v in want.items() if k != "epochs"}
    assert gpu.epochs == cpu.epochs == 7  # given explicitly: no preset changes it
    assert cpu.resolved("cuda") is cpu  # resolved once, for good
    short = auto.resolved("cpu", context=256)
    assert short.seqlen == 256 and short.finetune_steps == 0  # fits the model's context; no room for the stage
    # the long-window stage: only where the context is longer than the end-to-end stage's windows
    assert short.finetune_long_steps == 0 and auto.resolved("cpu", context=2048).finetune_long_steps == 0
    assert auto.resolved("cpu", context=8192).finetune_long_steps == want["finetune_long_steps"] > 0
    assert gpu.finetune_long_steps == 0 and OmniQuantConfig(wbits=4, abits=4).resolved("cpu").finetune_long_steps == 0
    assert OmniQuantConfig(wbits=3, finetune_long_steps=2).resolved("cpu", context=2048).finetune_long_steps == 2
    with pytest.raises(ConfigError, match="finetune_long_seqlen=2048 must be longer than finetune_seqlen=2048"):
        OmniQuantConfig(wbits=3, finetune_long_steps=2, finetune_long_seqlen=2048)
    with pytest.raises(ConfigError, match="finetune_long_steps=-1"):
        OmniQuantConfig(wbits=3, finetune_long_steps=-1)
    assert OmniQuantConfig(wbits=3, finetune_steps=3).resolved("cpu", context=256).finetune_steps == 3
    assert OmniQuantConfig(wbits=3, seqlen=64).resolved("cpu", context=256).seqlen == 64
    # weight-activation configs skip the end-to-end stage (it distills weight-only scales)
    assert OmniQuantConfig(wbits=4, abits=4).resolved("cpu").finetune_steps == 0
    assert QuantConfig.from_json(cpu.to_json()) == cpu and QuantConfig.from_json(auto.to_json()) == auto
    with pytest.raises(ConfigError, match="preset='fast'"):
        OmniQuantConfig(preset="fast")
    with pytest.raises(ConfigError, match="epochs=-1"):
        OmniQuantConfig(epochs=-1)  # an auto config checks what it was given


def test_a_saved_omniquant_recipe_from_before_presets_reads_as_published():
    from compresskit.quant.omniquant import OmniQuantConfig

    old = {"method": "omniquant", "wbits": 3, "group_size": 64, "nsamples": 16, "seqlen": 512, "epochs": 5,
           "version": 1}  # saved before clip_init / patience / finetune_steps / preset existed
    cfg = QuantConfig.from_dict(old)
    assert type(cfg) is OmniQuantConfig and cfg.preset == "published"
    assert (cfg.clip_init, cfg.patience, cfg.finetune_steps) == ("constant", 0, 0)
    assert QuantConfig.from_dict({k: v for k, v in old.items() if k != "version"}).preset == "auto"  # a user's dict


def test_omniquant_let_default_follows_the_published_scripts():
    from compresskit.quant.omniquant import OmniQuantConfig

    assert OmniQuantConfig(wbits=3).let is False  # weight-only: --lwc
    assert OmniQuantConfig(wbits=4, abits=4).let is True  # weight-activation: --lwc --let
    assert OmniQuantConfig(wbits=3, let=True).let is True
    assert json.loads(OmniQuantConfig(wbits=3).to_json())["let"] is False


def test_other_bad_values():
    with pytest.raises(ConfigError, match="method"):
        QuantConfig(method="awq")
    with pytest.raises(ConfigError, match="OmniQuantConfig"):
        QuantConfig(method="omniquant")
    with pytest.raises(ConfigError, match="embed_bits"):
        QuantConfig(embed_bits=4)


def test_from_dict_unknown_field():
    d = QuantConfig().to_dict()
    d["wbitz"] = 4
    with pytest.raises(ConfigError, match="wbitz"):
        QuantConfig.from_dict(d)


def test_from_dict_newer_version():
    d = QuantConfig().to_dict()
    d["version"] = CONFIG_VERSION + 1
    with pytest.raises(ConfigError, match="upgrade"):
        QuantConfig.from_dict(d)


def test_from_dict_validates_values():
    d = QuantConfig().to_dict()
    d["wbits"] = 5
    with pytest.raises(ConfigError, match="wbits"):
        QuantConfig.from_dict(d)


def test_from_dict_partial_uses_defaults():
    cfg = QuantConfig.from_dict({"wbits": 3, "group_size": 64})
    assert cfg == QuantConfig(wbits=3, group_size=64)


@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(), "rtn-w4g128"),
        (dict(group_size=64), "rtn-w4g64"),
        (dict(group_size=-1, sym=True), "rtn-w4pc-sym"),
        (dict(wbits=3, group_size=32, sym=True), "rtn-w3g32-sym"),
        (dict(wbits=8, group_size=-1), "rtn-w8pc"),
    ],
)
def test_name(kw, name):
    assert QuantConfig(**kw).name == name


def test_dividing_group_sizes():
    assert dividing_group_sizes(576) == [32, 64, 96, 192, 288, 576]
    assert dividing_group_sizes(100) == []
    assert dividing_group_sizes(4096, limit=256) == [32, 64, 128, 256]


def _manifest() -> QuantManifest:
    return QuantManifest(
        recipe=QuantConfig(wbits=3, group_size=64, skip=("down_proj",)),
        linears={"model.layers.0.self_attn.q_proj": LinearEntry(3, 64, False, True),
                 "model.layers.0.mlp.up_proj": LinearEntry(3, 64, False)},
        embeddings=EmbeddingEntry("model.embed_tokens", "lm_head", True),
        skipped={"model.layers.0.mlp.down_proj": "in skip list"},
        compresskit_version="0.1.0",
        files={"model.safetensors": {"bytes": 10, "sha256": "ab"}},
        evaluation={"ppl": 1.5},
        base_model="tiny",
    )


def test_manifest_round_trip():
    m = _manifest()
    d = json.loads(json.dumps(m.to_dict()))
    assert d["quant_method"] == "compresskit" and d["format"] == "gptq_v2"
    assert d["format_version"] == FORMAT_VERSION
    back = QuantManifest.from_dict(d)
    assert back == m
    assert list(back.linears) == list(m.linears)

    m2 = QuantManifest(recipe=QuantConfig(group_size=64), linears={})
    assert QuantManifest.from_dict(json.loads(json.dumps(m2.to_dict()))) == m2


def test_manifest_errors():
    d = _manifest().to_dict()
    with pytest.raises(ConfigError, match="not a compresskit manifest"):
        QuantManifest.from_dict({**d, "quant_method": "gptq"})
    with pytest.raises(ConfigError, match="newer"):
        QuantManifest.from_dict({**d, "format_version": FORMAT_VERSION + 1})
    bad = json.loads(json.dumps(d))
    bad["recipe"]["wbits"] = 5
    with pytest.raises(ConfigError):
        QuantManifest.from_dict(bad)
