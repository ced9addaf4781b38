"""The backend table and choice: automatic choice per device, forced backends checked with clear
errors, and a whole quantized model giving the reference's logits through every backend."""
from __future__ import annotations

import pytest
import torch
from _packed import random_packed, rel_err
from conftest import make_tiny_model

import compresskit
from compresskit.core.config import QuantConfig
from compresskit.kernels import backends, cpu_native
from compresskit.kernels.backends import BackendError, LayerSpec, select
from compresskit.kernels.modules import QuantLinear, set_kernel_backend
from compresskit.quant import quantize_rtn

CPU = torch.device("cpu")
NATIVE = backends.BACKENDS["cpu_native"].unavailable() is None


def _layer(bits=4, gs=64, k=128, n=64):
    return LayerSpec("model.layers.0.mlp.up_proj", bits, gs, k, n)


def test_table_lists_every_backend_with_what_it_serves():
    rows = compresskit.kernel_backends()
    assert [r["backend"] for r in rows] == list(backends.BACKENDS)
    by = {r["backend"]: r for r in rows}
    assert by["cpu_int4pack"]["bits"] == "4" and by["triton"]["auto on"] == "cuda"
    assert by["dequant"]["auto on"] == "cuda/cpu" and by["reference"]["auto on"] == "-"


def test_auto_choice_per_device(monkeypatch):
    assert select(_layer(), CPU, torch.float32).name == ("cpu_native" if NATIVE else "dequant")
    # a group size the C kernels cannot start on a word boundary falls through to chunked dequantize
    assert select(_layer(bits=2, gs=24, k=96), CPU, torch.float32).name == "dequant"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert select(_layer(), torch.device("cuda"), torch.float16).name in ("triton", "dequant")
    assert select(_layer(), torch.device("mps"), torch.float16).name == "dequant"


def test_forced_backend_that_cannot_serve_names_layer_reason_and_alternatives(monkeypatch):
    with pytest.raises(BackendError) as e:
        select(_layer(bits=3, gs=64), CPU, torch.float32, "cpu_int4pack")
    msg = str(e.value)
    assert "model.layers.0.mlp.up_proj" in msg and "4-bit weights, not 3-bit" in msg and "dequant" in msg
    with pytest.raises(BackendError, match="out_features divisible by 16"):
        select(_layer(n=40), CPU, torch.float32, "cpu_int4pack")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendError, match="runs on cuda, not cpu"):
        select(_layer(), CPU, torch.float32, "triton")
    with pytest.raises(BackendError, match="unknown kernel backend 'marlin'"):
        select(_layer(), CPU, torch.float32, "marlin")


def test_set_kernel_backend_checks_every_layer_up_front():
    model = make_tiny_model("llama")
    quantize_rtn(model, QuantConfig(wbits=3, group_size=32))
    with pytest.raises(BackendError, match=r"model\.layers\.0\.self_attn\.q_proj"):
        compresskit.set_kernel_backend(model, "cpu_int4pack")
    assert all(m.backend == "auto" for m in model.modules() if isinstance(m, QuantLinear))  # nothing changed
    chosen = compresskit.set_kernel_backend(model, "dequant")
    assert len(chosen) == 14 and set(chosen.values()) == {"dequant"}
    assert all(m.backend == "dequant" for m in model.modules() if isinstance(m, QuantLinear))


def test_prepared_state_is_dropped_when_weights_or_dtype_change():
    packed = random_packed(64, 128, 4, 32)
    m = QuantLinear.from_packed(packed, None, torch.float32)
    x = torch.randn(2, 128)
    y = m(x)
    assert m._kernel is not None
    other = random_packed(64, 128, 4, 32, seed=5)
    m.load_state_dict({**other.tensors()})
    assert m._kernel is None
    assert rel_err(m(x), compresskit.kernels.reference.gptq_linear(x, other)) < 1e-4
    assert not torch.allclose(m(x), y)
    m.half()
    assert m._kernel is None and m(x.half()).dtype == torch.float16


def test_chunked_dequant_matches_reference_across_chunks(monkeypatch):
    monkeypatch.setattr(backends.ChunkedDequant, "CHUNK", 128 * 24)  # 24 columns per chunk
    packed = random_packed(96, 128, 3, 32)
    b = backends.BACKENDS["dequant"]
    x = torch.randn(2, 5, 128)
    y = b.forward(b.prepare(packed, CPU, torch.float32), x, None)
    assert y.shape == (2, 5, 96)
    assert rel_err(y, compresskit.kernels.reference.gptq_linear(x, packed)) < 1e-6


@pytest.mark.parametrize("backend", ["cpu_native", "cpu_exact", "cpu_int4pack", "dequant", "dense", "triton"])
@pytest.mark.parametrize("rows", [1, 12])
def test_whole_model_logits_match_reference(backend, rows):
    if backend.startswith("cpu_") and backend != "cpu_int4pack" and not NATIVE:
        pytest.skip("no C compiler")
    if backend == "triton":
        pytest.importorskip("triton")
    model = make_tiny_model("qwen2")  # q/k/v biases too
    quantize_rtn(model, QuantConfig(wbits=4, group_size=32))  # int8 embeddings and head as by default
    ids = torch.randint(0, 320, (1, rows), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        set_kernel_backend(model, "reference")
        ref = model(ids).logits
        used = set_kernel_backend(model, backend)
        out = model(ids).logits
    assert set(used.values()) == {backend}
    # decode-sized inputs on CPU: cpu_native's GEMV and the int8 head's C kernel round activations to
    # int16 (per 128 features) where built with AVX2; cpu_exact keeps both in float32
    rounded = rows == 1 and NATIVE and cpu_native.has_int16() and backend not in ("cpu_exact", "dense")
    assert rel_err(out, ref) < (1e-4 if rounded else 1e-5)


def test_import_loads_no_kernel():
    """Importing compresskit imports no kernel module and builds nothing: kernels load on first use."""
    import subprocess
    import sys

    code = ("import sys, compresskit; from compresskit.kernels import cpu_native; "
            "print('compresskit.kernels.triton_kernels' in sys.modules, cpu_native._loaded.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "0"]
