"""A local, in-memory Hugging Face Hub for tests: the HTTP endpoints `huggingface_hub` and
`datasets` call to create a dataset repo, commit files, and load the dataset back.

Neither huggingface_hub nor datasets ships a reusable local server (their own tests talk to the
staging Hub, hub-ci.huggingface.co), so this is a small one on `http.server`. Start it, point
`HF_ENDPOINT` at `hub.endpoint`, and the real client code runs against it over loopback.

Endpoints (the shapes are the Hub's, as huggingface_hub parses them):
    GET  /api/whoami-v2
    POST /api/repos/create                          {name, organization, type, visibility}
    POST /api/validate-yaml                         README metadata check before a commit
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]  repo info (sha, siblings, cardData, private)
    POST /api/{type}s/{ns}/{name}/preupload/{rev}   upload mode per file
    POST /api/{type}s/{ns}/{name}/commit/{rev}      NDJSON: header, file (base64), deletedFile, deletedFolder
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]   ?recursive=
    POST /api/{type}s/{ns}/{name}/paths-info/{rev}  form: paths, expand
    GET  /api/{type}s/{ns}/{name}/refs
    HEAD|GET /{type}s/{ns}/{name}/resolve/{rev}/{path}  with Range, ETag, X-Repo-Commit

Every file is committed as a "regular" git blob (base64 inside the commit request): the LFS and
Xet transfers are huggingface_hub's own code talking to storage servers this test does not
emulate. Writes need `Authorization: Bearer <token>` equal to the server's token; private repos
are invisible (404) without it. `fail_next` makes the next requests to a route fail with given
status codes (to test retries); `requests` logs (method, path, status, authorised) — never the
token itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    title: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        if revision in ("main", "HEAD"):
            return self.head
        return next((c for c in self.commits if c.oid == revision), None)


class LocalHub:
    def __init__(self, token: str, user: str = "tester"):
        self.token, self.user = token, user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int, bool]] = []
        self.fail_next: dict[str, list[int]] = defaultdict(list)  # route name -> statuses to return
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.endpoint

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- inspection for tests --------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        return dict(self.repo(repo_id, repo_type).head.files)

    # -- state changes ---------------------------------------------------------------------------
    def create(self, repo_type: str, repo_id: str, private: bool) -> bool:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return False
            repo = Repo(repo_type, repo_id, private)
            repo.commits.append(self._commit_obj("initial commit", {".gitattributes": b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"}, None))
            self.repos[(repo_type, repo_id)] = repo
            return True

    def commit(self, repo: Repo, title: str, adds: dict[str, bytes], deletes: list[str], folders: list[str]) -> Commit:
        with self.lock:
            files = dict(repo.head.files)
            for path in deletes:
                if path not in files:
                    raise KeyError(path)
                del files[path]
            for folder in folders:
                prefix = folder.rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            files.update(adds)
            commit = self._commit_obj(title, files, repo.head.oid)
            repo.commits.append(commit)
            return commit

    @staticmethod
    def _commit_obj(title: str, files: dict[str, bytes], parent: str | None) -> Commit:
        digest = hashlib.sha1(json.dumps([parent, title, time.time_ns(), sorted((p, git_blob_oid(b)) for p, b in files.items())]).encode())
        return Commit(digest.hexdigest(), title, datetime.now(UTC).isoformat().replace("+00:00", "Z"), files)


_REPO = r"(?P<type>dataset|model|space)s/(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("whoami", "GET", re.compile(r"^/api/whoami-v2$")),
    ("create", "POST", re.compile(r"^/api/repos/create$")),
    ("validate_yaml", "POST", re.compile(r"^/api/validate-yaml$")),
    ("preupload", "POST", re.compile(rf"^/api/{_REPO}/preupload/(?P<rev>[^/]+)$")),
    ("commit", "POST", re.compile(rf"^/api/{_REPO}/commit/(?P<rev>[^/]+)$")),
    ("tree", "GET", re.compile(rf"^/api/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("paths_info", "POST", re.compile(rf"^/api/{_REPO}/paths-info/(?P<rev>[^/]+)$")),
    ("refs", "GET", re.compile(rf"^/api/{_REPO}/refs$")),
    ("info", "GET", re.compile(rf"^/api/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")),
    ("resolve", "GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
    ("resolve", "HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")),
]


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read hub.requests
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing --------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        authorised = self.headers.get("Authorization") == f"Bearer {self.hub.token}"
        status = 404
        try:
            for name, verb, pattern in ROUTES:
                match = pattern.match(path)
                if match and verb == method:
                    with self.hub.lock:
                        queued = self.hub.fail_next.get(name)
                        injected = queued.pop(0) if queued else None
                    if injected is not None:
                        raise HttpError(injected, f"injected failure {injected}")
                    status = getattr(self, f"_{name}")(match.groupdict(), body, authorised, method) or 200
                    break
            else:
                raise HttpError(404, f"no route for {method} {path}")
        except HttpError as exc:
            status = exc.status
            headers = {"X-Error-Message": exc.message}
            if exc.code:
                headers["X-Error-Code"] = exc.code
            self._send(exc.status, {"error": exc.message, **exc.extra}, headers)
        finally:
            self.hub.requests.append((method, path, status, authorised))

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None,
              content_type: str = "application/json") -> int:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        return status

    def _repo(self, params: dict, authorised: bool, write: bool = False) -> Repo:
        repo = self.hub.repos.get((params["type"], params["repo"]))
        if repo is None or (repo.private and not authorised):
            raise HttpError(404, "Repository not found", "RepoNotFound")
        if write and not authorised:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(unquote(revision))
        if commit is None:
            raise HttpError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -- routes ----------------------------------------------------------------------------------
    def _whoami(self, params, body, authorised, method):
        if not authorised:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return self._send(200, {"type": "user", "name": self.hub.user, "orgs": [],
                                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def _create(self, params, body, authorised, method):
        if not authorised:
            raise HttpError(401, "Invalid credentials in Authorization header")
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        repo_type = payload.get("type") or "model"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.endpoint}/{prefix}{repo_id}"
        if not self.hub.create(repo_type, repo_id, private):
            raise HttpError(409, f"You already created this {repo_type} repo", extra={"url": url})
        return self._send(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, params, body, authorised, method):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
        if match is None:
            return self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            raise HttpError(400, f"Invalid YAML metadata: {exc}") from None
        return self._send(200, {"errors": [], "warnings": []})

    def _info(self, params, body, authorised, method):
        repo = self._repo(params, authorised)
        commit = self._revision(repo, params.get("rev") or "main")
        card = commit.files.get("README.md", b"").decode()
        match = re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL)
        return self._send(200, {
            "_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": commit.date, "createdAt": repo.commits[0].date,
            "cardData": yaml.safe_load(match.group(1)) if match else None,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def _refs(self, params, body, authorised, method):
        repo = self._repo(params, authorised)
        return self._send(200, {"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.head.oid}],
                                "converts": [], "tags": []})

    def _preupload(self, params, body, authorised, method):
        repo = self._repo(params, authorised, write=True)
        files = json.loads(body)["files"]
        head = repo.head.files
        return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                           "oid": git_blob_oid(head[f["path"]]) if f["path"] in head else None}
                                          for f in files]})

    def _commit(self, params, body, authorised, method):
        repo = self._repo(params, authorised, write=True)
        if unquote(params["rev"]) != "main":
            raise HttpError(400, "this test hub commits to main only")
        title, adds, deletes, folders = "", {}, [], []
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value["summary"]
                parent = value.get("parentCommit")
                if parent is not None and parent != repo.head.oid:
                    raise HttpError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                if value.get("encoding") != "base64":
                    raise HttpError(400, "file content must be base64")
                adds[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deletes.append(value["path"])
            elif key == "deletedFolder":
                folders.append(value["path"])
            else:
                raise HttpError(400, f"this test hub does not take {key!r} operations")
        try:
            commit = self.hub.commit(repo, title, adds, deletes, folders)
        except KeyError as exc:
            raise HttpError(404, f"A file with this name doesn't exist: {exc.args[0]}", "EntryNotFound") from None
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return self._send(200, {"success": True, "commitOid": commit.oid,
                                "commitUrl": f"{self.hub.endpoint}/{prefix}{repo.repo_id}/commit/{commit.oid}",
                                "pullRequestUrl": None})

    @staticmethod
    def _entries(commit: Commit, base: str, recursive: bool) -> list[dict]:
        base = base.strip("/")
        prefix = f"{base}/" if base else ""
        files, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(path)
        entries = [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f, "size": 0}
                   for f in sorted(folders)]
        entries += [{"type": "file", "oid": git_blob_oid(commit.files[p]), "size": len(commit.files[p]), "path": p}
                    for p in files]
        return entries

    def _tree(self, params, body, authorised, method):
        repo = self._repo(params, authorised)
        commit = self._revision(repo, params["rev"])
        base = (params.get("path") or "").strip("/")
        if base and base in commit.files:
            raise HttpError(404, f"{base} is a file, not a folder", "EntryNotFound")
        if base and not any(p.startswith(base + "/") for p in commit.files):
            raise HttpError(404, f"{base} does not exist on main", "EntryNotFound")
        recursive = self.query.get("recursive", "false").lower() in ("1", "true")
        return self._send(200, self._entries(commit, base, recursive))

    def _paths_info(self, params, body, authorised, method):
        repo = self._repo(params, authorised)
        commit = self._revision(repo, params["rev"])
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                out.append({"type": "file", "oid": git_blob_oid(commit.files[path]), "size": len(commit.files[path]),
                            "path": path})
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path, "size": 0})
        return self._send(200, out)

    def _resolve(self, params, body, authorised, method):
        repo = self._repo(params, authorised)
        commit = self._revision(repo, params["rev"])
        path = params["path"]
        if path not in commit.files:
            raise HttpError(404, "Entry not found", "EntryNotFound")
        data = commit.files[path]
        etag = f'"{git_blob_oid(data)}"'
        headers = {"ETag": etag, "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if match is None:
                raise HttpError(416, f"bad range {range_header}")
            start_s, end_s = match.groups()
            if start_s == "":
                start, end = max(0, len(data) - int(end_s)), len(data) - 1
            else:
                start, end = int(start_s), (int(end_s) if end_s else len(data) - 1)
            end = min(end, len(data) - 1)
            if start > end and len(data) > 0:
                raise HttpError(416, "range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        headers["Content-Length"] = str(len(data))
        return self._send(status, raw=data, headers=headers, content_type="application/octet-stream")
