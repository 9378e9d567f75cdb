"""The generic backend suite: every storage backend passes the same tests (the contract in
:mod:`cas.storage`), then the local backend's crash leftovers and the fault wrapper's
injection are tested on their own. Later backends (remotes, S3) join the ``backend``
fixture."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cas.storage import ANY, check_name
from cas.storage.faults import FaultyBackend
from cas.storage.local import LocalBackend
from cas.storage.memory import MemoryBackend


@pytest.fixture(params=["local", "memory", "faulty-local", "remote-stdio", "remote-http"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "local":
        return LocalBackend(tmp_path)
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "remote-stdio":
        return _remote_stdio(request, tmp_path)
    if request.param == "remote-http":
        return _remote_http(request, tmp_path)
    return FaultyBackend(LocalBackend(tmp_path))


def _remote_stdio(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A store's bytes behind ``cas serve --stdio --raw-storage`` (what ssh runs)."""
    from cas.rpc import Framed, RemotePeer
    from cas.storage.remote import RemoteBackend

    proc = subprocess.Popen([sys.executable, "-m", "cas.cli.main", "serve", "--stdio",
                             "--raw-storage", str(tmp_path / "served")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    peer = RemotePeer(Framed(proc.stdout, proc.stdin, "serve"), "serve")

    def stop() -> None:
        peer.close()
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()

    request.addfinalizer(stop)
    return RemoteBackend(peer)


def _remote_http(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A store's bytes behind ``cas serve --http --raw-storage`` with a write token."""
    from cas import tokens
    from cas.http import connect, make_server
    from cas.remotes import parse_url
    from cas.storage.remote import RemoteBackend
    from cas.store import Store

    served = tmp_path / "served"
    Store.init(served).close()
    token = tokens.add(served, "t", "write")
    server = make_server("127.0.0.1:0", served, raw_storage=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = parse_url(f"http://127.0.0.1:{server.server_address[1]}/")
    peer = connect(url, None, token)

    def stop() -> None:
        peer.close()
        server.shutdown()
        server.server_close()

    request.addfinalizer(stop)
    return RemoteBackend(peer)


# -- the generic suite ---------------------------------------------------------------------------


def test_write_then_read_whole_and_ranges(backend) -> None:
    data = bytes(range(256)) * 40
    backend.write("packs/a.pack", data)
    assert backend.read("packs/a.pack") == data
    assert backend.read("packs/a.pack", 100, 50) == data[100:150]
    assert backend.read("packs/a.pack", 10_000) == data[10_000:]
    assert backend.read("packs/a.pack", len(data) - 5, 100) == data[-5:]  # short only at EOF
    assert backend.read("packs/a.pack", len(data) + 10, 5) == b""
    assert backend.size("packs/a.pack") == len(data)


def test_missing_objects(backend) -> None:
    with pytest.raises(FileNotFoundError):
        backend.read("packs/none")
    assert backend.size("packs/none") is None
    assert backend.list("nowhere") == []
    backend.delete("packs/none")  # not an error


def test_write_replaces_and_delete_removes(backend) -> None:
    backend.write("a/b/c", b"one")
    backend.write("a/b/c", b"two")
    assert backend.read("a/b/c") == b"two"
    backend.delete("a/b/c")
    assert backend.size("a/b/c") is None
    assert backend.list("a/b") == []


def test_list_is_one_level_and_sorted_list_tree_is_every_level(backend) -> None:
    for name in ["r/x/2", "r/x/1", "r/y", "r/x/deep/3", "other/z"]:
        backend.write(name, name.encode())
    assert backend.list("r") == ["r/y"]
    assert backend.list("r/x") == ["r/x/1", "r/x/2"]
    assert backend.list_tree("r") == ["r/x/1", "r/x/2", "r/x/deep/3", "r/y"]
    assert "other/z" in backend.list("other")


def test_a_new_object_is_invisible_until_commit(backend) -> None:
    w = backend.open_write("pack")
    w.write(b"abc", memoryview(b"def"))
    w.write(b"")
    assert backend.size("packs/p") is None and backend.list("packs") == []
    w.commit("packs/p")
    assert backend.read("packs/p") == b"abcdef"
    aborted = backend.open_write("pack")
    aborted.write(b"xyz")
    aborted.abort()
    aborted.abort()  # idempotent
    assert backend.list("packs") == ["packs/p"]


def test_swap_compares_then_replaces(backend) -> None:
    assert backend.swap("refs/m", None, b"1")  # absent -> created
    assert not backend.swap("refs/m", None, b"2")  # no longer absent
    assert not backend.swap("refs/m", b"0", b"2")  # holds something else
    assert backend.read("refs/m") == b"1"
    assert backend.swap("refs/m", b"1", b"2")
    assert backend.swap("refs/m", ANY, b"3")
    assert backend.read("refs/m") == b"3"
    assert not backend.swap("refs/m", b"2", None)
    assert backend.swap("refs/m", b"3", None)  # delete
    assert backend.size("refs/m") is None
    assert backend.swap("refs/m", None, None)  # deleting what is absent: nothing to do


def test_concurrent_swaps_from_one_value_never_both_win(backend) -> None:
    """Every round, two threads swap the same ref from the same value: at most one wins (a
    loser returns False, or meets the winner's lock as ``FileExistsError``)."""
    backend.swap("refs/x", None, b"0")
    for round_ in range(30):
        start = threading.Barrier(2)
        wins: list[bytes] = []

        def attempt(value: bytes, expected: bytes = str(round_).encode()) -> None:
            start.wait()
            try:
                if backend.swap("refs/x", expected, value):
                    wins.append(value)
            except FileExistsError:
                pass

        threads = [threading.Thread(target=attempt, args=(v,)) for v in (b"a", b"b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) <= 1
        current = backend.read("refs/x")
        assert current == (wins[0] if wins else str(round_).encode())
        backend.swap("refs/x", ANY, str(round_ + 1).encode())


def test_names_are_checked() -> None:
    for bad in ["", "/x", "x/", "a//b", "../x", "a/./b", "a/../b", "a\0b"]:
        with pytest.raises(ValueError):
            check_name(bad)
    assert check_name("registry/refs/models/org/m") == "registry/refs/models/org/m"


def test_sweep_removes_nothing_live(backend) -> None:
    backend.write("keep/a", b"a")
    backend.swap("keep/b", None, b"b")
    backend.sweep()
    assert backend.read("keep/a") == b"a" and backend.read("keep/b") == b"b"


# -- the local backend: what a crash leaves behind -----------------------------------------------


def test_local_sweep_removes_temps_and_stale_swap_locks(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    w = b.open_write("pack")
    w.write(b"half")  # the writer is "killed" here: its temp stays
    assert b.sweep() == 0  # while its writer has it open, a temp of this process is live
    w._release()  # noqa: SLF001 - what the writer's process dying means for its temps
    b.swap("registry/refs/models/m", None, b"1")
    (tmp_path / "registry/refs/models/m.lock").write_bytes(b"2")  # a killed swap's lock
    with pytest.raises(FileExistsError):  # a held (or stale) lock refuses other swaps
        b.swap("registry/refs/models/m", b"1", b"3")
    assert b.list("registry/refs/models") == ["registry/refs/models/m"]  # locks never listed
    assert b.sweep() == 2
    assert list((tmp_path / "tmp").iterdir()) == []
    assert b.swap("registry/refs/models/m", b"1", b"3")


def test_local_empty_folder_where_a_ref_belongs_counts_as_absent(tmp_path: Path) -> None:
    """A crash between unlinking a ref and pruning its folder (or git's own) leaves folders."""
    b = LocalBackend(tmp_path)
    (tmp_path / "registry/refs/models/org/m/x").mkdir(parents=True)
    assert b.swap("registry/refs/models/org/m", None, b"1")
    assert b.read("registry/refs/models/org/m") == b"1"
    (tmp_path / "registry/refs/models/org/n").mkdir()
    (tmp_path / "registry/refs/models/org/n/file").write_bytes(b"someone's")
    with pytest.raises(IsADirectoryError):
        b.swap("registry/refs/models/org/n", None, b"1")
    assert (tmp_path / "registry/refs/models/org/n/file").read_bytes() == b"someone's"


def test_local_delete_prunes_empty_folders_but_not_top_ones(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.swap("registry/refs/tags/org/m@prod", None, b"1")
    assert b.swap("registry/refs/tags/org/m@prod", b"1", None)
    assert not (tmp_path / "registry/refs/tags/org").exists()
    assert (tmp_path / "registry/refs").is_dir()


def test_local_a_file_in_the_way_of_a_folder(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.write("a/b", b"file")
    with pytest.raises(NotADirectoryError):
        b.write("a/b/c", b"x")
    assert b.read("a/b") == b"file"


# -- the fault wrapper ---------------------------------------------------------------------------


def test_faults_fire_at_their_step_and_change_nothing(tmp_path: Path) -> None:
    inner = LocalBackend(tmp_path)
    inner.write("o/a", b"old")
    b = FaultyBackend(inner, {1: "enospc", 2: "eio", 4: "enospc"})
    assert b.read("o/a") == b"old"  # step 0
    with pytest.raises(OSError) as full:
        b.write("o/a", b"new")  # step 1
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as eio:
        b.swap("o/a", ANY, b"new")  # step 2
    assert eio.value.errno == errno.EIO
    w = b.open_write("x")  # step 3
    with pytest.raises(OSError):
        w.write(b"data")  # step 4
    w.write(b"data")  # step 5
    w.commit("o/b")  # step 6
    assert inner.read("o/a") == b"old" and inner.read("o/b") == b"data"
    assert b.steps == ["read o/a", "write o/a", "swap o/a", "open_write x", "append x",
                       "append x", "commit o/b"]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_crash_fault_stops_at_its_step(tmp_path: Path) -> None:
    stopped = []

    def crash() -> None:
        stopped.append(True)
        raise SystemExit(137)

    b = FaultyBackend(LocalBackend(tmp_path), {1: "crash"}, crash=crash)
    b.write("o/a", b"1")
    with pytest.raises(SystemExit):
        b.write("o/b", b"2")
    assert stopped and b.size("o/b") is None
    with pytest.raises(ValueError):
        FaultyBackend(LocalBackend(tmp_path), {0: "melt"})


def test_local_listing_an_unreadable_folder_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """An unreadable folder must not list as empty (models under it would silently vanish)."""
    import os

    b = LocalBackend(tmp_path)
    b.write("r/a/x", b"1")
    real = os.scandir

    def refuse(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("r/a"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(PermissionError):
        b.list_tree("r")
    with pytest.raises(PermissionError):
        b.list("r/a")
    assert b.list_tree("nowhere") == []


def test_local_sweep_spares_running_writers_and_other_hosts_fresh_temps(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Recovery may run while other writers work (adds run side by side, hosts share a
    store): it removes only temps whose writer is gone."""
    import os
    import time

    from cas.storage.local import _HOST, LocalBackend

    b = LocalBackend(tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    dead = 2 ** 22 + 12345  # above any pid this machine hands out by default
    names = {
        "live": f"pack.h-{_HOST}.{os.getppid()}.0a0b0c0d.tmp",
        "dead": f"pack.h-{_HOST}.{dead}.0a0b0c0d.tmp",
        "dead-old-style": f"pack.{dead}.0c0d0e0f.tmp",
        "foreign-fresh": f"pack.h-elsewhere.{dead}.0a0b0c0d.tmp",
        "foreign-old": f"pack.h-elsewhere.{dead}.0e0f0a0b.tmp",
    }
    for n in names.values():
        (tmp / n).write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    os.utime(tmp / names["foreign-old"], (old, old))
    b.sweep()
    left = set(os.listdir(tmp))
    assert names["live"] in left and names["foreign-fresh"] in left
    assert names["dead"] not in left and names["foreign-old"] not in left
    assert names["dead-old-style"] not in left
