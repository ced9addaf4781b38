"""The publishing API: exports that engines read, the model card, and pushing to a hub.

    import compresskit
    compresskit.export_model("smollm2-w4g64", "gptq", "smollm2-w4g64-gptq")        # or gptq-v1, compressed-tensors
    compresskit.push("smollm2-w4g64-gptq", "me/smollm2-w4g64-gptq")                  # one commit

Every artifact ``compresskit.save`` writes carries a README.md model card (`write_card` rewrites it,
e.g. after an evaluation report was added to ``evaluation/``).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .core.fsutil import check_output_dir, dir_size_bytes
from .core.record import record_of
from .export.card import CardParent, parent_from_card, read_card_metadata
from .export.card import write_card as _write
from .export.compressed_tensors import export_compressed_tensors
from .export.gptq import export_gptq
from .export.hub import push_folder
from .export.source import ExportError, NativeSource
from .models import resolve_model
from .models.loading import is_hub_id, split_revision
from .models.embedded import EMBEDDED

EXPORT_FORMATS = ("gptq", "gptq-v1", "compressed-tensors")
EXPORT_DTYPES = ("float16", "float32")


@dataclass
class ExportResult:
    path: Path
    format: str
    notes: list[str] = field(default_factory=list)
    weights_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "notes": self.notes, "weights_bytes": self.weights_bytes}


def public_name(name: str | os.PathLike | None) -> str | None:
    """How a saved or pushed file names a model, a teacher or a data file: an embedded name, a hub id or a
    data spec (``builtin``, ``hf:NAME``) as given; a local path by its last part only (``file:`` specs too),
    so no file compresskit writes holds a local path."""
    if name is None:
        return None
    name = str(name)
    if name.startswith("file:"):
        return "file:" + str(public_name(name[len("file:"):]))
    if name.startswith("hf:"):  # local data files by their last part; hub-relative globs stay
        from .calib.source import map_hf_data_files

        return "hf:" + map_hf_data_files(name[3:], lambda f: Path(f).name if f.startswith(("/", "~")) else f)
    path = Path(name).expanduser()
    if name in EMBEDDED or ("/" not in name and not name.startswith("~")):
        return name
    if is_hub_id(name):
        return name
    return path.name or name


def public_fields(d: Any, key: str = "") -> Any:
    """``d`` (a recipe, a pass summary, a side file: JSON-able) as saved: ``model``, ``teacher`` and ``file:``
    data specs by `public_name`, ``output`` by its last part, no ``work_dir``."""
    if isinstance(d, dict):
        return {k: public_fields(v, k) for k, v in d.items() if k != "work_dir"}
    if isinstance(d, (list, tuple)):
        return [public_fields(v, key) for v in d]
    if isinstance(d, str) and key == "output":
        return Path(d).name
    if isinstance(d, str) and (key in ("model", "teacher") or d.startswith(("file:", "hf:"))):
        return public_name(d)
    return d


def card_parent(name: str | None, path: str | os.PathLike | None = None):
    """What a model loaded from ``name`` (resolved to ``path``) descends from, for its card: the
    embedded model's hub id and licence, a local directory's own card, or a hub id (and its licence
    when its README is in the local hub cache; nothing is fetched)."""
    name = None if name is None else str(name)
    path = Path(path) if path is not None else (Path(name) if name else None)
    size = dir_size_bytes(path) if path is not None and path.is_dir() else None
    if name in EMBEDDED:
        spec = EMBEDDED[name]
        return CardParent(source=name, base_model=spec.hub_id or None, license=spec.license or None, bytes=size)
    if path is not None and path.is_dir() and not _is_hub_id(name, path):
        carried = parent_from_card(path)
        meta = read_card_metadata(path)
        base = carried.base_model if meta.get("compresskit") else None  # a compresskit artifact: its root
        # a local directory is named by its last part only: saved and pushed files never hold a local path
        return CardParent(source=public_name(name or path), base_model=base, license=carried.license, bytes=size)
    license_ = None
    if path is not None and path.is_dir():  # a hub id, downloaded: its card is there
        license_ = parent_from_card(path).license
    elif name and is_hub_id(name):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "README.md")
            if isinstance(cached, str):
                license_ = parent_from_card(Path(cached).parent).license
        except Exception:  # no cache, or an unreadable card: the licence stays unknown
            license_ = None
    repo = None if name is None else split_revision(name)[0]  # org/name@rev: the base model is org/name
    return CardParent(source=name, base_model=repo if repo and repo.count("/") == 1 else None, license=license_)


def _is_hub_id(name: str | None, path: Path) -> bool:
    """``name`` is a hub id whose files sit in the local hub cache at ``path`` (not a directory of the user's)."""
    return bool(name) and is_hub_id(name) and path != Path(name)


def model_parent(model: Any):
    """`card_parent` of a loaded model (its record's source, else its config's name)."""
    source = record_of(model).source
    name = source.name or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return card_parent(name, source.path)


def card_writer(model: Any, evaluation: dict[str, Any] | None, path: str | os.PathLike,
                parent: CardParent | None = None) -> Callable[[Path], None]:
    """What `compresskit.save` calls on its temporary directory: writes the card of the artifact that
    becomes ``path``."""
    parent = parent or model_parent(model)
    name = Path(path).name

    def finalize(directory: Path) -> None:
        _write(directory, name=name, parent=parent, evaluation=evaluation)

    return finalize


def write_card(path: str | os.PathLike, *, evaluation: dict[str, Any] | None = None) -> Path:
    """(Re)write ``path/README.md`` from the artifact's files (the parent comes from its current card);
    returns the card's path. Renders offline."""
    return _write(path, evaluation=evaluation)


def export_model(path: str | os.PathLike, format: str = "gptq", output: str | os.PathLike | None = None, *,
                 overwrite: bool = False, dtype: str = "float16", weights_only: bool = False) -> ExportResult:
    """Export the compresskit checkpoint at ``path`` to ``output`` as ``format``:

    - ``"gptq"``: GPTQ with exact zero points (``checkpoint_format: gptq_v2``; transformers + optimum +
      GPTQModel, vLLM);
    - ``"gptq-v1"``: classic GPTQ (zero - 1); refused, naming the layer, when a zero point is 0;
    - ``"compressed-tensors"``: ``pack-quantized`` (transformers, vLLM), 4- and 8-bit.

    Non-quantized tensors are stored as ``dtype`` (``float16``, what engines expect; ``float32`` keeps
    the embeddings bit-exact). Weight-activation checkpoints export only with ``weights_only``.
    Errors (``ExportError``) say what cannot be expressed and what to do instead."""
    if format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    if output is None:
        raise ExportError("export needs an output directory (--output DIR)")
    check_output_dir(output, overwrite)
    source = NativeSource.read(resolve_model(path))
    parent = parent_from_card(source.path)
    if parent.source is None and parent.base_model is None:
        parent = card_parent(str(path), source.path)
    name = Path(output).name

    def finalize(directory: Path) -> None:
        _write(directory, name=name, parent=parent)

    kw = dict(dtype=dtype, weights_only=weights_only, overwrite=overwrite, finalize=finalize)
    if format == "compressed-tensors":
        out, notes = export_compressed_tensors(source, output, **kw)
    else:
        out, notes = export_gptq(source, output, checkpoint_format="gptq" if format == "gptq-v1" else "gptq_v2", **kw)
    return ExportResult(Path(out), format, notes, dir_size_bytes(out))


PUSH_FORMATS = ("auto", "native", *EXPORT_FORMATS)


def push(path: str | os.PathLike, repo: str, *, private: bool = False, revision: str | None = None,
         token: str | None = None, overwrite: bool = False, endpoint: str | None = None,
         commit_message: str | None = None, attempts: int = 4, backoff: float = 2.0, format: str = "auto"):
    """Push the saved artifact at ``path`` to the hub model repo ``repo`` in one commit (a ``PushResult``).

    ``format``: ``"auto"`` (default) pushes a compresskit-quantized checkpoint as a GPTQ export, which
    transformers (+ optimum + GPTQModel), vLLM and others load without compresskit, so whoever has only the
    hub id gets the right weights; anything else (a float or pruned model, an export) as it is.
    ``"native"`` pushes compresskit's own format (it loads only after ``import compresskit``);
    ``"gptq"``, ``"gptq-v1"``, ``"compressed-tensors"`` export first (`export_model`). A checkpoint a
    format cannot hold (weight-activation, 3-bit compressed-tensors, ...) is refused naming the way out.
    A repo that already holds the same files is left alone; one that holds different files is refused
    (``RepoConflictError``) unless ``overwrite``; bad credentials raise ``PushAuthError`` (use ``token`` or
    ``HF_TOKEN``); transient errors are retried ``attempts`` times."""
    if format not in PUSH_FORMATS:
        raise ExportError(f"push format {format!r} is not one of {', '.join(PUSH_FORMATS)}")
    kw = dict(private=private, revision=revision, token=token, overwrite=overwrite, endpoint=endpoint,
              commit_message=commit_message, attempts=attempts, backoff=backoff)
    target = _push_format(Path(path), format)
    if target == "native":
        return push_folder(path, repo, **kw)
    with tempfile.TemporaryDirectory(prefix=".push-") as tmp:
        try:
            exported = export_model(path, target, Path(tmp) / Path(path).name)
        except ExportError as e:
            if format != "auto":
                raise
            raise ExportError(f"{path} cannot be pushed as GPTQ, the default ({e}); pass --push-format native "
                              "(format='native') to push compresskit's own format, which loads only after "
                              "`import compresskit`") from e
        _write(exported.path, name=repo)  # the card's usage names the hub repo: from_pretrained("org/name")
        return push_folder(exported.path, repo, **kw)


def _push_format(path: Path, format: str) -> str:
    """What ``format="auto"`` means for the artifact at ``path``: gptq for a compresskit-quantized one."""
    if format != "auto":
        return format
    config = path / "config.json"
    if config.is_file():
        q = json.loads(config.read_text()).get("quantization_config") or {}
        if q.get("quant_method") == "compresskit":
            return "gptq"
    return "native"
