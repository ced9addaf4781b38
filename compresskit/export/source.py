"""Reading a saved compresskit checkpoint for export, and what every export writer shares.

An export reads a native directory (config.json with the manifest, safetensors, tokenizer files),
checks that the target format can express it, rewrites the tensors, and writes a new directory
atomically with a ``compresskit_export`` record in its config.json naming what it came from.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch

from ..core.arch import get_arch
from ..core.errors import CompresskitError
from ..core.formats import stored_packed_names
from ..core.fsutil import atomic_output_dir
from ..core.manifest import QUANT_METHOD, LinearEntry, QuantManifest
from ..core.version import __version__
from .native import DEFAULT_SHARD_BYTES, write_safetensors

EXPORT_RECORD_VERSION = 1
FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# written anew by the exporter, never copied from the source directory
_REWRITTEN = {"config.json", "README.md", "model.safetensors.index.json"}


class ExportError(CompresskitError, ValueError):
    """The checkpoint cannot be exported as asked; the message says why and what to do instead."""


class NotExpressibleError(ExportError):
    """The target format has no way to store part of this checkpoint."""


@dataclass
class NativeSource:
    """A saved compresskit directory, read without building the model."""

    path: Path
    config: dict[str, Any]
    manifest: QuantManifest | None
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def read(cls, path: str | Path) -> "NativeSource":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ExportError(f"{path} has no config.json: pass a directory written by compresskit "
                              "(quantize / prune / save)")
        config = json.loads((path / "config.json").read_text())
        qcfg = config.get("quantization_config")
        manifest = None
        if qcfg is not None:
            if qcfg.get("quant_method") != QUANT_METHOD:
                raise ExportError(f"{path} is already a {qcfg.get('quant_method')!r} checkpoint; export reads "
                                  "compresskit checkpoints (export from the compresskit directory it came from)")
            manifest = QuantManifest.from_dict(qcfg)
        return cls(path, config, manifest)

    @property
    def pruning(self) -> dict[str, Any] | None:
        return self.config.get("compresskit_pruning")

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored tensor (CPU), read once."""
        if self._tensors is None:
            from safetensors.torch import load_file

            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise ExportError(f"{self.path} holds no .safetensors file")
            self._tensors = {}
            for f in files:
                self._tensors.update(load_file(str(f)))
            if self.manifest is not None:  # format 2 stores the packed words as NAME.weight
                for memory, stored in stored_packed_names(self.manifest.linears).items():
                    if stored in self._tensors and memory not in self._tensors:
                        self._tensors[memory] = self._tensors.pop(stored)
        return self._tensors

    def side_files(self) -> list[Path]:
        """Files carried over unchanged (tokenizer, generation config, pruning.json, evaluation/)."""
        out = []
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path)
            if not p.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            if p.suffix == ".safetensors" or str(rel) in _REWRITTEN:
                continue
            out.append(p)
        return out

    def block_linears(self) -> tuple[str, list[str]]:
        """``(blocks path, every block linear's full name)`` from the config (no model needed)."""
        spec = get_arch(SimpleNamespace(model_type=self.config.get("model_type")))
        n = int(self.config["num_hidden_layers"])
        return spec.blocks, [f"{spec.blocks}.{i}.{rel}" for i in range(n) for rel in spec.block_linears]

    def require_quantized(self, what: str) -> QuantManifest:
        if self.manifest is not None:
            return self.manifest
        if self.pruning is not None:
            raise NotExpressibleError(
                f"{self.path} is a pruned float checkpoint (no quantized weights): {what} describes quantized weights "
                "only. It already loads in stock transformers and vLLM as it is; to export it, quantize it first "
                f"(compresskit quantize {self.path} --output DIR) and export DIR")
        raise NotExpressibleError(f"{self.path} is a float checkpoint with no quantized weights: {what} describes "
                                  "quantized weights only; quantize it first (compresskit quantize)")


def uniform_entry(manifest: QuantManifest, what: str) -> LinearEntry:
    """The one (bits, group_size, sym) every quantized linear shares (a format-wide config needs it)."""
    entries = list(manifest.linears.items())
    if not entries:
        raise NotExpressibleError("the manifest lists no quantized linear: nothing to export")
    name0, first = entries[0]
    for name, e in entries[1:]:
        if (e.bits, e.group_size, e.sym) != (first.bits, first.group_size, first.sym):
            raise NotExpressibleError(
                f"{what} has one bits/group_size/sym setting per checkpoint, but {name} is "
                f"w{e.bits} g{e.group_size} sym={e.sym} while {name0} is w{first.bits} g{first.group_size} "
                f"sym={first.sym}")
    return first


def activation_notes(manifest: QuantManifest, what: str, weights_only: bool) -> list[str]:
    """Weight-activation recipes: refuse unless ``weights_only``, then say what was dropped."""
    abits = sorted({e.abits for e in manifest.linears.values() if e.abits < 16}
                   | ({manifest.attention_abits} if manifest.attention_abits < 16 else set()))
    if not abits:
        return []
    msg = (f"this checkpoint quantizes activations to {abits[0]} bits (simulated, per token), which {what} cannot "
           "express: only the weights export")
    if not weights_only:
        raise NotExpressibleError(msg + "; pass --weights-only (weights_only=True) to export the weights anyway "
                                        "(the exported model then runs with full-precision activations)")
    return [msg + " (exported with --weights-only: activations run in full precision)"]


def pruning_notes(source: NativeSource) -> list[str]:
    """Pruned checkpoints export as they are: compresskit prunes to uniform widths, a standard config."""
    p = source.pruning
    if not p:
        return []
    c = source.config
    return [f"structurally pruned by compresskit to uniform widths ({c.get('num_hidden_layers')} layers, "
            f"{c.get('num_attention_heads')} heads / {c.get('num_key_value_heads')} KV heads, MLP "
            f"{c.get('intermediate_size')}): a standard {c.get('model_type')} config, nothing extra to load it"]


def check_groups(manifest: QuantManifest, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Whole groups only (a ragged last group is not something the engines' kernels take)."""
    for name, e in manifest.linears.items():
        in_f = tensors[f"{name}.g_idx"].numel()
        if e.group_size != -1 and in_f % e.group_size:
            raise NotExpressibleError(
                f"{name}: in_features={in_f} is not a multiple of group_size {e.group_size} (a ragged last group), "
                f"which {what} loaders do not take; quantize with a group size that divides it")


def to_float(name: str, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float tensor in the export's dtype; values that overflow it are an error."""
    out = t.to(dtype)
    if torch.isfinite(t).all() and not torch.isfinite(out).all():
        raise ExportError(f"{name} has values beyond the range of {dtype}; export with --dtype float32")
    return out.contiguous()


def dense_tensors(source: NativeSource, dtype: torch.dtype,
                  skip: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor the export keeps as it is (floats in ``dtype``), with int8-row embeddings and lm_head
    dequantized to ``dtype``; ``skip`` are the names the format writer replaces. Returns notes too."""
    tensors, manifest = source.tensors(), source.manifest
    out, notes, rows = {}, [], {}
    if manifest is not None and manifest.embeddings is not None:
        emb = manifest.embeddings
        rows = {m: f"{m}.weight" for m in (emb.embed, None if emb.tied else emb.lm_head) if m}
    for module, key in rows.items():
        w, scale = tensors[key], tensors[f"{module}.weight_scale"]
        out[key] = (w.float() * scale.float()[:, None]).to(dtype).contiguous()
    if rows:
        notes.append(f"{', '.join(rows)} stored as int8 rows in compresskit: dequantized to "
                     f"{str(dtype).removeprefix('torch.')} (the engines read float embeddings and lm_head)")
    done = set(rows.values()) | {f"{m}.weight_scale" for m in rows}
    for name, t in tensors.items():
        if name in done or name in skip:
            continue
        out[name] = to_float(name, t, dtype) if t.is_floating_point() else t.contiguous()
    return out, notes


def export_record(source: NativeSource, fmt: str, notes: list[str]) -> dict[str, Any]:
    """The ``compresskit_export`` entry of the exported config.json: what this came from (the evaluation
    travels in its own file, carried over with the other side files)."""
    m = source.manifest
    return {
        "version": EXPORT_RECORD_VERSION,
        "format": fmt,
        "compresskit_version": __version__,
        "source": source.path.resolve().name,  # the directory's name, never a local path
        "source_files": {} if m is None else m.files,
        "recipe": None if m is None else m.recipe.to_dict(),
        "base_model": None if m is None else m.base_model,
        "notes": list(notes),
    }


def write_export(source: NativeSource, output: str | Path, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                 *, overwrite: bool, finalize: Callable[[Path], None] | None = None) -> Path:
    """Write tensors + config.json + the carried-over files into ``output`` atomically."""
    output = Path(output)
    if output.resolve() == source.path.resolve():
        raise ExportError(f"the export output {output} is the source directory; choose another --output")
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        files = write_safetensors(tensors, tmp, DEFAULT_SHARD_BYTES)
        config = dict(config)
        config["compresskit_export"] = {**config.get("compresskit_export", {}), "files": files}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for f in source.side_files():
            dest = tmp / f.relative_to(source.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        if finalize is not None:
            finalize(tmp)
    return output


__all__ = ["ExportError", "FLOAT_DTYPES", "NativeSource", "NotExpressibleError", "activation_notes",
           "check_groups", "dense_tensors", "export_record", "pruning_notes", "to_float", "uniform_entry",
           "write_export"]
