"""DurableWriter: the bytes on disk are exactly the bytes written, direct or not."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from cas import fsutil
from cas.fsutil import DIRECT_ALIGN, DurableWriter


def _is_direct(fd: int) -> bool:
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))


def _write(path: Path, data: bytes, pieces: list[int], **kw) -> DurableWriter:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        w = DurableWriter(fd, **kw)
        pos = 0
        for n in pieces:
            w.write(memoryview(data)[pos : pos + n])
            pos += n
        w.write(data[pos:])
        w.finish()
    finally:
        os.close(fd)
    return w


@pytest.mark.parametrize("size", [0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1,
                                  5 * DIRECT_ALIGN, 5 * DIRECT_ALIGN + 17, 300_001])
@pytest.mark.parametrize("direct", [True, False])
def test_bytes_round_trip_across_buffers(tmp_path: Path, size: int, direct: bool) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    pieces = []
    left = size
    while left > 0:
        n = min(left, rng.choice([1, 7, 4096, 5000, 20_000]))
        pieces.append(n)
        left -= n
    # A two-page buffer forces many flushes, each a full aligned direct write.
    w = _write(tmp_path / "f", data, pieces, buffer_size=2 * DIRECT_ALIGN, direct=direct)
    assert (tmp_path / "f").read_bytes() == data
    assert w.written == size


def test_direct_writes_are_used_when_the_filesystem_allows(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        w = DurableWriter(fd, size_hint=64 << 20)
        supported = w.direct
        w.write(b"x" * (3 * DIRECT_ALIGN + 5))
        w.finish()
    finally:
        os.close(fd)
    if not supported:
        pytest.skip("this filesystem refuses O_DIRECT")
    assert (tmp_path / "f").read_bytes() == b"x" * (3 * DIRECT_ALIGN + 5)


def test_small_files_are_written_buffered(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        w = DurableWriter(fd, size_hint=100)
        assert not w.direct
        w.write(b"small")
        w.finish()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"small"


def test_einval_from_a_direct_write_falls_back_to_buffered(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A device whose alignment is coarser than ours fails direct writes with EINVAL (after
    possibly writing part): the writer rewrites the block buffered, from its start."""
    real_write = os.write
    failed = []

    def write_once_partly(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        if not failed and _is_direct(fd):
            failed.append(True)
            real_write(fd, bytes(data[:DIRECT_ALIGN]))  # a partial write, then the error
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(fsutil.os, "write", write_once_partly)
    data = random.Random(3).randbytes(9 * DIRECT_ALIGN + 123)
    w = _write(tmp_path / "f", data, [DIRECT_ALIGN] * 9, buffer_size=4 * DIRECT_ALIGN)
    assert (tmp_path / "f").read_bytes() == data
    if not failed:
        pytest.skip("this filesystem refuses O_DIRECT: no direct write to fail")
    assert not w.direct
