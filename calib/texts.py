"""Reading calibration text: shipped corpus, local files, model-generated text, Hugging Face datasets.

Every loader returns ``list[str]``, one string per document / record; empty documents are dropped.
The shipped corpus is globbed at call time from ``calib/data/{train,heldout}/*.txt``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from ..core.errors import CompresskitError, ConfigError, InputError, MissingFileError
from ..core.fsutil import iter_jsonl
from .source import DEFAULT_FIELD, FILE_SUFFIXES, CalibSource, parse_source

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS: tuple[str, ...] = ("train", "heldout")
GEN_BATCH_SIZE = 16  # sequences generated per `model.generate` call for the "generated" source


class DatasetLoadError(CompresskitError, RuntimeError):
    """A Hugging Face dataset source could not be loaded (unknown name, config or split; offline; no network)."""


def builtin_texts(split: Literal["train", "heldout"] = "train") -> list[str]:
    """The shipped documents of ``split``, one string per ``*.txt`` file (sorted by file name).

    ``train`` is for calibration; ``heldout`` is reserved for evaluation and is never used for calibration.
    """
    if split not in SPLITS:
        raise InputError(f"unknown builtin split {split!r}; expected one of {SPLITS}")
    folder = DATA_DIR / split
    texts = [_read_txt(p) for p in sorted(folder.glob("*.txt"))]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise FileNotFoundError(f"no builtin calibration documents found in {folder} (expected *.txt files)")
    return texts


def heldout_text() -> str:
    """All heldout documents joined with a blank line, for perplexity evaluation."""
    return "\n\n".join(builtin_texts("heldout"))


def _read_txt(path: Path) -> str:
    """A whole text file as one document (UTF-8, undecodable bytes replaced)."""
    return path.read_text(encoding="utf-8", errors="replace")


def _record_text(record: Any, field: str, where: str) -> str:
    """The text of one JSON record: the record itself if it is a string, else ``record[field]``."""
    if isinstance(record, str):
        return record
    if isinstance(record, dict):
        if field not in record:
            raise InputError(f"{where}: record has no field {field!r} (fields: {sorted(record)}); use 'file:PATH#FIELD'")
        value = record[field]
        if not isinstance(value, str):
            raise InputError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
        return value
    raise InputError(f"{where}: expected a JSON object or string, got {type(record).__name__}")


def _read_jsonl(path: Path, field: str) -> list[str]:
    """One document per non-blank line of a JSON-lines file."""
    return [_record_text(record, field, where) for where, record in iter_jsonl(path, errors="replace")]


def _read_json(path: Path, field: str) -> list[str]:
    """A JSON file holding a list of strings/records, or one record whose field is a string or list of strings."""
    try:
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, list):
        return [_record_text(r, field, f"{path}[{i}]") for i, r in enumerate(data)]
    if isinstance(data, dict) and isinstance(data.get(field), list):
        return [_record_text(r, field, f"{path}.{field}[{i}]") for i, r in enumerate(data[field])]
    return [_record_text(data, field, str(path))]


def _read_one(path: Path, field: str) -> list[str]:
    """Dispatch on the file suffix."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [_read_txt(path)]
    if suffix == ".jsonl":
        return _read_jsonl(path, field)
    if suffix == ".json":
        return _read_json(path, field)
    if suffix in (".parquet", ".csv"):  # columnar files: read through datasets (its parquet / csv builders)
        import datasets

        ds = datasets.load_dataset(suffix[1:], data_files=str(path), split="train", streaming=True)
        return dataset_texts(ds, None, None, what=str(path), field=field)
    raise InputError(f"unsupported calibration file type {suffix!r} for {path}; expected one of {FILE_SUFFIXES}")


def file_texts(src: CalibSource) -> list[str]:
    """Documents from a ``file`` source: one file, or every supported file under a directory (sorted, recursive)."""
    path, field = src.path, src.field
    if not path.exists():
        raise MissingFileError(f"calibration source file not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise InputError(f"calibration directory {path} holds no {'/'.join(FILE_SUFFIXES)} files")
    else:
        files = [path]
    texts = [t for f in files for t in _read_one(f, field)]
    return [t for t in texts if t.strip()]


def _start_token_id(model: Any, tokenizer: Any) -> int:
    """BOS id from the tokenizer, else the model config, else EOS (many causal LMs start from it)."""
    for tid in (tokenizer.bos_token_id, getattr(model.config, "bos_token_id", None), tokenizer.eos_token_id):
        if isinstance(tid, int):
            return tid
    raise InputError("the 'generated' calibration source needs a tokenizer or model config with a BOS or EOS token id")


@torch.no_grad()
def generate_texts(model: Any, tokenizer: Any, n_generated: int, gen_tokens: int, seed: int = 0) -> list[str]:
    """Sample ``n_generated`` texts of up to ``gen_tokens`` new tokens each from the BOS token (plain sampling).

    Uses ``torch.manual_seed(seed)``, temperature 1.0, no top-k / top-p truncation, batches of `GEN_BATCH_SIZE`.
    """
    if n_generated < 1 or gen_tokens < 1:
        raise ConfigError(f"n_generated and gen_tokens must be >= 1, got {n_generated} and {gen_tokens}")
    start = _start_token_id(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    texts: list[str] = []
    for first in range(0, n_generated, GEN_BATCH_SIZE):
        batch = min(GEN_BATCH_SIZE, n_generated - first)
        ids = torch.full((batch, 1), start, dtype=torch.long, device=device)
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
            top_k=0, top_p=1.0, max_new_tokens=gen_tokens, pad_token_id=pad,
        )
        texts.extend(tokenizer.decode(seq[1:].tolist(), skip_special_tokens=True) for seq in out)
    return texts


def hf_texts(src: CalibSource, want_tokens: int | None = None, tokenizer: Any = None) -> list[str]:
    """Non-empty rows of the text column of a Hugging Face dataset, streamed: with ``want_tokens`` (and the
    ``tokenizer``) reading stops once the rows hold that many tokens, so ``hf:allenai/c4:en`` reads a few MB,
    not the corpus. `DatasetLoadError` if it cannot be opened."""
    name, config, split = src.hf_args()
    data_files = src.data_files
    try:
        import datasets

        extra = {} if data_files is None else {"data_files": data_files}
        ds = datasets.load_dataset(name, config, split=split, streaming=True, **extra)
        return dataset_texts(ds, want_tokens, tokenizer, what=f"dataset {name!r}", field=src.field)
    except InputError:
        raise
    except Exception as e:  # network, offline mode, unknown name/config/split: all surface the same way
        raise DatasetLoadError(
            f"could not load Hugging Face dataset {name!r} (config={config!r}, split={split!r}"
            f"{'' if data_files is None else f', data_files={data_files!r}'}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. If the Hub is unreachable, save the "
            "text locally and use a file source instead, e.g. 'file:corpus.txt', 'file:data.jsonl' or 'file:DIR' "
            "(or 'builtin')."
        ) from e


def dataset_texts(ds: Any, want_tokens: int | None, tokenizer: Any, *, what: str, field: str | None = None) -> list[str]:
    """The non-empty strings of ``ds``'s text column (``field``; default ``text``, else its only string
    column), in order, until they hold ``want_tokens`` tokens (all rows when None)."""
    columns = list(getattr(ds, "column_names", None) or (ds.features or {}).keys())
    if field is None:
        strings = [c for c, f in (ds.features or {}).items() if getattr(f, "dtype", None) in ("string", "large_string")]
        field = DEFAULT_FIELD if DEFAULT_FIELD in columns or len(strings) != 1 else strings[0]
    if columns and field not in columns:
        raise InputError(f"{what} has no column {field!r} (columns: {columns}); use 'hf:...#COLUMN' "
                         "or a dataset with a 'text' column")
    return take_tokens((row.get(field) if isinstance(row, dict) else None for row in ds), want_tokens, tokenizer)


def take_tokens(texts: Any, want_tokens: int | None, tokenizer: Any) -> list[str]:
    """The non-empty strings of ``texts`` (an iterable), in order, until they hold ``want_tokens`` tokens
    (all of them when None): how an in-memory or streamed source is read."""
    out, tokens = [], 0
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            continue
        out.append(text)
        if want_tokens is not None and tokenizer is not None:
            tokens += len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) + 1
            if tokens >= want_tokens:
                break
    return out


def load_texts(
    source: str | CalibSource,
    *,
    model: Any = None,
    tokenizer: Any = None,
    n_generated: int = 8,
    gen_tokens: int = 512,
    seed: int = 0,
    want_tokens: int | None = None,
) -> list[str]:
    """The documents of a calibration source (see `parse_source` for the spec forms).

    ``"generated"`` needs ``model`` and ``tokenizer`` and samples ``n_generated`` texts of ``gen_tokens`` tokens.
    """
    src = parse_source(source)
    if src.kind == "builtin":
        return builtin_texts("train")
    if src.kind == "file":
        return file_texts(src)
    if src.kind == "hf":
        return hf_texts(src, want_tokens, tokenizer)
    if model is None or tokenizer is None:
        raise InputError("the 'generated' calibration source needs both model= and tokenizer= (it samples text from the model)")
    return generate_texts(model, tokenizer, n_generated, gen_tokens, seed)


__all__ = ["DATA_DIR", "DEFAULT_FIELD", "DatasetLoadError", "builtin_texts", "heldout_text", "load_texts", "file_texts", "generate_texts", "hf_texts", "dataset_texts", "take_tokens"]
