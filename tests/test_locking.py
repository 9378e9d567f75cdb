"""The store's writer lock: its timeout is validated before anything waits on it."""

from __future__ import annotations

import pytest

from cas.errors import ArgsError
from cas.locking import WriteLock


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "1e9"])
def test_unusable_lock_timeouts_are_refused(cas, value):
    r = cas("--json", "--lock-timeout", value, "ls", ok=False)
    assert r.code == 2 and r.json["error"]["code"] == "E_ARGS"
    assert "lock timeout" in r.json["error"]["message"]


def test_library_refuses_nan_too(tmp_path):
    with pytest.raises(ArgsError):
        WriteLock(tmp_path / "lock", float("nan"))
    with WriteLock(tmp_path / "lock", 0):
        pass  # 0 is valid: fail at once if held


def test_a_full_disk_while_noting_the_holder_still_locks(tmp_path, monkeypatch):
    """The first writer of a store creates the lock file; on a full disk the holder note
    cannot be written, and the lock must still be taken (that writer may be the one that
    frees space)."""
    import errno
    import os

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    lock = WriteLock(tmp_path / "lock", 0)
    with lock:
        assert lock._fd is not None
        with pytest.raises(Exception) as held:
            WriteLock(tmp_path / "lock", 0).acquire()
        assert held.type.__name__ == "LockError"
