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


def _fdinfo_direct(fd: int) -> bool:
    """Whether the kernel holds ``fd`` open with O_DIRECT (its flags in /proc/self/fdinfo)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return bool(int(line.split()[1], 8) & os.O_DIRECT)
    raise AssertionError(f"no flags line in /proc/self/fdinfo/{fd}")


@pytest.mark.skipif(not hasattr(os, "O_DIRECT") or not Path("/proc/self/fdinfo").is_dir(),
                    reason="needs O_DIRECT and /proc/self/fdinfo (Linux)")
def test_direct_writes_are_used_when_the_filesystem_allows(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write to the file is observed as the kernel sees it: the whole blocks go out while
    the file is open with O_DIRECT, the unaligned tail after it was turned off."""
    try:  # whether this filesystem takes O_DIRECT, asked of the kernel, not of the writer
        os.close(os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        pytest.skip("this filesystem refuses O_DIRECT")
    real_write = os.write
    seen: list[tuple[int, bool]] = []  # (bytes, O_DIRECT on the fd at the time)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def observed_write(target: int, data) -> int:  # type: ignore[no-untyped-def]
        if target == fd:
            seen.append((len(data), _fdinfo_direct(fd)))
        return real_write(target, data)

    monkeypatch.setattr(fsutil.os, "write", observed_write)
    data = random.Random(5).randbytes(3 * DIRECT_ALIGN + 5)
    try:
        w = DurableWriter(fd, size_hint=64 << 20)
        assert w.direct
        w.write(data)
        w.finish()
    finally:
        os.close(fd)
    assert sum(n for n, direct in seen if direct) == 3 * DIRECT_ALIGN, seen
    assert all(n % DIRECT_ALIGN == 0 for n, direct in seen if direct), seen
    assert seen[-1] == (5, False), seen  # the tail, written buffered
    assert (tmp_path / "f").read_bytes() == data


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


def test_einval_from_a_direct_write_falls_back_to_buffered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
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
