"""``cas bundle import`` and ``verify`` against hostile and damaged bundles.

Hostile bundles are real ones (made by :func:`cas.bundle.create`) cut short, with a byte
flipped, or taken apart into their sections (magic and version, header frame, registry-object
frames, the transfer packs' stream, trailer) and written again with :class:`cas.rpc.Framed`
after an edit: a lying object, extra objects, bad refs, an unknown required capability, a
wrong trailer. Each is refused with a one-line error and a stable code, no ref moves, nothing
the refusal left behind is named by any ref, and the store verifies clean; a later import of
the real bundle completes.
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import blake3
import msgspec
import numpy as np
import pytest
from safetensors.numpy import save_file

import cas.transfer
from cas import bundle as bd
from cas.compression import CODEC_RAW
from cas.errors import CasError
from cas.format import pack as fmt
from cas.ids import blake3_id
from cas.ingest import AddOptions
from cas.peer import LocalPeer
from cas.rpc import Framed
from cas.store import Store
from conftest import run_json

PREFIX = len(bd.MAGIC) + 4
#: Lengths that cut a bundle inside its version field.
INSIDE_VERSION = range(len(bd.MAGIC), PREFIX)
_FRAME = struct.Struct(">cI")


# -- bundles taken apart and put together ---------------------------------------------------------


class Parts(msgspec.Struct):
    """A bundle's sections, as written: header (a map), registry-object frames, the stream of
    transfer packs, the trailer (a map)."""

    header: dict[str, Any]
    objects: list[list[list[Any]]]
    stream: bytes
    trailer: dict[str, Any]


def frames(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """``(offset, type, payload)`` of every frame after the magic and version."""
    out, at = [], PREFIX
    while at < len(data):
        kind, n = _FRAME.unpack(data[at:at + _FRAME.size])
        out.append((at, kind, data[at + _FRAME.size:at + _FRAME.size + n]))
        at += _FRAME.size + n
    return out


def parts(data: bytes) -> Parts:
    fs = frames(data)
    header = msgspec.msgpack.decode(fs[0][2])["header"]
    objects = [msgspec.msgpack.decode(p)["objects"] for _, k, p in fs[1:-1] if k == b"M"]
    stream = b"".join(p for _, k, p in fs if k == b"D")
    return Parts(header, objects, stream, msgspec.msgpack.decode(fs[-1][2]))


def assemble(p: Parts, *, magic: bytes = bd.MAGIC, version: int = bd.VERSION,
             checksum: str | None = None, trailer: bool = True) -> bytes:
    """A bundle of ``p``'s sections; the trailer's checksum is computed unless given."""
    out = io.BytesIO()
    out.write(magic + version.to_bytes(4, "big"))
    framed = Framed(io.BytesIO(), out, "test")
    framed.write_message({"header": p.header})
    for chunk in p.objects:
        framed.write_message({"objects": chunk})
    framed.write_stream([p.stream] if p.stream else [])
    if trailer:
        doc = dict(p.trailer)
        doc["checksum"] = checksum or blake3.blake3(out.getvalue()).hexdigest()
        framed.write_message(doc)
    return out.getvalue()


def packs(stream: bytes) -> list[list[tuple[bytes, bytes]]]:
    """The transfer packs of a stream: each a list of (entry header, stored bytes)."""
    out, at = [], 0
    while at < len(stream):
        at += fmt.PACK_HEADER_SIZE
        entries = []
        while fmt.decode_pack_trailer(stream[at:at + fmt.PACK_TRAILER_SIZE]) is None:
            e = fmt.decode_entry_header(stream[at:at + fmt.ENTRY_HEADER_SIZE], at, "test")
            start = at + fmt.ENTRY_HEADER_SIZE
            entries.append((stream[at:start], stream[start:start + e.stored_len]))
            at = start + e.stored_len
        at += fmt.PACK_TRAILER_SIZE
        out.append(entries)
    return out


def stream_of(pks: list[list[tuple[bytes, bytes]]]) -> bytes:
    out = []
    for entries in pks:
        h = fmt.PackIdHasher()
        for head, _ in entries:
            h.add(head[:32])
        out += [fmt.pack_header(), *(head + data for head, data in entries),
                fmt.pack_trailer(len(entries), h.digest())]
    return b"".join(out)


def raw_entry(data: bytes, oid: bytes | None = None) -> tuple[bytes, bytes]:
    oid = oid or blake3_id(data)
    return fmt.encode_entry_header(oid, fmt.KIND_CHUNK, CODEC_RAW, len(data), len(data)), data


def boundaries(data: bytes) -> list[int]:
    """Every section boundary of a bundle, as lengths to cut it at (and one byte more):
    the magic, the version, each frame's header and payload, and inside the stream each
    transfer pack's header, entry headers, entry data and trailer."""
    cuts = {len(bd.MAGIC), PREFIX}
    where: list[tuple[int, int, int]] = []  # (stream offset, file offset, length) of D payloads
    done = 0
    for at, kind, payload in frames(data):
        start = at + _FRAME.size
        cuts.update((at, start, start + len(payload)))
        if kind == b"D":
            where.append((done, start, len(payload)))
            done += len(payload)
        if kind == b"M" and payload == frames(data)[-1][2]:
            cuts.update((start + len(payload) // 2, start + len(payload) - 1))

    def in_file(s: int) -> int:
        for off, start, n in where:
            if off <= s <= off + n:
                return start + s - off
        raise AssertionError(s)

    stream = b"".join(p for _, k, p in frames(data) if k == b"D")
    at = 0
    for entries in packs(stream):
        cuts.add(in_file(at))
        at += fmt.PACK_HEADER_SIZE
        for head, body in entries:
            cuts.update((in_file(at), in_file(at + len(head))))
            at += len(head) + len(body)
        cuts.update((in_file(at), in_file(at + 8), in_file(at + fmt.PACK_TRAILER_SIZE)))
        at += fmt.PACK_TRAILER_SIZE
    out = {c + d for c in cuts for d in (0, 1)}
    return sorted(c for c in out if 0 < c < len(data))


# -- stores ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def no_fsync() -> None:
    """What is tested here is what a refusal leaves visible, not durability against power
    loss: fsync is skipped to keep the few hundred imports fast."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sender: ``org/m`` v1 (F32 tensors, notes) and v2 (F16: derived chunks, a second
    generation of transfer packs), tagged ``prod``; ``org/tiny``, one small file. ``full``:
    a bundle of everything cut in small transfer packs; ``tiny``: a bundle of ``org/tiny``."""
    top = tmp_path_factory.mktemp("bundle-hostile")
    src = Store.init(top / "src")
    rng = np.random.default_rng(3)
    w = {f"layer.{i}.weight": (rng.standard_normal((128, 128)) * 0.02).astype(np.float32)
         for i in range(2)}
    for seq, tensors in ((1, w), (2, {k: v.astype(np.float16) for k, v in w.items()})):
        folder = top / f"v{seq}"
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "notes.bin").write_bytes(random.Random(seq).randbytes(3000))
        src.add("org/m", folder, AddOptions(tags=["prod"] if seq == 2 else []))
    tiny = top / "tiny"
    tiny.mkdir()
    (tiny / "t.txt").write_bytes(b"tiny model, tiny file\n" * 8)
    src.add("org/tiny", tiny)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cas.transfer, "TRANSFER_PACK_BYTES", 8_000)
        mp.setattr(cas.transfer, "RUN_BYTES", 1)  # an object per read: packs cut often
        bd.create(src, str(top / "full.cbundle"))
    bd.create(src, str(top / "tiny.cbundle"), ["org/tiny"])
    full = (top / "full.cbundle").read_bytes()
    ids = LocalPeer(src).closure([b.decode() for b in src.registry.commit_versions(
        src.registry.head("org/m").decode()).values()])
    src.close()
    return {"src": top / "src", "full": full, "tiny": (top / "tiny.cbundle").read_bytes(),
            "ids": ids}


class Dst:
    """A fresh receiving store and what a refused import may not change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = Store.init(path)

    def refs(self) -> dict[bytes, bytes]:
        return self.store.registry.refs_under(b"refs/")

    def written(self) -> tuple[list[str], list[str]]:
        """Pack files and registry object files."""
        return (sorted(p.name for p in (self.path / "packs").iterdir()),
                sorted(str(p) for p in (self.path / "registry" / "objects").rglob("*")
                       if p.is_file()))

    def sound(self) -> None:
        report = self.store.verify()
        assert report.ok, report
        assert not list(self.path.rglob("*.tmp"))

    def refused(self, data: bytes, codes: tuple[str, ...] = ("E_VERIFY",), match: str = "",
                writes: bool = True) -> CasError:
        """Importing ``data`` fails with one of ``codes`` and a one-line message; no ref
        moves; with ``writes`` False nothing at all is written; the store verifies clean."""
        path = self.path.parent / "hostile.cbundle"
        path.write_bytes(data)
        refs, written = self.refs(), self.written()
        with pytest.raises(CasError) as info:
            bd.import_bundle(self.store, str(path))
        err = info.value
        assert err.code in codes, err
        assert err.message and "\n" not in err.message
        assert match in err.message, err.message
        assert self.refs() == refs
        if not writes:
            assert self.written() == written
        self.sound()
        return err

    def imports(self, data: bytes, force: bool = False) -> bd.BundleResult:
        path = self.path.parent / "good.cbundle"
        path.write_bytes(data)
        return bd.import_bundle(self.store, str(path), force=force)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def dst(tmp_path: Path) -> Dst:
    d = Dst(tmp_path / "dst")
    yield d
    d.close()


def reads_back(dst: Dst, made: dict[str, Any]) -> None:
    with Store.open(made["src"]) as src:
        for oid in made["ids"]:
            assert dst.store.read_object(oid) == src.read_object(oid)
        assert dst.refs() == {k: v for k, v in src.registry.refs_under(b"refs/").items()
                              if not k.startswith(b"refs/remotes/")}


# -- the baseline ---------------------------------------------------------------------------------


def test_the_real_bundle_and_its_reassembly_import(made: dict, dst: Dst, tmp_path: Path) -> None:
    p = parts(made["full"])
    assert len(packs(p.stream)) >= 4 and len(p.objects) >= 1
    assert assemble(p)[:PREFIX] == made["full"][:PREFIX]
    result = dst.imports(assemble(p))
    assert {r.status for r in result.refs} == {"ok"}
    reads_back(dst, made)
    dst.sound()


# -- cut short ------------------------------------------------------------------------------------


def test_a_bundle_cut_at_any_section_boundary_or_anywhere_is_refused(
        made: dict, tmp_path: Path) -> None:
    data = made["full"]
    cuts = boundaries(data)
    cuts += random.Random(5).sample(range(1, len(data)), 25)
    assert len(cuts) > 60
    cuts = sorted(set(cuts) - set(INSIDE_VERSION))
    print(f"{len(cuts)} cuts of a bundle of {len(data)} bytes")
    for i, cut in enumerate(cuts):
        d = Dst(tmp_path / f"cut{i}")
        try:
            d.refused(data[:cut], ("E_VERIFY",))
        except AssertionError as exc:
            raise AssertionError(f"cut at {cut} of {len(data)}") from exc
        if i % 10 == 0:  # the whole bundle then completes over what the cut left
            assert {r.status for r in d.imports(data).refs} == {"ok"}
            reads_back(d, made)
            d.sound()
        d.close()


def test_a_bundle_cut_inside_its_version_field_is_truncated_not_another_version(
        made: dict, dst: Dst) -> None:
    for cut in INSIDE_VERSION:
        dst.refused(made["full"][:cut], ("E_VERIFY",), match="", writes=False)


def test_verify_refuses_every_cut_too(made: dict, tmp_path: Path) -> None:
    data = made["full"]
    path = tmp_path / "cut.cbundle"
    for cut in sorted(set(boundaries(data)) - set(INSIDE_VERSION)):
        path.write_bytes(data[:cut])
        with pytest.raises(CasError) as info:
            bd.verify_bundle(str(path))
        assert info.value.code == "E_VERIFY", (cut, info.value)


# -- flipped bytes --------------------------------------------------------------------------------


def test_a_flipped_byte_anywhere_is_refused(made: dict, tmp_path: Path) -> None:
    data = made["tiny"]
    path = tmp_path / "flipped.cbundle"
    for i in range(len(data)):  # the file alone: every position
        bad = bytearray(data)
        bad[i] ^= 0x5A
        path.write_bytes(bytes(bad))
        with pytest.raises(CasError) as info:
            bd.verify_bundle(str(path))
        # E_SCHEMA: a transfer pack's own header names another version
        assert info.value.code in ("E_VERIFY", "E_FORMAT", "E_SCHEMA"), (i, info.value)
        assert "\n" not in info.value.message
    rng = random.Random(9)
    for n, i in enumerate(sorted(rng.sample(range(len(data)), 40))):  # imports: a sample
        bad = bytearray(data)
        bad[i] ^= 1 << rng.randrange(8)
        d = Dst(tmp_path / f"flip{n}")
        try:
            d.refused(bytes(bad), ("E_VERIFY", "E_FORMAT", "E_SCHEMA"))
        except AssertionError as exc:
            raise AssertionError(f"flip at byte {i} of {len(data)}") from exc
        d.close()


# -- lying and extra content ----------------------------------------------------------------------


def test_an_object_whose_bytes_do_not_match_its_id_is_refused(made: dict, dst: Dst) -> None:
    p = parts(made["full"])
    pks = packs(p.stream)
    head, body = pks[0][-1]
    oid = head[:32]
    pks[0][-1] = raw_entry(bytes(len(body) or 1), oid)  # the same id, other bytes
    p.stream = stream_of(pks)
    err = dst.refused(assemble(p), match=oid.hex())
    assert err.object_id == oid.hex()
    assert not dst.store.has_object(oid)


def test_a_bundle_that_claims_content_it_does_not_carry_moves_no_ref(made: dict, dst: Dst
                                                                     ) -> None:
    p = parts(made["tiny"])
    assert p.header["content"]
    p.stream = b""
    result = dst.imports(assemble(p))
    assert [(r.status, r.reason.split(":")[0]) for r in result.refs] == [("rejected",
                                                                          "E_VERIFY")]
    assert "not here" in result.refs[0].reason
    assert dst.refs() == {}
    dst.sound()


def test_extra_objects_no_version_needs_are_refused(made: dict, dst: Dst) -> None:
    p = parts(made["tiny"])
    pks = packs(p.stream)
    extra = b"bytes no version of this bundle needs\n" * 10
    pks[-1].append(raw_entry(extra))
    p.stream = stream_of(pks)
    dst.refused(assemble(p))
    assert not dst.store.has_object(blake3_id(extra))


def test_extra_registry_objects_no_ref_reaches_are_refused(made: dict, dst: Dst) -> None:
    from dulwich.objects import Blob

    p = parts(made["tiny"])
    blob = Blob.from_string(b'{"not": "a manifest any ref names"}\n')
    p.objects[-1].append([3, blob.as_raw_string()])
    before = dst.written()[1]
    dst.refused(assemble(p))
    assert dst.written()[1] == before


def test_extra_objects_are_never_named_by_a_ref(made: dict, dst: Dst) -> None:
    """Whatever becomes of extra objects, the refs the bundle moves name only its versions,
    and the store verifies clean."""
    p = parts(made["tiny"])
    pks = packs(p.stream)
    extra = b"bytes no version of this bundle needs\n" * 10
    pks[-1].append(raw_entry(extra))
    p.stream = stream_of(pks)
    try:
        result = dst.imports(assemble(p))
    except CasError as exc:
        assert exc.code == "E_VERIFY"
        assert not dst.refs()
    else:
        assert [r.ref for r in result.refs] == ["refs/models/org/tiny"]
    dst.sound()


# -- the header -----------------------------------------------------------------------------------


BAD_REFS = [
    "refs/models/../../../escape",
    "refs/models/org/../../escape",
    "refs/models/org/tiny/../../../../escape",
    "refs/models//escape",
    "refs/models/org/tiny\x00x",
    "refs/models/C:\\escape",
    "refs/models/.git/escape",
    "refs/models/org/.git",
    "refs/heads/main",
    "refs/remotes/origin/models/org/tiny",
    "HEAD",
    "config",
    "../../escape",
    "refs/tags/org/tiny@../../escape",
    "refs/pins/../../../escape",
]


@pytest.mark.parametrize("ref", BAD_REFS)
def test_refs_with_invalid_names_are_refused_and_nothing_escapes(
        made: dict, dst: Dst, tmp_path: Path, ref: str) -> None:
    p = parts(made["tiny"])
    new = p.header["refs"][0]["new"]
    p.header["refs"] = [{"ref": ref, "old": None, "new": new}]
    path = tmp_path / "bad-ref.cbundle"
    path.write_bytes(assemble(p))
    try:
        result = bd.import_bundle(dst.store, str(path))
    except CasError as exc:
        assert exc.code in ("E_SCHEMA", "E_VERIFY") and "\n" not in exc.message
    else:
        assert [(r.ref, r.status) for r in result.refs] == [(ref, "rejected")]
        assert result.refs[0].reason.split(":")[0] in ("E_SCHEMA", "E_VERIFY")
    assert dst.refs() == {}
    assert not [q for q in tmp_path.rglob("*escape*")]
    assert not (dst.path / "registry" / "refs" / "heads" / "main").exists()
    dst.sound()


def test_a_ref_that_traverses_paths_is_refused_before_anything_is_written(
        made: dict, dst: Dst, tmp_path: Path) -> None:
    p = parts(made["tiny"])
    p.header["refs"] = [{"ref": "refs/models/../../../escape", "old": None,
                         "new": p.header["refs"][0]["new"]}]
    path = tmp_path / "bad-ref.cbundle"
    path.write_bytes(assemble(p))
    before = dst.written()
    try:
        result = bd.import_bundle(dst.store, str(path))
    except CasError:
        pass
    else:
        assert [r.status for r in result.refs] == ["rejected"]
    assert dst.written() == before  # no registry object, no pack


def test_a_ref_to_a_commit_the_bundle_does_not_hold_moves_nothing(made: dict, dst: Dst) -> None:
    p = parts(made["tiny"])
    p.header["refs"] = [{"ref": "refs/models/org/tiny", "old": None, "new": "ab" * 20}]
    # its registry objects are then reached by no ref: refused before anything is written
    dst.refused(assemble(p), ("E_VERIFY",), match="no ref of it reaches", writes=False)
    assert dst.refs() == {}
    dst.sound()


def test_an_unknown_required_capability_is_refused_before_anything_is_written(
        made: dict, dst: Dst, tmp_path: Path) -> None:
    p = parts(made["tiny"])
    p.header["required"] = [*p.header["required"], "quantum-packs-9"]
    err = dst.refused(assemble(p), ("E_FORMAT",), match="quantum-packs-9", writes=False)
    assert err.code == "E_FORMAT"
    path = tmp_path / "future.cbundle"
    path.write_bytes(assemble(p))
    for verb in ("import", "verify"):
        code, doc = run_json(dst.path, "bundle", verb, str(path))
        assert doc["error"]["code"] == "E_FORMAT" and code == err.exit_code
        assert "quantum-packs-9" in doc["error"]["message"]
    assert dst.refs() == {}


def test_unknown_optional_capabilities_and_header_fields_are_carried(made: dict, dst: Dst
                                                                     ) -> None:
    p = parts(made["tiny"])
    p.header["caps"] = [*p.header["caps"], "quantum-packs-9"]
    p.header["signed_by"] = {"key": "a field a later version adds"}
    result = dst.imports(assemble(p))
    assert [r.status for r in result.refs] == ["ok"]
    dst.sound()


@pytest.mark.parametrize("header", [None, [], "header", {"refs": "x"},
                                    {"required": [], "caps": []}])
def test_a_malformed_header_is_refused_before_anything_is_written(
        made: dict, dst: Dst, header: Any) -> None:
    p = parts(made["tiny"])
    p.header = header  # type: ignore[assignment]
    dst.refused(assemble(p), match="header", writes=False)


def test_malformed_registry_objects_are_refused(made: dict, dst: Dst) -> None:
    p = parts(made["tiny"])
    p.objects = [[[3, b"x"], [99, b"an unknown type"]]]
    dst.refused(assemble(p))
    p.objects = [[[1, b"tree 0\x00not a commit"]]]
    dst.refused(assemble(p))


# -- trailer, magic, version ----------------------------------------------------------------------


def test_a_wrong_or_missing_trailer_is_refused_and_moves_no_ref(made: dict, dst: Dst) -> None:
    p = parts(made["tiny"])
    dst.refused(assemble(p, checksum="0" * 64), match="checksum")
    p.trailer = {"end": False}
    dst.refused(assemble(p), match="checksum")
    dst.refused(assemble(parts(made["tiny"]), trailer=False), match="truncated")
    assert [r.status for r in dst.imports(made["tiny"]).refs] == ["ok"]


def test_bytes_after_the_trailer_are_refused(made: dict, dst: Dst, tmp_path: Path) -> None:
    dst.refused(made["tiny"] + b"\x00", match="after the trailer")
    dst.refused(made["tiny"] + made["tiny"], match="after the trailer")
    path = tmp_path / "long.cbundle"
    path.write_bytes(made["tiny"] + b"more")
    with pytest.raises(CasError, match="after the trailer"):
        bd.verify_bundle(str(path))


@pytest.mark.parametrize("magic,version,code", [
    (b"CASBNDL\x01", 1, "E_VERIFY"),
    (b"PK\x03\x04\x14\x00\x00\x00", 1, "E_VERIFY"),
    (bd.MAGIC, 2, "E_FORMAT"),
    (bd.MAGIC, 0, "E_FORMAT"),
    (bd.MAGIC, 1 << 31, "E_FORMAT"),
])
def test_a_wrong_magic_or_version_is_refused_before_anything_is_written(
        made: dict, dst: Dst, tmp_path: Path, magic: bytes, version: int, code: str) -> None:
    data = assemble(parts(made["tiny"]), magic=magic, version=version)
    dst.refused(data, (code,), writes=False)
    path = tmp_path / "other.cbundle"
    path.write_bytes(data)
    status, doc = run_json(dst.path, "bundle", "import", str(path))
    assert doc["error"]["code"] == code and status != 0


@pytest.mark.parametrize("data", [b"", b"CAS", bd.MAGIC[:-1], bd.MAGIC + b"\x00\x00\x00\x01"])
def test_files_too_short_to_be_a_bundle_are_refused(dst: Dst, data: bytes) -> None:
    dst.refused(data, writes=False)


# -- through the CLI ------------------------------------------------------------------------------


def test_the_cli_reports_damage_in_one_line_with_its_code(made: dict, tmp_path: Path) -> None:
    data = made["full"]
    store = tmp_path / "site"
    Store.init(store).close()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    cases = {"cut.cbundle": data[: len(data) // 3], "flipped.cbundle": bytes(flipped),
             "trailer.cbundle": data[:-3] + b"xyz"}
    for name, bad in cases.items():
        path = tmp_path / name
        path.write_bytes(bad)
        for verb in (["import"], ["verify"], ["verify", "--no-store"]):
            code, doc = run_json(store, "bundle", *verb, str(path))
            assert code == 4 and doc["error"]["code"] == "E_VERIFY", (name, verb, doc)
            assert "\n" not in doc["error"]["message"]
    proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store),
                           "--json", "bundle", "import", "-"], input=data[: len(data) // 2],
                          capture_output=True, timeout=300)
    assert proc.returncode == 4 and b"Traceback" not in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "E_VERIFY"
    code, doc = run_json(store, "verify", "--all")
    assert code == 0 and doc["ok"], doc
    code, doc = run_json(store, "ls")
    assert doc["models"] == []


def test_a_bundle_that_is_not_there_is_a_clean_error(tmp_path: Path) -> None:
    store = tmp_path / "site"
    Store.init(store).close()
    for verb in (["import"], ["verify"], ["list-heads"]):
        for path in (tmp_path / "missing.cbundle", tmp_path):
            status, doc = run_json(store, "bundle", *verb, str(path))
            assert doc["error"]["code"] in ("E_NOT_FOUND", "E_ARGS", "E_PERM"), (verb, doc)
            assert status not in (0, 70)
    status, doc = run_json(store, "bundle", "create", str(tmp_path / "no-such-dir" / "x"))
    assert doc["error"]["code"] in ("E_NOT_FOUND", "E_ARGS", "E_PERM") and status != 70, doc
