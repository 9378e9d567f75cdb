"""Hugging Face Hub servers for the hub tests, on loopback.

- :func:`mirror_repo` writes a plain git repository in the layout ``olah`` serves offline
  (``<root>/models/ORG/NAME``), one commit per revision; files named in ``lfs`` are committed
  as git-lfs pointers with their bytes under ``.git/lfs/objects/`` (as git-lfs stores them).
- :class:`Olah` runs the real ``olah`` server offline over such mirrors.
- :class:`RangeHub` is a small Hub of our own for what olah cannot do: it honours ``Range``
  (206), so resume can be tested, and it can lie (wrong bytes) or cut a body short. It serves
  the endpoints huggingface_hub uses: ``GET /api/models/{repo}/revision/{rev}``,
  ``GET /api/models/{repo}/tree/{rev}[/{path}]`` and ``HEAD|GET /{repo}/resolve/{rev}/{path}``
  with ``X-Repo-Commit``, ``ETag``/``X-Linked-Etag`` and ``X-Linked-Size``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_GIT_ENV = {"GIT_AUTHOR_NAME": "hub", "GIT_AUTHOR_EMAIL": "hub@example.invalid",
            "GIT_COMMITTER_NAME": "hub", "GIT_COMMITTER_EMAIL": "hub@example.invalid",
            "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def git_blob_id(data: bytes) -> str:
    """The git blob SHA-1 of ``data`` (what the Hub calls a small file's etag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (b"version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n"
            % (hashlib.sha256(data).hexdigest().encode(), len(data)))


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def mirror_repo(root: Path, repo_id: str, revisions: list[dict[str, bytes]],
                lfs: frozenset[str] = frozenset(), tags: dict[str, int] | None = None
                ) -> list[str]:
    """Write ``revisions`` (each: path -> bytes, the whole tree) as successive commits of the
    mirror of ``repo_id`` under ``root``; return the commit ids. ``tags``: tag -> revision
    index."""
    repo = root / "models" / repo_id
    if not (repo / ".git").exists():
        repo.mkdir(parents=True)
        _git(repo, "init", "-q", "-b", "main")
    commits = []
    for files in revisions:
        for p in list(repo.iterdir()):
            if p.name != ".git":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for rel, data in files.items():
            dest = repo / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if rel in lfs:
                oid = hashlib.sha256(data).hexdigest()
                obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
                obj.parent.mkdir(parents=True, exist_ok=True)
                obj.write_bytes(data)
                dest.write_bytes(lfs_pointer(data))
            else:
                dest.write_bytes(data)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"revision {len(commits) + 1}")
        commits.append(_git(repo, "rev-parse", "HEAD"))
    for tag, index in (tags or {}).items():
        _git(repo, "tag", "-f", tag, commits[index])
    return commits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes] | None, log: Path | None,
                    timeout: float = 60) -> None:
    """Return once something accepts connections on ``port`` (a readiness probe, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text() if log is not None else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling a port, not synchronising with a test step
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class Olah:
    """The real ``olah`` server, offline, serving the mirrors under ``mirrors``."""

    def __init__(self, mirrors: Path, work: Path) -> None:
        self.port = free_port()
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.config = work / "olah.toml"
        self.config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{work / "repos"}"\n'
            f'mirrors-path = ["{mirrors}"]\n'
            f'mirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            "[accessibility]\noffline = true\n")
        self.log = work / "olah.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Olah:
        exe = Path(sys.executable).parent / "olah-cli"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(exe), "-c", str(self.config)], cwd=self.work,
                                         stdout=log, stderr=subprocess.STDOUT)
        _wait_listening(self.port, self.proc, self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class HubFile:
    data: bytes
    lfs: bool = False
    #: The size the tree listing claims, when it is to lie about it.
    claimed_size: int | None = None

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_id(self.data)


@dataclass
class RangeHub:
    """A Hub of our own: one repository, revisions by commit id, Range honoured, faults.

    ``faults`` maps a path to what the next GET of it does: ``("cut", N)`` sends the headers
    of the whole file and only N bytes of body, then closes; ``("lie", b"...")`` serves these
    bytes (with the true file's headers); ``("stall", N)`` sends N bytes, sets ``stalled``
    and waits for ``release`` (the test kills the client meanwhile). A fault is used once
    unless ``sticky``.
    """

    repo_id: str
    revisions: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    faults: dict[str, tuple[str, object]] = field(default_factory=dict)
    sticky: bool = False
    #: Every GET of a file: (path, Range header or None).
    gets: list[tuple[str, str | None]] = field(default_factory=list)
    #: The Authorization header of every request (None when absent).
    auth: list[str | None] = field(default_factory=list)
    #: False: answer every GET with the whole file (200), as a server that ignores Range.
    honour_range: bool = True
    #: What the model info says of gating (False, "auto", "manual").
    gated: object = False
    stalled: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_revision(self, files: dict[str, HubFile], branch: str = "main") -> str:
        ident = hashlib.sha1(json.dumps(
            {p: f.etag for p, f in sorted(files.items())}).encode()).hexdigest()
        self.revisions[ident] = files
        self.branches[branch] = ident
        return ident

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RangeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def commit_of(self, rev: str) -> str | None:
        if rev in self.revisions:
            return rev
        return self.branches.get(rev)


def _handler(hub: RangeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _json(self, doc: object, status: int = 200) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _missing(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def _serve(self, head: bool) -> None:
            hub.auth.append(self.headers.get("Authorization"))
            path = unquote(urlsplit(self.path).path)
            api = f"/api/models/{hub.repo_id}/"
            if path.startswith(api):
                kind, _, rest = path[len(api):].partition("/")
                rev, _, sub = rest.partition("/")
                commit = hub.commit_of(rev)
                if commit is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RevisionNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                files = hub.revisions[commit]
                if kind == "revision":
                    return self._json({"id": hub.repo_id, "sha": commit, "private": False,
                                       "gated": hub.gated,
                                       "siblings": [{"rfilename": p} for p in sorted(files)]})
                if kind == "tree":
                    return self._json([_tree_entry(p, f) for p, f in sorted(files.items())
                                       if p.startswith(sub)])
                return self._missing()
            prefix = f"/{hub.repo_id}/resolve/"
            if not path.startswith(prefix):
                return self._missing()
            rev, _, rel = path[len(prefix):].partition("/")
            commit = hub.commit_of(rev)
            if commit is None or rel not in hub.revisions[commit]:
                return self._missing()
            f = hub.revisions[commit][rel]
            data = f.data
            fault = None if head else hub.faults.get(rel)
            if fault is not None and not hub.sticky:
                del hub.faults[rel]
            if fault is not None and fault[0] == "lie":
                data = fault[1]  # type: ignore[assignment]
            start = 0
            rng = self.headers.get("Range")
            if not head:
                hub.gets.append((rel, rng))
            if rng and rng.startswith("bytes=") and not head and hub.honour_range:
                start = int(rng[6:].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("ETag", f'"{f.etag}"')
            if f.lfs:
                self.send_header("X-Linked-Etag", f'"{f.etag}"')
                self.send_header("X-Linked-Size", str(len(f.data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            body = data[start:]
            if fault is not None and fault[0] == "stall":
                self.wfile.write(body[: int(fault[1])])  # type: ignore[call-overload]
                self.wfile.flush()
                hub.stalled.set()
                hub.release.wait(60)
                self.close_connection = True
                return
            if fault is not None and fault[0] == "cut":
                self.wfile.write(body[: int(fault[1])])  # type: ignore[call-overload]
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


def _tree_entry(path: str, f: HubFile) -> dict[str, object]:
    entry: dict[str, object] = {"type": "file", "oid": git_blob_id(lfs_pointer(f.data))
                                if f.lfs else git_blob_id(f.data),
                                "size": f.claimed_size or len(f.data),
                                "path": path}
    if f.lfs:
        entry["lfs"] = {"oid": hashlib.sha256(f.data).hexdigest(),
                        "size": f.claimed_size or len(f.data),
                        "pointerSize": len(lfs_pointer(f.data))}
    return entry


#: The real model's files that transformers needs for AutoConfig and AutoTokenizer.
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json", "README.md")


def safetensors_bytes(values: dict[str, bytes]) -> bytes:
    """A valid safetensors file of F32 vectors (name -> raw little-endian floats)."""
    header: dict[str, object] = {}
    offset = 0
    for name, raw in values.items():
        header[name] = {"dtype": "F32", "shape": [len(raw) // 4],
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(values.values())


def small_model(real_model: Path, seed: int, size: int = 1 << 20) -> dict[str, bytes]:
    """The real model's config, tokenizer and card, with small random safetensors weights."""
    import random

    files = {p: (real_model / p).read_bytes() for p in TOKENIZER_FILES}
    files["model.safetensors"] = safetensors_bytes(
        {"w": random.Random(seed).randbytes(size // 4 * 4)})
    return files


def finetuned(files: dict[str, bytes]) -> dict[str, bytes]:
    """``files`` with a few KiB in the middle of the weights changed, and a new config."""
    w = bytearray(files["model.safetensors"])
    mid = len(w) // 2
    w[mid : mid + 4096] = bytes(4096)
    cfg = json.loads(files["config.json"])
    cfg["fine_tuned"] = True
    return {**files, "model.safetensors": bytes(w), "config.json": json.dumps(cfg).encode()}
