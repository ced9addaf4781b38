"""The CPU fast path: a small C library (csrc/cpu_kernels.c) compiled on first use and called with ctypes.

The decode GEMV reads packed GPTQ words (2/4/8 bits; 3-bit weights are widened to 4-bit codes), so a
4-bit layer moves ~8x fewer weight bytes than fp32. At load the words are regrouped once into tiles of
output columns (four of the machine's float vectors wide: 64 with AVX-512, 32 with AVX2, as the
compiled library reports), each contiguous in memory (in the GPTQ layout a tile's rows are a whole row of
words apart, which defeats the hardware prefetcher: measured ~1.5x slower decode). Prefill (many rows)
dequantizes tiles with the same library and hands them to torch's BLAS. The library is
built with the machine's C compiler (``$CC``, gcc, cc or clang) with ``-O3 -march=native -fopenmp``
and cached under ``$COMPRESSKIT_CACHE/kernels`` keyed by source, compiler and CPU, so the build (about
a second) happens once per machine. ``COMPRESSKIT_NO_NATIVE=1`` turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.formats import GPTQPacked
from ..core.fsutil import cache_root
from ..core.packing import pack_int

SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.c"
GEMV_MAX_ROWS = 8  # above this many rows, dequantize column chunks and use BLAS (measured in bench/kernels.py)
CHUNK_ELEMENTS = 1 << 22  # at most this many dequantized weights (16 MB fp32) at a time in prefill
# the last set is for a compiler without OpenMP (e.g. Apple's clang): the same kernels, one thread
_FLAG_SETS = (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"], ["-O3"])
# fp-contract: fused multiply-adds; no-math-errno: lrintf inlines to one instruction
_COMMON = ["-std=gnu11", "-ffp-contract=fast", "-fno-math-errno", "-shared", "-fPIC"]


class NativeUnavailable(RuntimeError):
    """The C library could not be built or loaded here."""


def _compiler() -> str:
    for cc in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if cc and shutil.which(cc):
            return cc
    raise NativeUnavailable("no C compiler found (tried $CC, gcc, cc, clang): install gcc to get the CPU fast "
                            "path, or use backend='dequant'")


def _cpu_id() -> str:
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _build(cc: str) -> Path:
    src = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(src + repr((_FLAG_SETS, _COMMON)).encode() + version.encode() + _cpu_id().encode()).hexdigest()[:16]
    out = cache_root() / "kernels" / f"cpu_kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in _FLAG_SETS:
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
        proc = subprocess.run([cc, *flags, *_COMMON, "-o", str(tmp), str(SOURCE), "-lm"],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            os.replace(tmp, out)  # atomic: a concurrent build of the same key writes the same bytes
            return out
        tmp.unlink(missing_ok=True)
        errors.append(f"{cc} {' '.join(flags)}: {proc.stderr.strip()[-400:]}")
    raise NativeUnavailable("building the CPU kernels failed:\n" + "\n".join(errors))


def library() -> ctypes.CDLL:
    """The loaded library (built on first call); `NativeUnavailable` says why not. A failure is
    remembered: the build is tried once per process, and warned about once."""
    lib = _loaded()
    if isinstance(lib, NativeUnavailable):
        raise lib
    return lib


@functools.lru_cache(maxsize=None)
def _loaded() -> ctypes.CDLL | NativeUnavailable:
    if os.environ.get("COMPRESSKIT_NO_NATIVE") == "1":
        return NativeUnavailable("turned off by COMPRESSKIT_NO_NATIVE=1")
    try:
        return _open()
    except (NativeUnavailable, OSError, subprocess.SubprocessError) as e:
        # a read-only or full cache, a noexec mount, a failing compiler: quantized layers use the
        # dequantize backend instead (same results, slower decode)
        reason = e if isinstance(e, NativeUnavailable) else NativeUnavailable(
            f"the CPU kernels could not be built or loaded ({type(e).__name__}: {e}); set COMPRESSKIT_CACHE to a "
            "writable directory on a filesystem that allows executables, or COMPRESSKIT_NO_NATIVE=1 to skip them")
        warnings.warn(f"compresskit's CPU kernels are unavailable, quantized layers use the slower dequant "
                      f"backend: {str(reason).splitlines()[0]}", RuntimeWarning, stacklevel=4)
        return reason


def _open() -> ctypes.CDLL:
    path = _build(_compiler())
    lib = ctypes.CDLL(str(path))  # torch is already loaded, so its OpenMP runtime is the one used
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.ck_gemv.argtypes = [ptr, i32, ptr, ptr, i64, i64, i64, i64, ptr, i64, ptr, i32]
    lib.ck_gemv.restype = i32
    lib.ck_dequant_tiles.argtypes = [ptr, i64, i32, ptr, ptr, i64, i64, i64, i64, ptr, i32]
    lib.ck_dequant_tiles.restype = i32
    lib.ck_int8_rows.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr, i32]
    lib.ck_int8_rows.restype = None
    lib.ck_gemv_i16.argtypes = lib.ck_gemv.argtypes
    lib.ck_gemv_i16.restype = i32
    lib.ck_int8_rows_i16.argtypes = lib.ck_int8_rows.argtypes
    lib.ck_int8_rows_i16.restype = i32
    for name in ("ck_tile_width", "ck_has_i16"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = i32
    return lib


def unavailable_reason() -> str | None:
    try:
        library()
    except NativeUnavailable as e:
        return str(e)
    return None


def tile_width() -> int:
    """Output columns per tile (NB in the C source): four float vectors of the machine it was built for."""
    return int(library().ck_tile_width())


def has_int16() -> bool:
    """Whether this build has the int16-activation kernels (x86 with AVX2)."""
    return bool(library().ck_has_i16())


@dataclass
class NativeWeights:
    """A layer prepared for the C kernels: words, scales and zeros regrouped into tiles of `tile` columns."""

    qt: torch.Tensor  # int32 [tiles, K / (32 / bits), tile]
    st: torch.Tensor  # float32 [tiles, G, tile] scales (0 in padding columns)
    zt: torch.Tensor  # float32 [tiles, G, tile] zero points
    bits: int
    group_size: int  # K for per-channel
    in_features: int
    out_features: int
    args: tuple | None = None  # the layer's own C arguments, bound on first use
    fns: tuple = ()  # (fast, exact) C functions, bound with args

    @property
    def tile(self) -> int:
        return self.qt.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qt, self.st, self.zt))


def group_size_ok(bits: int, group_size: int) -> bool:
    """Groups must start on a packed-word boundary (after 3 -> 4 widening)."""
    word_bits = 4 if bits == 3 else bits
    return group_size == -1 or group_size % (32 // word_bits) == 0


def _tiles(t: torch.Tensor, tile: int) -> torch.Tensor:
    """``[rows, N]`` -> ``[ceil(N / tile), rows, tile]``, zero-padded on the right."""
    rows, n = t.shape
    pad = (-n) % tile
    if pad:
        t = torch.cat([t, t.new_zeros(rows, pad)], dim=1)
    return t.reshape(rows, -1, tile).permute(1, 0, 2).contiguous()


def prepare(packed: GPTQPacked) -> NativeWeights:
    q_words = packed.qweight
    bits = packed.bits
    if bits == 3:  # one-time widening: 3-bit codes straddle words; 4-bit codes never do
        q_words, bits = pack_int(packed.codes(), 4).t(), 4
    zeros = packed.zero_points()  # [G, N]
    gs = packed.in_features if packed.group_size == -1 else packed.group_size
    nb = tile_width()
    return NativeWeights(_tiles(q_words.cpu(), nb), _tiles(packed.scales.float().cpu(), nb),
                         _tiles(zeros.float().cpu(), nb), bits, gs, packed.in_features, packed.out_features)


def _threads() -> int:
    return torch.get_num_threads()


def gemv(x: torch.Tensor, w: NativeWeights, out: torch.Tensor | None = None, exact: bool = False) -> torch.Tensor:
    """``x [M, K] float32`` -> ``[M, N]`` through the packed-word kernel (best for few rows). Where the
    build has it (`has_int16`), the activations are rounded to int16 per chunk of 128 features (relative
    error ~1e-5) for ~2x fewer instructions per weight; ``exact=True`` keeps float32 activations."""
    _check_rows(x, w.in_features)
    y = torch.empty(x.shape[0], w.out_features, dtype=torch.float32) if out is None else out
    _check_out(y, (x.shape[0], w.out_features))
    _gemv(x, w, y, exact)
    return y


def _gemv(x: torch.Tensor, w: NativeWeights, y: torch.Tensor, exact: bool = False) -> None:
    """`gemv` on checked tensors (contiguous float32, any leading shape): the per-token hot path, a few
    microseconds of Python."""
    if w.args is None:
        lib = library()
        w.args = (w.qt.data_ptr(), w.bits, w.st.data_ptr(), w.zt.data_ptr(), w.st.shape[1], w.group_size,
                  w.in_features, w.out_features)
        w.fns = (lib.ck_gemv_i16 if lib.ck_has_i16() else lib.ck_gemv, lib.ck_gemv)
    rows = x.numel() // w.in_features
    _raise_for(w.fns[exact](*w.args, x.data_ptr(), rows, y.data_ptr(), _threads()), w)


def linear(x: torch.Tensor, w: NativeWeights, exact: bool = False) -> torch.Tensor:
    """``x [..., K]`` (any float dtype) ``@ dequant(W).T`` -> ``[..., N]`` in the dtype of ``x``: what
    the backend calls on every forward (no re-checks of the prepared weights)."""
    if x.shape[-1] != w.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {w.in_features}")
    x32 = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
    if x32.numel() <= GEMV_MAX_ROWS * w.in_features:
        y = torch.empty(x.shape[:-1] + (w.out_features,))
        _gemv(x32, w, y, exact)
    else:
        y = _prefill(x32.reshape(-1, w.in_features), w).view(x.shape[:-1] + (w.out_features,))
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _raise_for(rc: int, w: NativeWeights) -> None:
    if rc == -2:
        raise MemoryError("the CPU kernel could not allocate its activation buffer")
    if rc == -1:
        raise ValueError(f"the CPU kernel does not support {w.bits}-bit words")
    if rc:
        raise ValueError(f"the int16 CPU kernel cannot serve this layer (tile {w.tile}, K={w.in_features})")


def dequant_tiles(w: NativeWeights, t0: int, t1: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """``dequant(W)`` of output tiles ``[t0, t1)`` transposed: float32 ``[K, (t1 - t0) * tile]`` (columns
    past out_features are zero)."""
    tiles = w.qt.shape[0]
    if not 0 <= t0 < t1 <= tiles:
        raise ValueError(f"tile range [{t0}, {t1}) is outside 0..{tiles}")
    wt = torch.empty(w.in_features, (t1 - t0) * w.tile, dtype=torch.float32) if out is None else out
    _check_out(wt, (w.in_features, (t1 - t0) * w.tile))
    library().ck_dequant_tiles(w.qt.data_ptr(), w.in_features, w.bits, w.st.data_ptr(), w.zt.data_ptr(),
                               w.st.shape[1], w.group_size, t0, t1, wt.data_ptr(), _threads())
    return wt


def matmul(x: torch.Tensor, w: NativeWeights) -> torch.Tensor:
    """``x [M, K] float32 @ dequant(W).T``: the GEMV for few rows, dequantized tiles + BLAS otherwise."""
    return gemv(x, w) if x.shape[0] <= GEMV_MAX_ROWS else _prefill(x, w)


def _prefill(x: torch.Tensor, w: NativeWeights) -> torch.Tensor:
    """Many rows: dequantize bounded chunks of tiles (exact) and hand them to torch's BLAS."""
    tiles = w.qt.shape[0]
    step = max(1, CHUNK_ELEMENTS // (w.in_features * w.tile))
    if step >= tiles:
        return (x @ dequant_tiles(w, 0, tiles))[:, :w.out_features]
    y = torch.empty(x.shape[0], w.out_features, dtype=torch.float32)
    for t0 in range(0, tiles, step):
        t1 = min(t0 + step, tiles)
        n0, n1 = t0 * w.tile, min(t1 * w.tile, w.out_features)
        y[:, n0:n1] = (x @ dequant_tiles(w, t0, t1))[:, :n1 - n0]
    return y


def int8_rows(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None,
              exact: bool = False):
    """``x [M, K] float32 @ (weight int8 [N, K] * scale[N, None]).T`` without materializing the table
    (int16 activations as in `gemv` where the build has them, unless ``exact``)."""
    _check_rows(x, weight.shape[1])
    if weight.dtype != torch.int8 or not weight.is_contiguous():
        raise ValueError("weight must be a contiguous int8 [N, K] table")
    s = scale.float().contiguous()
    y = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32) if out is None else out
    _check_out(y, (x.shape[0], weight.shape[0]))
    lib = library()
    args = (x.data_ptr(), x.shape[0], weight.shape[1], weight.data_ptr(), s.data_ptr(), weight.shape[0],
            y.data_ptr(), _threads())
    if exact or not lib.ck_has_i16():
        lib.ck_int8_rows(*args)
    elif lib.ck_int8_rows_i16(*args):
        raise MemoryError("the CPU kernel could not allocate its activation buffer")
    return y


def _check_rows(x: torch.Tensor, k: int) -> None:
    if x.dim() != 2 or x.shape[1] != k or x.dtype != torch.float32 or not x.is_contiguous() or x.device.type != "cpu":
        raise ValueError(f"expected a contiguous float32 CPU tensor [rows, {k}], got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")


def _check_out(y: torch.Tensor, shape: tuple[int, int]) -> None:
    if tuple(y.shape) != shape or y.dtype != torch.float32 or not y.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}")
