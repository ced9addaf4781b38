"""core.arch (family lookup, linear order) and core.fsutil (atomic output directories)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch.nn as nn
from conftest import make_tiny_config, make_tiny_model

from compresskit.core.arch import (
    ARCHITECTURES,
    UnsupportedArchitectureError,
    get_arch,
    get_module,
    set_module,
    supported_model_types,
)
from compresskit.core.fsutil import (
    OutputExistsError,
    atomic_output_dir,
    check_output_dir,
    dir_size_bytes,
    sha256_file,
    write_json_atomic,
)



FAMILIES = ("llama", "qwen2", "mistral")
ORDER = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")



@pytest.mark.parametrize("family", FAMILIES)
def test_get_arch_each_family(family):
    cfg = make_tiny_config(family)
    spec = get_arch(cfg)
    assert spec.family == family
    assert family in spec.model_types
    assert get_arch(SimpleNamespace(config=cfg)) is spec  # a model is looked up through .config


def test_supported_model_types():
    assert supported_model_types() == ["llama", "qwen2", "mistral"]
    assert len(ARCHITECTURES) == 3


@pytest.mark.parametrize("obj", [SimpleNamespace(model_type="gpt2"), SimpleNamespace(), "nope"])
def test_unsupported_arch(obj):
    with pytest.raises(UnsupportedArchitectureError) as ei:
        get_arch(obj)
    msg = str(ei.value)
    for fam in FAMILIES:
        assert fam in msg


def test_unsupported_gpt2_config():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedArchitectureError, match="'gpt2'.*llama, qwen2, mistral"):
        get_arch(GPT2Config())
    assert issubclass(UnsupportedArchitectureError, ValueError)


def test_groups_and_block_linears():
    spec = get_arch(SimpleNamespace(model_type="llama"))
    assert spec.block_linears == ORDER
    sources = [g.source for g in spec.groups]
    assert sources == ["input_layernorm", "self_attn.v_proj", "post_attention_layernorm", None]


@pytest.mark.parametrize("family", FAMILIES)
def test_quantizable_linears_order(family):
    model = make_tiny_model(family)
    spec = get_arch(model)
    lin = spec.quantizable_linears(model)
    expected = [f"model.layers.{i}.{rel}" for i in range(2) for rel in ORDER]
    assert list(lin) == expected
    named = dict(model.named_modules())
    for name, mod in lin.items():
        assert isinstance(mod, nn.Linear)
        assert mod is named[name]
    assert lin["model.layers.0.self_attn.k_proj"].out_features == 32  # 2 KV heads x 16
    assert lin["model.layers.1.mlp.down_proj"].in_features == 128
    assert isinstance(get_module(model, spec.embed), nn.Embedding)
    assert get_module(model, "") is model


def test_set_module():
    model = make_tiny_model("llama")
    new = nn.Identity()
    set_module(model, "model.layers.1.mlp.up_proj", new)
    assert model.model.layers[1].mlp.up_proj is new
    set_module(model, "lm_head", nn.Identity())
    assert isinstance(model.lm_head, nn.Identity)


# ---- fsutil -----------------------------------------------------------------------------------

def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_atomic_success(tmp_path):
    dest = tmp_path / "sub" / "out"
    with atomic_output_dir(dest) as tmp:
        assert tmp != dest and tmp.parent == dest.parent
        assert not dest.exists()
        (tmp / "a.txt").write_text("hello")
    assert (dest / "a.txt").read_text() == "hello"
    assert _leftovers(dest.parent) == []


def test_atomic_body_raises_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(dest) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("boom")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_keyboard_interrupt_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(dest) as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_refuses_existing(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="overwrite"):
        with atomic_output_dir(dest):
            pytest.fail("body must not run")
    assert (dest / "keep.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_overwrite_replaces(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with atomic_output_dir(dest, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (dest / "old.txt").exists()  # the old one stays until the body succeeds
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


def test_atomic_overwrite_failure_keeps_old(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_output_dir(dest, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise ValueError
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path) == []


def test_check_output_dir(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="is a file"):
            check_output_dir(f, overwrite)
    with pytest.raises(OutputExistsError):
        with atomic_output_dir(f, overwrite=True):
            pass
    assert f.read_text() == "x"
    assert check_output_dir(tmp_path / "new", False) == tmp_path / "new"
    assert check_output_dir(str(tmp_path), True) == tmp_path
    with pytest.raises(OutputExistsError):
        check_output_dir(tmp_path, False)
    assert issubclass(OutputExistsError, FileExistsError)


def test_write_json_atomic_and_sizes(tmp_path):
    import hashlib

    p = tmp_path / "x.json"
    write_json_atomic(p, {"b": 1, "a": [1, 2]})
    write_json_atomic(p, {"c": 2})
    assert json.loads(p.read_text()) == {"c": 2}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "m.safetensors").write_bytes(b"1234567")
    (tmp_path / "n.safetensors").write_bytes(b"123")
    assert dir_size_bytes(tmp_path) == 10
    assert sha256_file(tmp_path / "n.safetensors") == hashlib.sha256(b"123").hexdigest()


def test_what_a_killed_run_left_is_cleaned_or_reported(tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f".out.partial-{int(dead.stdout)}-abcd1234"  # a run that was killed mid-write
    live = tmp_path / f".out.partial-{os.getpid()}-0000beef"  # a concurrent run, still writing
    previous = tmp_path / ".out.old-12345678"  # an --overwrite killed between its two renames
    for d in (gone, live, previous):
        d.mkdir()
    (previous / "config.json").write_text("{}")
    with pytest.warns(UserWarning) as caught:
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("x")
    messages = " ".join(str(w.message) for w in caught)
    assert not gone.exists() and live.is_dir() and "interrupted run" in messages
    assert previous.is_dir() and "rename it back to out" in messages  # kept: it was the only copy
    with pytest.warns(UserWarning, match="replaced output"):
        with atomic_output_dir(tmp_path / "out", overwrite=True):
            pass
    assert not previous.exists()  # out exists again: the old copy is garbage now
