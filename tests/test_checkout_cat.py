"""cas cat: one file to stdout, streamed, every chunk verified before its bytes go out, the
whole SHA-256 checked at the end; a reader that goes away (| head) ends it quietly."""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import damage_chunk

from cas import Store
from cas.cat import CAT_GROUP
from cas.errors import NotFoundError, VerifyError
from cas.format.manifest import Manifest

BIG = 3_000_000  # about 45 chunks of the default 64 KiB average


@pytest.fixture
def data(cas, tmp_path: Path) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    rng = random.Random(5)
    files = {"config.json": b'{"a": 1}\n', "w/big.bin": rng.randbytes(BIG), "empty": b""}
    src = tmp_path / "src"
    for rel, content in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(content)
    cas("add", "m", str(src))
    return files


def _cat(store: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store),
                           "cat", *args], capture_output=True, timeout=120)


def test_cat_writes_the_exact_bytes(cas, data, store_path: Path, tmp_path: Path
                                    ) -> None:  # type: ignore[no-untyped-def]
    for rel, content in data.items():
        p = _cat(store_path, "m@1", rel)
        assert p.returncode == 0 and p.stdout == content and p.stderr == b"", rel
    out = tmp_path / "copy.bin"
    r = cas("--json", "cat", "m", "w/big.bin", "-o", str(out))
    assert r.json["size"] == BIG and r.json["sha256"] == hashlib.sha256(data["w/big.bin"]
                                                                        ).hexdigest()
    assert out.read_bytes() == data["w/big.bin"]


def test_cat_errors(cas, data, store_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cas("cat", "m", "nope.txt", ok=False)
    assert r.code == 3 and "has no file 'nope.txt'" in r.err
    r = cas("--json", "cat", "m", "config.json", ok=False)
    assert r.code == 2 and r.json["error"]["code"] == "E_ARGS" and "-o FILE" in r.out


def test_broken_pipe_ends_quietly(cas, data, store_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``cas cat ... | head -c 10``: the reader closes the pipe after 10 bytes."""
    proc = subprocess.Popen([sys.executable, "-m", "cas.cli.main", "--store", str(store_path),
                             "cat", "m", "w/big.bin"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0
    assert head == data["w/big.bin"][:10] and err == b""


def _damage_chunk(store_path: Path, path: str, index: int) -> int:
    """Flip a byte of chunk ``index`` of ``path`` in ``m``; return the file offset where that
    chunk starts."""
    return damage_chunk(store_path, "m", path, index)


def test_a_damaged_chunk_is_never_written(cas, data, store_path: Path
                                          ) -> None:  # type: ignore[no-untyped-def]
    start = _damage_chunk(store_path, "w/big.bin", 2 * CAT_GROUP + 3)
    p = _cat(store_path, "m", "w/big.bin")
    assert p.returncode == 4 and b"[E_VERIFY]" in p.stderr
    # sound bytes before the damaged chunk went out (chunks are read in groups), nothing of
    # it or after it
    assert 0 < len(p.stdout) <= start and p.stdout == data["w/big.bin"][: len(p.stdout)]


def test_whole_file_sha256_is_checked_at_the_end(cas, data, store_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:  # type: ignore[no-untyped-def]
    store = Store.open(store_path)
    real = Store.manifest

    def lying(self: Store, version):  # type: ignore[no-untyped-def]
        m = real(self, version)
        files = [f if f.path != "config.json" else
                 type(f)(**{**{k: getattr(f, k) for k in f.__struct_fields__},
                            "sha256": "0" * 64}) for f in m.files]
        return Manifest(**{**{k: getattr(m, k) for k in m.__struct_fields__}, "files": files})

    monkeypatch.setattr(Store, "manifest", lying)
    out = io.BytesIO()
    with pytest.raises(VerifyError, match="SHA-256"):
        store.cat("m", "config.json", out)
    assert out.getvalue() == data["config.json"]  # the chunks themselves were sound
    with pytest.raises(NotFoundError):
        store.cat("m", "missing", io.BytesIO())
    store.close()


def test_cat_streams_in_bounded_blocks(cas, data, store_path: Path
                                       ) -> None:  # type: ignore[no-untyped-def]
    from cas.cat import iter_file

    store = Store.open(store_path)
    blocks = [len(b) for b in iter_file(store, store.resolve("m"), "w/big.bin")]
    store.close()
    assert sum(blocks) == BIG and len(blocks) > 10
    assert max(blocks) <= store.config.chunker.max_size


def test_cat_to_a_file_is_atomic(cas, data, store_path: Path, tmp_path: Path
                                 ) -> None:  # type: ignore[no-untyped-def]
    """-o FILE: a damaged chunk leaves FILE as it was (or absent) and no temp beside it."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "old.bin"
    old.write_bytes(b"the previous content")
    old.chmod(0o640)
    link = out_dir / "link.bin"
    link.symlink_to(old.name)
    # sound: written through the link, the link and the file's mode kept
    r = cas("--json", "cat", "m", "w/big.bin", "-o", str(link))
    assert r.json["size"] == BIG
    assert link.is_symlink() and old.read_bytes() == data["w/big.bin"]
    assert old.stat().st_mode & 0o777 == 0o640
    old.write_bytes(b"the previous content")
    _damage_chunk(store_path, "w/big.bin", 2 * CAT_GROUP + 3)
    for target in (old, out_dir / "new.bin"):
        r = cas("--json", "cat", "m", "w/big.bin", "-o", str(target), ok=False)
        assert r.code == 4 and r.json["error"]["code"] == "E_VERIFY"
    assert old.read_bytes() == b"the previous content"
    assert sorted(p.name for p in out_dir.iterdir()) == ["link.bin", "old.bin"]
    r = cas("cat", "m", "config.json", "-o", str(out_dir), ok=False)
    assert r.code == 2 and "is a directory" in r.err
