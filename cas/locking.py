"""The store's single-writer lock.

Writers (add, tag, rm, recovery) hold an exclusive ``flock`` on ``<store>/lock`` for the whole
operation; readers take no lock and never block, because everything they read is immutable once
visible (packs and indexes are renamed into place complete; registry objects are content-named;
refs are replaced atomically). The kernel releases the lock when the holder dies, so a
``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from cas.errors import ArgsError, LockError, from_os_error

#: How long a writer waits for another writer by default, in seconds.
DEFAULT_TIMEOUT = 60.0


#: Longest wait a writer accepts (a day): beyond it a typo, not a plan.
MAX_TIMEOUT = 86400.0


def check_timeout(seconds: float) -> float:
    """Return ``seconds`` if it is a usable lock timeout (0 to a day), else raise ArgsError.
    NaN would wait forever and a negative value means nothing."""
    import math

    if not isinstance(seconds, (int, float)) or math.isnan(seconds) or not \
            0 <= seconds <= MAX_TIMEOUT:
        raise ArgsError(f"lock timeout {seconds!r} must be a number of seconds from 0 to "
                        f"{MAX_TIMEOUT:g}")
    return float(seconds)


class WriteLock:
    """Exclusive store lock; use as a context manager.

    Args:
        path: the lock file.
        timeout: seconds to wait for another writer; 0 fails at once.
    """

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.timeout = check_timeout(timeout)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout``.

        Raises:
            LockError: another process still holds it after ``timeout``; the message names it.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise from_os_error(exc, "opening the store lock") from None
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockError(
                        f"store is locked by another writer ({holder}); waited {self.timeout:g}s"
                        " (set --lock-timeout to wait longer)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:
            # Who holds the lock is only for the message of a writer that waits; the flock is
            # what excludes. A full disk must not stop the one writer that could free space.
            pass

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriteLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a zombie counts as existing): what tells
    a killed writer's leftovers (lease, temp file) from a running writer's."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
