"""Atomic outputs: a directory is written under a temporary name and renamed into place at the end.

Nothing half-written is ever left at the destination: an error (or Ctrl-C) removes the temporary
directory, and an existing destination is only replaced when the caller asked for it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import CompresskitError, InputError


class OutputExistsError(CompresskitError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class OutputWriteError(CompresskitError, OSError):
    """Writing an output failed for a reason of the disk: full, quota, read-only, permission denied."""


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def cache_root() -> Path:
    """``$COMPRESSKIT_CACHE``, else ``$XDG_CACHE_HOME/compresskit``, else ``~/.cache/compresskit``."""
    if os.environ.get("COMPRESSKIT_CACHE"):
        return Path(os.environ["COMPRESSKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compresskit"


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early (before any work) if ``path`` cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output path {path} exists and is a file; choose a directory path")
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"output directory {path} already exists; pass --overwrite (overwrite=True) to replace it, "
            "or choose another path"
        )
    return path


@contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it becomes ``path``."""
    path = check_output_dir(path, overwrite).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        yield tmp
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in _DISK_ERRORS:  # the disk, not compresskit: one line, and nothing half-written is left
            raise OutputWriteError(
                f"could not write {path}: {e.strerror or e} ({e.filename or tmp}); nothing was written there. "
                "Free space or fix the permissions (or choose another --output) and run again: "
                "a resumable run continues from its saved state") from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():  # overwrite was asked for: swap, then delete the old one
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def usual_mode(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open`` / ``mkdir`` would (0666 / 0777 less the umask): ``mkstemp`` and
    ``mkdtemp`` make 0600 / 0700, which would leave a saved file unreadable to the rest of a team."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)


def clean_leftovers(path: Path) -> list[str]:
    """Deal with what a killed run left beside ``path`` (returns one line per item, also warned):
    ``.NAME.partial-PID-*`` of a process that is gone is removed (one of a live process, a concurrent run,
    is left alone); ``.NAME.old-*`` is removed when ``path`` exists (the swap finished), else kept and
    reported: it is the previous output of an overwrite that was killed mid-swap."""
    notes = []
    for p in sorted(path.parent.glob(f".{path.name}.partial-*")):
        pid = p.name.rsplit(".partial-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p.name}: the unfinished output of an interrupted run (process {pid})")
        elif not pid.isdigit():
            notes.append(f"{p}: an unfinished output of an interrupted run (older compresskit); delete it")
    for p in sorted(path.parent.glob(f".{path.name}.old-*")):
        if path.exists():
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p.name}: the replaced output of an earlier --overwrite")
        else:
            notes.append(f"{p} holds the previous {path.name} (an --overwrite was interrupted while swapping); "
                         f"rename it back to {path.name} to keep it")
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return notes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def dir_size_bytes(path: str | os.PathLike, suffixes: tuple[str, ...] = (".safetensors",)) -> int:
    """Total size of the files with these suffixes under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and p.name.endswith(suffixes))


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_jsonl(path: str | os.PathLike, errors: str = "strict") -> Iterator[tuple[str, Any]]:
    """``("file:line", decoded object)`` for every non-blank line of a JSON-lines file; a line that is
    not JSON raises `InputError` (a ``ValueError``) naming the file and line."""
    path = Path(path)
    with path.open(encoding="utf-8", errors=errors) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            yield f"{path}:{lineno}", obj
