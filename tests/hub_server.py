"""A local stand-in for the hub's HTTP API, enough for huggingface_hub's real client to create a repo,
list it, and commit to it: stdlib ``http.server`` on 127.0.0.1 (port 0) in a thread, in memory.

Endpoints (as huggingface_hub 1.x/2.x calls them): POST /api/repos/create, POST /api/validate-yaml,
GET /api/models/{repo}/revision/{rev}, GET /api/models/{repo}/tree/{rev}[/{path}], POST
/api/models/{repo}/branch/{branch}, POST /api/models/{repo}/preupload/{rev} (every file "regular"),
POST /api/models/{repo}/commit/{rev} (NDJSON, base64 contents, parentCommit checked), and downloads:
HEAD/GET /{repo}/resolve/{rev}/{path} (a revision is a branch or a commit sha). ``add`` seeds a repo.
Every request is logged; ``fail`` queues status codes to answer instead (``fail["commit"] = [500]``);
only the token ``TOKEN`` is accepted (its user is ``tester``).
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

TOKEN, USER = "hf_compresskit_test_token", "tester"
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> full file set
    log: list[dict] = field(default_factory=list)  # commits in order: {"sha", "branch", "summary", "ops"}

    def commit(self, branch: str, files: dict[str, bytes], summary: str, ops: list) -> str:
        sha = hashlib.sha1(f"{len(self.log)}:{branch}:{summary}".encode()).hexdigest()
        self.commits[sha] = files
        self.branches[branch] = sha
        self.log.append({"sha": sha, "branch": branch, "summary": summary, "ops": ops})
        return sha


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail: dict[str, list[int]] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main", private: bool = False) -> str:
        """Seed ``repo_id`` with ``files`` on ``branch`` (created with the repo); returns the commit sha."""
        repo = self.repos.setdefault(repo_id, Repo(private))
        return repo.commit(branch, dict(files), f"seed {branch}", [])

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.branches[branch]]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, body: object = None, headers: dict | None = None) -> None:
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, code: str | None = None) -> None:
                self._reply(status, {"error": message}, {"X-Error-Code": code} if code else None)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self) -> None:
                self._route("GET")

            def do_HEAD(self) -> None:
                self._route("HEAD")

            def do_POST(self) -> None:
                self._route("POST")

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                path = unquote(url.path)
                body = self._body() if method == "POST" else b""
                hub.requests.append((method, path))
                kind = next((k for k in ("create", "validate-yaml", "revision", "tree", "branch", "preupload", "commit")
                             if f"/{k}" in path), "other")
                if hub.fail.get(kind):
                    return self._error(hub.fail[kind].pop(0), "injected failure")
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._error(401, "Invalid credentials in Authorization header")
                if "/resolve/" in path and method in ("GET", "HEAD"):
                    return self._download(path, method)
                if method == "POST" and path == "/api/repos/create":
                    return self._create(json.loads(body))
                if method == "POST" and path == "/api/validate-yaml":
                    return self._validate(json.loads(body))
                parts = path.split("/")  # "", "api", "models", ns, name, action, rev...
                if len(parts) < 7 or parts[:3] != ["", "api", "models"]:
                    return self._error(404, f"no route for {method} {path}")
                repo_id, action, rest = f"{parts[3]}/{parts[4]}", parts[5], "/".join(parts[6:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                if action == "branch" and method == "POST":
                    if rest in repo.branches:
                        return self._error(409, "Reference already exists")
                    repo.branches[rest] = repo.branches["main"]
                    return self._reply(200, {})
                rev, _, sub = rest.partition("/")
                head = repo.branches.get(rev) or (rev if rev in repo.commits else None)
                if head is None:
                    return self._error(404, f"Revision {rev} not found", "RevisionNotFound")
                files = repo.commits[head]
                if action == "revision" and method == "GET":
                    return self._reply(200, {"id": repo_id, "sha": head, "private": repo.private,
                                             "siblings": [{"rfilename": p} for p in sorted(files)]})
                if action == "tree" and method == "GET":
                    recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                    listed = [p for p in sorted(files)
                              if p.startswith(sub) and (recursive or "/" not in p[len(sub):].strip("/"))]
                    return self._reply(200, [{"type": "file", "path": p, "size": len(files[p]),
                                              "oid": git_oid(files[p])} for p in listed])
                if action == "preupload" and method == "POST":
                    req = json.loads(body)
                    return self._reply(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                         "oid": git_oid(files[f["path"]]) if f["path"] in files else None} for f in req["files"]],
                        "commitOid": head})
                if action == "commit" and method == "POST":
                    return self._commit(repo_id, repo, rev, head, body)
                return self._error(404, f"no route for {method} {path}")

            def _download(self, path: str, method: str) -> None:
                repo_part, _, rest = path.lstrip("/").partition("/resolve/")
                rev, _, name = rest.partition("/")
                repo = hub.repos.get(repo_part)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                head = repo.branches.get(rev) or (rev if rev in repo.commits else None)
                if head is None:
                    return self._error(404, f"Revision {rev} not found", "RevisionNotFound")
                if name not in repo.commits[head]:
                    return self._error(404, f"{name} not found", "EntryNotFound")
                data = repo.commits[head][name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{git_oid(data)}"')
                self.send_header("X-Repo-Commit", head)
                self.end_headers()
                if method == "GET":
                    self.wfile.write(data)

            def _create(self, req: dict) -> None:
                repo_id = f"{req.get('organization') or USER}/{req['name']}"
                url = f"{hub.endpoint}/{repo_id}"
                if repo_id in hub.repos:
                    return self._reply(409, {"error": "You already created this model repo", "url": url})
                repo = Repo(private=req.get("visibility") == "private" or bool(req.get("private")))
                repo.commit("main", {".gitattributes": GITATTRIBUTES}, "initial commit", [])
                hub.repos[repo_id] = repo
                return self._reply(200, {"url": url, "name": repo_id})

            def _validate(self, req: dict) -> None:
                content = req["content"]
                if content.startswith("---"):
                    try:
                        meta = yaml.safe_load(content.split("---", 2)[1])
                    except yaml.YAMLError as e:
                        return self._reply(400, {"errors": [{"message": str(e)}]})
                    if not isinstance(meta, dict):
                        return self._reply(400, {"errors": [{"message": "metadata is not a mapping"}]})
                return self._reply(200, {"errors": [], "warnings": []})

            def _commit(self, repo_id: str, repo: Repo, rev: str, head: str, body: bytes) -> None:
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = lines[0]["value"]
                if header.get("parentCommit") and header["parentCommit"] != head:
                    return self._error(412, "A commit has happened since. Please refresh and try again.")
                files = dict(repo.commits[head])
                ops = []
                for line in lines[1:]:
                    v = line["value"]
                    if line["key"] == "file":
                        files[v["path"]] = base64.b64decode(v["content"])
                    elif line["key"] == "deletedFile":
                        files.pop(v["path"], None)
                    else:
                        return self._error(400, f"unsupported commit operation {line['key']}")
                    ops.append((line["key"], v["path"]))
                sha = repo.commit(rev, files, header["summary"], ops)
                return self._reply(200, {"success": True, "commitOid": sha,
                                         "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{sha}"})

        return Handler
