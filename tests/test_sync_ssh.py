"""push, pull, fetch and clone over ssh, against a real OpenSSH server on loopback that runs
``cas serve --stdio`` (tests/sshd.py), and ``cas serve``'s own guards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cas.rpc import Framed, RemotePeer
from conftest import CasCli, write_files
from sshd import Sshd, require_sshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Sshd:
    require_sshd()
    root = tmp_path_factory.mktemp("sshd")
    served = tmp_path_factory.mktemp("served")
    server = Sshd(root, served)
    server.served = served  # type: ignore[attr-defined]
    yield server
    server.stop()


def _cli(path: Path, sshd: Sshd, key: str = "key") -> CasCli:
    c = CasCli(path)
    c.env["CAS_SSH"] = sshd.ssh_command(key)
    return c


def _model(tmp_path: Path, seed: int = 0) -> Path:
    data = bytes((i * 7 + seed) % 251 for i in range(600_000)) + os.urandom(400_000)
    return write_files(tmp_path / f"model{seed}", {"w.bin": data, "config.json": b'{"a": 1}'})


def test_push_clone_pull_over_ssh(tmp_path: Path, sshd: Sshd) -> None:
    a = _cli(tmp_path / "a", sshd)
    a("init")
    src = _model(tmp_path)
    a("add", "org/m", str(src))
    a("tag", "org/m@1", "prod")
    remote = tmp_path / "far" / "store"
    a("remote", "add", "origin", sshd.url(remote), "--cas-command", sshd.cas)
    first = a("push", "--json").json
    assert [(r["ref"], r["status"]) for r in first["refs"]] == [
        ("refs/models/org/m", "ok"), ("refs/tags/org/m@prod", "ok")]
    assert first["objects_sent"] > 0
    # The far side is a store of its own, which verifies clean.
    far = CasCli(remote)
    assert far("verify", "--all", "--json").json["ok"]
    cfg = [json.loads((p / "config.json").read_bytes()) for p in (tmp_path / "a", remote)]
    assert cfg[0]["uuid"] != cfg[1]["uuid"] and cfg[0]["chunker"] == cfg[1]["chunker"]
    again = a("push", "--json").json
    assert {r["status"] for r in again["refs"]} == {"up-to-date"}
    assert again["objects_sent"] == 0

    c_path = tmp_path / "c"
    c = _cli(c_path, sshd)
    c("init")
    c("remote", "add", "origin", sshd.url(remote), "--cas-command", sshd.cas)
    pulled = c("pull", "--json").json
    assert pulled["objects_sent"] == first["objects_sent"]
    c("checkout", "org/m@prod", str(tmp_path / "out"))
    assert (tmp_path / "out" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()

    # A new version moves only what changed.
    data = bytearray((src / "w.bin").read_bytes())
    data[500_000:500_100] = b"x" * 100
    (src / "w.bin").write_bytes(bytes(data))
    a("add", "org/m", str(src))
    second = a("push", "--json").json
    assert 0 < second["bytes_sent"] < first["bytes_sent"] / 4
    again = c("pull", "--json").json
    assert again["objects_sent"] == second["objects_sent"]
    c("checkout", "org/m@2", str(tmp_path / "out2"))
    assert (tmp_path / "out2" / "w.bin").read_bytes() == bytes(data)
    assert c("verify", "--all", "--json").json["ok"]


def test_fetch_over_ssh_moves_no_content(tmp_path: Path, sshd: Sshd) -> None:
    a = _cli(tmp_path / "a", sshd)
    a("init")
    a("add", "org/m", str(_model(tmp_path)))
    remote = tmp_path / "far"
    a("remote", "add", "origin", sshd.url(remote), "--cas-command", sshd.cas)
    a("push")
    b = _cli(tmp_path / "b", sshd)
    b("init")
    b("remote", "add", "origin", sshd.url(remote), "--cas-command", sshd.cas)
    out = b("fetch", "--json").json
    assert out["registry_objects"] > 0 and out["objects_sent"] == 0
    refs = subprocess.run(["git", "--git-dir", str(tmp_path / "b" / "registry"),
                           "for-each-ref", "--format=%(refname)"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert [r for r in refs if not r.startswith("refs/cas/")] == [
        "refs/remotes/origin/models/org/m"]
    assert "refs/cas/locations" in refs  # the location log came along
    assert not list((tmp_path / "b" / "packs").glob("*.pack"))


def test_forced_command_restricts_paths(tmp_path: Path, sshd: Sshd) -> None:
    served: Path = sshd.served  # type: ignore[attr-defined]
    a = _cli(tmp_path / "a", sshd, key="forced_key")
    a("init")
    a("add", "org/m", str(_model(tmp_path)))
    inside = served / "backup"
    out = a("push", sshd.url(inside), "--json").json
    assert out["refs"][0]["status"] == "ok"
    assert (inside / "config.json").exists()
    outside = tmp_path / "elsewhere"
    r = a("push", sshd.url(outside), "--json", ok=False)
    assert r.code != 0
    assert r.json["error"]["code"] == "E_PERM", r.out
    assert not outside.exists()


def test_ssh_failure_is_e_net_naming_the_remote(tmp_path: Path, sshd: Sshd) -> None:
    a = _cli(tmp_path / "a", sshd)
    a("init")
    a("add", "org/m", str(_model(tmp_path)))
    url = f"ssh://{sshd.user}@127.0.0.1:1{tmp_path}/far"
    r = a("push", url, "--json", ok=False)
    assert r.json["error"]["code"] == "E_NET"
    assert "127.0.0.1" in r.json["error"]["message"]
    # The far command missing: also E_NET, with the far side's complaint.
    a("remote", "add", "broken", sshd.url(tmp_path / "far"), "--cas-command",
      "/nonexistent/cas")
    r = a("push", "broken", "--json", ok=False)
    assert r.json["error"]["code"] == "E_NET", r.out
    assert "/nonexistent/cas" in r.json["error"]["message"]
    assert "--cas-command" in r.json["error"]["message"]


def _serve(path: Path, *flags: str) -> tuple[RemotePeer, subprocess.Popen]:
    proc = subprocess.Popen([sys.executable, "-m", "cas.cli.main", "serve", "--stdio",
                             *flags, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return RemotePeer(Framed(proc.stdout, proc.stdin, "test"), "test"), proc


def test_read_only_and_append_only(tmp_path: Path, cas: CasCli, store_path: Path) -> None:
    from cas import sync
    from cas.store import Store

    cas("add", "org/m", str(_model(tmp_path)))
    far = tmp_path / "far"
    with Store.open(store_path) as store:
        sync.push(store, str(far))
    write_files(tmp_path / "model0", {"w.bin": os.urandom(1000)})
    cas("add", "org/m", str(tmp_path / "model0"))

    peer, proc = _serve(far, "--read-only")
    try:
        assert peer.hello().uuid
        assert "refs/models/org/m" in peer.refs()
        with pytest.raises(Exception) as exc:
            peer.put_registry_objects([])
        assert getattr(exc.value, "code", "") == "E_PERM"
    finally:
        peer.close()
        proc.wait(timeout=30)

    # append-only: a forced update is refused, a fast-forward is not.
    peer, proc = _serve(far, "--append-only")
    try:
        from cas.peer import RefUpdate

        theirs = peer.refs()
        with pytest.raises(Exception) as exc:
            peer.update_refs([RefUpdate("refs/models/org/m", theirs["refs/models/org/m"],
                                        theirs["refs/models/org/m"])], force=True)
        assert getattr(exc.value, "code", "") == "E_PERM"
    finally:
        peer.close()
        proc.wait(timeout=30)


def test_repair_over_ssh_from_a_remote_damaged_elsewhere(tmp_path: Path, sshd: Sshd) -> None:
    """The far side finds a damaged chunk while streaming: it says so after the stream, the
    client takes the good objects one by one, and the connection stays in step."""
    from conftest import damage_chunk

    a = _cli(tmp_path / "a", sshd)
    a("init")
    src = write_files(tmp_path / "m", {"w.bin": os.urandom(1_200_000)})
    a("add", "org/m", str(src))
    remote = tmp_path / "far"
    a("remote", "add", "origin", sshd.url(remote), "--cas-command", sshd.cas)
    a("push")
    damage_chunk(tmp_path / "a", "org/m", "w.bin", 1)
    damage_chunk(tmp_path / "a", "org/m", "w.bin", 3)
    damage_chunk(remote, "org/m", "w.bin", 3)
    r = a("verify", "--all", "--repair", "--from", "origin", "--json", ok=False)
    assert r.json["error"]["code"] == "E_VERIFY", r.out
    doc = r.json["report"]
    assert doc["healed_objects"] == 1
    assert [b["version"] for b in doc["broken_versions"]] == ["org/m@1"]
    assert len(doc["bad_objects"]) == 1  # chunk 1 healed; chunk 3 is bad on both sides


def _logging_ssh(tmp_path: Path, sshd: Sshd) -> tuple[str, Path]:
    """A CAS_SSH that records each connection it makes (one line each) and then runs ssh."""
    log = tmp_path / "ssh.log"
    wrapper = tmp_path / "logging-ssh"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {sshd.ssh_command()} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


@pytest.mark.parametrize("verb", ["push", "fetch", "pull"])
def test_the_connection_started_early_is_the_one_used(tmp_path: Path, sshd: Sshd,
                                                      verb: str) -> None:
    """push, pull and fetch start ssh before the CLI's imports and then use that connection:
    one ssh per command, never a second one."""
    a = _cli(tmp_path / "a", sshd)
    a("init")
    a("add", "org/m", str(_model(tmp_path)))
    a("remote", "add", "origin", sshd.url(tmp_path / "far"), "--cas-command", sshd.cas)
    a("push")
    a.env["CAS_SSH"], log = _logging_ssh(tmp_path, sshd)
    r = a("--store", str(tmp_path / "a"), verb, "--json")
    assert r.json["remote"] == "origin"
    assert len(log.read_text().splitlines()) == 1
    a(verb, "origin", "--quiet")  # named, after the verb
    assert len(log.read_text().splitlines()) == 2
    a("--offline", "fetch", ok=False)  # offline: nothing started at all
    a("push", "--help")
    assert len(log.read_text().splitlines()) == 2


def test_an_early_connection_nobody_takes_ends_with_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = (
        "import os, sys\n"
        "from cas import carrier\n"
        f"carrier.prestart(['sh', '-c', 'echo $$ > {pid_file}.tmp && mv {pid_file}.tmp "
        f"{pid_file} && exec cat'])\n"
        f"while not os.path.exists({str(pid_file)!r}): pass\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize("args, expected", [
    (["push"], (None, None)),
    (["--store", "S", "push", "origin", "m@1"], ("S", "origin")),
    (["pull", "--rebase", "--store=S", "r"], ("S", "r")),
    (["--json", "-q", "--lock-timeout", "5", "fetch"], (None, None)),
    (["push", "--offline"], None),
    (["push", "--help"], None),
    (["push", "--unknown", "r"], None),
    (["--store"], None),
    (["ls"], None),
    ([], None),
])
def test_which_command_lines_start_ssh_early(args: list[str], expected: object) -> None:
    from cas.cli.prestart import _sniff

    assert _sniff(args) == expected
