"""``verify --all`` tells the truth: it checks everything a restore reads (pack headers and
trailers, every registry commit, tree and manifest of every model's history, whole files with
``--files``), never calls a sound store broken while an add commits, and refuses records that
disagree with each other (a length no chunk can have, an unknown kind or codec) without
spending the memory they claim."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from cas.format import pack as fmt
from cas.format.manifest import Manifest

CAS = [sys.executable, "-m", "cas.cli.main"]


_MEASURE = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: list[str]) -> tuple[int, str, str, int]:
    """Run ``argv``; return (exit code, stdout, stderr, that process's peak RSS in KiB).

    Measured by a small wrapper process: Linux carries a process's high-water mark across
    ``exec``, so a child spawned straight from this (large) test process would report the
    test process's peak, not its own."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        proc = subprocess.run([sys.executable, "-c", _MEASURE, rss.name, *argv],
                              capture_output=True, text=True, timeout=300)
        peak = int(rss.read() or 0)
    return proc.returncode, proc.stdout, proc.stderr, peak


def run(store: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict, str]:
    proc = subprocess.run([*CAS, "--store", str(store), "--json", *args], capture_output=True,
                          text=True, timeout=300, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def report_of(store: Path, *args: str) -> tuple[int, dict]:
    code, doc, _ = run(store, "verify", "--all", *args)
    return code, doc if code == 0 else doc["report"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Models a (two versions, the first removed) and b; small random files."""
    rng = random.Random(7)
    st = tmp_path / "store"
    assert run(st, "init")[0] == 0
    for name, files in (("a", 2), ("a", 2), ("b", 1)):
        src = tmp_path / f"src-{name}-{rng.random()}"
        src.mkdir()
        for i in range(files):
            (src / f"f{i}.bin").write_bytes(rng.randbytes(200_000 + i))
        assert run(st, "add", name, str(src))[0] == 0
    assert run(st, "rm", "a@1")[0] == 0
    assert report_of(st)[0] == 0
    return st


def only_pack(store: Path) -> Path:
    packs = sorted((store / "packs").glob("pack-*.pack"))
    return packs[0]


def write_pack(packs_dir: Path, objects: list[tuple[bytes, int, int, bytes]]) -> str:
    """Write a pack and its index by hand: ``(id, kind, codec, stored bytes)`` (raw codec
    means raw length = stored length)."""
    body = bytearray(fmt.pack_header())
    entries = []
    hasher = fmt.PackIdHasher()
    for oid, kind, codec, stored in objects:
        entries.append(fmt.Entry(oid, len(body), len(stored), len(stored), kind, codec))
        body += fmt.encode_entry_header(oid, kind, codec, len(stored), len(stored)) + stored
        hasher.add(oid)
    pid = hasher.digest()
    body += fmt.pack_trailer(len(objects), pid)
    (packs_dir / f"pack-{pid.hex()}.pack").write_bytes(bytes(body))
    (packs_dir / f"pack-{pid.hex()}.idx").write_bytes(fmt.encode_index(entries, pid))
    return pid.hex()


def repo(store: Path) -> Repo:
    return Repo(str(store / "registry"))


def commit_on(store: Path, model: str, tree: bytes, message: bytes) -> bytes:
    """A commit on ``refs/models/<model>`` with ``tree`` and ``message``; the ref moves."""
    r = repo(store)
    ref = b"refs/models/" + model.encode()
    c = Commit()
    c.tree = tree
    c.parents = [r.refs[ref]]
    c.author = c.committer = b"t <t@example.com>"
    c.author_time = c.commit_time = int(time.time())
    c.author_timezone = c.commit_timezone = 0
    c.message = message
    r.object_store.add_object(c)
    r.refs[ref] = c.id
    r.close()
    return c.id


def tip_tree(store: Path, model: str) -> tuple[Tree, Tree]:
    r = repo(store)
    root = r[r[b"refs/models/" + model.encode()].tree]
    sub = r[root[b"versions"][1]]
    r.close()
    return root, sub


def with_manifest(store: Path, model: str, seq: int, data: bytes) -> bytes:
    """The id of a root tree: the model's tip tree with ``versions/<seq>.json`` = ``data``."""
    r = repo(store)
    _, sub = tip_tree(store, model)
    blob = Blob.from_string(data)
    r.object_store.add_object(blob)
    new_sub = Tree()
    for item in sub.items():
        new_sub.add(item.path, item.mode, item.sha)
    new_sub.add(f"{seq:06d}.json".encode(), 0o100644, blob.id)
    r.object_store.add_object(new_sub)
    root = Tree()
    root.add(b"versions", 0o040000, new_sub.id)
    r.object_store.add_object(root)
    r.close()
    return root.id


def live_manifest(store: Path, model: str, seq: int) -> Manifest:
    r = repo(store)
    _, sub = tip_tree(store, model)
    data = r[sub[f"{seq:06d}.json".encode()][1]].as_raw_string()
    r.close()
    return Manifest.decode(data)


# -- packs -------------------------------------------------------------------------------------


def test_cut_trailer_is_reported(store: Path) -> None:
    pack = only_pack(store)
    with open(pack, "r+b") as f:
        f.truncate(pack.stat().st_size - 20)
    code, report = report_of(store)
    assert code == 4
    assert report["bad_packs"] == [pack.name[5:-5]]
    assert any("trailer" in p for p in report["problems"]), report["problems"]
    # The objects are sound and still readable through the index: no version is broken.
    assert report["bad_objects"] == [] and report["broken_versions"] == []


def test_damaged_pack_header_is_reported(store: Path) -> None:
    pack = only_pack(store)
    with open(pack, "r+b") as f:
        f.write(b"XXXXXXXX")
    code, report = report_of(store)
    assert code == 4 and report["bad_packs"] == [pack.name[5:-5]]
    assert any("bad magic" in p for p in report["problems"]), report["problems"]


def _rewrite_record(store: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """Apply ``edit(header fields) -> header fields`` to the first entry of the only pack,
    keep its header checksum valid, and rebuild the index to agree (a crafted pack)."""
    from cas.packs import scan_pack

    pack = only_pack(store)
    (e, *others), pid = scan_pack(pack)
    raw = bytearray(pack.read_bytes())
    at = e.offset
    oid, kind, codec, raw_len, stored_len = edit(e.oid, e.kind, e.codec, e.raw_len,
                                                 e.stored_len)
    raw[at : at + fmt.ENTRY_HEADER_SIZE] = fmt.encode_entry_header(oid, kind, codec, raw_len,
                                                                   stored_len)
    pack.write_bytes(bytes(raw))
    forged = fmt.Entry(oid, at, stored_len, raw_len, kind, codec)
    pack.with_suffix(".idx").write_bytes(fmt.encode_index([forged, *others], pid))
    return pack


@pytest.mark.parametrize("field,value,words", [
    ("kind", 9, "unknown kind 9"),
    ("codec", 7, "unknown codec 7"),
])
def test_unknown_record_kind_or_codec_is_refused_naming_the_pack(
        store: Path, tmp_path: Path, field: str, value: int, words: str) -> None:
    def edit(oid, kind, codec, raw_len, stored_len):  # type: ignore[no-untyped-def]
        return (oid, value if field == "kind" else kind, value if field == "codec" else codec,
                raw_len, stored_len)

    pack = _rewrite_record(store, edit)
    code, report = report_of(store)
    assert code == 4
    (bad,) = report["bad_objects"]
    assert words in bad["reason"] and pack.name[5:-5] in bad["reason"]
    assert report["broken_versions"]  # the version needing it is named


def test_record_claiming_a_huge_length_costs_no_memory(store: Path, tmp_path: Path) -> None:
    """A small chunk record claiming 1 GiB: verify and checkout refuse it with E_VERIFY and
    stay far below what the claim would allocate."""
    _rewrite_record(store, lambda o, k, c, n, s: (o, k, 1, 1 << 30, s))
    code, report = report_of(store)
    assert code == 4 and report["bad_objects"]
    assert "1073741824" in report["bad_objects"][0]["reason"]
    for args in (["verify", "--all"], ["checkout", "b", str(tmp_path / "out")],
                 ["checkout", "a", str(tmp_path / "out2")]):
        _, _, err, peak_kib = run_measured([*CAS, "--store", str(store), "--json", *args])
        assert "Traceback" not in err
        assert peak_kib < 150 * 1024, (args, peak_kib)


def test_chunk_list_record_expanding_to_1_gib_is_hashed_in_bounded_memory(
        store: Path, tmp_path: Path) -> None:
    """A ~32 KB zstd frame that really expands to 1 GiB of zeros, recorded as a chunk list:
    verify hashes it as it decompresses (and names it bad) instead of holding 1 GiB."""
    import zstandard

    from cas.format.pack import KIND_CHUNK_LIST

    bomb = tmp_path / "bomb.zst"
    with zstandard.ZstdCompressor(level=3).stream_writer(open(bomb, "wb"),
                                                         size=1 << 30) as w:
        for _ in range(1024):
            w.write(bytes(1 << 20))
    frame = bomb.read_bytes()
    assert len(frame) < 100_000
    body = bytearray(fmt.pack_header())
    oid = bytes([7]) * 32
    entry = fmt.Entry(oid, len(body), len(frame), 1 << 30, KIND_CHUNK_LIST, 1)
    body += fmt.encode_entry_header(oid, KIND_CHUNK_LIST, 1, 1 << 30, len(frame)) + frame
    h = fmt.PackIdHasher()
    h.add(oid)
    pid = h.digest()
    body += fmt.pack_trailer(1, pid)
    (store / "packs" / f"pack-{pid.hex()}.pack").write_bytes(bytes(body))
    (store / "packs" / f"pack-{pid.hex()}.idx").write_bytes(fmt.encode_index([entry], pid))
    code, out, err, peak_kib = run_measured([*CAS, "--store", str(store), "--json", "verify",
                                             "--all"])
    assert "Traceback" not in err
    assert peak_kib < 150 * 1024, peak_kib
    assert code == 4
    (bad,) = json.loads(out)["report"]["bad_objects"]
    assert bad["id"] == oid.hex() and "hashes to" in bad["reason"]


# -- registry history ----------------------------------------------------------------------------


def test_damaged_manifest_reachable_only_through_history_is_reported(store: Path) -> None:
    """a@1 is removed: its manifest is read only by restore/log/show. Delete its blob."""
    r = repo(store)
    blobs = set()
    for entry in r.get_walker([r.refs[b"refs/models/a"]]):
        tree = r[entry.commit.tree]
        if b"versions" in tree:
            for item in r[tree[b"versions"][1]].items():
                blobs.add(item.sha)
    _, sub = tip_tree(store, "a")
    live = {item.sha for item in sub.items()}
    (gone,) = blobs - live
    r.close()
    os.remove(store / "registry" / "objects" / gone[:2].decode() / gone[2:].decode())
    code, report = report_of(store)
    assert code == 4
    assert any(p.startswith("model a:") and gone.decode() in p for p in report["problems"]), \
        report["problems"]
    assert report["versions_checked"] >= 2  # b and a@2 were still checked


def test_commit_without_trailers_is_reported_and_other_models_checked(store: Path) -> None:
    root, _ = tip_tree(store, "b")
    commit_on(store, "b", root.id, b"hand-made commit\n")
    code, report = report_of(store)
    assert code == 4
    assert report["bad_models"] == ["b"]
    assert any("Cas-Action" in p for p in report["problems"]), report["problems"]
    assert report["versions_checked"] >= 2  # a@2 and a@1 (removed) still checked


def test_manifest_under_another_name_or_number_is_reported(store: Path) -> None:
    other = live_manifest(store, "b", 1)  # b@1's manifest, committed as a@3
    tree = with_manifest(store, "a", 3, other.encode())
    commit_on(store, "a", tree, b"add a v3\n\nCas-Action: add\nCas-Version: 3\n")
    code, report = report_of(store)
    assert code == 4
    assert any("versions/000003.json holds the manifest of b@1" in p
               for p in report["problems"]), report["problems"]


def test_files_catches_a_manifest_whose_sha256_is_wrong(store: Path) -> None:
    import msgspec

    m = live_manifest(store, "b", 1)
    f0 = m.files[0]
    wrong = msgspec.structs.replace(f0, sha256="0" * 64)
    forged = msgspec.structs.replace(m, files=[wrong, *m.files[1:]])
    tree = with_manifest(store, "b", 1, forged.encode())
    commit_on(store, "b", tree, b"annotate b v1\n\nCas-Action: annotate\nCas-Version: 1\n")
    assert report_of(store)[0] == 0  # every chunk is sound; only whole files show it
    code, report = report_of(store, "--files")
    assert code == 4
    (bv,) = report["broken_versions"]
    assert bv["version"] == "b@1" and bv["files"] == [f0.path]
    assert "SHA-256" in bv["reasons"][0]


def test_files_and_repair_work_on_the_whole_store_only(store: Path) -> None:
    for flag in ("--files", "--repair"):
        code, doc, _ = run(store, "verify", "b", flag)
        assert code == 2 and doc["error"]["code"] == "E_ARGS" and "--all" in doc["error"]["message"]


def test_files_hashes_each_distinct_file_once(store: Path, tmp_path: Path) -> None:
    code, doc = report_of(store, "--files")
    assert code == 0
    # a@2 (2 files) and b@1 (1 file) are live; a@1 is removed and not hashed.
    assert doc["files_checked"] == 3


# -- a writer committing while verify runs -----------------------------------------------------


class Paused:
    """``cas verify --all`` stopped at a pause point until resumed (see cas.checkout)."""

    def __init__(self, store: Path, point: str) -> None:
        report_r, report_w = os.pipe()
        resume_r, resume_w = os.pipe()
        env = {**os.environ, "CAS_TEST_PAUSE": point,
               "CAS_TEST_PAUSE_FDS": f"{report_w},{resume_r}"}
        self.proc = subprocess.Popen([*CAS, "--store", str(store), "--json", "verify", "--all"],
                                     env=env, pass_fds=(report_w, resume_r),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(report_w)
        os.close(resume_r)
        self.report, self.resume_w, self.point = report_r, resume_w, point

    def wait_paused(self) -> None:
        line = os.read(self.report, 100)
        if line.strip() != self.point.encode():
            out, err = self.proc.communicate()
            raise AssertionError(f"verify did not pause at {self.point}: {out}\n{err}")

    def resume(self) -> tuple[int, dict]:
        os.close(self.resume_w)
        out, err = self.proc.communicate(timeout=300)
        os.close(self.report)
        assert "Traceback" not in err, err
        return self.proc.returncode, json.loads(out)


@pytest.mark.parametrize("point", ["verify-snapshot", "verify-packs-read"])
def test_no_false_damage_while_an_add_commits(store: Path, tmp_path: Path, point: str) -> None:
    """An add that lands packs and moves a ref while verify runs (after its registry
    snapshot, or after it read every pack) is either wholly in the check or not at all."""
    child = Paused(store, point)
    child.wait_paused()
    src = tmp_path / "new.bin"
    src.write_bytes(random.Random(11).randbytes(700_000))
    assert run(store, "add", "c", str(src))[0] == 0
    assert run(store, "add", "a", str(src))[0] == 0
    code, doc = child.resume()
    assert code == 0, doc
    assert doc["ok"] and doc["broken_versions"] == []
    assert report_of(store)[1]["versions_checked"] == 5  # a@1 (removed), a@2, a@3, b@1, c@1


# -- checkout -------------------------------------------------------------------------------------


def test_chunk_list_disagreeing_with_the_pack_record_is_e_verify_at_checkout(
        store: Path, tmp_path: Path) -> None:
    """A crafted chunk list (lengths still summing to the file size) names a chunk with the
    wrong length: checkout refuses with E_VERIFY, not a traceback."""
    from cas import Store
    from cas.format.chunklist import ChunkList
    from cas.format.pack import KIND_CHUNK_LIST
    from cas.ids import blake3_id, parse_hex

    import msgspec

    big = tmp_path / "big.bin"  # large enough for checkout's windowed path
    big.write_bytes(random.Random(5).randbytes(1_500_000))
    assert run(store, "add", "big", str(big))[0] == 0
    st = Store.open(store)
    m = st.manifest(st.resolve("big"))
    f0 = m.files[0]
    clist = st.read_chunk_list(parse_hex(f0.chunks))
    (c0, n0), (c1, n1), *rest = clist.chunks
    forged = ChunkList(clist.size, ((c0, n0 + 5), (c1, n1 - 5), *rest)).encode()
    fid = blake3_id(forged)
    write_pack(st.packs_dir, [(fid, KIND_CHUNK_LIST, 0, forged)])
    st.close()
    entry = msgspec.structs.replace(f0, chunks=fid.hex())
    bad = msgspec.structs.replace(m, files=[entry, *m.files[1:]])
    tree = with_manifest(store, "big", 1, bad.encode())
    commit_on(store, "big", tree,
              b"annotate big v1\n\nCas-Action: annotate\nCas-Version: 1\n")
    code, doc, _ = run(store, "checkout", "big", str(tmp_path / "out"))
    assert code == 4 and doc["error"]["code"] == "E_VERIFY", doc
    assert c0.hex() in doc["error"]["message"]
    code, report = report_of(store)
    assert code == 4 and "big@1" in [b["version"] for b in report["broken_versions"]]
