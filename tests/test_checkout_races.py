"""Checkout against other processes: a checkout killed with SIGKILL mid-write, two checkouts
into one folder at once, and a folder of the destination swapped for a symlink while checkout
runs. Each moment is reached with the checkout's test hook (``CAS_TEST_PAUSE``): the child
reports on a pipe when it gets there and waits on another pipe, so nothing here sleeps."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest


class Paused:
    """A ``cas`` child process that stops at ``point`` until resumed (or killed)."""

    def __init__(self, store: Path, point: str, *args: str) -> None:
        report_r, report_w = os.pipe()
        resume_r, resume_w = os.pipe()
        env = {**os.environ, "CAS_HOME": str(store), "CAS_TEST_PAUSE": point,
               "CAS_TEST_PAUSE_FDS": f"{report_w},{resume_r}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cas.cli.main", "--store", str(store), *args],
            env=env, pass_fds=(report_w, resume_r), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        os.close(report_w)
        os.close(resume_r)
        self.report, self.resume_w = report_r, resume_w
        self.point = point

    def wait_paused(self, timeout: float = 120) -> None:
        """Block until the child reports that it reached the point (fails if it exits)."""
        ready, _, _ = select.select([self.report], [], [], timeout)
        line = os.read(self.report, 100) if ready else b""
        if line.strip() != self.point.encode():
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"child did not pause at {self.point}: {out}\n{err}")

    def resume(self) -> tuple[int, str, str]:
        os.close(self.resume_w)
        out, err = self.proc.communicate(timeout=120)
        os.close(self.report)
        return self.proc.returncode, out, err

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)
        os.close(self.resume_w)
        os.close(self.report)
        return self.proc.returncode


def _temps(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.cas-tmp"))


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


@pytest.fixture
def model(cas, tmp_path: Path):  # type: ignore[no-untyped-def]
    """m@1: small files in a/ and b/ and one large file (windowed path)."""
    rng = random.Random(3)
    src = tmp_path / "src"
    files = {"a/1.txt": rng.randbytes(3000), "a/2.txt": rng.randbytes(100),
             "b/1.txt": rng.randbytes(2000), "big.bin": rng.randbytes(1_500_000)}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    cas("add", "m", str(src))
    return files


@pytest.mark.parametrize("include", ["a/*", "big.bin"], ids=["small-file", "large-file"])
def test_kill_9_mid_write_then_next_checkout_removes_its_temps(
        cas, model, store_path: Path, tmp_path: Path, include: str) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    (dest / ".looks.cas-tmp").write_text("not a checkout temp")
    child = Paused(store_path, "temp-written", "checkout", "m", str(dest), "--include", include)
    child.wait_paused()
    written = [p for p in _temps(dest) if p != ".looks.cas-tmp"]
    assert len(written) == 1 and f".{child.proc.pid}." in written[0]  # the child's temp
    assert child.kill() == -signal.SIGKILL
    assert _temps(dest) == sorted([*written, ".looks.cas-tmp"])  # left behind by the kill
    rows = cas("--json", "checkouts").json["checkouts"]
    assert [r["state"] for r in rows] == ["writing"]

    r = cas("checkout", "m", str(dest), "--force")
    assert "removed 1 temp file" in r.err and "[W_STALE_TEMPS]" in r.err
    assert [p for p in _temps(dest) if p != ".looks.cas-tmp"] == []
    assert (dest / "notes.txt").read_text() == "mine"
    assert (dest / ".looks.cas-tmp").read_text() == "not a checkout temp"
    for rel, data in model.items():
        assert (dest / rel).read_bytes() == data
    assert cas("--json", "checkouts").json["checkouts"][0]["state"] == "complete"


def test_only_temps_of_dead_checkouts_are_removed(cas, model, tmp_path: Path
                                                  ) -> None:  # type: ignore[no-untyped-def]
    gone = subprocess.Popen(["true"])
    gone.wait()
    dest = tmp_path / "dest"
    (dest / "a").mkdir(parents=True)
    stale = [".1.txt.deadbeef.cas-tmp", f"a/.2.txt.{gone.pid}.0badf00d.cas-tmp"]
    kept = [f".x.{os.getpid()}.0badf00d.cas-tmp",  # a process that is running
            ".x.cas-tmp", "x.deadbeef.cas-tmp", ".x.DEADBEEF.cas-tmp", ".x.deadbeef.cas-tm"]
    for name in stale + kept:
        (dest / name).write_text("t")
    r = cas("--json", "checkout", "m", str(dest))
    assert r.json["stale_temps_removed"] == 2
    assert [w["code"] for w in r.json["warnings"]] == ["W_STALE_TEMPS", "W_EXTRA_FILES"]
    assert _files(dest) == set(kept) | set(model)


def test_a_running_checkout_keeps_its_temp_while_another_runs(
        cas, model, store_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dest"
    first = Paused(store_path, "temp-written", "checkout", "m", str(dest), "--include", "a/**")
    first.wait_paused()
    theirs = _temps(dest)
    assert len(theirs) == 1
    r = cas("--json", "checkout", "m", str(dest), "--force")
    assert r.json["stale_temps_removed"] == 0 and _temps(dest) == theirs
    code, out, err = first.resume()
    assert code == 0, err
    assert _temps(dest) == []
    for rel, data in model.items():
        assert (dest / rel).read_bytes() == data


@pytest.mark.parametrize("swap", [["a"], ["a", "b"]], ids=["opened-folder", "next-folder"])
def test_folder_swapped_for_a_symlink_during_checkout(
        cas, model, store_path: Path, tmp_path: Path, swap: list[str]
) -> None:  # type: ignore[no-untyped-def]
    """A folder checkout already writes in (a/) and one it has yet to open (b/, made by the
    user beforehand) are swapped for symlinks to a folder outside DEST while the first temp
    is written: nothing lands outside, and the checkout fails with E_CONFLICT."""
    dest = tmp_path / "dest"
    (dest / "b").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("p")
    child = Paused(store_path, "temp-written", "checkout", "m", str(dest), "--force",
                   "--include", "a/*", "--include", "b/*")
    child.wait_paused()
    for name in swap:
        os.rename(dest / name, dest / f"{name}.moved")
        os.symlink(outside, dest / name)
    code, out, err = child.resume()
    assert code == 10 and "[E_CONFLICT]" in err, (out, err)
    assert ("replaced" in err) if swap == ["a"] else ("not a plain directory" in err)
    assert _files(outside) == {"precious"} and (outside / "precious").read_text() == "p"
    assert _temps(dest) == []


def test_clean_never_deletes_through_a_folder_swapped_for_a_symlink(
        cas, model, store_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "dest"
    cas("checkout", "m", str(dest))
    (dest / "old" / "deep").mkdir(parents=True)
    (dest / "old" / "x").write_text("x")
    (dest / "old" / "deep" / "y").write_text("y")
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    for rel in ("x", "deep/y", "precious"):
        (outside / rel).write_text("keep")
    child = Paused(store_path, "scanned", "checkout", "m", str(dest), "--force", "--clean")
    child.wait_paused()
    os.rename(dest / "old", tmp_path / "old.moved")
    os.symlink(outside, dest / "old")
    code, out, err = child.resume()
    assert code == 0, err
    assert _files(outside) == {"x", "deep/y", "precious"}  # nothing deleted through the link
    assert not os.path.lexists(dest / "old")  # the link itself was removed
    assert _files(dest) == set(model)


def test_the_pause_hook_is_off_unless_a_test_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from cas.checkout import pause_hook_from_env

    monkeypatch.delenv("CAS_TEST_PAUSE", raising=False)
    monkeypatch.setenv("CAS_TEST_PAUSE_FDS", "1,2")
    assert pause_hook_from_env() is None
    monkeypatch.setenv("CAS_TEST_PAUSE", "scanned")
    monkeypatch.delenv("CAS_TEST_PAUSE_FDS")
    assert pause_hook_from_env() is None
    report_r, report_w = os.pipe()
    resume_r, resume_w = os.pipe()
    monkeypatch.setenv("CAS_TEST_PAUSE_FDS", f"{report_w},{resume_r}")
    pause = pause_hook_from_env()
    assert pause is not None
    pause("synced")  # another point: returns at once
    os.close(resume_w)  # resumed before it waits: it reads to end of file and returns
    pause("scanned")
    assert os.read(report_r, 100) == b"scanned\n"
    os.close(report_r)
    pause("scanned")  # the first arrival only: returns at once (its fds are closed)
