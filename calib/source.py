"""Calibration source specifications: the `CalibSource` value type and `parse_source`.

A source spec is a short string that says where calibration text comes from:

* ``"builtin"``                      -- the shipped ``train`` split (``calib/data/train/*.txt``)
* ``"file:PATH[#FIELD]"`` or a plain existing ``PATH`` -- a local ``.txt`` / ``.jsonl`` / ``.json`` file, or a
  directory of them; JSON records use the ``"text"`` field unless ``#FIELD`` names another one
* ``"generated"``                    -- text sampled from the model itself (data-free calibration)
* ``"hf:NAME[:CONFIG][:SPLIT][?data_files=GLOB[,GLOB...]]"`` -- ``datasets.load_dataset(NAME, CONFIG,
  split=SPLIT or "train", data_files=...)``, streamed, ``"text"`` column (``#FIELD`` picks another column);
  ``NAME`` may be a packaged builder (``json``, ``text``, ``parquet``, ``csv``) with local ``data_files``

This module only parses and validates; `compresskit.calib.texts` does the reading.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from ..core.errors import InputError, MissingFileError

SourceKind = Literal["builtin", "file", "generated", "hf"]
KINDS: tuple[str, ...] = ("builtin", "file", "generated", "hf")
FILE_SUFFIXES: tuple[str, ...] = (".txt", ".jsonl", ".json", ".parquet", ".csv")
DEFAULT_FIELD = "text"

ACCEPTED_FORMS = (
    "accepted calibration sources: 'builtin' (shipped train split); "
    "'file:PATH' or an existing PATH (a .txt/.jsonl/.json/.parquet/.csv file or a directory of them; "
    "'file:PATH#FIELD' picks a field or column other than 'text'); "
    "'generated' (text sampled from the model itself); "
    "'hf:NAME[:CONFIG][:SPLIT][?data_files=GLOB,...]' (a Hugging Face dataset, 'text' column)"
)


def split_field(value: str) -> tuple[str, str | None]:
    """Split ``"BODY#FIELD"`` into ``(BODY, FIELD)``; ``(value, None)`` when there is no ``#``."""
    body, sep, field = value.rpartition("#")
    if not sep:
        return value, None
    if not field or not body:
        raise InputError(f"empty field or body in calibration source {value!r}; expected 'BODY#FIELD'")
    return body, field


@dataclass(frozen=True)
class CalibSource:
    """Where calibration text comes from; ``str(src)`` is a spec that `parse_source` maps back to ``src``."""

    kind: SourceKind
    value: str | None = None  # file path (optionally "#field") / dataset spec / None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown calibration source kind {self.kind!r}; {ACCEPTED_FORMS}")
        if self.kind in ("builtin", "generated") and self.value is not None:
            raise InputError(f"calibration source kind {self.kind!r} takes no value, got {self.value!r}")
        if self.kind in ("file", "hf") and (not isinstance(self.value, str) or not self.value):
            raise InputError(f"calibration source kind {self.kind!r} needs a non-empty value")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, inverse of `from_dict`."""
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibSource:
        """Rebuild a source from `to_dict` output."""
        if "kind" not in d:
            raise InputError(f"calibration source dict needs a 'kind' key, got keys {sorted(d)}")
        return cls(kind=d["kind"], value=d.get("value"))

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value}"

    @property
    def path(self) -> Path:
        """For a ``file`` source: the file or directory path (user-expanded), without any ``#field``."""
        if self.kind != "file":
            raise AttributeError(f"a {self.kind!r} calibration source has no path")
        return Path(_file_parts(self.value or "")[0]).expanduser()

    @property
    def field(self) -> str:
        """The JSON field / dataset column holding the text (``"text"`` unless ``#FIELD`` was given)."""
        if self.kind == "file":
            return _file_parts(self.value or "")[1] or DEFAULT_FIELD
        if self.kind == "hf":
            return split_field(self.value or "")[1] or DEFAULT_FIELD
        raise AttributeError(f"a {self.kind!r} calibration source has no field")

    def hf_args(self) -> tuple[str, str | None, str]:
        """For an ``hf`` source: ``(name, config or None, split)`` for `datasets.load_dataset`."""
        if self.kind != "hf":
            raise AttributeError(f"a {self.kind!r} calibration source is not a Hugging Face dataset")
        return _parse_hf(self.value or "")

    @property
    def data_files(self) -> list[str] | None:
        """For an ``hf`` source: the ``?data_files=`` globs (comma-separated), or None."""
        if self.kind != "hf":
            raise AttributeError(f"a {self.kind!r} calibration source has no data files")
        return _hf_data_files(self.value or "")


def _file_parts(value: str) -> tuple[str, str | None]:
    """``(path, field)`` of a file spec; a path that itself contains ``#`` and exists wins over a field."""
    if "#" not in value or os.path.exists(os.path.expanduser(value)):
        return value, None
    return split_field(value)


DATA_FILES = "data_files="


def _hf_query(value: str) -> tuple[str, str | None]:
    """``(NAME[:CONFIG][:SPLIT], query or None)`` of an hf spec body (``#FIELD`` dropped)."""
    body, _ = split_field(value)
    body, sep, query = body.partition("?")
    return body, (query if sep else None)


def _hf_data_files(value: str) -> list[str] | None:
    """The globs of ``?data_files=A,B``; an unknown query or an empty list is an `InputError`."""
    _, query = _hf_query(value)
    if query is None:
        return None
    if not query.startswith(DATA_FILES) or not query[len(DATA_FILES):].strip(" ,"):
        raise InputError(f"'hf:{value}': after '?' only 'data_files=GLOB[,GLOB...]' is understood, e.g. "
                         "'hf:allenai/c4?data_files=en/c4-train.00000-of-01024.json.gz' or 'hf:json?data_files=shards/*.jsonl'")
    return [f.strip() for f in query[len(DATA_FILES):].split(",") if f.strip()]


def map_hf_data_files(value: str, fn: Callable[[str], str]) -> str:
    """The hf spec ``value`` (after ``hf:``) with ``fn`` applied to each of its ``?data_files=`` globs."""
    files = _hf_data_files(value)
    if files is None:
        return value
    body, _ = _hf_query(value)
    _, field = split_field(value)
    return f"{body}?{DATA_FILES}{','.join(map(fn, files))}" + ("" if field is None else f"#{field}")


def _parse_hf(value: str) -> tuple[str, str | None, str]:
    """Parse ``NAME[:CONFIG][:SPLIT][?data_files=...][#FIELD]``; the split may hold ``:`` (``train[:1000]``) once
    CONFIG is given."""
    body, _ = _hf_query(value)
    _hf_data_files(value)  # checks the query
    parts = body.split(":", 2)
    name = parts[0].strip()
    if not name:
        raise InputError(f"empty dataset name in 'hf:{value}'; {ACCEPTED_FORMS}")
    config = parts[1].strip() if len(parts) > 1 and parts[1].strip() else None
    split = parts[2].strip() if len(parts) > 2 and parts[2].strip() else "train"
    return name, config, split


def _check_file(value: str) -> None:
    """Raise `MissingFileError` for a missing path, `InputError` for an unsupported file type."""
    path_str, _ = _file_parts(value)
    path = Path(path_str).expanduser()
    if not path.exists():
        raise MissingFileError(f"calibration source file not found: {path_str}")
    if path.is_file() and path.suffix.lower() not in FILE_SUFFIXES:
        raise InputError(f"unsupported calibration file type {path.suffix!r} for {path_str}; expected one of {FILE_SUFFIXES}")


def _plain_path(spec: str) -> str:
    """The path part of a plain (prefix-less) spec; the whole spec when it has no valid ``#FIELD``."""
    try:
        return _file_parts(spec)[0]
    except ValueError:
        return spec


def _looks_like_path(spec: str) -> bool:
    """Heuristic: a spec meant as a path (so a missing one is `MissingFileError`, not `InputError`)."""
    body = spec.rpartition("#")[0] or spec
    return any(s in body for s in ("/", "\\", "~")) or body.lower().endswith(FILE_SUFFIXES)


def parse_source(spec: str | CalibSource) -> CalibSource:
    """Turn a spec string (or an existing `CalibSource`) into a validated `CalibSource`.

    Raises `InputError` (a ``ValueError``, listing the accepted forms) for an unknown spec and `MissingFileError`
    (a ``FileNotFoundError``) for a missing file.
    """
    if isinstance(spec, CalibSource):
        if spec.kind == "file":
            _check_file(spec.value or "")
        elif spec.kind == "hf":
            _parse_hf(spec.value or "")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"calibration source must be a str or CalibSource, got {type(spec).__name__}")
    s = spec.strip()
    low = s.lower()
    if low in ("builtin", "generated"):
        return CalibSource(low)  # type: ignore[arg-type]
    if low.startswith("hf:"):
        value = s[3:]
        _parse_hf(value)
        return CalibSource("hf", value)
    if low.startswith("file:"):
        value = s[5:]
        if not value:
            raise InputError(f"'file:' needs a path; {ACCEPTED_FORMS}")
        _check_file(value)
        return CalibSource("file", value)
    if s and os.path.exists(os.path.expanduser(_plain_path(s))):
        _check_file(s)
        return CalibSource("file", s)
    if s and _looks_like_path(s):
        raise MissingFileError(f"calibration source file not found: {_plain_path(s)}")
    raise InputError(f"unrecognised calibration source {spec!r}; {ACCEPTED_FORMS}")
