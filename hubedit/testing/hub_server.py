"""A small Hugging Face Hub-compatible HTTP server for tests and offline demos.

It speaks enough of the Hub's HTTP API for the real ``huggingface_hub`` client (>= 2.4, with
``HF_HUB_DISABLE_XET=1``) and ``datasets.load_dataset`` to work against it: repo create/delete,
repo info, tree listing, paths-info, refs, commit history, preupload, ndjson commits, branches,
tags, ``resolve`` downloads (with ``Range``), and the git-LFS "basic" transfer (batch, PUT, verify).

Storage lives under ``root`` and survives restarts::

    root/blobs/<sha256>                              file contents, content-addressed
    root/repos/<type>/<ns>/<name>/repo.json          branches, tags, visibility, creation date
    root/repos/<type>/<ns>/<name>/commits/<sha>.json one commit: parent, message, date, full tree

A commit is written before its branch moves, so a commit applies fully or not at all. Any token
(or none) is accepted. ``fail_next(kind, ...)`` makes the next requests of one kind fail, to test
interrupted uploads. Run ``python -m hubedit.testing.hub_server --root DIR --port N`` to serve.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

try:  # optional: used to validate README front matter and fill `cardData`
    import yaml
except ImportError:  # pragma: no cover
    yaml = None

__all__ = ["HubServer", "main"]

logger = logging.getLogger(__name__)

TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}  # URL part -> repo type
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub's limit for regular (non-LFS) files
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_YAML_BLOCK = re.compile(r"^(\s*---[\r\n]+)([\S\s]*?)([\r\n]+---(\r\n|\n|$))")  # as huggingface_hub.repocard
_GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n"
    for ext in ("bin", "ckpt", "gz", "h5", "npy", "npz", "onnx", "parquet", "pt", "pth", "safetensors", "zip")
).encode()
_R = r"/api/(?P<t>models|datasets|spaces)/([^/]+)/([^/]+)"  # /api/{t}/{ns}/{name}: handlers get (type, id)
_P = r"/(?:(?P<t>datasets|spaces)/)?([^/]+)/([^/]+)"  # /[datasets/]{ns}/{name}: handlers get (type, id)
_ROUTES = [  # (methods, raw-path regex, handler / fault kind); first match wins
    ("POST", r"/api/repos/create", "create_repo"),
    ("DELETE", r"/api/repos/delete", "delete_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("GET", r"/api/agent-harnesses", "agent_harnesses"),  # fetched by the client to detect AI agents
    ("GET", _R + r"/tree/([^/]+)(?:/(.*))?", "tree"),
    ("GET", _R + r"/refs", "refs"),
    ("GET", _R + r"/commits/([^/]+)", "commits"),
    ("POST", _R + r"/preupload/([^/]+)", "preupload"),
    ("POST", _R + r"/commit/([^/]+)", "commit"),
    ("POST", _R + r"/paths-info/([^/]+)", "paths_info"),
    ("POST DELETE", _R + r"/branch/([^/]+)", "branch"),
    ("POST DELETE", _R + r"/tag/([^/]+)", "tag"),
    ("GET", _R + r"(?:/revision/(.+))?", "info"),
    ("PUT", r"/api/lfs/upload/([0-9a-f]{64})/(\d+)", "lfs_upload"),
    ("POST", r"/api/lfs/verify", "lfs_verify"),
    ("GET HEAD", _P + r"/resolve/([^/]+)/(.+)", "resolve"),
    ("POST", _P + r"\.git/info/lfs/objects/batch", "lfs_batch"),
]
_ROUTES = [(set(m.split()), re.compile(p + "$"), name) for m, p, name in _ROUTES]
FAULT_KINDS = frozenset(name for _, _, name in _ROUTES)


class HubError(Exception):
    """An error answered as the Hub does: JSON ``{"error": ...}`` plus an ``X-Error-Code`` header."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})
        self.extra = dict(extra or {})  # more fields of the JSON body


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub calls ``oid`` / ``blobId``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _check_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _card_data(text: str) -> dict | None:
    """The YAML front matter of a README as a dict (None if absent or unreadable)."""
    match = _YAML_BLOCK.search(text)
    if match is None or yaml is None:
        return None
    try:
        data = yaml.safe_load(match.group(2))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class HubServer:
    """A Hub-compatible server on loopback, storing repos under ``root``.

    >>> with HubServer(tmp_path) as hub:          # or hub = HubServer(tmp_path).start() ... hub.stop()
    ...     api = HfApi(endpoint=hub.url)

    ``lfs_threshold``: files larger than this many bytes are asked to go through LFS (``None``: never).
    ``request_log`` lists ``"METHOD /path?query"`` of every request received (for debugging tests).
    """

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0,
                 lfs_threshold: int | None = DEFAULT_LFS_THRESHOLD):
        self.root = Path(root)
        self.host, self.port, self.lfs_threshold = host, port, lfs_threshold
        self.request_log: deque[str] = deque(maxlen=100_000)
        self._lock = threading.RLock()
        self._faults: dict[str, list[tuple[int, str]]] = {}
        self._commit_cache: dict[Path, dict] = {}
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for sub in ("blobs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (use as ``HF_ENDPOINT``)."""
        return f"http://{self.host}:{self.port}"

    def _bind(self) -> None:
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]

    def start(self) -> "HubServer":
        """Serve in a background (daemon) thread; returns self."""
        if self._httpd is None:
            self._bind()
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open (keep-alive) connections; storage stays on disk."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------- fault injection
    def fail_next(self, kind: str, status: int = 500, count: int = 1, message: str = "Injected failure") -> None:
        """Make the next ``count`` requests of ``kind`` fail with ``status`` (after reading their body).

        Kinds are the route names, e.g. ``"commit"``, ``"lfs_upload"`` (the PUT of an LFS object, failed after its
        bytes are read and before they are stored), ``"lfs_verify"``, ``"lfs_batch"``, ``"preupload"``,
        ``"resolve"``, ``"create_repo"``, ``"branch"``. The client retries LFS uploads and verifies (and
        batch/preupload calls) on 408/429/5xx with back-off, so a single 500 there tests the retry; use a 4xx to
        make them fail. An object already stored skips its upload and verify: fail those with new bytes.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"Unknown kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        with self._lock:
            self._faults.setdefault(kind, []).extend([(status, message)] * count)

    def _take_fault(self, kind: str) -> tuple[int, str] | None:
        with self._lock:
            queue = self._faults.get(kind)
            return queue.pop(0) if queue else None

    # ------------------------------------------------------------------- storage
    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self._blob(sha).exists():
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._blob(sha))
        return sha

    def _write_json(self, path: Path, obj) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)  # atomic: readers see the old or the new file, never half of one

    def _repo_dir(self, rtype: str, repo_id: str) -> Path:
        return self.root / "repos" / rtype / repo_id

    def _load_repo(self, rtype: str, repo_id: str) -> dict:
        ns, _, name = repo_id.partition("/")
        path = self._repo_dir(rtype, repo_id) / "repo.json"
        if not (_NAME.match(ns) and _NAME.match(name)) or not path.is_file():
            raise HubError(404, f"Repository Not Found for {rtype} '{repo_id}'.", "RepoNotFound")
        return json.loads(path.read_text())

    def _commit(self, rtype: str, repo_id: str, sha: str) -> dict:
        path = self._repo_dir(rtype, repo_id) / "commits" / f"{sha}.json"
        if path not in self._commit_cache:  # commits are immutable: cache them
            try:
                self._commit_cache[path] = json.loads(path.read_text())
            except FileNotFoundError:  # the repo was deleted meanwhile
                raise HubError(404, f"Repository Not Found for {rtype} '{repo_id}'.", "RepoNotFound") from None
        return self._commit_cache[path]

    def _resolve(self, rtype: str, repo_id: str, rev: str) -> tuple[dict, str]:
        """(repo metadata, commit sha) for a branch, tag or full commit sha."""
        meta = self._load_repo(rtype, repo_id)
        if rev in meta["branches"]:
            return meta, meta["branches"][rev]
        if rev in meta["tags"]:
            return meta, meta["tags"][rev]["commit"]
        if _SHA1.match(rev) and (self._repo_dir(rtype, repo_id) / "commits" / f"{rev}.json").is_file():
            return meta, rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _tree_at(self, rtype: str, repo_id: str, rev: str) -> tuple[str, dict]:
        """(commit sha, tree) at a revision. Reads need no lock: JSON files are replaced atomically."""
        sha = self._resolve(rtype, repo_id, rev)[1]
        return sha, self._commit(rtype, repo_id, sha)["tree"]

    def _new_commit(self, rtype, repo_id, parent, tree, title, message="", authors=("user",)) -> str:
        body = {"parent": parent, "title": title, "message": message, "date": _now(), "authors": list(authors),
                "tree": tree}
        digest = hashlib.sha1(json.dumps(body, sort_keys=True).encode())
        digest.update(uuid.uuid4().bytes)  # two identical commits in the same millisecond still differ
        sha = digest.hexdigest()
        self._write_json(self._repo_dir(rtype, repo_id) / "commits" / f"{sha}.json", {"id": sha, **body})
        return sha

    def create_repo(self, rtype: str, repo_id: str, private: bool = False, sdk: str | None = None) -> None:
        """Create a repo whose ``main`` holds one initial commit with a ``.gitattributes`` (as the Hub does)."""
        ns, _, name = repo_id.partition("/")
        if not (_NAME.match(ns) and _NAME.match(name)) or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name: {repo_id!r}")
        with self._lock:
            if (self._repo_dir(rtype, repo_id) / "repo.json").exists():
                raise HubError(409, f"You already created this {rtype} repo")
            sha = self._put_blob(_GITATTRIBUTES)
            tree = {".gitattributes": {"sha256": sha, "size": len(_GITATTRIBUTES), "lfs": False,
                                       "oid": _git_oid(_GITATTRIBUTES)}}
            head = self._new_commit(rtype, repo_id, None, tree, "initial commit", authors=("system",))
            self._write_json(self._repo_dir(rtype, repo_id) / "repo.json", {
                "id": repo_id, "type": rtype, "uid": uuid.uuid4().hex[:24], "private": private, "sdk": sdk,
                "createdAt": _now(), "branches": {"main": head}, "tags": {}})

    def _save_repo(self, rtype: str, repo_id: str, meta: dict) -> None:
        self._write_json(self._repo_dir(rtype, repo_id) / "repo.json", meta)

    def apply_commit(self, rtype: str, repo_id: str, branch: str, operations: list[dict], title: str,
                     message: str = "", parent_commit: str | None = None) -> str:
        """Apply ndjson-style operations (``file`` with ``data`` bytes, ``lfsFile``, ``deletedFile``,
        ``deletedFolder``) on top of ``branch``; all or nothing. Returns the new commit sha."""
        blobs = {}  # store inline contents first (content-addressed, harmless if the commit then fails)
        for i, op in enumerate(operations):
            if op["key"] == "file":
                data = op["data"]
                blobs[i] = {"sha256": self._put_blob(data), "size": len(data), "lfs": False, "oid": _git_oid(data)}
        with self._lock:
            meta = self._load_repo(rtype, repo_id)
            if branch not in meta["branches"]:
                if branch in meta["tags"] or _SHA1.match(branch):
                    raise HubError(400, f"Can only commit to a branch, not to {branch!r}")
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            head = meta["branches"][branch]
            if parent_commit is not None and parent_commit != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(self._commit(rtype, repo_id, head)["tree"])
            for i, op in enumerate(operations):
                key, path = op["key"], _check_path(op["value"].get("path", "").strip("/"))
                if key == "file":
                    tree[path] = blobs[i]
                elif key == "lfsFile":
                    oid, size = op["value"].get("oid", ""), op["value"].get("size")
                    blob = self._blob(oid) if _SHA256.match(oid) else None
                    if blob is None or not blob.is_file():
                        raise HubError(422, f"LFS object {oid} for '{path}' was never uploaded")
                    if size is not None and blob.stat().st_size != size:
                        raise HubError(422, f"LFS object {oid} has size {blob.stat().st_size}, not {size}")
                    size = blob.stat().st_size
                    tree[path] = {"sha256": oid, "size": size, "lfs": True, "oid": _git_oid(_lfs_pointer(oid, size))}
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    gone = [p for p in tree if p.startswith(path + "/")]
                    if not gone:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in gone:
                        del tree[p]
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            for path in tree:  # a path cannot be both a file and a folder
                parts = path.split("/")
                if any("/".join(parts[:k]) in tree for k in range(1, len(parts))):
                    raise HubError(400, f"'{path}' lies under a path that is a file")
            sha = self._new_commit(rtype, repo_id, head, tree, title, message)
            meta["branches"][branch] = sha  # the branch moves last: the commit is atomic
            self._save_repo(rtype, repo_id, meta)
            return sha

    # -------------------------------------------------------------- views
    def _entries(self, tree: dict, path: str, recursive: bool) -> list[tuple[str, dict | None]]:
        """(path, file entry) / (path, None) for folders, under ``path`` ("" = root)."""
        path = path.strip("/")
        prefix = path + "/" if path else ""
        files = sorted(p for p in tree if p.startswith(prefix))
        if path and not files:
            raise HubError(404, f"{path} does not exist or is not a folder", "EntryNotFound")
        out: dict[str, dict | None] = {}
        for p in files:
            parts = p[len(prefix):].split("/")
            for k in range(1, len(parts) if recursive else min(len(parts), 2)):
                out.setdefault(prefix + "/".join(parts[:k]), None)
            if recursive or len(parts) == 1:
                out[p] = tree[p]
        return sorted(out.items())

    def _last_commits(self, rtype, repo_id, head: str, paths: list[str]) -> dict[str, dict]:
        """The latest commit (reachable from ``head``) that changed each path (file or folder)."""
        def view(tree, path):
            return tree.get(path) or {p: e["oid"] for p, e in tree.items() if p.startswith(path + "/")}
        found, sha = {}, head
        while sha and len(found) < len(paths):
            commit = self._commit(rtype, repo_id, sha)
            parent = self._commit(rtype, repo_id, commit["parent"])["tree"] if commit["parent"] else {}
            for p in paths:
                if p not in found and view(commit["tree"], p) != view(parent, p):
                    found[p] = {"id": sha, "title": commit["title"], "date": commit["date"]}
            sha = commit["parent"]
        return found

    def _entry_json(self, tree: dict, path: str, entry: dict | None, last: dict | None) -> dict:
        if entry is None:
            under = sorted(f"{p} {e['oid']}" for p, e in tree.items() if p.startswith(path + "/"))
            out = {"type": "directory", "oid": hashlib.sha1("\n".join(under).encode()).hexdigest(), "size": 0,
                   "path": path}
        else:
            out = {"type": "file", "oid": entry["oid"], "size": entry["size"], "path": path}
            if entry["lfs"]:
                out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                              "pointerSize": len(_lfs_pointer(entry["sha256"], entry["size"]))}
        if last is not None:
            out["lastCommit"] = last
        return out

    def _entries_json(self, rtype, repo_id, sha, entries, expand: bool) -> list[dict]:
        tree = self._commit(rtype, repo_id, sha)["tree"]
        last = self._last_commits(rtype, repo_id, sha, [p for p, _ in entries]) if expand else {}
        return [self._entry_json(tree, p, e, last.get(p)) for p, e in entries]

    def _info(self, rtype: str, repo_id: str, rev: str, blobs: bool, expand: list[str]) -> dict:
        meta, sha = self._resolve(rtype, repo_id, rev)
        commit = self._commit(rtype, repo_id, sha)
        tree, siblings = commit["tree"], []
        for path in sorted(tree):
            sibling = {"rfilename": path}
            if blobs:
                entry = self._entry_json(tree, path, tree[path], None)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["lfs"]["oid"],
                                      "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        info = {"_id": meta["uid"], "id": repo_id, "author": repo_id.split("/")[0], "sha": sha,
                "private": meta["private"], "gated": False, "disabled": False, "createdAt": meta["createdAt"],
                "lastModified": commit["date"], "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(e["size"] for e in tree.values())}
        if "README.md" in tree:
            card = _card_data(self._blob(tree["README.md"]["sha256"]).read_text(encoding="utf-8", errors="replace"))
            if card is not None:
                info["cardData"] = card
                info["tags"] = [t for t in card.get("tags") or [] if isinstance(t, str)]
                if rtype == "model":
                    info.update({k: card[k] for k in ("library_name", "pipeline_tag") if isinstance(card.get(k), str)})
        if rtype == "space":
            info["sdk"] = meta.get("sdk")
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id", *expand)}
        return info


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def close_connections(self) -> None:
        with self.connections_lock:
            for conn in list(self.open_connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, routes it to a ``h_<route>`` method, and answers JSON or file bytes."""

    protocol_version = "HTTP/1.1"  # keep-alive: every response has a Content-Length, every body is read
    server_version = "hubedit-hub/1.0"
    server: _HTTPServer

    def setup(self):
        super().setup()
        with self.server.connections_lock:
            self.server.open_connections.add(self.connection)

    def finish(self):
        with self.server.connections_lock:
            self.server.open_connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args):  # noqa: A002 - signature from BaseHTTPRequestHandler
        logger.debug("%s " + format, self.address_string(), *args)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = lambda self: self._dispatch()  # noqa: E731

    # ------------------------------------------------------------ plumbing
    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _body_chunks(self):
        """Yield the request body (Content-Length or chunked), exactly once."""
        if self._body_read:
            return
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while (size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)) > 0:
                yield from self._read_exactly(size)
                self.rfile.readline(1024)
            while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))
        self._body_done = True

    def _read_exactly(self, size: int):
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            size -= len(chunk)
            yield chunk

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _send(self, status: int, body=b"", headers: dict | None = None, content_type="application/json"):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _dispatch(self):
        self._body_read = self._body_done = False
        url = urlsplit(self.path)
        self.query = parse_qs(url.query, keep_blank_values=True)
        self.hub.request_log.append(f"{self.command} {self.path}")
        try:
            for methods, pattern, name in _ROUTES:
                match = pattern.match(url.path)
                if match is None:
                    continue
                if self.command not in methods:
                    raise HubError(405, f"Method {self.command} not allowed on {url.path}")
                args = [unquote(g) if g is not None else None for g in match.groups()]
                if "t" in pattern.groupindex:  # repo routes: (url type, ns, name, ...) -> (type, "ns/name", ...)
                    args = [TYPES[args[0]], f"{args[1]}/{args[2]}", *args[3:]]
                handler = getattr(self, f"h_{name}")
                if name == "lfs_upload":
                    return handler(*args)  # streams (and reads) the body itself
                self.body = self._body()  # read every body fully, even when answering an error
                fault = self.hub._take_fault(name)
                if fault is not None:
                    raise HubError(fault[0], fault[1])
                return handler(*args)
            raise HubError(404, f"Not found: {self.command} {url.path}")
        except HubError as err:
            self._error(err)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as exc:  # never kill the connection silently: answer 500 with the reason
            logger.exception("hub server error on %s %s", self.command, self.path)
            self._error(HubError(500, f"Internal error: {type(exc).__name__}: {exc}"))

    def _error(self, err: HubError):
        if not self._body_read:
            for _ in self._body_chunks():
                pass
        elif not self._body_done:  # a body left half-read cannot share the connection with the next request
            self.close_connection = True
        headers = dict(err.headers)
        if err.code:
            headers.setdefault("X-Error-Code", err.code)
        message = err.message.encode("ascii", "backslashreplace").decode().replace("\r", " ").replace("\n", " ")
        headers.setdefault("X-Error-Message", message)  # header values must be latin-1: keep them ASCII
        self._send(err.status, {"error": err.message, **err.extra}, headers)

    def _payload(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            raise HubError(400, "Request body is not valid JSON") from None

    def _flag(self, name: str) -> bool:
        return self.query.get(name, [""])[-1].lower() in ("1", "true")

    def _base(self) -> str:
        return f"http://{self.headers.get('Host') or f'{self.hub.host}:{self.hub.port}'}"

    # ------------------------------------------------------------ repos
    def h_create_repo(self):
        body = self._payload()
        rtype = body.get("type") or "model"
        if rtype not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {rtype!r}")
        repo_id = f"{body.get('organization') or 'user'}/{body.get('name')}"
        private = bool(body.get("private")) or body.get("visibility") == "private"
        url = f"{self._base()}/{URL_PREFIX[rtype]}{repo_id}"
        try:
            self.hub.create_repo(rtype, repo_id, private=private, sdk=body.get("sdk"))
        except HubError as err:
            err.extra["url"] = url  # the client reads it even from the 409 (exist_ok=True)
            raise
        self._send(200, {"url": url, "name": repo_id})

    def h_delete_repo(self):
        body = self._payload()
        rtype, repo_id = body.get("type") or "model", f"{body.get('organization') or 'user'}/{body.get('name')}"
        with self.hub._lock:
            self.hub._load_repo(rtype, repo_id)
            trash = self.hub.root / "tmp" / f"deleted-{uuid.uuid4().hex}"
            os.replace(self.hub._repo_dir(rtype, repo_id), trash)  # the repo vanishes atomically
            self.hub._commit_cache.clear()
        shutil.rmtree(trash, ignore_errors=True)
        self._send(200, {})

    def h_validate_yaml(self):
        content = self._payload().get("content") or ""
        match = _YAML_BLOCK.search(content)
        if match is not None and yaml is not None:
            try:
                data = yaml.safe_load(match.group(2))
            except yaml.YAMLError as exc:
                return self._send(400, {"errors": [{"message": f"Invalid YAML in README front matter: {exc}"}],
                                        "warnings": []})
            if data is not None and not isinstance(data, dict):
                return self._send(400, {"errors": [{"message": "README front matter must be a YAML mapping"}],
                                        "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def h_whoami(self):
        self._send(200, {"type": "user", "id": "0" * 24, "name": "user", "fullname": "Test User", "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def h_agent_harnesses(self):
        self._send(200, {"standardEnvVars": [], "harnesses": {}})

    def h_info(self, rtype, repo_id, rev):
        expand = self.query.get("expand", []) + self.query.get("expand[]", [])
        self._send(200, self.hub._info(rtype, repo_id, rev or "main", self._flag("blobs"), expand))

    def h_tree(self, rtype, repo_id, rev, path):
        sha, tree = self.hub._tree_at(rtype, repo_id, rev)
        entries = self.hub._entries(tree, path or "", self._flag("recursive"))
        self._send(200, self.hub._entries_json(rtype, repo_id, sha, entries, self._flag("expand")))

    def h_paths_info(self, rtype, repo_id, rev):
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = self._payload()
            paths, expand = body.get("paths") or [], bool(body.get("expand"))
        else:  # the client posts a form: paths=a&paths=b&expand=false
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", [""])[-1].lower() in ("1", "true")
        sha, tree = self.hub._tree_at(rtype, repo_id, rev)
        entries = []
        for path in dict.fromkeys(p.strip("/") for p in paths):
            if path in tree:
                entries.append((path, tree[path]))
            elif path and any(p.startswith(path + "/") for p in tree):
                entries.append((path, None))
        self._send(200, self.hub._entries_json(rtype, repo_id, sha, entries, expand))

    def h_refs(self, rtype, repo_id):
        meta = self.hub._load_repo(rtype, repo_id)
        refs = {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s}
                             for b, s in sorted(meta["branches"].items())],
                "tags": [{"name": g, "ref": f"refs/tags/{g}", "targetCommit": v["commit"]}
                         for g, v in sorted(meta["tags"].items())],
                "converts": []}
        if self._flag("include_prs"):
            refs["pullRequests"] = []
        self._send(200, refs)

    def h_commits(self, rtype, repo_id, rev):
        sha, history = self.hub._resolve(rtype, repo_id, rev)[1], []
        while sha:
            commit = self.hub._commit(rtype, repo_id, sha)
            history.append({"id": sha, "title": commit["title"], "message": commit["message"],
                            "date": commit["date"], "authors": [{"user": a} for a in commit["authors"]]})
            sha = commit["parent"]
        self._send(200, history)

    def h_branch(self, rtype, repo_id, branch):
        with self.hub._lock:
            meta = self.hub._load_repo(rtype, repo_id)
            if self.command == "DELETE":
                if branch not in meta["branches"]:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise HubError(403, "Cannot delete the default branch")
                del meta["branches"][branch]
            else:
                if branch in meta["branches"] or branch in meta["tags"]:
                    raise HubError(409, f"Reference refs/heads/{branch} already exists")
                start = self._payload().get("startingPoint") or "main"
                meta["branches"][branch] = self.hub._resolve(rtype, repo_id, start)[1]
            self.hub._save_repo(rtype, repo_id, meta)
        self._send(200, {})

    def h_tag(self, rtype, repo_id, rev_or_tag):
        with self.hub._lock:
            meta = self.hub._load_repo(rtype, repo_id)
            if self.command == "DELETE":
                if meta["tags"].pop(rev_or_tag, None) is None:
                    raise HubError(404, f"Invalid rev id: {rev_or_tag}", "RevisionNotFound")
            else:
                body = self._payload()
                tag = body.get("tag") or ""
                if not tag:
                    raise HubError(400, "Missing tag name")
                if tag in meta["tags"] or tag in meta["branches"]:
                    raise HubError(409, f"Tag {tag} already exists")
                sha = self.hub._resolve(rtype, repo_id, rev_or_tag)[1]
                meta["tags"][tag] = {"commit": sha, "message": body.get("message") or ""}
            self.hub._save_repo(rtype, repo_id, meta)
        self._send(200, {})

    # ------------------------------------------------------------ uploads
    def h_preupload(self, rtype, repo_id, rev):
        (sha, tree), threshold, files = self.hub._tree_at(rtype, repo_id, rev), self.hub.lfs_threshold, []
        for f in self._payload().get("files") or []:
            mode = "lfs" if threshold is not None and int(f.get("size") or 0) > threshold else "regular"
            existing = tree.get(f["path"])
            oid = None if existing is None else (existing["sha256"] if existing["lfs"] else existing["oid"])
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": files, "commitOid": sha})

    def h_commit(self, rtype, repo_id, branch):
        if self._flag("create_pr"):
            raise HubError(400, "create_pr is not supported by this test server")
        header, operations = None, []
        try:
            for line in self.body.splitlines():
                if line.strip():
                    item = json.loads(line)
                    if item["key"] == "header":
                        header = item["value"]
                    else:
                        operations.append(item)
            for op in operations:
                if op["key"] == "file":
                    value = op["value"]
                    content = value.get("content", "")
                    op["data"] = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
        except (ValueError, KeyError, TypeError) as exc:
            raise HubError(400, f"Malformed ndjson commit payload: {exc}") from None
        if header is None or not header.get("summary"):
            raise HubError(400, "The commit payload needs a header line with a summary")
        sha = self.hub.apply_commit(rtype, repo_id, branch, operations, header["summary"],
                                    header.get("description") or "", header.get("parentCommit"))
        self._send(200, {"success": True, "commitOid": sha, "hookOutput": "",
                         "commitUrl": f"{self._base()}/{URL_PREFIX[rtype]}{repo_id}/commit/{sha}"})

    def h_lfs_batch(self, rtype, repo_id):
        self.hub._load_repo(rtype, repo_id)
        body, objects = self._payload(), []
        if body.get("operation", "upload") != "upload":
            raise HubError(400, "Only the 'upload' LFS operation is supported")
        for obj in body.get("objects") or []:
            oid, size = str(obj.get("oid", "")), int(obj.get("size") or 0)
            item = {"oid": oid, "size": size, "authenticated": True}
            if not _SHA256.match(oid):
                item["error"] = {"code": 422, "message": f"Invalid sha256 oid {oid!r}"}
            elif not (self.hub._blob(oid).is_file() and self.hub._blob(oid).stat().st_size == size):
                item["actions"] = {"upload": {"href": f"{self._base()}/api/lfs/upload/{oid}/{size}"},
                                   "verify": {"href": f"{self._base()}/api/lfs/verify", "header": {}}}
            objects.append(item)  # no "actions": already stored, the client skips the upload
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def h_lfs_upload(self, oid, size):
        digest, received = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.hub.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self._body_chunks():
                    digest.update(chunk)
                    received += len(chunk)
                    f.write(chunk)
            fault = self.hub._take_fault("lfs_upload")
            if fault is not None:
                raise HubError(fault[0], fault[1])
            if received != int(size) or digest.hexdigest() != oid:
                raise HubError(400, f"Uploaded object does not match: expected sha256 {oid} and size {size}, "
                                    f"got {digest.hexdigest()} and {received}")
            os.replace(tmp, self.hub._blob(oid))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._send(200, b"", {"ETag": f'"{oid}"'})

    def h_lfs_verify(self):
        body = self._payload()
        oid, blob = str(body.get("oid", "")), self.hub._blob(str(body.get("oid", "")))
        if not (_SHA256.match(oid) and blob.is_file() and blob.stat().st_size == body.get("size")):
            raise HubError(404, f"LFS object {oid} not found")
        self._send(200, {"message": "ok"})

    # ------------------------------------------------------------ downloads
    def h_resolve(self, rtype, repo_id, rev, path):
        sha, tree = self.hub._tree_at(rtype, repo_id, rev)
        entry = tree.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
        size = entry["size"]
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "ETag": f'"{entry["oid"]}"'}
        if entry["lfs"]:
            headers.update({"ETag": f'"{entry["sha256"]}"', "X-Linked-Etag": f'"{entry["sha256"]}"',
                            "X-Linked-Size": str(size)})
        start, end, status = 0, size - 1, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                start, end = int(match.group(1)), min(int(match.group(2) or size - 1), size - 1)
            else:  # suffix range: the last N bytes
                start = max(size - int(match.group(2)), 0)
            if start >= size or start > end:
                raise HubError(416, "Range Not Satisfiable", headers={**headers, "Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(self.hub._blob(entry["sha256"]), "rb") as f:
            f.seek(start)
            remaining = end - start + 1
            while remaining > 0 and (chunk := f.read(min(remaining, 1 << 20))):
                self.wfile.write(chunk)
                remaining -= len(chunk)


def main(argv: list[str] | None = None) -> None:
    """``python -m hubedit.testing.hub_server --root DIR [--host H] [--port N]``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve a Hub-compatible API from a local folder.")
    parser.add_argument("--root", required=True, help="storage folder (created if missing; reused on restart)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--lfs-threshold", type=int, default=DEFAULT_LFS_THRESHOLD,
                        help="files above this many bytes go through LFS (default 10 MiB)")
    parser.add_argument("--no-lfs", action="store_true", help="send every file inline (no LFS, no Xet needed)")
    args = parser.parse_args(argv)
    hub = HubServer(args.root, args.host, args.port, lfs_threshold=None if args.no_lfs else args.lfs_threshold)
    hub._bind()
    print(f"Hub server on {hub.url} (root: {hub.root})", flush=True)
    print(f"  export HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1", flush=True)
    try:
        hub._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        hub._httpd.server_close()


if __name__ == "__main__":
    main()
