"""``--offline`` and ``CAS_OFFLINE=1``: every network path fails at once with E_NET naming the
flag, and nothing is even attempted; folder remotes and bundles keep working."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from conftest import CasCli, write_files


@pytest.fixture
def spy(tmp_path: Path) -> Path:
    """A CAS_SSH that records each call instead of connecting."""
    log = tmp_path / "ssh-calls"
    script = tmp_path / "fake-ssh"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      f"open({str(log)!r}, 'a').write(' '.join(sys.argv) + '\\n')\n"
                      "sys.exit(255)\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def _cli(path: Path, spy: Path, offline: str | None) -> CasCli:
    c = CasCli(path)
    c.env["CAS_SSH"] = str(spy.parent / "fake-ssh")
    if offline is not None:
        c.env["CAS_OFFLINE"] = offline
    return c


@pytest.mark.parametrize("how", ["flag", "flag-after", "env"])
def test_network_remotes_fail_at_once_naming_the_flag(tmp_path: Path, spy: Path,
                                                      how: str) -> None:
    c = _cli(tmp_path / "s", spy, "1" if how == "env" else None)
    c("init")
    c("add", "org/m", str(write_files(tmp_path / "m", {"w.bin": os.urandom(20_000)})))
    c("remote", "add", "train", "ssh://ml@train-03/data/cas")
    c("remote", "add", "fleet", "http://127.0.0.1:9/")
    pre = ["--offline"] if how == "flag" else []
    post = ["--offline"] if how == "flag-after" else []
    for args in (["push", "train"], ["pull", "train"], ["fetch", "fleet"], ["ls", "train:"],
                 ["clone", "ssh://ml@train-03/data/cas", str(tmp_path / "c")]):
        r = c(*pre, *args[:1], *post, *args[1:], "--json", ok=False)
        assert r.json["error"]["code"] == "E_NET", (args, r.out)
        assert "--offline" in r.json["error"]["message"]
    assert not spy.exists()  # ssh was never run
    assert not (tmp_path / "c").exists()


def test_folders_and_bundles_work_offline(tmp_path: Path, spy: Path) -> None:
    """The sync scenarios of folder remotes and bundles, run with CAS_OFFLINE=1."""
    a = _cli(tmp_path / "a", spy, "1")
    a("init")
    src = write_files(tmp_path / "m", {"w.bin": os.urandom(300_000)})
    a("add", "org/m", str(src))
    usb = tmp_path / "usb"
    a("push", str(usb))
    b = _cli(tmp_path / "b", spy, "1")
    b("clone", str(usb), str(b.store))
    b("checkout", "org/m", str(tmp_path / "out"))
    assert (tmp_path / "out" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    a("bundle", "create", str(tmp_path / "all.cbundle"))
    c = _cli(tmp_path / "c", spy, "1")
    c("init")
    c("bundle", "import", str(tmp_path / "all.cbundle"))
    assert c("verify", "--all", "--json").json["ok"]
    assert not spy.exists()


def test_checkout_of_absent_content_offline_is_e_net(tmp_path: Path, spy: Path) -> None:
    a = _cli(tmp_path / "a", spy, None)
    a("init")
    a("add", "org/m", str(write_files(tmp_path / "m", {"w.bin": os.urandom(30_000)})))
    usb = tmp_path / "usb"
    a("push", str(usb))
    b = _cli(tmp_path / "b", spy, None)
    b("clone", "--no-content", str(usb), str(b.store))
    b("remote", "remove", "origin")
    b("remote", "add", "train", "ssh://ml@train-03" + str(usb))
    r = b("--offline", "checkout", "org/m", str(tmp_path / "out"), "--json", ok=False)
    assert r.json["error"]["code"] == "E_NET" and "--offline" in r.json["error"]["message"]
    assert not spy.exists()
