"""The sync protocol over HTTP: ``cas serve --http ADDR PATH`` and its client.

Every exchange of :mod:`cas.rpc` is one ``POST /v1/rpc``: the request body is the client's
frames (a request message, and for ``receive`` the stream after it), the response body the
server's frames (the answer, and for ``send`` the stream after it), both with chunked transfer
encoding so neither side holds a stream in memory. ``Authorization: Bearer TOKEN`` is checked
against the store's ``tokens.json`` (:mod:`cas.tokens`) before anything is read: no token, or
an unknown one, is ``401``; a read token makes the request read-only. Each write holds a
shared lease on the store for its own request (HTTP has no connection to hang a session on).
HTTPS: ``--tls-cert`` and ``--tls-key`` on the server; the client checks the server's
certificate against the system's authorities or ``CAS_CA_BUNDLE``.
"""

from __future__ import annotations

import http.client
import io
import os
import ssl
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

from cas.errors import ArgsError, CasError, NetError, PermError
from cas.rpc import Framed, RemotePeer

PATH = "/v1/rpc"
#: The largest request body without chunked encoding (cas clients always chunk).
MAX_PLAIN_BODY = 64 << 20


# -- client --------------------------------------------------------------------------------------


class _HttpFramed(Framed):
    """Frames over HTTP exchanges: frames written are sent as one request when the first
    frame of the answer is read (or at once, with a stream, by :meth:`write_stream`)."""

    def __init__(self, url: Any, token: str | None) -> None:
        super().__init__(io.BytesIO(), io.BytesIO(), url.url)
        self.url = url
        self.token = token
        self._pending: list[bytes] = []
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            host, port = self.url.host, self.url.port
            if self.url.url.lower().startswith("https:"):
                ctx = ssl.create_default_context(cafile=os.environ.get("CAS_CA_BUNDLE") or None)
                self._conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=300)
            else:
                self._conn = http.client.HTTPConnection(host, port, timeout=300)
        return self._conn

    def write_frame(self, kind: bytes, payload: bytes | memoryview = b"") -> None:
        self._finish_response()
        from cas.rpc import _HEAD

        self._pending.append(_HEAD.pack(kind, len(payload)) + bytes(payload))

    def flush(self) -> None:
        pass

    def write_stream(self, pieces: Iterable[bytes | memoryview]) -> None:
        from cas.rpc import _HEAD

        head, self._pending = self._pending, []

        def body() -> Iterator[bytes]:
            yield from head
            for p in pieces:
                view = memoryview(p).cast("B")
                for i in range(0, len(view), 1 << 20):
                    part = view[i:i + (1 << 20)]
                    yield _HEAD.pack(b"D", len(part)) + bytes(part)
            yield _HEAD.pack(b"E", 0)

        self._post(body())

    def _post(self, body: Iterable[bytes]) -> None:
        headers = {"Content-Type": "application/x-cas-frames", "Transfer-Encoding": "chunked"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        base = self.url.path.rstrip("/") if self.url.path else ""
        conn = self._connection()
        try:
            conn.request("POST", base + PATH, body=body, headers=headers, encode_chunked=True)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._conn = None
            raise NetError(f"{self.peer}: {exc}") from None
        if resp.status != 200:
            detail = resp.read(512).decode(errors="replace").strip()
            conn.close()
            self._conn = None
            if resp.status in (401, 403):
                raise PermError(f"{self.peer}: {detail or 'refused'} (HTTP {resp.status}; "
                                "set the token with 'cas remote token NAME' or CAS_TOKEN)")
            raise NetError(f"{self.peer}: HTTP {resp.status} {detail}")
        self._resp = resp
        self.rfile = resp  # type: ignore[assignment]

    def _read(self, n: int) -> bytes:
        if self._resp is None:
            pending, self._pending = self._pending, []
            self._post(pending)
        try:
            return super()._read(n)
        except (OSError, http.client.HTTPException) as exc:
            raise NetError(f"{self.peer}: {exc}") from None

    def _finish_response(self) -> None:
        if self._resp is not None:
            try:
                self._resp.read()
            except (OSError, http.client.HTTPException):
                pass
            self._resp = None

    def close(self) -> None:
        self._finish_response()
        if self._conn is not None:
            self._conn.close()


def connect(url: Any, remote: Any, token: str | None = None) -> RemotePeer:
    from cas.rpc import check_online

    check_online(url.url)
    framed = _HttpFramed(url, token)
    peer = RemotePeer(framed, url.url, framed.close)
    peer.reconnect = lambda: connect(url, remote, token)
    return peer


# -- server --------------------------------------------------------------------------------------


class _Body(io.RawIOBase):
    """A chunked request body, decoded."""

    def __init__(self, rfile: IO[bytes]) -> None:
        self.rfile = rfile
        self.left = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.done:
            return 0
        if self.left == 0:
            line = self.rfile.readline(1024)
            try:
                self.left = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise NetError("the client sent a malformed chunk") from None
            if self.left == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                self.done = True
                return 0
        n = min(len(b), self.left)
        data = self.rfile.read(n)
        if not data:
            raise NetError("the client's request ended early")
        b[: len(data)] = data
        self.left -= len(data)
        if self.left == 0:
            self.rfile.readline(8)
        return len(data)


class _ChunkedWriter(io.RawIOBase):
    def __init__(self, wfile: IO[bytes]) -> None:
        self.wfile = wfile

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = len(b)
        if n:
            self.wfile.write(b"%x\r\n" % n)
            self.wfile.write(b)
            self.wfile.write(b"\r\n")
        return n

    def end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def make_server(addr: str, path: Path, *, read_only: bool = False, append_only: bool = False,
                tls_cert: str | None = None, tls_key: str | None = None,
                raw_storage: bool = False) -> ThreadingHTTPServer:
    """An HTTP server for the store at ``path`` on ``addr`` (``HOST:PORT``; port 0 picks one).

    Raises:
        ArgsError: a malformed address.
    """
    from cas.rpc import serve
    from cas.serve import ServedStore
    from cas.tokens import Checker

    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ArgsError(f"--http {addr!r}: give HOST:PORT")
    checker = Checker(path)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cas-serve"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # requests are not logged (a log line must never carry a token)

        def _refuse(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - the http.server name
            if self.path.rstrip("/").rsplit("/", 2)[-2:] != ["v1", "rpc"]:
                self._refuse(404, "not a cas endpoint")
                return
            auth = self.headers.get("Authorization", "")
            token = auth[7:].strip() if auth.startswith("Bearer ") else None
            access = checker.access(token)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body: Any = io.BufferedReader(_Body(self.rfile), 1 << 20)
            else:
                n = int(self.headers.get("Content-Length") or 0)
                body = io.BytesIO(self.rfile.read(min(n, MAX_PLAIN_BODY)))
            if access is None:
                # Read (a bounded part of) what the client is sending before answering, so
                # it sees the refusal rather than a connection reset mid-request.
                try:
                    body.read(1 << 20)
                except (OSError, CasError):
                    pass
                self._refuse(401, "a valid bearer token is required")
                self.close_connection = True
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-cas-frames")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            out = _ChunkedWriter(self.wfile)
            served = ServedStore(path)
            try:
                serve(served, Framed(body, out, "the client"),  # type: ignore[arg-type]
                      read_only=read_only or (access != "write"
                                              and "this token may read, not write"),
                      append_only=append_only,
                      lease_each_write=True, raw_storage=raw_storage)
            finally:
                served.close()
            out.end()

    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_cert, tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return server

