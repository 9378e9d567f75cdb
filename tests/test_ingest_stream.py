"""``cas.ingest_stream.add_streams``: a version registered from streams is the version ``cas add``
makes of the same folder (manifest, chunks, packs byte for byte); a wrong digest registers
nothing; an interrupted run resumes from its last checkpoint without reading the stored part
again from the stream."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cas.errors import VerifyError
from cas.ingest import AddOptions
from cas.ingest_stream import StreamFile, add_streams, opened_at
from cas.store import Store
from conftest import CasCli, pack_sizes, write_files
from hubserver import git_blob_id

MiB = 1 << 20


def bf16_safetensors(tensors: int, elems: int, seed: int, dtype: str = "BF16") -> bytes:
    """A safetensors file of ``tensors`` bf16 tensors of ``elems`` elements (normal values,
    as trained weights are), with a ``__metadata__``."""
    rng = np.random.default_rng(seed)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for i in range(tensors):
        values = rng.normal(0, 0.02, elems).astype(np.float32)
        raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
        header[f"layer.{i}.weight"] = {"dtype": dtype, "shape": [elems],
                                       "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def model_files(real_model: Path, seed: int, elems: int = 400_000) -> dict[str, bytes]:
    files = {p: (real_model / p).read_bytes()
             for p in ("config.json", "tokenizer.json", "vocab.txt", "README.md")}
    files["model.safetensors"] = bf16_safetensors(8, elems, seed)
    files["extra/notes.txt"] = b"notes\n" * 60_000  # > SMALL_FILE, not a weight file
    return files


def tuned(files: dict[str, bytes]) -> dict[str, bytes]:
    """The last tensor changed (as a fine-tune of the last layer does)."""
    w = bytearray(files["model.safetensors"])
    last = 8 * 400_000 * 2 // 8
    rng = np.random.default_rng(99)
    w[-last:] = (rng.normal(0, 0.02, last // 2).astype(np.float32).view(np.uint32) >> 16
                 ).astype("<u2").tobytes()
    return {**files, "model.safetensors": bytes(w)}


def streams(folder: Path, files: dict[str, bytes], opened: list | None = None
            ) -> list[StreamFile]:
    out = []
    for rel, data in sorted(files.items()):
        opener = opened_at(folder / rel)
        if opened is not None:
            opener = _recording(opener, rel, opened)
        lfs = rel.endswith(".safetensors")
        out.append(StreamFile(rel, len(data), opener,
                              sha256=hashlib.sha256(data).hexdigest() if lfs else None,
                              git_blob_id=None if lfs else git_blob_id(data)))
    return out


def _recording(opener, rel, opened):
    def open_at(offset):
        opened.append((rel, offset))
        return opener(offset)
    return open_at


def manifest_view(store: Store, name: str, seq: int) -> dict:
    m = store.manifest(store.resolve(f"{name}@{seq}"))
    meta = m.metadata
    return {"files": [(f.path, f.size, f.sha256, f.chunks, f.executable, f.bases)
                      for f in m.files],
            "meta": (meta.format, meta.architecture, meta.parameter_count, meta.dtypes)}


def test_same_version_as_add_of_the_folder(tmp_path, real_model):
    v1, v2 = model_files(real_model, 1), None
    v2 = tuned(v1)
    d1, d2 = write_files(tmp_path / "v1", v1), write_files(tmp_path / "v2", v2)
    a, b = CasCli(tmp_path / "a"), CasCli(tmp_path / "b")
    a("init")
    b("init")
    a("add", "m", str(d1))
    a("add", "m", str(d2))
    store = Store.open(tmp_path / "b")
    r1 = add_streams(store, "m", streams(d1, v1), AddOptions(source="test"))
    r2 = add_streams(store, "m", streams(d2, v2), AddOptions(source="test"))
    assert r1.created and r2.created and r2.seq == 2
    sa = Store.open(tmp_path / "a")
    for seq in (1, 2):
        assert manifest_view(sa, "m", seq) == manifest_view(store, "m", seq)
    assert manifest_view(store, "m", 1)["meta"][0] == "safetensors"
    assert any(f[5] for f in manifest_view(store, "m", 2)["files"]), "no derived chunks"
    # Same objects, same encodings, same order: the same packs.
    assert pack_sizes(tmp_path / "a") == pack_sizes(tmp_path / "b")
    got = tmp_path / "co"
    b("checkout", "m@2", str(got))
    assert {p: (got / p).read_bytes() for p in v2} == v2
    # The same content again makes no version.
    again = add_streams(store, "m", streams(d2, v2), AddOptions(source="test"))
    assert not again.created and again.seq == 2


@pytest.mark.parametrize("which", ["model.safetensors", "config.json"])
def test_wrong_digest_registers_nothing(tmp_path, real_model, which):
    files = model_files(real_model, 2)
    folder = write_files(tmp_path / "f", files)
    CasCli(tmp_path / "s")("init")
    store = Store.open(tmp_path / "s")
    wrong = [StreamFile(f.path, f.size, f.open,
                        sha256=("0" * 64 if f.sha256 else None),
                        git_blob_id=("0" * 40 if f.git_blob_id else None))
             if f.path == which else f for f in streams(folder, files)]
    with pytest.raises(VerifyError) as exc:
        add_streams(store, "m", wrong, AddOptions(source="test"))
    assert which in exc.value.message
    assert "git blob id" in exc.value.message or which.endswith(".safetensors")
    assert store.registry.head("m") is None
    # A stream shorter than its size is refused too.
    short = [StreamFile(f.path, f.size + 1, f.open, f.sha256, f.git_blob_id)
             if f.path == which else f for f in streams(folder, files)]
    with pytest.raises(VerifyError):
        add_streams(store, "m", short, AddOptions(source="test"))
    assert store.registry.head("m") is None


class Interrupted(Exception):
    pass


class _Cut:
    """A stream that fails after ``limit`` bytes, as a dropped connection does."""

    def __init__(self, inner, limit: int) -> None:
        self.inner, self.left = inner, limit

    def readinto(self, buf) -> int:
        if self.left <= 0:
            raise Interrupted()
        n = self.inner.readinto(memoryview(buf)[: self.left])
        self.left -= n
        return n

    def close(self) -> None:
        self.inner.close()


def test_interrupted_import_resumes_from_its_checkpoint(tmp_path, real_model):
    files = model_files(real_model, 3)
    files["model.safetensors"] = bf16_safetensors(10, 1_200_000, 3)  # 24 MB: 2 checkpoints
    files["z.safetensors"] = bf16_safetensors(12, 1_200_000, 4)  # 28.8 MB
    folder = write_files(tmp_path / "f", files)
    ref = CasCli(tmp_path / "ref")
    ref("init")
    ref("add", "m", str(folder))
    CasCli(tmp_path / "s")("init")
    store = Store.open(tmp_path / "s")

    cut = [StreamFile(f.path, f.size,
                      (lambda off, f=f: _Cut(f.open(off), 20 * MiB - off))
                      if f.path == "z.safetensors" else f.open, f.sha256, f.git_blob_id)
           for f in streams(folder, files)]
    with pytest.raises(Interrupted):
        add_streams(store, "m", cut, AddOptions(source="test"), resume="test-m",
                    checkpoint_bytes=8 * MiB)
    assert store.registry.head("m") is None
    assert (tmp_path / "s" / "cache" / "resume" / "test-m.json").is_file()

    opened: list = []
    store = Store.open(tmp_path / "s")
    r = add_streams(store, "m", streams(folder, files, opened), AddOptions(source="test"),
                    resume="test-m", checkpoint_bytes=8 * MiB)
    assert r.created
    offsets = dict(opened)
    # Finished files are not read again; the cut one resumes past its first checkpoint.
    assert "model.safetensors" not in offsets and "tokenizer.json" not in offsets, opened
    assert 8 * MiB <= offsets["z.safetensors"] < 20 * MiB, opened
    assert manifest_view(store, "m", 1) == manifest_view(Store.open(tmp_path / "ref"), "m", 1)
    assert not (tmp_path / "s" / "cache" / "resume" / "test-m.json").exists()
    got = tmp_path / "co"
    CasCli(tmp_path / "s")("checkout", "m", str(got))
    assert (got / "z.safetensors").read_bytes() == files["z.safetensors"]


def test_resume_record_for_other_content_is_not_used(tmp_path, real_model):
    files = model_files(real_model, 5)
    folder = write_files(tmp_path / "f", files)
    CasCli(tmp_path / "s")("init")
    store = Store.open(tmp_path / "s")
    first = streams(folder, files)
    record = tmp_path / "s" / "cache" / "resume" / "k.json"
    record.parent.mkdir(parents=True)
    # A record naming other content (and one that is not JSON) is ignored.
    record.write_text(json.dumps({"files": {"model.safetensors": {
        "expected": "1" * 64, "size": first[3].size, "done": [1, "2" * 64, "3" * 64]}}}))
    opened: list = []
    r = add_streams(store, "m", streams(folder, files, opened), AddOptions(source="test"),
                    resume="k")
    assert r.created and ("model.safetensors", 0) in opened
    record.write_text("{not json")
    r = add_streams(store, "n", streams(folder, files), AddOptions(source="test"), resume="k")
    assert r.created
