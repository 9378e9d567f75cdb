"""Adversarial inputs and damaged stores, driven through the real CLI in a subprocess.

Every test builds its own store under ``tmp_path`` and generates its data with a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MB = 1 << 20

_SCRIPT = Path(sys.executable).parent / "cas"
CAS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cas.cli.main"]


# -- helpers ---------------------------------------------------------------------------------


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr
        self.doc = None
        if "--json" in proc.args:
            lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
            assert len(lines) == 1, f"expected one JSON document, got {proc.stdout!r}"
            self.doc = json.loads(lines[0])

    @property
    def code(self) -> str | None:
        return self.doc["error"]["code"] if self.doc and not self.doc["ok"] else None

    def __repr__(self) -> str:
        return f"Run(rc={self.rc}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


def cas(store: Path, *args: str, json_mode: bool = True) -> Run:
    argv = [*CAS, "--store", str(store)] + (["--json"] if json_mode else []) + list(args)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    r = Run(proc)
    assert "Traceback" not in r.err, r
    return r


def cas_many(store: Path, commands: list[list[str]], parallel: int = 4) -> list[Run]:
    """Run independent read-only (or refused) commands a few at a time; results in order."""
    results: list[Run] = []
    for i in range(0, len(commands), parallel):
        procs = []
        for args in commands[i : i + parallel]:
            argv = [*CAS, "--store", str(store), "--json", *args]
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        for p in procs:
            out, err = p.communicate(timeout=120)
            r = Run(subprocess.CompletedProcess(p.args, p.returncode, out, err))
            assert "Traceback" not in r.err, r
            results.append(r)
    return results


def ok(store: Path, *args: str) -> dict:
    r = cas(store, *args)
    assert r.rc == 0 and r.doc["ok"] is True, r
    return r.doc


def expect_error(r: Run, code: str, exit_code: int) -> None:
    assert r.rc == exit_code, r
    assert r.doc is not None and r.doc["ok"] is False, r
    assert r.doc["error"]["code"] == code, r
    assert r.doc["error"]["message"], r


def model_bytes(seed: int, size: int) -> bytes:
    """Half random bytes, half low-entropy (compressible) bytes."""
    rng = np.random.default_rng(seed)
    half = size // 2
    return rng.bytes(half) + rng.integers(0, 4, size - half, dtype=np.uint8).tobytes()


def write_model(d: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return d


def snapshot(root: Path, *subdirs: str) -> dict[str, str]:
    """Relative path -> sha256 of every file (and symlink target) under ``root``/subdirs."""
    out: dict[str, str] = {}
    tops = [root / s for s in subdirs] if subdirs else [root]
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(top):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                rel = str(p.relative_to(root))
                if p.is_symlink():
                    out[rel] = "link:" + os.readlink(p)
                elif p.is_file():
                    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
                else:
                    out[rel] = "dir"
    return out


def all_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() or p.is_symlink())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    s = tmp_path / "S"
    ok(s, "init")
    return s


def _populate(store: Path, tmp: Path) -> Path:
    ok(store, "init")
    src = write_model(tmp / "m_src", {"w.bin": model_bytes(1, 2 * MB)})
    ok(store, "add", "m", str(src), "--tag", "base")
    return store


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    """A store with model ``m`` (one version, tagged ``base``), for tests that change it."""
    return _populate(tmp_path / "S", tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``populated``, shared by the tests that must leave it unchanged."""
    tmp = tmp_path_factory.mktemp("shared")
    return _populate(tmp / "S", tmp)


# -- names -----------------------------------------------------------------------------------

BAD_NAMES = [
    "..", "../evil", "a/../b", "/abs", "C:evil", "c:/x", "C:\\x", "a\\b", "a//b", "a/", "a@b",
    "@", "m@1", "", ".hidden", "x.lock",
]


def test_bad_model_names_refused_and_nothing_written(shared: Path, tmp_path: Path) -> None:
    src = write_model(tmp_path / "src", {"w.bin": model_bytes(2, 3 * MB)})
    before = snapshot(shared)
    for r in cas_many(shared, [["add", name, str(src)] for name in BAD_NAMES]):
        expect_error(r, "E_ARGS", 2)
    assert snapshot(shared) == before
    assert os.listdir(shared / "tmp") == []


def test_bad_specs_refused_by_every_command(shared: Path, tmp_path: Path) -> None:
    before = snapshot(shared, "packs", "registry")
    dest = tmp_path / "dest"
    specs = ["../evil", "/abs", "C:evil", "a//b", "m@", "m@../x", "m@a/b"]
    commands = [lambda n: ["show", n], lambda n: ["checkout", n, str(dest)],
                lambda n: ["verify", n], lambda n: ["tag", n, "t1"], lambda n: ["rm", n]]
    # Round robin over commands (each meets two bad specs), not all pairs: keeps it fast.
    calls = [commands[i % len(commands)](n) for i, n in enumerate(specs + specs[:3])]
    tags = ["../x", "/x", "C:x", "a//b", "a@b", "12", "x.lock"]
    calls += [["tag", "m@1", t] for t in tags[:4]]
    calls += [["add", "m", str(tmp_path), "--tag", t] for t in tags[4:]]
    for r in cas_many(shared, calls):
        expect_error(r, "E_ARGS", 2)
    assert not dest.exists()
    assert snapshot(shared, "packs", "registry") == before


def test_bad_names_refused_by_log_and_du(shared: Path) -> None:
    names = ["../evil", "/abs", "a//b", "C:evil", "m@", "m@x/y"]
    calls = [[("log", "du")[i % 2], n] for i, n in enumerate(names)]
    for r in cas_many(shared, calls):
        expect_error(r, "E_ARGS", 2)


# -- unsafe input directories ----------------------------------------------------------------


def _case_collision(d: Path) -> None:
    (d / "A.bin").write_bytes(b"upper")
    (d / "a.bin").write_bytes(b"lower")


def _case_collision_dirs(d: Path) -> None:
    (d / "Sub").mkdir()
    (d / "sub").mkdir()
    (d / "Sub" / "x.bin").write_bytes(b"1")
    (d / "sub" / "x.bin").write_bytes(b"2")


def _backslash(d: Path) -> None:
    (d / "a\\b.bin").write_bytes(b"x")


def _control_char(d: Path) -> None:
    (d / "a\nb.bin").write_bytes(b"x")


def _drive_letter(d: Path) -> None:
    (d / "C:evil.bin").write_bytes(b"x")


def _git_dir_upper(d: Path) -> None:
    (d / "sub" / ".GIT").mkdir(parents=True)
    (d / "sub" / ".GIT" / "config").write_bytes(b"x")


def _symlink_loop(d: Path) -> None:
    (d / "sub").mkdir()
    (d / "sub" / "loop").symlink_to("..")


def _fifo(d: Path) -> None:
    os.mkfifo(d / "zz.fifo")


@pytest.mark.parametrize("make_bad", [
    _case_collision, _case_collision_dirs, _backslash, _control_char, _drive_letter,
    _git_dir_upper, _symlink_loop, _fifo,
])
def test_unsafe_or_colliding_input_refused_before_any_pack(shared: Path, tmp_path: Path,
                                                           make_bad) -> None:
    src = tmp_path / "src"
    # A big, sound file sorts first: a late refusal would already have packed it.
    write_model(src, {"00big.bin": model_bytes(3, 3 * MB)})
    make_bad(src)
    before = snapshot(shared)
    for r in cas_many(shared, [["add", "m2", str(src)], ["add", "m", str(src)]]):
        expect_error(r, "E_ARGS", 2)
    assert snapshot(shared) == before
    assert os.listdir(shared / "tmp") == []


# -- checkout safety -------------------------------------------------------------------------


def test_checkout_through_symlinked_parent_is_refused(store: Path, tmp_path: Path) -> None:
    src = write_model(tmp_path / "src", {"a.bin": model_bytes(4, MB),
                                         "sub/file.bin": model_bytes(5, MB)})
    ok(store, "add", "sym", str(src))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.bin").write_bytes(b"precious")
    for target, force in [(elsewhere, False), (elsewhere, True), (victim, True)]:
        dest = tmp_path / f"dest-{target.name}-{force}"
        dest.mkdir()
        (dest / "sub").symlink_to(target)
        r = cas(store, "checkout", "sym", str(dest), *(["--force"] if force else []))
        expect_error(r, "E_CONFLICT", 10)
        assert os.listdir(elsewhere) == []
        assert os.listdir(victim) == ["file.bin"]
        assert (victim / "file.bin").read_bytes() == b"precious"
        assert (dest / "sub").is_symlink()
        assert not [n for n in all_files(dest) if "cas-tmp" in n]


def test_path_component_longer_than_the_name_limit_is_refused_before_writing(
        store: Path, tmp_path: Path) -> None:
    """A manifest made on a filesystem with a longer name limit (here: crafted) names a folder
    this filesystem cannot hold: checkout says so, naming it, and writes nothing."""
    import msgspec

    from cas.store import Store

    src = write_model(tmp_path / "src", {"a.txt": b"short name\n"})
    ok(store, "add", "org/long", str(src))
    with Store.open(store) as s:
        m = s.manifest(s.resolve("org/long"))
        long_dir = "d" * 300
        crafted = msgspec.structs.replace(
            m, seq=2, files=[msgspec.structs.replace(m.files[0], path=f"{long_dir}/a.txt")])
        s.registry.add_version("org/long", 2, crafted.encode(), "made elsewhere")
    dest = tmp_path / "dest"
    r = cas(store, "checkout", "org/long@2", str(dest))
    expect_error(r, "E_ARGS", 2)
    assert "300 bytes" in r.doc["error"]["message"] and "--include" in r.doc["error"]["message"]
    assert not dest.exists()
    ok(store, "checkout", "org/long@1", str(dest))  # the version before still checks out
    assert (dest / "a.txt").read_bytes() == b"short name\n"


def test_chunk_list_length_disagreeing_with_a_record_at_a_window_edge(
        store: Path, tmp_path: Path) -> None:
    """A crafted chunk list that moves one byte from a chunk to the chunk crossing checkout's
    8 MiB window edge (the total still matches the manifest): a clear E_VERIFY naming the
    chunk, never a traceback, and nothing left at the destination."""
    import msgspec

    from cas.checkout import WINDOW
    from cas.compression import CODEC_RAW
    from cas.format.chunklist import ChunkList
    from cas.format.pack import KIND_CHUNK_LIST
    from cas.ids import blake3_id
    from cas.packwriter import PackWriter
    from cas.store import Store

    src = write_model(tmp_path / "src", {"w.bin": model_bytes(11, 3 * WINDOW // 2)})
    ok(store, "add", "org/edge", str(src))
    with Store.open(store) as s:
        m = s.manifest(s.resolve("org/edge"))
        f = m.files[0]
        clist = s.read_chunk_list(bytes.fromhex(f.chunks))
        chunks = list(clist.chunks)
        start, i = 0, 0
        while start + chunks[i][1] <= WINDOW:  # find the chunk crossing the edge
            start += chunks[i][1]
            i += 1
        (a, na), (b, nb) = chunks[i], chunks[i + 1]
        chunks[i], chunks[i + 1] = (a, na + 1), (b, nb - 1)
        data = ChunkList(clist.size, tuple(chunks)).encode()
        oid = blake3_id(data)
        writer = PackWriter(s.backend, 1 << 30)
        writer.add(oid, KIND_CHUNK_LIST, CODEC_RAW, len(data), data)
        writer.finish()
        crafted = msgspec.structs.replace(
            m, seq=2, files=[msgspec.structs.replace(f, chunks=oid.hex())])
        s.registry.add_version("org/edge", 2, crafted.encode(), "crafted")
    dest = tmp_path / "dest"
    r = cas(store, "checkout", "org/edge@2", str(dest))
    expect_error(r, "E_VERIFY", 4)
    # Found in the first window, at the crossing chunk itself (its neighbour, checked in the
    # next window, would only name itself).
    assert a.hex() in r.doc["error"]["message"], r.doc
    assert not (dest / "w.bin").exists()


def test_checkout_refuses_overwrite_without_force(store: Path, tmp_path: Path) -> None:
    files = {"a.bin": model_bytes(6, 2 * MB), "d/b.bin": model_bytes(7, MB)}
    src = write_model(tmp_path / "src", files)
    ok(store, "add", "m", str(src))
    dest = tmp_path / "dest"
    ok(store, "checkout", "m", str(dest))
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    (dest / "a.bin").write_bytes(b"local edit")
    (dest / "keep.txt").write_bytes(b"unrelated")
    # A symlink under a target name must be replaced, never written through.
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"outside")
    (dest / "d" / "b.bin").unlink()
    (dest / "d" / "b.bin").symlink_to(outside)

    r = cas(store, "checkout", "m", str(dest))
    expect_error(r, "E_CONFLICT", 10)
    assert (dest / "a.bin").read_bytes() == b"local edit"
    assert (dest / "d" / "b.bin").is_symlink()

    ok(store, "checkout", "m", str(dest), "--force")
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
        assert not (dest / rel).is_symlink()
    assert (dest / "keep.txt").read_bytes() == b"unrelated"
    assert outside.read_bytes() == b"outside"
    assert not [n for n in all_files(dest) if "cas-tmp" in n]


# -- damaged packs ---------------------------------------------------------------------------


def _chunk_ids(st, spec: str) -> list[bytes]:
    m = st.manifest(st.resolve(spec))
    out = []
    for f in m.files:
        out += [cid for cid, _ in st.read_chunk_list(bytes.fromhex(f.chunks)).chunks]
    return out


def test_flipped_byte_is_named_and_blocks_checkout(store: Path, tmp_path: Path) -> None:
    from cas.store import Store

    shared = np.random.default_rng(10).bytes(3 * MB)
    a = shared + model_bytes(11, 2 * MB)
    b = shared + model_bytes(12, 2 * MB)
    c = model_bytes(13, 3 * MB)
    ok(store, "add", "ma", str(write_model(tmp_path / "a", {"w.bin": a})))
    ok(store, "add", "mb", str(write_model(tmp_path / "b", {"w.bin": b})))
    ok(store, "add", "mc", str(write_model(tmp_path / "c", {"w.bin": c})))

    with Store.open(store) as st:
        ids_a, ids_b, ids_c = (set(_chunk_ids(st, n)) for n in ("ma", "mb", "mc"))
        candidates = sorted((ids_a & ids_b) - ids_c)
        assert candidates, "the two models should share chunks"
        target = None
        for pack in st.packs.packs.values():
            for e in pack.entries():
                if e.oid in candidates and e.stored_len > 1024:
                    target = (pack.pack_path, e)
                    break
            if target:
                break
        assert target is not None
    pack_file, entry = target
    chunk_hex = entry.oid.hex()
    with open(pack_file, "r+b") as f:
        f.seek(entry.data_offset + entry.stored_len // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))

    r = cas(store, "verify", "--all")
    expect_error(r, "E_VERIFY", 4)
    report = r.doc["report"]
    assert [o["id"] for o in report["bad_objects"]] == [chunk_hex]
    assert {v["version"] for v in report["broken_versions"]} == {"ma@1", "mb@1"}
    human = cas(store, "verify", "--all", json_mode=False)
    assert human.rc == 4
    assert chunk_hex in human.err and "ma@1" in human.err and "mb@1" in human.err
    assert "mc@1" not in human.err

    for name in ("ma", "mb"):
        r = cas(store, "verify", name)
        expect_error(r, "E_VERIFY", 4)
        assert chunk_hex in {o["id"] for o in r.doc["report"]["bad_objects"]}
        assert r.doc["report"]["broken_versions"][0]["version"] == f"{name}@1"
    ok(store, "verify", "mc")

    dest = tmp_path / "dest-a"
    expect_error(cas(store, "checkout", "ma@1", str(dest)), "E_VERIFY", 4)
    assert all_files(dest) == []  # neither w.bin nor a temp file

    dest_c = tmp_path / "dest-c"
    ok(store, "checkout", "mc", str(dest_c))
    assert (dest_c / "w.bin").read_bytes() == c


def test_truncated_pack_is_reported_and_store_stays_writable(store: Path, tmp_path: Path) -> None:
    da = model_bytes(20, 4 * MB)
    db = model_bytes(21, 2 * MB)
    ok(store, "add", "ma", str(write_model(tmp_path / "a", {"w.bin": da})))
    packs_a = {p.name for p in (store / "packs").glob("*.pack")}
    ok(store, "add", "mb", str(write_model(tmp_path / "b", {"w.bin": db})))
    (pack_a,) = packs_a
    path = store / "packs" / pack_a
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)

    r = cas(store, "verify", "--all")
    expect_error(r, "E_VERIFY", 4)
    broken = {v["version"] for v in r.doc["report"]["broken_versions"]}
    assert broken == {"ma@1"}
    assert r.doc["report"]["bad_objects"]
    expect_error(cas(store, "verify", "ma"), "E_VERIFY", 4)
    ok(store, "verify", "mb")

    dn = model_bytes(22, 3 * MB)
    res = ok(store, "add", "mn", str(write_model(tmp_path / "n", {"w.bin": dn})))
    assert res["created"] and res["new_chunks"] > 0
    ok(store, "verify", "mn")
    dest = tmp_path / "dest-n"
    ok(store, "checkout", "mn", str(dest))
    assert (dest / "w.bin").read_bytes() == dn
    r = cas(store, "verify", "--all")
    expect_error(r, "E_VERIFY", 4)
    assert {v["version"] for v in r.doc["report"]["broken_versions"]} == {"ma@1"}


@pytest.mark.parametrize("writer", ["tag", "add"])
def test_missing_index_is_rebuilt_by_next_writer(populated: Path, tmp_path: Path,
                                                 writer: str) -> None:
    (idx,) = list((populated / "packs").glob("*.idx"))
    idx.unlink()
    r = cas(populated, "verify", "--all")
    expect_error(r, "E_VERIFY", 4)  # versions need objects no visible pack holds
    assert "W_PACK_UNINDEXED" in {w["code"] for w in r.doc["report"]["warnings"]}
    assert [v["version"] for v in r.doc["report"]["broken_versions"]] == ["m@1"]

    if writer == "tag":
        ok(populated, "tag", "m@1", "rebuilt")
    else:
        src = write_model(tmp_path / "other", {"o.bin": model_bytes(30, 2 * MB)})
        ok(populated, "add", "other", str(src))
    assert idx.exists()
    ok(populated, "verify", "--all")
    dest = tmp_path / "dest"
    ok(populated, "checkout", "m", str(dest))
    assert (dest / "w.bin").read_bytes() == model_bytes(1, 2 * MB)


# -- schema and format -----------------------------------------------------------------------


def test_manifest_of_unknown_version_is_refused(populated: Path, tmp_path: Path) -> None:
    from cas.store import Store

    manifest = {
        "name": "future", "seq": 1, "files": [], "total_size": 0, "metadata": {},
        "schema": "cas.manifest", "version": 99,
    }
    with Store.open(populated) as st:
        st.registry.add_version("future", 1, json.dumps(manifest).encode(), "from the future")
    r = cas(populated, "show", "future")
    expect_error(r, "E_FORMAT", 11)
    assert "99" in r.doc["error"]["message"]
    expect_error(cas(populated, "show", "future@1"), "E_FORMAT", 11)
    dest = tmp_path / "dest"
    expect_error(cas(populated, "checkout", "future", str(dest)), "E_FORMAT", 11)
    # One unreadable manifest does not hide the rest of the catalog.
    # Listed and counted with the others, and the exit code says one could not be read.
    r = cas(populated, "ls")
    expect_error(r, "E_FORMAT", 11)
    rows = {row["name"]: row for row in r.doc["models"]}
    assert "99" in rows["future"]["error"] and rows["future"]["error_code"] == "E_FORMAT"
    assert rows["m"]["error"] is None and rows["m"]["size"] > 0
    human = cas(populated, "ls", json_mode=False)
    assert human.rc == 11 and "m " in human.out and "future" in human.out
    assert human.err.startswith("cas: error: future: ") and human.err.count("\n") == 1
    r = cas(populated, "du")
    expect_error(r, "E_FORMAT", 11)
    assert r.doc["usage"]["logical"] > 0
    expect_error(cas(populated, "verify", "--all"), "E_VERIFY", 4)
    assert not dest.exists()
    # Other models stay readable.
    ok(populated, "show", "m")


def test_unknown_store_format_version_refuses_everything(populated: Path, tmp_path: Path) -> None:
    cfg_path = populated / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    src = write_model(tmp_path / "src", {"w.bin": model_bytes(40, MB)})
    dest = tmp_path / "dest"
    before = snapshot(populated)
    commands = [
        ["ls"], ["show", "m"], ["log", "m"], ["du"], ["verify", "--all"], ["verify", "m"],
        ["add", "m", str(src)], ["add", "new", str(src)], ["tag", "m@1", "t"],
        ["checkout", "m", str(dest)], ["rm", "m@1", "--force"], ["init"],
        ["init", str(populated)],
    ]
    for r in cas_many(populated, commands):
        expect_error(r, "E_FORMAT", 11)
        assert "99" in r.doc["error"]["message"]
    assert snapshot(populated) == before
    assert not dest.exists()


def test_json_error_shape(shared: Path, tmp_path: Path) -> None:
    cases = [
        (["show", "nosuch"], "E_NOT_FOUND", 3),
        (["show", "m@7"], "E_NOT_FOUND", 3),
        (["add", "../x", str(tmp_path)], "E_ARGS", 2),
        (["add", "x", str(tmp_path / "missing")], "E_NOT_FOUND", 3),
        (["checkout"], "E_ARGS", 2),
        (["verify"], "E_ARGS", 2),
        (["frobnicate"], "E_ARGS", 2),
        (["tag", "m@1", "other", "--delete"], "E_NOT_FOUND", 3),
        (["init", "--no-derive"], "E_CONFLICT", 10),
    ]
    for (args, code, exit_code), r in zip(cases, cas_many(shared, [c[0] for c in cases])):
        expect_error(r, code, exit_code)
        assert set(r.doc) == {"ok", "error"}, r
        assert set(r.doc["error"]) == {"code", "message"}
        assert isinstance(r.doc["error"]["message"], str)
        assert r.err == "", r
    # A missing store is an error of the same shape.
    r = cas(tmp_path / "no-store", "ls")
    expect_error(r, "E_NOT_FOUND", 3)
    assert r.err == ""
    # Without --json: one line on stderr naming the code, nothing on stdout.
    r = cas(shared, "show", "nosuch", json_mode=False)
    assert r.rc == 3 and r.out == ""
    assert r.err.strip().count("\n") == 0 and "[E_NOT_FOUND]" in r.err
