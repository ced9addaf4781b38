"""The kernel backend table: which kernel serves which layer, and the automatic choice.

Each backend is a small adapter over one kernel: it declares the bit widths, group sizes, devices
and dtypes it serves (`problem` says why not, in words), prepares a layer's packed tensors once into
the layout it prefers, and computes ``x @ W.T + bias``. The storage format never changes: only the
prepared copy does. `select` picks, per layer, device and dtype, the first backend of `AUTO_ORDER`
that can serve it, or checks a forced one and raises `BackendError` naming the layer and the fix.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..core.errors import CompresskitError
from ..core.formats import GPTQPacked
from ..core.packing import unpack_int
from ..core.quant_math import dequantize
from . import cpu_native, reference


class BackendError(CompresskitError, ValueError):
    """A forced backend cannot serve a layer, or the backend name is unknown."""


@dataclass(frozen=True)
class LayerSpec:
    """What a backend needs to know to decide whether it can serve a layer."""

    name: str
    bits: int
    group_size: int
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Backend(ABC):
    name: str
    devices: tuple[str, ...]
    bits: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    group_sizes: str  # in words, for the table
    summary: str

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine at all (a missing package or compiler)."""
        return None

    def problem(self, layer: LayerSpec, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why this backend cannot serve this layer here; None when it can."""
        if device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)}, not {device.type}"
        if layer.bits not in self.bits:
            return f"serves {'/'.join(map(str, self.bits))}-bit weights, not {layer.bits}-bit"
        if dtype not in self.dtypes:
            return f"takes {'/'.join(_dtype_name(d) for d in self.dtypes)} activations, not {_dtype_name(dtype)}"
        return self.layer_problem(layer) or self.unavailable()

    def layer_problem(self, layer: LayerSpec) -> str | None:
        return None

    def prepare(self, packed: GPTQPacked, device: torch.device, dtype: torch.dtype) -> Any:
        return packed

    @abstractmethod
    def forward(self, state: Any, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W.T + bias`` from the prepared state, in the dtype of ``x``."""


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


class Reference(Backend):
    """Dequantize the whole weight on every call, then a dense matmul: the oracle the others are tested against."""

    def forward(self, state: GPTQPacked, x, bias):
        return reference.gptq_linear(x, state, bias)


class Dense(Backend):
    """Dequantize once and keep the dense weight: as fast as the float model, and as large."""

    def prepare(self, packed, device, dtype):
        return packed.dequantize(dtype).to(device)

    def forward(self, state: torch.Tensor, x, bias):
        return F.linear(x, state, None if bias is None else bias.to(x.dtype))


class ChunkedDequant(Backend):
    """Dequantize a chunk of output channels at a time and multiply: any device, bits and group size,
    with at most ``CHUNK`` dense weights alive at once."""

    CHUNK = 1 << 22

    def prepare(self, packed, device, dtype):
        zeros = packed.zero_points().t()  # [N, G]
        return packed, zeros, packed.scales.t()

    def forward(self, state, x, bias):
        packed, zeros, scales = state
        k, n = packed.in_features, packed.out_features
        cols = max(1, self.CHUNK // k)
        if x.shape[-1] != k:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {k}")
        parts = []
        for n0 in range(0, n, cols):
            n1 = min(n0 + cols, n)
            q = unpack_int(packed.qweight[:, n0:n1].t(), packed.bits, k)
            w = dequantize(q, scales[n0:n1], zeros[n0:n1], packed.group_size, x.dtype)
            parts.append(F.linear(x, w))
        return _add_bias(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1), bias)


class CpuNative(Backend):
    """compresskit's C kernels (built on first use with the machine's compiler): a packed-word GEMV for
    up to 8 rows, chunked dequantize + BLAS above. Float32 math (other dtypes are converted). On x86
    with AVX2 the GEMV rounds activations to int16 per 128 features (relative error ~3e-5, about 2x
    faster); `CpuExact` is the same kernel with float32 activations."""

    exact = False

    def unavailable(self):
        return cpu_native.unavailable_reason()

    def layer_problem(self, layer):
        if not cpu_native.group_size_ok(layer.bits, layer.group_size):
            return f"group_size {layer.group_size} does not start groups on packed-word boundaries"
        return None

    def prepare(self, packed, device, dtype):
        return cpu_native.prepare(packed)

    def forward(self, state, x, bias):
        return _add_bias(cpu_native.linear(x, state, self.exact), bias)


class CpuExact(CpuNative):
    """`CpuNative` with float32 activations in the GEMV too: the reference's numbers to ~1e-6."""

    exact = True


class CpuInt4Pack(Backend):
    """PyTorch's int4 packed matmul for CPU (``aten._weight_int4pack_mm_for_cpu``). Needs whole groups of
    32/64/128/256 and out_features divisible by 16. Measured slower than the dense fp32 model on the
    development CPU (bench/kernels.py), so automatic choice does not pick it; ask for it by name."""

    def layer_problem(self, layer):
        if layer.group_size not in (32, 64, 128, 256):
            return f"needs group size 32/64/128/256, not {layer.group_size}"
        if layer.in_features % layer.group_size:
            return f"needs whole groups (in_features={layer.in_features}, group_size={layer.group_size})"
        if layer.out_features % 16:
            return f"needs out_features divisible by 16, not {layer.out_features}"
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
            return "this torch has no _weight_int4pack_mm_for_cpu"
        return None

    def prepare(self, packed, device, dtype):
        q, zero, scale = packed.unpack()  # [N, K], [N, G], [N, G]
        w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        # the op computes (q - 8) * s + b, so b = (8 - zero) * s gives s * (q - zero)
        s = scale.float().t()
        b = (8 - zero.float()).t() * s
        return w, torch.stack([s, b], dim=-1).to(dtype).contiguous(), packed.group_size, packed.out_features

    def forward(self, state, x, bias):
        w, sz, gs, n = state
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(_rows(x).contiguous(), w, gs, sz)
        return _add_bias(y.reshape(*x.shape[:-1], n), bias)


class Triton(Backend):
    """Triton kernels dequantizing inside the matmul: split-K GEMV for up to 8 rows, tiled GEMM above.
    On the CPU only under the Triton interpreter (``TRITON_INTERPRET=1``, for tests)."""

    def unavailable(self):
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install 'compresskit[triton]')"
        return None

    def problem(self, layer, device, dtype):
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            if dtype == torch.bfloat16:
                return "bf16 is wrong in the Triton interpreter; use float16/float32 on the CPU"
            device = torch.device("cuda")  # the interpreter runs the CUDA code path on CPU tensors
        return super().problem(layer, device, dtype)

    def prepare(self, packed, device, dtype):
        from . import triton_kernels

        return triton_kernels.prepare(packed, device, dtype)

    def forward(self, state, x, bias):
        from . import triton_kernels

        y = triton_kernels.matmul(_rows(x), state)
        return _add_bias(y.reshape(*x.shape[:-1], state.out_features), bias)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Triton("triton", ("cuda",), (2, 3, 4, 8), _FLOATS, "any", "dequantize inside the matmul (GPU)"),
    CpuNative("cpu_native", ("cpu",), (2, 3, 4, 8), _FLOATS, "k*32/bits, -1",
              "C kernels reading packed words (CPU)"),
    CpuExact("cpu_exact", ("cpu",), (2, 3, 4, 8), _FLOATS, "k*32/bits, -1",
             "cpu_native with float32 activations (exact, slower)"),
    CpuInt4Pack("cpu_int4pack", ("cpu",), (4,), _FLOATS, "32..256, whole",
                "PyTorch's int4 packed CPU matmul"),
    ChunkedDequant("dequant", ("cpu", "cuda", "mps", "xpu"), (2, 3, 4, 8), _FLOATS, "any",
                   "chunked dequantize, then a dense matmul"),
    Dense("dense", ("cpu", "cuda", "mps", "xpu"), (2, 3, 4, 8), _FLOATS, "any",
          "dequantize once, keep dense (fast, dense-sized)"),
    Reference("reference", ("cpu", "cuda", "mps", "xpu"), (2, 3, 4, 8), _FLOATS, "any",
              "dequantize the whole weight every call (the test oracle)"),
)}
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("triton", "dequant"), "cpu": ("cpu_native", "dequant")}
DEFAULT_ORDER = ("dequant",)


def select(layer: LayerSpec, device: torch.device, dtype: torch.dtype, requested: str = "auto") -> Backend:
    """The backend that computes this layer: the first of `AUTO_ORDER` that can, or the forced one."""
    if requested == "auto":
        for name in AUTO_ORDER.get(device.type, DEFAULT_ORDER):
            if BACKENDS[name].problem(layer, device, dtype) is None:
                return BACKENDS[name]
        raise BackendError(f"no backend can serve {layer.name} on {device} with {_dtype_name(dtype)}: "
                           + explain(layer, device, dtype))
    if requested not in BACKENDS:
        raise BackendError(f"unknown kernel backend {requested!r}; choose 'auto' or one of {', '.join(BACKENDS)}")
    backend = BACKENDS[requested]
    why = backend.problem(layer, device, dtype)
    if why is not None:
        able = [n for n, b in BACKENDS.items() if b.problem(layer, device, dtype) is None]
        raise BackendError(f"backend {requested!r} cannot serve {layer.name} ({layer.bits}-bit, group_size "
                           f"{layer.group_size}, {layer.in_features}->{layer.out_features}) on {device} with "
                           f"{_dtype_name(dtype)}: {why}. Backends that can: {', '.join(able) or 'none'}; "
                           "or use backend='auto'")
    return backend


def explain(layer: LayerSpec, device: torch.device, dtype: torch.dtype) -> str:
    return "; ".join(f"{n}: {b.problem(layer, device, dtype) or 'ok'}" for n, b in BACKENDS.items())


def table() -> list[dict[str, str]]:
    """One row per backend: what it serves and whether it can run here (for docs and ``compresskit kernels``)."""
    rows = []
    for name, b in BACKENDS.items():
        auto = [d for d, order in AUTO_ORDER.items() if name in order]
        here = b.unavailable() or ("no CUDA device" if b.devices == ("cuda",) and not torch.cuda.is_available()
                                   else "yes")
        rows.append({"backend": name, "devices": "any" if len(b.devices) > 2 else "/".join(b.devices),
                     "bits": "/".join(map(str, b.bits)), "group sizes": b.group_sizes,
                     "dtypes": "/".join(_dtype_name(d) for d in b.dtypes), "auto on": "/".join(auto) or "-",
                     "here": here, "what": b.summary})
    return rows
