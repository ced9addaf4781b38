"""Runtime modules that hold packed weights and compute through a kernel backend.

Built empty (shapes only) before a checkpoint is loaded, or from packed tensors right after
quantization; they hold no quantization logic of their own. A `QuantLinear` asks `backends.select`
for its kernel on the first forward on a device/dtype (``backend`` is ``"auto"`` unless set), prepares
its packed tensors once for that kernel, and reuses them until the weights, device or dtype change.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.formats import GPTQPacked, Int8Rows
from ..core.quant_math import quantize_activations
from . import backends, cpu_native, reference


class QuantLinear(nn.Module):
    """A linear layer stored in the GPTQ layout (exact zero points)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bits: int,
        group_size: int,
        bias: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        abits: int = 16,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.abits = bits, group_size, abits
        self.backend = "auto"  # a name from backends.BACKENDS, or "auto"
        self._kernel: tuple | None = None  # ((backend request, device, dtype), Backend, prepared state)
        specs = GPTQPacked.tensor_specs(in_features, out_features, bits, group_size)
        for name, (shape, tdtype) in specs.items():
            # scales follow the model's float dtype (fp16-exact values); integer tensors stay int32
            tdtype = dtype if tdtype.is_floating_point else tdtype
            self.register_buffer(name, torch.zeros(shape, dtype=tdtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_packed(cls, packed: GPTQPacked, bias: torch.Tensor | None, dtype: torch.dtype,
                    abits: int = 16) -> "QuantLinear":
        m = cls(packed.in_features, packed.out_features, packed.bits, packed.group_size, bias is not None, dtype,
                abits=abits)
        for name, t in packed.tensors().items():
            getattr(m, name).copy_(t)
        if bias is not None:
            m.bias.copy_(bias)
        return m

    def packed(self) -> GPTQPacked:
        return GPTQPacked(
            self.qweight, self.qzeros, self.scales, self.g_idx,
            self.bits, self.group_size, self.in_features, self.out_features,
        )

    def spec(self, name: str = "QuantLinear") -> backends.LayerSpec:
        return backends.LayerSpec(name, self.bits, self.group_size, self.in_features, self.out_features)

    def kernel(self, device: torch.device, dtype: torch.dtype) -> tuple[backends.Backend, object]:
        """The backend serving this layer for inputs on ``device`` in ``dtype``, and its prepared state."""
        key = (self.backend, device, dtype)
        if self._kernel is None or self._kernel[0] != key:
            chosen = backends.select(self.spec(), device, dtype, self.backend)
            self._kernel = (key, chosen, chosen.prepare(self.packed(), device, dtype))
        return self._kernel[1], self._kernel[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.abits < 16:  # simulated weight-activation quantization: no integer kernel here
            x = quantize_activations(x, self.abits)
        backend, state = self.kernel(x.device, x.dtype)
        return backend.forward(state, x, self.bias)

    def _apply(self, fn, recurse: bool = True):  # .to() / .half() / .cuda(): prepared copies are stale
        self._kernel = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):  # new weights: prepared copies are stale
        self._kernel = None
        return super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"group_size={self.group_size}"
        a = "" if self.abits >= 16 else f", abits={self.abits} (simulated)"
        used = f" ({self._kernel[1].name})" if self.backend == "auto" and self._kernel is not None else ""
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, {g}{a}, "
                f"backend={self.backend}{used}")


class _Int8Rows(nn.Module):
    """int8 table [rows, cols] with one scale per row; parameters so transformers can tie them."""

    def __init__(self, rows: int, cols: int, dtype: torch.dtype, device=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(rows, cols, dtype=torch.int8, device=device), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.zeros(rows, dtype=dtype, device=device), requires_grad=False)

    def load_rows(self, rows: Int8Rows) -> None:
        self.weight.data.copy_(rows.weight)
        self.weight_scale.data.copy_(rows.weight_scale)

    def rows(self) -> Int8Rows:
        return Int8Rows(self.weight.data, self.weight_scale.data)


class Int8Embedding(_Int8Rows):
    """Token embedding stored as int8 rows; only the looked-up rows are dequantized."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__(num_embeddings, embedding_dim, dtype, device)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return reference.int8_rows_embedding(ids, self.weight, self.weight_scale, self.weight_scale.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


class Int8Linear(_Int8Rows):
    """Bias-free linear stored as int8 rows (the lm_head; tied to the embedding when the model ties)."""

    def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__(out_features, in_features, dtype, device)
        self.in_features, self.out_features = in_features, out_features

    # the C kernel on CPU for decode-sized inputs (int16 activations where built, float32 with
    # native_exact); set_kernel_backend("reference"/"dense") turns it off, "cpu_exact" makes it exact
    use_native = True
    native_exact = False
    _dense: torch.Tensor | None = None  # the int8 table as floats, kept by `dequantized_cache`
    keep_dense = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep_dense:  # the reference path with the table converted once, not on every call
            if self._dense is None or self._dense.dtype != x.dtype or self._dense.device != x.device:
                self._dense = self.weight.data.to(x.dtype)
            return F.linear(x, self._dense) * self.weight_scale.to(x.dtype)
        rows = x.reshape(-1, x.shape[-1])
        if self.use_native and x.device.type == "cpu" and rows.shape[0] <= 8 and _native_ok():
            y = cpu_native.int8_rows(rows.float().contiguous(), self.weight.data, self.weight_scale.data,
                                     exact=self.native_exact)
            return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return reference.int8_rows_linear(x, self.weight, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, int8 rows"


def _native_ok() -> bool:
    return backends.BACKENDS["cpu_native"].unavailable() is None


def set_kernel_backend(model: nn.Module, backend: str = "auto") -> dict[str, str]:
    """Make every quantized layer of ``model`` compute through ``backend`` ("auto" chooses per layer,
    device and dtype). A forced backend is checked now, against the model's current device and dtype,
    and `backends.BackendError` names the first layer it cannot serve. Returns layer -> backend used."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    chosen = {name: backends.select(m.spec(name), device, dtype, backend).name for name, m in layers.items()}
    for m in layers.values():  # only once every layer passed: a refused backend changes nothing
        m.backend, m._kernel = backend, None
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m.use_native = backend not in ("reference", "dense")
            m.native_exact = backend == "cpu_exact"
    return chosen


@contextmanager
def dequantized_cache(model: nn.Module) -> Iterator[None]:
    """Within the block, every QuantLinear computes with a weight dequantized once (backend "dense":
    the same values the reference path computes on each call), which makes repeated forwards
    (evaluation) fast at the memory cost of a dense model. The previous backend is restored on exit."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    heads = [m for m in model.modules() if isinstance(m, Int8Linear)]
    saved, saved_heads = [m.backend for m in layers], [m.use_native for m in heads]
    try:
        for m in layers:
            m.backend = "dense"
        for m in heads:  # the reference int8 head too (its float table kept), so scores match it exactly
            m.use_native, m.keep_dense = False, True
        yield
    finally:
        for m, b in zip(layers, saved):
            m.backend, m._kernel = b, None
        for m, u in zip(heads, saved_heads):
            m.use_native, m.keep_dense, m._dense = u, False, None
