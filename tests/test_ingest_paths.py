"""The two ways ingest reads a file (whole and inline for small files, streamed through the
pipeline for the others) store the same objects, and both notice a file that changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas import ingest
from cas.chunking import DEFAULT_PARAMS
from cas.errors import ConflictError
from cas.store import Store

SIZES = [0, 1, 4096, DEFAULT_PARAMS.min_size - 1, DEFAULT_PARAMS.min_size,
         DEFAULT_PARAMS.min_size + 1, 100_000, ingest.SMALL_FILE]


def _tree(root: Path) -> Path:
    root.mkdir()
    text = b"".join(b"line %d of a tokenizer file\n" % i for i in range(20_000))
    for n in SIZES:
        (root / f"random-{n}.bin").write_bytes(os.urandom(n))
        (root / f"text-{n}.txt").write_bytes(text[:n])
    (root / "dup.txt").write_bytes(text[:100_000])  # dedupes against text-100000.txt
    return root


def _files(store: Store) -> list[tuple[str, int, str, str]]:
    m = store.manifest(store.resolve("m"))
    return [(f.path, f.size, f.sha256, f.chunks) for f in m.files]


def test_small_files_read_whole_store_what_streaming_stores(tmp_path, monkeypatch):
    src = _tree(tmp_path / "src")
    inline = Store.init(tmp_path / "inline")
    r1 = inline.add("m", src)
    monkeypatch.setattr(ingest, "SMALL_FILE", -1)  # every file through the pipeline
    streamed = Store.init(tmp_path / "streamed")
    r2 = streamed.add("m", src)
    assert _files(inline) == _files(streamed)
    assert (r1.new_chunks, r1.reused_chunks) == (r2.new_chunks, r2.reused_chunks)
    assert r1.reused_chunks > 0
    for store in (inline, streamed):
        out = tmp_path / f"out-{store.path.name}"
        store.checkout("m", out)
        for p in src.iterdir():
            assert (out / p.name).read_bytes() == p.read_bytes()
        assert store.verify().ok
        store.close()


@pytest.mark.parametrize("size", [3000, ingest.SMALL_FILE + 1])
def test_a_file_that_changes_after_the_scan_is_not_committed(tmp_path, monkeypatch, size):
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "w.bin"
    victim.write_bytes(os.urandom(size))
    real_scan = ingest.scan_input

    def scan_then_append(*args, **kwargs):  # the user's trainer writes on after the scan
        found = real_scan(*args, **kwargs)
        with open(victim, "ab") as f:
            f.write(b"more")
        return found

    monkeypatch.setattr(ingest, "scan_input", scan_then_append)
    store = Store.init(tmp_path / "store")
    with pytest.raises(ConflictError, match="changed while it was being read"):
        store.add("m", src)
    assert store.registry.head("m") is None
    assert os.listdir(store.tmp_dir) == []
    store.close()
