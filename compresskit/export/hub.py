"""Publishing a saved artifact to a Hugging Face hub repository, in one commit.

The push is idempotent: it reads what the repo holds first (file list with git blob ids and LFS
sha256s), does nothing when that already equals the local directory, refuses when the repo holds
different files (unless ``overwrite``, which replaces its contents), and otherwise sends every file
in ONE commit on top of the revision it compared against (``parent_commit``), so nobody ever sees a
half-published model. Transient failures (HTTP 5xx/429, dropped connections) restart the whole
sequence after a backoff, which is safe because of the comparison; 401/403 is a clear auth error.
"""
from __future__ import annotations

import hashlib
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..core.errors import CompresskitError

DEFAULT_REVISION = "main"
HUB_FILES = (".gitattributes",)  # what the hub itself puts in a new repo
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


class PushError(CompresskitError, ValueError):
    """The push did not happen; the message says why and what to do."""


class PushAuthError(PushError):
    """The hub refused the credentials."""


class RepoConflictError(PushError):
    """The repo already holds different files and overwriting was not asked for."""


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_url: str | None  # None when the repo was already up to date (no commit made)
    commit_oid: str | None
    uploaded: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    attempts: int = 1

    @property
    def up_to_date(self) -> bool:
        return self.commit_url is None

    def to_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit_url": self.commit_url,
                "commit_oid": self.commit_oid, "uploaded": self.uploaded, "deleted": self.deleted,
                "attempts": self.attempts, "up_to_date": self.up_to_date}


def local_files(directory: str | Path) -> dict[str, Path]:
    """``path in repo -> file`` for every file under ``directory`` (hidden names skipped)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise PushError(f"{directory} is not a saved model (no config.json); push a directory written by compresskit")
    return {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)}


def git_blob_id(path: Path) -> str:
    """The git object id of a file's content (what the hub reports as a non-LFS file's oid)."""
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def differences(local: dict[str, Path], remote: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(files that differ or are missing remotely, remote files absent locally)``; ``remote`` maps
    paths to ``RepoFile``-likes (``blob_id``, ``lfs.sha256``); the hub's own files are ignored."""
    changed = []
    for path, f in local.items():
        r = remote.get(path)
        if r is None:
            changed.append(path)
            continue
        lfs = getattr(r, "lfs", None)
        sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        same = sha256_of(f) == sha if sha else git_blob_id(f) == getattr(r, "blob_id", None)
        if not same:
            changed.append(path)
    extra = [p for p in remote if p not in local and p not in HUB_FILES]
    return changed, extra


def _transport_errors() -> tuple[type[BaseException], ...]:
    out: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            out.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(out)


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _auth_error(e: BaseException, repo_id: str, endpoint: str) -> PushAuthError:
    return PushAuthError(
        f"{endpoint} refused the credentials (HTTP {_status(e)}) for {repo_id}: pass a token with write access "
        "as --token (token=...) or set HF_TOKEN (or run `hf auth login`), and check that the namespace is yours")


def _remote_state(api: Any, repo_id: str, revision: str) -> tuple[dict[str, Any], str | None, bool | None]:
    """The repo's files at ``revision``, its head commit and whether it is private."""
    from huggingface_hub.utils import EntryNotFoundError, RevisionNotFoundError

    try:
        info = api.repo_info(repo_id, revision=revision)
        files = {f.path: f for f in api.list_repo_tree(repo_id, revision=revision, recursive=True)
                 if hasattr(f, "blob_id")}
    except (EntryNotFoundError, RevisionNotFoundError):
        return {}, None, None
    return files, info.sha, getattr(info, "private", None)


def _push_once(api: Any, directory: Path, repo: str, *, private: bool, revision: str, overwrite: bool,
               message: str) -> PushResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    local = local_files(directory)
    repo_id = api.create_repo(repo, private=private, exist_ok=True, repo_type="model").repo_id
    if revision != DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    remote, head, is_private = _remote_state(api, repo_id, revision)
    if private and is_private is False:  # create_repo(exist_ok=True) does not change an existing repo
        raise PushError(f"{repo_id} already exists and is public: --private (private=True) does not make an existing "
                        "repo private, so nothing was pushed. Make it private in its settings on the hub, or push to "
                        "a new --repo")
    changed, extra = differences(local, remote)
    if not changed and not extra:
        return PushResult(repo_id, revision, None, head)
    populated = [p for p in remote if p not in HUB_FILES]
    if populated and not overwrite:
        listed = [f"{p} differs" if p in remote else f"{p} is new" for p in changed[:3]]
        listed += [f"{p} is not in {directory.name}" for p in extra[:3]]
        raise RepoConflictError(
            f"{repo_id}@{revision} already holds a different model ({'; '.join(listed)}"
            f"{', ...' if len(changed) + len(extra) > 6 else ''}); pass --overwrite to `compresskit push` "
            "(overwrite=True) to replace its contents in one commit, or push to another --repo / --revision")
    ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in local.items()]
    ops += [CommitOperationDelete(path_in_repo=p) for p in extra]
    info = api.create_commit(repo_id, ops, commit_message=message, revision=revision, parent_commit=head)
    return PushResult(repo_id, revision, str(info.commit_url), info.oid, uploaded=sorted(changed), deleted=extra)


def push_folder(directory: str | Path, repo: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, overwrite: bool = False, endpoint: str | None = None,
                commit_message: str | None = None, attempts: int = 4, backoff: float = 2.0,
                sleep: Callable[[float], None] = time.sleep) -> PushResult:
    """Push every file of ``directory`` to the model repo ``repo`` (``name`` or ``namespace/name``) in
    one commit; see the module docstring for the rules. ``token`` defaults to huggingface_hub's own
    lookup (``HF_TOKEN``, then the stored login); ``endpoint`` to ``HF_ENDPOINT`` / huggingface.co."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    directory = Path(directory)
    local_files(directory)  # a bad directory fails before any request
    api = HfApi(endpoint=endpoint, token=token)
    revision = revision or DEFAULT_REVISION
    message = commit_message or f"Upload {directory.name} (compresskit)"
    transient = _transport_errors()
    for attempt in range(1, attempts + 1):
        try:
            result = _push_once(api, directory, repo, private=private, revision=revision, overwrite=overwrite,
                                message=message)
            result.attempts = attempt
            return result
        except HfHubHTTPError as e:
            status = _status(e)
            if status in (401, 403):
                raise _auth_error(e, repo, api.endpoint) from None
            if status not in TRANSIENT_STATUS or attempt == attempts:
                raise PushError(f"pushing {directory} to {repo} failed: {str(e).splitlines()[0]}") from e
        except transient as e:
            if attempt == attempts:
                raise PushError(f"pushing {directory} to {repo} failed after {attempts} attempts: "
                                f"{type(e).__name__}: {e}") from e
        sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
