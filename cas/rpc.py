"""The sync protocol: :class:`cas.peer.LocalPeer`'s operations as frames over a byte stream.

One protocol, two carriers: the stdio of ``cas serve --stdio`` (reached through the system
``ssh``) and HTTP requests to ``cas serve --http`` (:mod:`cas.http`). ``docs/format.md``,
"Sync protocol", has the byte layout; in short, a frame is a type byte, a 4-byte big-endian
length and that many bytes:

- ``M``: a msgpack message: a request ``{"op", "args"}``, or a response ``{"ok": true,
  "result"}`` / ``{"ok": false, "code", "message"}``;
- ``D``: a piece of a transfer-pack stream; ``E``: the end of that stream.

``send`` answers with a response giving the stream's size, then ``D`` frames and ``E``;
``receive`` is a request followed by the client's ``D`` frames and ``E``, then the response.
Everything the other side says is checked as if hostile: frame lengths are bounded, messages
decode into fixed types, object streams are verified by :mod:`cas.transfer`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from typing import IO, Any

import msgspec

from cas import carrier
from cas.errors import CasError, NetError, NotFoundError, VerifyError, error_of_code
from cas.peer import Hello, RefResult, RefUpdate
from cas.transfer import TransferStats

PROTOCOL = "cas-sync/1"
_HEAD = struct.Struct(">cI")
#: The largest frame either side accepts (a message, or a piece of a stream).
MAX_FRAME = 64 << 20
#: Ids per ``missing`` request (32 bytes each).
IDS_PER_CALL = 1 << 16
ID_SIZE = 32


def pack_ids(ids: Iterable[bytes]) -> bytes:
    return b"".join(ids)


def unpack_ids(data: bytes) -> list[bytes]:
    if len(data) % ID_SIZE:
        raise VerifyError("a list of object ids is not a multiple of 32 bytes")
    return [data[i:i + ID_SIZE] for i in range(0, len(data), ID_SIZE)]


class Framed:
    """Frames over a pair of binary streams."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes], peer: str) -> None:
        self.rfile = rfile
        self.wfile = wfile
        self.peer = peer

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if data is None or len(data) < n:
            raise NetError(f"{self.peer}: connection closed in the middle of a frame"
                           if data else f"{self.peer}: connection closed")
        return data

    def read_frame(self) -> tuple[bytes, bytes]:
        kind, n = _HEAD.unpack(self._read(_HEAD.size))
        if kind not in (b"M", b"D", b"E"):
            raise VerifyError(f"{self.peer}: unknown frame type {kind!r}")
        if n > MAX_FRAME:
            raise VerifyError(f"{self.peer}: frame of {n} bytes is larger than {MAX_FRAME}")
        return kind, self._read(n) if n else b""

    def write_frame(self, kind: bytes, payload: bytes | memoryview = b"") -> None:
        try:
            self.wfile.write(_HEAD.pack(kind, len(payload)))
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            raise NetError(f"{self.peer}: connection lost ({exc})") from None

    def flush(self) -> None:
        try:
            self.wfile.flush()
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            raise NetError(f"{self.peer}: connection lost ({exc})") from None

    def write_message(self, doc: Any) -> None:
        self.write_frame(b"M", msgspec.msgpack.encode(doc))
        self.flush()

    def read_message(self) -> dict[str, Any]:
        kind, payload = self.read_frame()
        if kind != b"M":
            raise VerifyError(f"{self.peer}: expected a message, got a {kind!r} frame")
        try:
            doc = msgspec.msgpack.decode(payload)
        except msgspec.DecodeError as exc:
            raise VerifyError(f"{self.peer}: undecodable message: {exc}") from None
        except RecursionError:
            raise VerifyError(f"{self.peer}: a message nests too deeply") from None
        if not isinstance(doc, dict):
            raise VerifyError(f"{self.peer}: a message is not a map")
        return doc

    def write_stream(self, pieces: Iterable[bytes | memoryview]) -> None:
        for p in pieces:
            view = memoryview(p).cast("B")
            for i in range(0, len(view), 1 << 20):
                self.write_frame(b"D", view[i:i + (1 << 20)])
        self.write_frame(b"E")
        self.flush()

    def read_stream(self) -> Iterator[bytes]:
        while True:
            kind, payload = self.read_frame()
            if kind == b"E":
                return
            if kind != b"D":
                raise VerifyError(f"{self.peer}: expected stream data, got a message")
            yield payload


# -- client --------------------------------------------------------------------------------------


class RemotePeer:
    """The peer operations, asked of a ``cas serve`` at the far end of ``framed``."""

    def __init__(self, framed: Framed, name: str, closer: Any = None) -> None:
        self.framed = framed
        self.name = name
        self._closer = closer
        #: Makes another connection to the same server (set by the carrier's connect).
        self.reconnect: Any = None
        self._hello: Hello | None = None
        self._stream: Iterator[bytes] | None = None

    def _call(self, op: str, **args: Any) -> Any:
        self._drain()
        self.framed.write_message({"op": op, "args": args})
        return self._answer()

    def _drain(self) -> None:
        """Read the rest of a stream its reader left unfinished (a transfer refused part
        way), so the next answer is read from where it starts."""
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                for _ in stream:
                    pass
            except CasError:
                pass  # the transfer already failed; its reader reported why

    def _answer(self) -> Any:
        doc = self.framed.read_message()
        if doc.get("ok") is True:
            return doc.get("result")
        code, message = doc.get("code"), doc.get("message")
        if not isinstance(code, str) or not isinstance(message, str):
            raise VerifyError(f"{self.name}: malformed error answer")
        raise error_of_code(code, f"{self.name}: {message}")

    def hello(self) -> Hello:
        if self._hello is None:
            raw = self._call("hello", protocol=PROTOCOL)
            try:
                self._hello = msgspec.convert(raw, Hello)
            except msgspec.ValidationError as exc:
                raise VerifyError(f"{self.name}: malformed hello: {exc}") from None
        return self._hello

    def init(self, chunker: dict[str, Any], derive: bool) -> None:
        """Create the store at the far side's path (a first push)."""
        self._call("init", chunker=chunker, derive=derive)
        self._hello = None

    def refs(self) -> dict[str, str]:
        return _typed(self._call("refs"), dict[str, str], self.name)

    def registry_objects(self, wants: list[str], haves: list[str]) -> list[tuple[int, bytes]]:
        return _typed(self._call("registry_objects", wants=wants, haves=haves),
                      list[tuple[int, bytes]], self.name)

    def put_registry_objects(self, objects: list[tuple[int, bytes]]) -> int:
        return _typed(self._call("put_registry_objects", objects=objects), int, self.name)

    def closure(self, blobs: list[str]) -> list[bytes]:
        return unpack_ids(_typed(self._call("closure", blobs=blobs), bytes, self.name))

    def missing(self, ids: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        asked = set()
        for i in range(0, len(ids), IDS_PER_CALL):
            part = ids[i:i + IDS_PER_CALL]
            asked.update(part)
            out += unpack_ids(_typed(self._call("missing", ids=pack_ids(part)), bytes,
                                     self.name))
        if not set(out) <= asked:
            raise VerifyError(f"{self.name}: answered with ids it was not asked about")
        return out

    def send(self, ids: list[bytes], plain: bool = False, part: tuple[int, int] | None = None
             ) -> tuple[int, Iterator[bytes]]:
        args: dict[str, Any] = {"ids": pack_ids(ids), "plain": plain}
        if part is not None:
            args["part"] = list(part)
        total = _typed(self._call("send", **args), int, self.name)

        def stream() -> Iterator[bytes]:
            yield from self.framed.read_stream()
            self._stream = None
            self._answer()  # how the stream ended: raises the far side's error

        self._stream = stream()
        return total, self._stream

    def copies(self) -> bytes:
        return _typed(self._call("copies"), bytes, self.name)

    def merge_copies(self, data: bytes) -> bool:
        return _typed(self._call("merge_copies", data=data), bool, self.name)

    def hold(self, blobs: list[str]) -> None:
        self._call("hold", blobs=blobs)

    def release_holds(self) -> None:
        self._call("release_holds")

    def drop_begin(self, blob: str) -> Any:
        from cas.drop import Target

        return _typed(self._call("drop_begin", blobs=[blob]), Target, self.name)

    def drop_commit(self) -> None:
        self._call("drop_commit")

    def drop_end(self) -> None:
        self._call("drop_end")

    def twin(self) -> RemotePeer:
        """Another connection to the same server (for a parallel transfer stream).

        Raises:
            NetError: it could not be made.
        """
        if self.reconnect is None:
            raise NetError(f"{self.name}: cannot open another connection")
        return self.reconnect()

    def receive(self, pieces: Iterable[bytes | memoryview]) -> TransferStats:
        self._drain()
        self.framed.write_message({"op": "receive", "args": {}})
        self.framed.write_stream(pieces)
        return _typed(self._answer(), TransferStats, self.name)

    def locations(self) -> list[bytes]:
        return _typed(self._call("locations"), list[bytes], self.name)

    def absent(self) -> list[str]:
        return _typed(self._call("absent"), list[str], self.name)

    def merge_locations(self, entries: list[bytes]) -> int:
        return _typed(self._call("merge_locations", entries=entries), int, self.name)

    def present(self, blobs: list[str]) -> list[str]:
        got = _typed(self._call("present", blobs=blobs), list[str], self.name)
        if not set(got) <= set(blobs):
            raise VerifyError(f"{self.name}: answered with versions it was not asked about")
        return got

    def update_refs(self, updates: list[RefUpdate], force: bool = False,
                    content: list[str] | None = None) -> list[RefResult]:
        return _typed(self._call("update_refs", updates=updates, force=force,
                                 content=content), list[RefResult], self.name)

    def put(self, name: str, pieces: Iterable[bytes | memoryview]) -> None:
        """Raw storage: write object ``name`` from ``pieces`` (:mod:`cas.storage.remote`)."""
        self._drain()
        self.framed.write_message({"op": "st_put", "args": {"name": name}})
        self.framed.write_stream(pieces)
        self._answer()

    def session(self, purpose: str) -> Any:
        import contextlib

        @contextlib.contextmanager
        def held() -> Iterator[None]:
            self._call("session_begin", purpose=purpose)
            try:
                yield
            finally:
                self._call("session_end")

        return held()

    def close(self) -> None:
        try:
            self.framed.write_message({"op": "bye", "args": {}})
        except CasError:
            pass
        if self._closer is not None:
            self._closer()


def _typed(value: Any, kind: Any, who: str) -> Any:
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        raise VerifyError(f"{who}: malformed answer: {exc}") from None


# -- server --------------------------------------------------------------------------------------


class _Args(msgspec.Struct, forbid_unknown_fields=False):
    protocol: str = ""
    wants: list[str] = []
    haves: list[str] = []
    objects: list[tuple[int, bytes]] = []
    blobs: list[str] = []
    ids: bytes = b""
    updates: list[RefUpdate] = []
    content: list[str] | None = None
    entries: list[bytes] = []
    plain: bool = False
    part: tuple[int, int] | None = None
    data: bytes = b""
    force: bool = False
    purpose: str = "serve"
    chunker: dict[str, Any] = {}
    derive: bool = True
    # raw storage (cas.storage.remote)
    name: str = ""
    names: list[str] = []
    offset: int = 0
    length: int = 0
    expected: Any = None
    new: bytes | None = None


#: Operations whose effect lasts until a later request on the same connection (cas.drop).
HELD_OPS = {"hold", "drop_begin", "drop_commit"}
WRITE_OPS = {"put_registry_objects", "receive", "update_refs", "init", "merge_locations",
             "drop_begin", "drop_commit", "merge_copies"}


def serve(peer: Any, framed: Framed, *, read_only: bool | str = False,
          append_only: bool = False, lease_each_write: bool = False,
          raw_storage: bool = False) -> None:
    """Answer requests on ``framed`` with ``peer`` (a :class:`LocalPeer`) until ``bye`` or
    the end of the stream. Errors are answered, not raised, except a broken stream.
    ``lease_each_write``: a write outside a session holds a lease of its own (HTTP, where
    every exchange is a request of its own). ``read_only``: True, or the reason writes are
    refused."""
    why = read_only if isinstance(read_only, str) else "this server is read-only"
    session = None
    try:
        while True:
            try:
                doc = framed.read_message()
            except NetError:
                return
            op = doc.get("op")
            try:
                args = msgspec.convert(doc.get("args") or {}, _Args)
            except msgspec.ValidationError as exc:
                framed.write_message({"ok": False, "code": "E_SCHEMA",
                                      "message": f"malformed request: {exc}"})
                continue
            if op == "bye":
                return
            if isinstance(op, str) and op.startswith("st_"):
                _serve_storage(peer, framed, op, args, raw_storage, not read_only, append_only)
                continue
            if op == "receive":
                # The stream follows the request whatever the answer: what the receiver
                # did not read of it is read (from the same place) before answering.
                stream = framed.read_stream()
                try:
                    if read_only:
                        raise error_of_code("E_PERM", why)
                    with _lease(peer, "receive", lease_each_write and session is None):
                        result: Any = peer.receive(stream)
                    framed.write_message({"ok": True, "result": _plain(result)})
                except CasError as exc:
                    _drain(framed, stream)
                    framed.write_message({"ok": False, "code": exc.code,
                                          "message": exc.message})
                continue
            try:
                if read_only and op in WRITE_OPS | {"session_begin"}:
                    raise error_of_code("E_PERM", why)
                if op == "session_begin":
                    if session is None:
                        session = peer.session(args.purpose)
                        session.__enter__()
                    result = None
                elif op == "session_end":
                    if session is not None:
                        s, session = session, None
                        s.__exit__(None, None, None)
                    result = None
                elif op == "send":
                    total, pieces = peer.send(unpack_ids(args.ids), args.plain, args.part)
                    framed.write_message({"ok": True, "result": total})
                    failed: list[CasError] = []

                    def guarded(it: Iterable[bytes | memoryview] = pieces
                                ) -> Iterator[bytes | memoryview]:
                        try:
                            yield from it
                        except CasError as exc:  # a damaged pack here, found mid-stream
                            failed.append(exc)

                    framed.write_stream(guarded())
                    framed.write_message(
                        {"ok": True} if not failed else
                        {"ok": False, "code": failed[0].code, "message": failed[0].message})
                    continue
                elif lease_each_write and op in HELD_OPS:
                    # Over HTTP every request is an exchange of its own: a hold or a drop
                    # lease would end with it, and must outlive it.
                    raise error_of_code("E_ARGS", f"{op} needs a connection that lasts the "
                                        "whole drop: use an ssh or folder remote")
                else:
                    with _lease(peer, str(op), lease_each_write and session is None
                                and op in WRITE_OPS):
                        result = _dispatch(peer, op, args, append_only)
            except CasError as exc:
                framed.write_message({"ok": False, "code": exc.code, "message": exc.message})
                continue
            framed.write_message({"ok": True, "result": _plain(result)})
    finally:
        if session is not None:
            session.__exit__(None, None, None)


def _serve_storage(peer: Any, framed: Framed, op: str, args: Any, allowed: bool, write: bool,
                   append_only: bool) -> None:
    """Answer a raw storage verb (:mod:`cas.storage.remote`); ``st_put`` reads its stream
    whatever the answer."""
    from cas.storage.remote import serve_op

    stream = framed.read_stream() if op == "st_put" else None
    try:
        if not allowed:
            raise error_of_code("E_PERM", "this server does not offer raw storage "
                                          "(cas serve --raw-storage)")
        backend = peer.raw_backend()
        if op == "st_put":
            if not write:
                raise error_of_code("E_PERM", "raw storage: this connection may only read")
            from cas.storage import check_name

            try:
                check_name(args.name)
            except ValueError as exc:
                raise error_of_code("E_ARGS", f"raw storage: {exc}") from None
            writer = backend.open_write("put")
            try:
                for piece in stream:  # type: ignore[union-attr]
                    writer.write(piece)
                writer.commit(args.name)
            except BaseException:
                writer.abort()
                raise
            result = None
        else:
            result = serve_op(backend, op, args, write=write, append_only=append_only)
    except CasError as exc:
        if stream is not None:
            _drain(framed, stream)
        framed.write_message({"ok": False, "code": exc.code, "message": exc.message})
        return
    except OSError as exc:
        from cas.errors import from_os_error

        err = from_os_error(exc, f"raw storage {op}")
        framed.write_message({"ok": False, "code": err.code, "message": err.message})
        return
    framed.write_message({"ok": True, "result": _plain(result)})


def _lease(peer: Any, purpose: str, take: bool) -> Any:
    import contextlib

    return peer.session(purpose) if take else contextlib.nullcontext()


def _plain(result: Any) -> Any:
    """``result`` as msgpack builtins, bytes kept as bytes (not base64 text)."""
    return msgspec.to_builtins(result, builtin_types=(bytes,))


def _drain(framed: Framed, stream: Iterator[bytes] | None = None) -> None:
    """Read the rest of a stream a failed ``receive`` did not consume (``stream``: the
    reader it was given, which knows whether the end was reached)."""
    try:
        for _ in (stream if stream is not None else framed.read_stream()):
            pass
    except (CasError, ValueError):
        pass  # ValueError: the reader is still running elsewhere (it cannot be)


def _dispatch(peer: Any, op: Any, args: _Args, append_only: bool) -> Any:
    if op == "hello":
        if args.protocol != PROTOCOL:
            raise error_of_code("E_FORMAT", f"the client speaks {args.protocol!r}, this "
                                            f"server {PROTOCOL!r}")
        return peer.hello()
    if op == "init":
        return peer.init(args.chunker, args.derive)
    if op == "refs":
        return peer.refs()
    if op == "registry_objects":
        return peer.registry_objects(args.wants, args.haves)
    if op == "put_registry_objects":
        return peer.put_registry_objects(args.objects)
    if op == "locations":
        return peer.locations()
    if op == "absent":
        return peer.absent()
    if op == "merge_locations":
        return peer.merge_locations(args.entries)
    if op == "present":
        return peer.present(args.blobs)
    if op == "closure":
        return pack_ids(peer.closure(args.blobs))
    if op == "missing":
        return pack_ids(peer.missing(unpack_ids(args.ids)))
    if op == "copies":
        return peer.copies()
    if op == "merge_copies":
        return peer.merge_copies(args.data)
    if op == "hold":
        peer.hold(args.blobs)
        return None
    if op == "release_holds":
        peer.release_holds()
        return None
    if op == "drop_begin":
        if len(args.blobs) != 1:
            raise error_of_code("E_ARGS", "drop_begin takes one manifest blob")
        return peer.drop_begin(args.blobs[0])
    if op == "drop_commit":
        peer.drop_commit()
        return None
    if op == "drop_end":
        peer.drop_end()
        return None
    if op == "update_refs":
        if append_only and args.force:
            raise error_of_code("E_PERM", "this server is append-only: no --force")
        return peer.update_refs(args.updates, args.force, args.content)
    raise error_of_code("E_ARGS", f"unknown operation {op!r}")


# -- carriers ------------------------------------------------------------------------------------


def check_online(what: str) -> None:
    """Refuse a network operation while offline (``--offline`` or ``CAS_OFFLINE=1``).

    Raises:
        NetError: naming the flag.
    """
    if os.environ.get("CAS_OFFLINE", "").strip() not in ("", "0"):
        raise NetError(f"{what}: offline (--offline or CAS_OFFLINE=1): no network is used; "
                       "folder remotes and bundles still work")


def connect(url: Any, remote: Any, token: str | None = None) -> RemotePeer:
    """A peer for an ssh or http remote (``token``: the bearer token for http).

    Raises:
        NetError: the connection could not be made (the remote named).
    """
    check_online(url.url)
    if url.kind == "http":
        from cas.http import connect as http_connect

        return http_connect(url, remote, token)
    cmd = carrier.ssh_command(url, remote)
    try:
        proc, errors = carrier.start(cmd)
    except OSError as exc:
        raise NetError(f"{url.url}: cannot run {cmd[0]}: {exc}") from None
    framed = Framed(proc.stdout, proc.stdin, url.url)  # type: ignore[arg-type]

    def close() -> None:
        carrier.stop(proc)

    def close_all() -> None:
        close()
        errors.close()

    peer = RemotePeer(framed, url.url, close_all)
    peer.reconnect = lambda: connect(url, remote, token)
    try:
        peer.hello()
    except NotFoundError:
        pass  # connected; no store there yet (a first push makes one)
    except NetError:
        close()
        detail = _last_words(errors)
        hint = ""
        if proc.returncode == 127:  # the shell there found no such command
            hint = (" (is cas installed there? name its cas with 'cas remote add NAME URL "
                    "--cas-command PATH')")
        raise NetError(f"{url.url}: ssh failed (exit {proc.returncode})"
                       + (f": {detail}" if detail else "") + hint) from None
    except BaseException:
        close_all()
        raise
    return peer


def _last_words(f: IO[bytes]) -> str:
    """The last non-empty line written to ``f`` (closed afterwards)."""
    try:
        f.seek(0)
        lines = [ln.strip() for ln in f.read()[-4096:].decode(errors="replace").splitlines()]
        return next((ln for ln in reversed(lines) if ln), "")
    except (OSError, ValueError):
        return ""
    finally:
        f.close()
