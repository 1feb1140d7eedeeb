"""In-memory, loopback-only test double of the Hugging Face Hub HTTP API.

This is NOT a Hub: it implements just the subset of routes that the real, unpatched
``huggingface_hub`` client (and ``transformers`` on top of it) calls for creating repos,
committing files and downloading them, so tests can exercise the genuine client code paths
without network access. State lives in memory and is lost when the server stops.

Implemented endpoints (``{t}`` is ``models``/``datasets``/``spaces``, ``{p}`` the matching URL
prefix ``""``/``"datasets/"``/``"spaces/"``, ``{rev}`` a branch name or a 40-hex commit sha):

* ``GET  /api/whoami-v2``                                 - fixed user ``user`` for any bearer token
* ``POST /api/repos/create``, ``DELETE /api/repos/delete``
* ``POST /api/validate-yaml``                             - always valid
* ``GET  /api/{t}/{repo_id}[/revision/{rev}]``            - repo info with ``sha`` and ``siblings``
* ``GET  /api/{t}/{repo_id}/tree/{rev}[/{path}]``         - ``?recursive=true`` supported, no pagination
* ``POST /api/{t}/{repo_id}/paths-info/{rev}``            - form-encoded ``paths``
* ``POST /api/{t}/{repo_id}/preupload/{rev}``             - decides ``regular`` vs ``lfs`` upload mode
* ``POST /api/{t}/{repo_id}/commit/{rev}``                - NDJSON body: header/file/lfsFile/deletedFile/deletedFolder
* ``POST /{p}{repo_id}.git/info/lfs/objects/batch``       - LFS batch API, "basic" transfer
* ``PUT  /_lfs/upload/{oid}``, ``POST /_lfs/verify``      - LFS object upload (sha256/size checked) and verify
* ``HEAD/GET /{p}{repo_id}/resolve/{rev}/{path}``         - ETag, X-Repo-Commit, X-Linked-Etag/-Size, Range

Not supported: Xet storage (clients must run with ``HF_HUB_DISABLE_XET=1``), pull requests,
branches other than ``main``, tags, pagination, gated/private access control, single-segment
(namespace-less) repo ids in URLs. Unknown routes answer 404 with a JSON error.
The server binds to 127.0.0.1 only and never opens outgoing connections.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "user"
LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files of 10 MiB or more in LFS
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack",
                "*.npy", "*.npz", "*.pkl", "*.pickle", "*.zip", "*.gz", "*.tar", "*.parquet", "*.arrow")
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
TYPE_BY_PLURAL = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX_BY_TYPE = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    oid = hashlib.sha256(data).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n".encode()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:  # git oid: sha1 of the blob, or of the LFS pointer for LFS files
        return git_blob_sha(lfs_pointer(self.data) if self.lfs else self.data)

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(lfs_pointer(self.data))}
        return entry


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # sha -> tree
    created_at: str = field(default_factory=lambda: _now())

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}  # additional JSON fields of the error body


class LocalHubServer:
    """Threaded loopback server speaking a subset of the Hub API. Use as a context manager or start()/stop()."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content (shared by all repos, like a CAS)
        self.requests: list[tuple[str, str]] = []  # (method, path) log, handy for debugging tests
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHubServer":
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "LocalHubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self.repos.clear()
            self.lfs_objects.clear()
            self.requests.clear()

    # ----- helpers for tests -------------------------------------------------------------------------
    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Bytes of ``path`` as stored in ``repo_id`` at ``revision`` (KeyError if absent)."""
        repo = self.repos[(repo_type, repo_id)]
        return repo.commits[repo.resolve(revision)][path].data

    def list_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        repo = self.repos[(repo_type, repo_id)]
        return sorted(repo.commits[repo.resolve(revision)])

    def is_lfs(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bool:
        repo = self.repos[(repo_type, repo_id)]
        return repo.commits[repo.resolve(revision)][path].lfs

    # ----- state operations ----------------------------------------------------------------------
    def _new_sha(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\n".join((*parts, str(self._counter), str(time.time()))).encode()).hexdigest()

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        with self._lock:
            if (repo_type, repo_id) in self.repos:  # the client reads "url" even from this 409 (exist_ok)
                raise HubError(409, f"You already created this {repo_type} repo", extra={
                    "url": f"{self.url}/{PREFIX_BY_TYPE[repo_type]}{repo_id}"})
            repo = Repo(repo_type, repo_id, private)
            sha = self._new_sha(repo_id, "initial commit")
            repo.commits[sha] = {".gitattributes": StoredFile(GITATTRIBUTES, lfs=False)}
            repo.branches["main"] = sha
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def get_tree(self, repo: Repo, revision: str) -> tuple[str, dict[str, StoredFile]]:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha, repo.commits[sha]

    def commit(self, repo: Repo, revision: str, lines: list[dict]) -> str:
        with self._lock:
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision} (only existing branches accept commits)",
                               "RevisionNotFound")
            head = repo.branches[revision]
            tree = dict(repo.commits[head])
            header = {}
            for line in lines:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key == "header":
                    header = value
                    if value.get("parentCommit") not in (None, head):
                        raise HubError(412, "A commit has happened since. Please refresh and try again.")
                elif key == "file":
                    data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" \
                        else value["content"].encode()
                    tree[path] = StoredFile(data, lfs=False)
                elif key == "lfsFile":
                    if value["oid"] not in self.lfs_objects:
                        raise HubError(400, f"LFS object {value['oid']} for {path} was never uploaded")
                    tree[path] = StoredFile(self.lfs_objects[value["oid"]], lfs=True)
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    tree = {p: f for p, f in tree.items() if not p.startswith(path.rstrip("/") + "/")}
                else:
                    raise HubError(400, f"Unsupported commit line: {key}")
            sha = self._new_sha(head, header.get("summary", ""), *sorted(tree))
            repo.commits[sha] = tree
            repo.branches[revision] = sha
            return sha

    def upload_mode(self, path: str, size: int, sample: bytes) -> str:
        name = path.rsplit("/", 1)[-1]
        if size >= LFS_THRESHOLD or b"\0" in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS):
            return "lfs"
        return "regular"


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHubServer
    protocol_version = "HTTP/1.1"
    server_version = "LocalHubServer/0.1"

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass

    # ----- plumbing ------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.hub.requests.append((self.command, split.path))
        body = self._body() if self.command in ("POST", "PUT", "DELETE") else b""
        segments = split.path.strip("/").split("/")  # split *before* unquoting: revisions may contain %2F
        try:
            self._route(self.command, segments, body)
        except HubError as err:
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode(), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message, **err.extra}, err.status, headers)
        except Exception as err:  # a bug in the double: report it instead of dropping the connection
            self._json({"error": f"LocalHubServer internal error: {err!r}"}, 500)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _need_token(self) -> None:
        if not self.headers.get("Authorization", "").startswith("Bearer "):
            raise HubError(401, "Invalid credentials in Authorization header")

    # ----- routing -------------------------------------------------------------------------------------
    def _route(self, method: str, seg: list[str], body: bytes) -> None:
        hub = self.hub
        if seg == ["api", "whoami-v2"] and method == "GET":
            self._need_token()
            return self._json({"type": "user", "name": USER, "fullname": "Local Test User", "orgs": [],
                               "auth": {"type": "access_token",
                                        "accessToken": {"displayName": "local", "role": "write"}}})
        if seg == ["api", "validate-yaml"] and method == "POST":
            return self._json({"errors": [], "warnings": []})
        if seg == ["api", "repos", "create"] and method == "POST":
            self._need_token()
            payload = json.loads(body or b"{}")
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            hub.create_repo(repo_type, repo_id, private=payload.get("visibility") == "private"
                            or bool(payload.get("private")))
            url = f"{hub.url}/{PREFIX_BY_TYPE[repo_type]}{repo_id}"
            return self._json({"url": url, "name": repo_id, "id": repo_id})
        if seg == ["api", "repos", "delete"] and method == "DELETE":
            self._need_token()
            payload = json.loads(body or b"{}")
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            with hub._lock:
                hub.get_repo(payload.get("type") or "model", repo_id)
                del hub.repos[(payload.get("type") or "model", repo_id)]
            return self._send(200)
        if seg[:2] == ["_lfs", "upload"] and method == "PUT" and len(seg) == 3:
            oid = seg[2]
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, f"Uploaded content does not match oid {oid}")
            with hub._lock:
                hub.lfs_objects[oid] = body
            return self._send(200)
        if seg == ["_lfs", "verify"] and method == "POST":
            payload = json.loads(body)
            data = hub.lfs_objects.get(payload["oid"])
            if data is None or len(data) != payload["size"]:
                raise HubError(404, f"LFS object {payload['oid']} not found")
            return self._json({"success": True})
        if seg[0] == "api" and len(seg) >= 4 and seg[1] in TYPE_BY_PLURAL:
            return self._api_repo(method, TYPE_BY_PLURAL[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:], body)
        # git / resolve routes: [datasets|spaces/]ns/name(.git)/...
        repo_type = "model"
        if seg[0] in TYPE_BY_PLURAL and seg[0] != "models" and len(seg) > 3:
            repo_type, seg = TYPE_BY_PLURAL[seg[0]], seg[1:]
        if len(seg) >= 3 and seg[1].endswith(".git") and seg[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(hub.get_repo(repo_type, f"{seg[0]}/{seg[1][:-4]}"), body)
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            repo = hub.get_repo(repo_type, f"{seg[0]}/{seg[1]}")
            return self._resolve(repo, unquote(seg[3]), unquote("/".join(seg[4:])))
        raise HubError(404, f"Route not implemented by LocalHubServer: {method} {self.path}")

    def _api_repo(self, method: str, repo_type: str, repo_id: str, rest: list[str], body: bytes) -> None:
        hub = self.hub
        repo = hub.get_repo(repo_type, repo_id)
        action = rest[0] if rest else None
        revision = unquote(rest[1]) if len(rest) > 1 else "main"
        if method == "GET" and action in (None, "revision"):
            sha, tree = hub.get_tree(repo, revision)
            return self._json(self._repo_info(repo, sha, tree))
        if method == "GET" and action == "tree":
            sha, tree = hub.get_tree(repo, revision)
            prefix = unquote("/".join(rest[2:])).strip("/")
            recursive = self.query.get("recursive", "false").lower() in ("1", "true")
            return self._json(self._list_tree(tree, prefix, recursive))
        if method == "POST" and action == "paths-info":
            sha, tree = hub.get_tree(repo, revision)
            paths = parse_qs(body.decode()).get("paths", [])
            return self._json([e for e in self._list_tree(tree, "", True) if e["path"] in paths])
        if method == "POST" and action == "preupload":
            self._need_token()
            sha, tree = hub.get_tree(repo, revision)
            files = []
            for f in json.loads(body)["files"]:
                mode = hub.upload_mode(f["path"], f["size"], base64.b64decode(f.get("sample", "")))
                existing = tree.get(f["path"])
                oid = None if existing is None else (existing.sha256 if existing.lfs else existing.blob_id)
                files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return self._json({"files": files, "commitOid": sha})
        if method == "POST" and action == "commit":
            self._need_token()
            if self.query.get("create_pr"):
                raise HubError(400, "Pull requests are not supported by LocalHubServer")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            sha = hub.commit(repo, revision, lines)
            url = f"{hub.url}/{PREFIX_BY_TYPE[repo_type]}{repo_id}"
            return self._json({"success": True, "commitOid": sha, "commitUrl": f"{url}/commit/{sha}",
                               "pullRequestUrl": None})
        raise HubError(404, f"Route not implemented by LocalHubServer: {method} {self.path}")

    def _repo_info(self, repo: Repo, sha: str, tree: dict[str, StoredFile]) -> dict:
        siblings = []
        for path, f in sorted(tree.items()):
            sibling = {"rfilename": path, "size": len(f.data), "blobId": f.blob_id}
            if f.lfs:
                sibling["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": len(lfs_pointer(f.data))}
            siblings.append(sibling)
        return {"_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
                "sha": sha, "private": repo.private, "gated": False, "disabled": False, "downloads": 0,
                "likes": 0, "tags": [], "lastModified": _now(), "createdAt": repo.created_at,
                "siblings": siblings}

    @staticmethod
    def _list_tree(tree: dict[str, StoredFile], prefix: str, recursive: bool) -> list[dict]:
        base = f"{prefix}/" if prefix else ""
        entries: dict[str, dict] = {}
        for path, f in sorted(tree.items()):
            if not path.startswith(base):
                continue
            parts = path[len(base):].split("/")
            n_folders = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            for i in range(1, n_folders + 1):  # intermediate folders
                folder = base + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "oid": git_blob_sha(folder.encode()),
                                            "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries[path] = f.tree_entry(path)
        if prefix and not entries:
            raise HubError(404, f"{prefix} does not exist on this revision", "EntryNotFound")
        return list(entries.values())

    def _lfs_batch(self, repo: Repo, body: bytes) -> None:
        self._need_token()
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "Only LFS uploads are supported by LocalHubServer")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:  # no "actions" means: already uploaded
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.url}/_lfs/upload/{obj['oid']}"},
                    "verify": {"href": f"{self.hub.url}/_lfs/verify"},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _resolve(self, repo: Repo, revision: str, path: str) -> None:
        sha, tree = self.hub.get_tree(repo, revision)
        stored = tree.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        data, status = stored.data, 200
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "ETag": f'"{stored.blob_id}"'}
        if stored.lfs:
            headers.update({"ETag": f'"{stored.sha256}"', "X-Linked-Etag": f'"{stored.sha256}"',
                            "X-Linked-Size": str(len(data))})
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and self.command == "GET":
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        self._send(status, data, headers, content_type="application/octet-stream")
