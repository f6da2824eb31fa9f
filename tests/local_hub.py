"""A local test double of the Hugging Face Hub HTTP API, for end-to-end tests.

This is NOT a Hub. It is a small standard-library HTTP server that answers the subset of the
Hub's HTTP API that the real ``huggingface_hub`` client (checked against 2.4.0) uses to create
repos, push commits and download files, so tests can point the unmodified client at it with
``HF_ENDPOINT=http://127.0.0.1:<port>`` instead of monkeypatching the client.

Implemented (model repos, and dataset repos under the ``datasets/`` URL prefix):

* ``GET  /api/whoami-v2``                                  fake user (any bearer token is accepted)
* ``POST /api/validate-yaml``                              always valid (no YAML parser in stdlib)
* ``POST /api/repos/create`` / ``DELETE /api/repos/delete``
* ``GET  /api/{models|datasets}/{repo}[/revision/{rev}]``  repo info: sha, siblings, private
* ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``         tree listing (``recursive`` honoured)
* ``POST /api/{type}s/{repo}/paths-info/{rev}``
* ``GET  /api/{type}s/{repo}/refs`` and ``/commits/{rev}``
* ``POST|DELETE /api/{type}s/{repo}/branch/{branch}``
* ``POST /api/{type}s/{repo}/preupload/{rev}``             "regular" vs "lfs" upload mode
* ``POST /api/{type}s/{repo}/commit/{rev}``                NDJSON commit (``create_pr=1`` too)
* ``POST /{repo}.git/info/lfs/objects/batch``              LFS batch API, "basic" transfer only
* ``PUT  /{repo}.git/info/lfs/objects/{oid}`` and ``POST .../verify``
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``                file metadata and bytes (Range too)

Dataset repos work as ``datasets`` (checked against 5.2.0) uses them: ``push_to_hub`` (parquet
shards through LFS, the card it merges ``dataset_info`` and ``configs`` into, a repeated push
that changes nothing), ``load_dataset`` and ``load_dataset_builder`` (what timm's ``hfds/`` and
``hfids/`` readers call), and streaming (``HfFileSystem`` reads shards with ``Range``). For
tests, ``HubStore.lfs_uploads`` counts the LFS objects received and ``fail_next_commits``
refuses that many coming commits after their files were uploaded (a push cut short).

Not implemented: Xet storage (clients must run with ``HF_HUB_DISABLE_XET=1``, see
``LocalHub.client_env``), LFS multipart uploads, tags, gated repos, spaces, model-card parsing.
Any ``Bearer`` token is accepted and stands for one user (``tester`` by default); writes
need a token, and private repos are hidden from anonymous reads. Errors carry the
``X-Error-Code`` headers (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) from
which the client raises its typed exceptions.

In-process::

    with LocalHub(tmp_path) as hub:
        env = hub.client_env(home=tmp_path / "hf")   # HF_ENDPOINT, HF_TOKEN, ...

As a script (prints the endpoint, serves until killed)::

    python tests/local_hub.py --root /tmp/hub --port 8765
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# URL segment after /api/ -> repo type, and repo type -> prefix of its web/resolve URLs.
API_REPO_TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIXES = {"model": "", "dataset": "datasets/"}

# The Hub refuses regular (non-LFS) files above 10 MB, so preupload answers "lfs" above it.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
CHUNK = 1024 * 1024
# The client sends the first 512 bytes of each file to preupload; binary detection uses them.
SAMPLE_SIZE = 512
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# What a new repo on the Hub starts with: its LFS patterns decide the preupload answer, as there.
_LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model "
    "*.msgpack *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar "
    "*.safetensors saved_model/**/* *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
).split()
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS)


class HubError(Exception):
    """An HTTP error answer; `code` becomes the X-Error-Code header the client dispatches on."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass(frozen=True)
class RepoRef:
    """A repo as addressed in URLs: type plus namespace/name (always two parts here)."""

    type: str
    namespace: str
    name: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def web_path(self) -> str:
        return f"{URL_PREFIXES[self.type]}{self.repo_id}"


def make_ref(repo_type: str, namespace: str, name: str) -> RepoRef:
    # Names become directory names on disk: refuse anything that could escape the root.
    if not (NAME_RE.match(namespace) and NAME_RE.match(name)) or ".." in namespace + name:
        raise HubError(400, f"Invalid repo name: {namespace}/{name}")
    return RepoRef(repo_type, namespace, name)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: what the client compares regular files against."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


def now_iso() -> str:
    """Timestamp in the one format `huggingface_hub.utils.parse_datetime` accepts."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def validate_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or ".git" in parts:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def lfs_patterns(gitattributes: str) -> list[str]:
    return [line.split()[0] for line in gitattributes.splitlines() if "filter=lfs" in line]


def matches_lfs_pattern(path: str, patterns: list[str]) -> bool:
    # gitattributes semantics, roughly: patterns without "/" match the basename at any depth.
    name = PurePosixPath(path).name
    return any(fnmatch.fnmatchcase(path if "/" in p else name, p) for p in patterns)


def looks_binary(sample: bytes) -> bool:
    return b"\0" in sample  # git's own heuristic


def choose_upload_mode(path: str, size: int, sample: bytes, patterns: list[str]) -> str:
    """The Hub's rule: large, LFS-tracked, or binary content -> "lfs"; else "regular"."""
    if size > LFS_SIZE_THRESHOLD or matches_lfs_pattern(path, patterns) or looks_binary(sample):
        return "lfs"
    return "regular"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Parse a single `bytes=` range into inclusive bounds; None means the whole file."""
    if not header:
        return None
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match is None or match.groups() == ("", ""):
        return None  # multi-range or malformed: serve the whole file, as RFC 9110 allows
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HubError(
            416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end


class HubStore:
    """Repos, commits and contents on disk. Commits are immutable full-tree snapshots.

    Layout: ``repos/{type}s/{ns}/{name}/meta.json`` (privacy, branches) and ``commits/{sha}.json``;
    regular file bodies in ``blobs/{git oid}``; LFS bodies in ``lfs/{sha256}`` (shared by all
    repos, which is simpler than the Hub's per-repo LFS scoping and fine for tests).
    """

    def __init__(self, root: Path, user: str) -> None:
        self.root = Path(root)
        self.user = user
        # One lock for every read-modify-write of metadata: commits must not interleave.
        self.lock = threading.RLock()
        # For tests: LFS objects received so far, and how many coming commits to refuse (a
        # failure at the Hub's end, after the files were uploaded, as when a push is cut short).
        self.lfs_uploads = 0
        self.fail_next_commits = 0
        for sub in ("repos", "blobs", "lfs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- files -------------------------------------------------------------------------------

    def _write_atomic(self, path: Path, data: bytes) -> None:
        # Readers in other threads must never see a half-written JSON or blob.
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def _write_json(self, path: Path, obj: Any) -> None:
        self._write_atomic(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    def put_blob(self, data: bytes) -> str:
        oid = git_blob_oid(data)
        path = self.root / "blobs" / oid
        if not path.exists():
            self._write_atomic(path, data)
        return oid

    def lfs_path(self, oid: str) -> Path:
        if not SHA256_RE.match(oid):
            raise HubError(400, f"Invalid LFS oid: {oid}")
        return self.root / "lfs" / oid

    def lfs_size(self, oid: str) -> int | None:
        path = self.lfs_path(oid)
        return path.stat().st_size if path.exists() else None

    def lfs_store(self, oid: str, chunks: Iterable[bytes]) -> int:
        """Stream an uploaded LFS object to disk, keeping it only if its sha256 is `oid`."""
        target = self.lfs_path(oid)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
            if digest.hexdigest() != oid:
                raise HubError(400, f"Uploaded content has sha256 {digest.hexdigest()}, not {oid}")
            os.replace(tmp, target)
            with self.lock:
                self.lfs_uploads += 1
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    def content_path(self, entry: dict) -> Path:
        if entry.get("lfs"):
            return self.lfs_path(entry["lfs"]["oid"])
        return self.root / "blobs" / entry["oid"]

    # -- repos and revisions -------------------------------------------------------------------

    def repo_dir(self, ref: RepoRef) -> Path:
        return self.root / "repos" / f"{ref.type}s" / ref.namespace / ref.name

    def meta(self, ref: RepoRef) -> dict:
        path = self.repo_dir(ref) / "meta.json"
        if not path.exists():
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return json.loads(path.read_text())

    def create_repo(self, ref: RepoRef, private: bool) -> None:
        with self.lock:
            if (self.repo_dir(ref) / "meta.json").exists():
                raise HubError(409, f"You already created this {ref.type} repo")
            meta = {"private": private, "createdAt": now_iso(), "branches": {}, "prs": 0}
            # Like the Hub, a new repo has one commit holding the default .gitattributes.
            gitattributes = self._file_entry(DEFAULT_GITATTRIBUTES.encode())
            sha = self._write_commit(
                ref, None, {".gitattributes": gitattributes}, "initial commit", ""
            )
            meta["branches"]["main"] = sha
            self._write_json(self.repo_dir(ref) / "meta.json", meta)

    def delete_repo(self, ref: RepoRef) -> None:
        with self.lock:
            self.meta(ref)  # 404 if missing
            # Renaming first makes the deletion atomic for concurrent readers.
            trash = self.root / "tmp" / uuid.uuid4().hex
            os.replace(self.repo_dir(ref), trash)
            shutil.rmtree(trash)

    def resolve(self, ref: RepoRef, revision: str) -> str:
        """Branch name (optionally refs/heads/...) or full commit sha -> commit sha."""
        branches = self.meta(ref)["branches"]
        name = revision.removeprefix("refs/heads/")
        if name in branches:
            return branches[name]
        is_commit = SHA1_RE.match(revision) is not None
        if is_commit and (self.repo_dir(ref) / "commits" / f"{revision}.json").exists():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def commit_record(self, ref: RepoRef, sha: str) -> dict:
        return json.loads((self.repo_dir(ref) / "commits" / f"{sha}.json").read_text())

    def tree(self, ref: RepoRef, revision: str) -> tuple[str, dict[str, dict]]:
        sha = self.resolve(ref, revision)
        return sha, self.commit_record(ref, sha)["tree"]

    def history(self, ref: RepoRef, revision: str) -> list[dict]:
        sha: str | None = self.resolve(ref, revision)
        records = []
        while sha is not None:
            record = self.commit_record(ref, sha)
            records.append(record)
            sha = record["parents"][0] if record["parents"] else None
        return records

    def create_branch(self, ref: RepoRef, branch: str, starting_point: str | None) -> None:
        with self.lock:
            meta = self.meta(ref)
            if branch in meta["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            meta["branches"][branch] = self.resolve(ref, starting_point or "main")
            self._write_json(self.repo_dir(ref) / "meta.json", meta)

    def delete_branch(self, ref: RepoRef, branch: str) -> None:
        with self.lock:
            meta = self.meta(ref)
            if branch == "main" or branch not in meta["branches"]:
                raise HubError(400 if branch == "main" else 404, f"Cannot delete branch {branch}")
            del meta["branches"][branch]
            self._write_json(self.repo_dir(ref) / "meta.json", meta)

    # -- commits -----------------------------------------------------------------------------

    def _file_entry(self, data: bytes) -> dict:
        return {"oid": self.put_blob(data), "size": len(data), "lfs": None}

    def _lfs_entry(self, oid: str, size: int | None) -> dict:
        stored = self.lfs_size(oid)
        if stored is None or (size is not None and size != stored):
            raise HubError(400, f"LFS object {oid} was not uploaded (or has another size)")
        pointer = lfs_pointer(oid, stored)
        lfs = {"oid": oid, "size": stored, "pointerSize": len(pointer)}
        return {"oid": git_blob_oid(pointer), "size": stored, "lfs": lfs}

    def _write_commit(
        self, ref: RepoRef, parent: str | None, tree: dict, title: str, message: str
    ) -> str:
        record = {
            "parents": [parent] if parent else [],
            "tree": tree,
            "title": title,
            "message": message,
            "date": now_iso(),
            "author": self.user,
        }
        # Not a real git hash, but unique (uuid) and 40-hex, which is all the client checks.
        seed = json.dumps(record, sort_keys=True) + uuid.uuid4().hex
        record["id"] = hashlib.sha1(seed.encode()).hexdigest()
        self._write_json(self.repo_dir(ref) / "commits" / f"{record['id']}.json", record)
        return record["id"]

    def apply_operation(self, tree: dict[str, dict], key: str, value: dict) -> None:
        """Apply one NDJSON commit line (other than the header) to `tree`, in place."""
        if key == "file":
            content = value["content"]
            base64_encoded = value.get("encoding") == "base64"
            data = base64.b64decode(content) if base64_encoded else content.encode()
            # The Hub rejects what should have gone through LFS; refusing it here catches
            # a wrong preupload answer instead of silently storing it.
            if len(data) > LFS_SIZE_THRESHOLD or looks_binary(data[:SAMPLE_SIZE]):
                raise HubError(400, f"{value['path']}: large or binary files must use LFS")
            tree[validate_path(value["path"])] = self._file_entry(data)
        elif key == "lfsFile":
            tree[validate_path(value["path"])] = self._lfs_entry(value["oid"], value.get("size"))
        elif key == "deletedFile":
            if tree.pop(value["path"], None) is None:
                raise HubError(404, "A file with this name doesn't exist", code="EntryNotFound")
        elif key == "deletedFolder":
            prefix = value["path"].rstrip("/") + "/"
            doomed = [path for path in tree if path.startswith(prefix)]
            if not doomed:
                raise HubError(404, "A folder with this name doesn't exist", code="EntryNotFound")
            for path in doomed:
                del tree[path]
        else:
            raise HubError(400, f"Unknown commit operation: {key}")

    def commit(
        self, ref: RepoRef, revision: str, lines: list[dict], create_pr: bool
    ) -> tuple[str, int | None]:
        """Apply NDJSON commit lines on top of `revision`; returns (commit sha, PR number)."""
        header = next((line["value"] for line in lines if line.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HubError(400, "Commit header with a summary is required")
        with self.lock:
            if self.fail_next_commits > 0:
                self.fail_next_commits -= 1
                raise HubError(400, "LocalHub refused this commit (fail_next_commits, for tests)")
            meta = self.meta(ref)
            branch = revision.removeprefix("refs/heads/")
            if branch not in meta["branches"]:
                self.resolve(ref, revision)  # 404 RevisionNotFound if it is not even a commit
                raise HubError(400, f"Can only commit to a branch, not to {revision}")
            head = meta["branches"][branch]
            parent_commit = header.get("parentCommit")
            if parent_commit and not head.startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(self.commit_record(ref, head)["tree"])
            for line in lines:
                if line.get("key") != "header":
                    self.apply_operation(tree, line.get("key", ""), line.get("value", {}))
            sha = self._write_commit(
                ref, head, tree, header["summary"], header.get("description", "")
            )
            pr_num = None
            if create_pr:  # a PR is a branch refs/pr/N, as on the Hub
                meta["prs"] += 1
                pr_num = meta["prs"]
                branch = f"refs/pr/{pr_num}"
            meta["branches"][branch] = sha
            self._write_json(self.repo_dir(ref) / "meta.json", meta)
        return sha, pr_num


# -- JSON views ------------------------------------------------------------------------------


def tree_item(path: str, entry: dict) -> dict:
    """A file as the tree and paths-info endpoints list it (RepoFile on the client side)."""
    item = {"type": "file", "path": path, "oid": entry["oid"], "size": entry["size"]}
    if entry.get("lfs"):
        item["lfs"] = dict(entry["lfs"])
    return item


def folder_items(tree: dict[str, dict]) -> dict[str, dict]:
    """Folders implied by the file paths, with an oid derived from their content."""
    folders: dict[str, list[str]] = {}
    for path, entry in tree.items():
        for parent in PurePosixPath(path).parents:
            if str(parent) != ".":
                folders.setdefault(str(parent), []).append(f"{path}:{entry['oid']}")
    return {
        path: {
            "type": "directory",
            "path": path,
            "oid": hashlib.sha1("\n".join(sorted(items)).encode()).hexdigest(),
        }
        for path, items in folders.items()
    }


def list_tree(tree: dict[str, dict], folder: str, recursive: bool) -> list[dict]:
    folders = folder_items(tree)
    if folder and folder not in folders:
        raise HubError(404, f"{folder} does not exist on this revision", code="EntryNotFound")
    prefix = f"{folder}/" if folder else ""
    items = [tree_item(p, e) for p, e in tree.items()] + list(folders.values())
    below = [item for item in items if item["path"].startswith(prefix)]
    if not recursive:
        below = [item for item in below if "/" not in item["path"][len(prefix) :]]
    return sorted(below, key=lambda item: (item["type"] != "directory", item["path"]))


def sibling(path: str, entry: dict, with_blobs: bool) -> dict:
    item: dict[str, Any] = {"rfilename": path}
    if with_blobs:  # only with ?blobs=true, as on the Hub (files_metadata=True)
        item.update(size=entry["size"], blobId=entry["oid"])
        if entry.get("lfs"):
            lfs = entry["lfs"]
            item["lfs"] = {
                "size": lfs["size"],
                "sha256": lfs["oid"],
                "pointerSize": lfs["pointerSize"],
            }
    return item


# -- HTTP ------------------------------------------------------------------------------------


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block shutdown

    def __init__(self, address: tuple[str, int], store: HubStore, verbose: bool) -> None:
        super().__init__(address, HubRequestHandler)
        self.store = store
        self.verbose = verbose


class HubRequestHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so the client's pooled connections are reused; every response sets a length.
    protocol_version = "HTTP/1.1"
    timeout = 300
    server: _HubServer

    # -- plumbing ----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    @property
    def store(self) -> HubStore:
        return self.server.store

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        try:
            url = urlsplit(self.path)
            # Split before unquoting: revisions and tree paths arrive with "/" encoded as %2F.
            segments = url.path.strip("/").split("/")
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if segments[0] == "api":
                self._api(method, segments[1:], query)
            else:
                self._web(method, segments)
        except HubError as err:
            self._send_error(err)
        except ConnectionError:  # the client went away mid-response: nothing left to answer
            self.close_connection = True
        except (KeyError, ValueError, TypeError) as err:
            self._send_error(HubError(400, f"Bad request: {type(err).__name__}: {err}"))
        except Exception as err:  # a visible 500 beats a hung client
            self._send_error(HubError(500, f"LocalHub bug: {type(err).__name__}: {err}"))

    def _iter_body(self) -> Iterator[bytes]:
        """Yield the request body, whether sent with Content-Length or chunked."""
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    return
                yield self.rfile.read(size)
                self.rfile.readline()  # CRLF closing the chunk
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                raise HubError(400, "Request body ended early")
            remaining -= len(chunk)
            yield chunk

    def _body(self) -> bytes:
        return b"".join(self._iter_body())

    def _json_body(self) -> dict:
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if not self._body_read and self.command in ("POST", "PUT", "DELETE"):
            # An unread request body would be parsed as the next request: drop the connection.
            self.close_connection = True
            headers = {**headers, "Connection": "close"}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, obj: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(obj).encode()
        self._send(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _send_error(self, err: HubError) -> None:
        # Header values must be one latin-1 line; the full message also goes in the body.
        one_line = " ".join(err.message.split()).encode("ascii", "replace").decode()
        headers = {"X-Error-Message": one_line, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send_json({"error": err.message}, err.status, headers)

    def _base_url(self) -> str:
        # Links must use the host the client used to reach us (it may not be 127.0.0.1).
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def _authenticated(self) -> bool:
        return self.headers.get("Authorization", "").startswith("Bearer ")

    def _require_auth(self) -> None:
        if not self._authenticated():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable_meta(self, ref: RepoRef) -> dict:
        meta = self.store.meta(ref)
        if meta["private"] and not self._authenticated():  # the Hub hides private repos
            raise HubError(404, "Repository not found", code="RepoNotFound")
        return meta

    # -- routing -----------------------------------------------------------------------------

    def _api(self, method: str, segs: list[str], query: dict[str, str]) -> None:
        route = (method, "/".join(segs[:2]))
        if route == ("GET", "whoami-v2"):
            return self._whoami()
        if route == ("POST", "validate-yaml"):
            self._body()
            return self._send_json({"errors": [], "warnings": []})
        if route == ("POST", "repos/create"):
            return self._create_repo()
        if route == ("DELETE", "repos/delete"):
            return self._delete_repo()
        if len(segs) < 3 or segs[0] not in API_REPO_TYPES:
            raise HubError(404, f"No such endpoint: {method} /api/{'/'.join(segs)}")
        ref = make_ref(API_REPO_TYPES[segs[0]], unquote(segs[1]), unquote(segs[2]))
        self._repo_api(method, ref, segs[3:], query)

    def _repo_api(self, method: str, ref: RepoRef, rest: list[str], query: dict[str, str]) -> None:
        action = rest[0] if rest else ""
        arg = unquote(rest[1]) if len(rest) > 1 else "main"
        if action.startswith("xet-"):
            raise HubError(
                501,
                "LocalHub does not implement Xet storage: run the client "
                "with HF_HUB_DISABLE_XET=1 (see LocalHub.client_env)",
            )
        handlers = {
            ("GET", ""): lambda: self._repo_info(ref, "main", query),
            ("GET", "revision"): lambda: self._repo_info(ref, arg, query),
            ("GET", "tree"): lambda: self._tree(ref, arg, unquote("/".join(rest[2:])), query),
            ("POST", "paths-info"): lambda: self._paths_info(ref, arg),
            ("GET", "refs"): lambda: self._refs(ref),
            ("GET", "commits"): lambda: self._commits(ref, arg),
            ("POST", "branch"): lambda: self._create_branch(ref, arg),
            ("DELETE", "branch"): lambda: self._delete_branch(ref, arg),
            ("POST", "preupload"): lambda: self._preupload(ref, arg),
            ("POST", "commit"): lambda: self._commit(ref, arg, query),
        }
        handler = handlers.get((method, action))
        if handler is None:
            raise HubError(404, f"No such endpoint: {method} {ref.repo_id}/{'/'.join(rest)}")
        handler()

    def _web(self, method: str, segs: list[str]) -> None:
        repo_type = "model"
        if segs[0] == "datasets":
            repo_type, segs = "dataset", segs[1:]
        if len(segs) >= 6 and segs[1].endswith(".git") and segs[2:5] == ["info", "lfs", "objects"]:
            ref = make_ref(repo_type, unquote(segs[0]), unquote(segs[1])[: -len(".git")])
            return self._lfs(method, ref, segs[5])
        if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
            ref = make_ref(repo_type, unquote(segs[0]), unquote(segs[1]))
            return self._resolve(ref, unquote(segs[3]), unquote("/".join(segs[4:])))
        raise HubError(404, f"No such endpoint: {method} /{'/'.join(segs)}")

    # -- account and repos -------------------------------------------------------------------

    def _whoami(self) -> None:
        self._require_auth()
        user = self.store.user
        self._send_json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user.title(),
                "email": f"{user}@localhost",
                "emailVerified": True,
                "isPro": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "local-hub", "role": "write"},
                },
            }
        )

    def _repo_ref_from_body(self, body: dict) -> RepoRef:
        # The client sends organization=None when the repo id has no namespace: use ours.
        namespace = body.get("organization") or self.store.user
        return make_ref(body.get("type") or "model", namespace, body["name"])

    def _create_repo(self) -> None:
        body = self._json_body()
        self._require_auth()
        ref = self._repo_ref_from_body(body)
        if ref.type not in URL_PREFIXES:
            raise HubError(400, f"LocalHub does not support repo type {ref.type!r}")
        url = f"{self._base_url()}/{ref.web_path}"
        private = body.get("visibility") == "private" or bool(body.get("private"))
        try:
            self.store.create_repo(ref, private)
        except HubError as err:
            # With exist_ok=True the client swallows the 409 but still reads "url" from it.
            if err.status != 409:
                raise
            return self._send_json(
                {"error": err.message, "url": url}, 409, {"X-Error-Message": err.message}
            )
        self._send_json({"url": url, "name": ref.repo_id, "id": ref.repo_id})

    def _delete_repo(self) -> None:
        body = self._json_body()
        self._require_auth()
        self.store.delete_repo(self._repo_ref_from_body(body))
        self._send_json({})

    def _repo_info(self, ref: RepoRef, revision: str, query: dict[str, str]) -> None:
        meta = self._readable_meta(ref)
        sha, tree = self.store.tree(ref, revision)
        with_blobs = query.get("blobs", "").lower() in ("1", "true")
        info = {
            "_id": hashlib.sha1(ref.web_path.encode()).hexdigest()[:24],
            "id": ref.repo_id,
            "author": ref.namespace,
            "sha": sha,
            "lastModified": self.store.commit_record(ref, sha)["date"],
            "createdAt": meta["createdAt"],
            "private": meta["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [sibling(p, e, with_blobs) for p, e in sorted(tree.items())],
        }
        if ref.type == "model":
            info["modelId"] = ref.repo_id
        self._send_json(info)

    def _tree(self, ref: RepoRef, revision: str, folder: str, query: dict[str, str]) -> None:
        self._readable_meta(ref)
        _, tree = self.store.tree(ref, revision)
        recursive = query.get("recursive", "").lower() in ("1", "true")
        self._send_json(list_tree(tree, folder.strip("/"), recursive))

    def _paths_info(self, ref: RepoRef, revision: str) -> None:
        # The client posts a form: paths=a&paths=b&expand=false.
        form = parse_qs(self._body().decode())
        self._readable_meta(ref)
        _, tree = self.store.tree(ref, revision)
        folders = folder_items(tree)
        found = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in tree:
                found.append(tree_item(path, tree[path]))
            elif path in folders:
                found.append(folders[path])
        self._send_json(found)

    def _refs(self, ref: RepoRef) -> None:
        branches = self._readable_meta(ref)["branches"]

        def as_ref(name: str, full: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": branches[name]}

        self._send_json(
            {
                "branches": [as_ref(b, f"refs/heads/{b}") for b in branches if "/" not in b],
                "pullRequests": [as_ref(b, b) for b in branches if b.startswith("refs/pr/")],
                "tags": [],
                "converts": [],
            }
        )

    def _commits(self, ref: RepoRef, revision: str) -> None:
        self._readable_meta(ref)
        self._send_json(
            [
                {
                    "id": c["id"],
                    "title": c["title"],
                    "message": c["message"],
                    "date": c["date"],
                    "authors": [{"user": c["author"]}],
                }
                for c in self.store.history(ref, revision)
            ]
        )

    def _create_branch(self, ref: RepoRef, branch: str) -> None:
        body = self._json_body()
        self._require_auth()
        self.store.create_branch(ref, branch, body.get("startingPoint"))
        self._send_json({})

    def _delete_branch(self, ref: RepoRef, branch: str) -> None:
        self._body()
        self._require_auth()
        self.store.delete_branch(ref, branch)
        self._send_json({})

    # -- uploads -----------------------------------------------------------------------------

    def _preupload(self, ref: RepoRef, revision: str) -> None:
        body = self._json_body()
        self._require_auth()
        self._readable_meta(ref)
        sha, tree = self.store.tree(ref, revision)
        patterns = lfs_patterns(self._read_text(tree.get(".gitattributes")))
        files = []
        for item in body["files"]:
            sample = base64.b64decode(item.get("sample", ""))
            mode = choose_upload_mode(item["path"], int(item["size"]), sample, patterns)
            # The remote oid lets the client drop unchanged files (sha256 for LFS, git oid else).
            existing = tree.get(item["path"])
            oid = None if existing is None else (existing["lfs"] or existing)["oid"]
            files.append(
                {"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid}
            )
        self._send_json({"files": files, "commitOid": sha})

    def _read_text(self, entry: dict | None) -> str:
        if entry is None or entry.get("lfs"):
            return ""
        return self.store.content_path(entry).read_text(errors="replace")

    def _commit(self, ref: RepoRef, revision: str, query: dict[str, str]) -> None:
        body = self._body()
        self._require_auth()
        self._readable_meta(ref)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        create_pr = query.get("create_pr") == "1"
        sha, pr_num = self.store.commit(ref, revision, lines, create_pr)
        repo_url = f"{self._base_url()}/{ref.web_path}"
        answer: dict[str, Any] = {
            "success": True,
            "commitOid": sha,
            "commitUrl": f"{repo_url}/commit/{sha}",
            "hookOutput": "",
        }
        if pr_num is not None:
            answer["pullRequestUrl"] = f"{repo_url}/discussions/{pr_num}"
        self._send_json(answer)

    def _lfs(self, method: str, ref: RepoRef, action: str) -> None:
        if method == "POST" and action == "batch":
            return self._lfs_batch(ref)
        if method == "POST" and action == "verify":
            return self._lfs_verify()
        if method == "PUT":
            return self._lfs_put(action)
        raise HubError(404, f"No such LFS endpoint: {method} {action}")

    def _lfs_batch(self, ref: RepoRef) -> None:
        body = self._json_body()
        self._require_auth()
        self._readable_meta(ref)
        if body.get("operation") != "upload":
            raise HubError(422, "LocalHub only implements the LFS 'upload' operation")
        base = f"{self._base_url()}/{ref.web_path}.git/info/lfs/objects"
        objects = []
        for obj in body.get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            # Omitting "actions" tells the client the object is already stored: no upload.
            if self.store.lfs_size(obj["oid"]) != obj["size"]:
                answer["actions"] = {
                    "upload": {"href": f"{base}/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{base}/verify", "header": {}},
                }
            objects.append(answer)
        # Only "basic" (one PUT per object): no chunk_size, so no multipart.
        self._send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str) -> None:
        # Upload hrefs are capabilities (like pre-signed URLs): the client sends no token here.
        self.store.lfs_path(oid)  # validate before reading a possibly large body
        self.store.lfs_store(oid, self._iter_body())
        self._send(200, b"", {})

    def _lfs_verify(self) -> None:
        body = self._json_body()
        if self.store.lfs_size(body["oid"]) != body["size"]:
            raise HubError(404, f"LFS object {body['oid']} not found or has another size")
        self._send_json({"message": "ok"})

    # -- downloads ---------------------------------------------------------------------------

    def _resolve(self, ref: RepoRef, revision: str, path: str) -> None:
        self._readable_meta(ref)
        sha, tree = self.store.tree(ref, revision)
        entry = tree.get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache the file's absence for this commit.
            raise HubError(
                404, "Entry not found", code="EntryNotFound", headers={"X-Repo-Commit": sha}
            )
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{entry["oid"]}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.get("lfs"):
            # The client keys its cache on X-Linked-Etag (the sha256) for LFS files.
            headers["X-Linked-Etag"] = f'"{entry["lfs"]["oid"]}"'
            headers["X-Linked-Size"] = str(entry["lfs"]["size"])
        self._send_file(self.store.content_path(entry), entry["size"], headers)

    def _send_file(self, path: Path, size: int, headers: dict[str, str]) -> None:
        bounds = parse_range(self.headers.get("Range"), size)
        start, end = bounds if bounds is not None else (0, size - 1)
        length = max(end - start + 1, 0)
        if bounds is not None:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(206 if bounds is not None else 200)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            while length > 0:
                chunk = f.read(min(CHUNK, length))
                self.wfile.write(chunk)
                length -= len(chunk)


class LocalHub:
    """Run the server in a background thread; use as a context manager or start()/stop()."""

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "tester",
        verbose: bool = False,
    ) -> None:
        self.store = HubStore(Path(root_dir), user)
        self._address = (host, port)
        self._verbose = verbose
        self._server: _HubServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self) -> LocalHub:
        self._server = _HubServer(self._address, self.store, self._verbose)
        host, port = self._server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="local-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_env(
        self, home: str | os.PathLike[str] | None = None, token: str = "hf_local_dummy_token"
    ) -> dict[str, str]:
        """Environment for a huggingface_hub client process talking to this server.

        The client reads these at import time, so they must be set before it is imported.
        HF_HUB_DISABLE_XET is essential: with hf_xet installed the client uploads through
        Xet (no fallback to LFS), which this server does not implement.
        """
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_TOKEN": token,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
        }
        if home is not None:
            env["HF_HOME"] = str(home)
            env["HF_HUB_CACHE"] = str(Path(home) / "hub")
        return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="directory holding the repos")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--user", default="tester", help="the user every token maps to")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    hub = LocalHub(args.root, args.host, args.port, args.user, args.verbose).start()
    print(hub.endpoint, flush=True)  # first stdout line: for scripts that spawn the server
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    sys.exit(main())
