"""Two hosts in network namespaces of their own, joined by a veth pair: a store on each, the
far one served over ssh (a real OpenSSH server inside its namespace) and over HTTP. Skipped
where namespaces cannot be made (not root, no ``ip``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write_files
from sshd import Sshd, require_sshd


class Hosts:
    """Namespaces ``a`` (the server, 10.231.N.1) and ``b`` (the client, 10.231.N.2)."""

    def __init__(self) -> None:
        n = os.getpid() % 200 + 20
        self.a, self.b = f"cas{os.getpid()}a", f"cas{os.getpid()}b"
        self.ip_a, self.ip_b = f"10.231.{n}.1", f"10.231.{n}.2"
        va, vb = f"v{os.getpid()}a", f"v{os.getpid()}b"
        cmds = [["ip", "netns", "add", self.a], ["ip", "netns", "add", self.b],
                ["ip", "link", "add", va, "type", "veth", "peer", "name", vb],
                ["ip", "link", "set", va, "netns", self.a],
                ["ip", "link", "set", vb, "netns", self.b],
                ["ip", "-n", self.a, "addr", "add", f"{self.ip_a}/24", "dev", va],
                ["ip", "-n", self.b, "addr", "add", f"{self.ip_b}/24", "dev", vb],
                ["ip", "-n", self.a, "link", "set", va, "up"],
                ["ip", "-n", self.b, "link", "set", vb, "up"],
                ["ip", "-n", self.a, "link", "set", "lo", "up"],
                ["ip", "-n", self.b, "link", "set", "lo", "up"]]
        for c in cmds:
            r = subprocess.run(c, capture_output=True, text=True)
            if r.returncode != 0:
                self.close()
                pytest.skip(f"network namespaces unavailable: {' '.join(c)}: {r.stderr.strip()}")

    def run(self, ns: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True,
                              text=True, **kw)  # type: ignore[call-overload]

    def cas(self, ns: str, store: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return self.run(ns, sys.executable, "-m", "cas.cli.main", "--store", str(store), *args,
                        env={**os.environ, **(env or {})}, timeout=300)

    def close(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    h = Hosts()
    yield h
    h.close()


def _ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_two_hosts_over_ssh(tmp_path: Path, hosts: Hosts) -> None:
    require_sshd()

    def reachable(port: int) -> bool:
        probe = (f"import socket; socket.create_connection(('{hosts.ip_a}', {port}), 1)")
        return hosts.run(hosts.b, sys.executable, "-c", probe).returncode == 0

    root = tmp_path / "sshd"
    root.mkdir()
    server = Sshd(root, tmp_path, address=hosts.ip_a,
                  prefix=("ip", "netns", "exec", hosts.a), reachable=reachable)
    try:
        env = {"CAS_SSH": server.ssh_command()}
        laptop = tmp_path / "laptop"
        src = write_files(tmp_path / "m", {"w.bin": os.urandom(700_000), "c.json": b"{}"})
        _ok(hosts.cas(hosts.b, laptop, "init"))
        _ok(hosts.cas(hosts.b, laptop, "add", "org/m", str(src)))
        far = tmp_path / "far"
        _ok(hosts.cas(hosts.b, laptop, "remote", "add", "train", server.url(far),
                      "--cas-command", server.cas))
        out = _ok(hosts.cas(hosts.b, laptop, "push", "train", env=env)).stdout
        assert "ok          models/org/m" in out
        # The far host registers a new version; the laptop pulls only what changed.
        data = bytearray((src / "w.bin").read_bytes())
        data[1000:1010] = b"0123456789"
        (src / "w.bin").write_bytes(bytes(data))
        _ok(hosts.cas(hosts.a, far, "add", "org/m", str(src)))
        pulled = _ok(hosts.cas(hosts.b, laptop, "pull", "train", "--json", env=env)).stdout
        assert '"objects_sent":' in pulled and re.search(r'"objects_skipped":[1-9]', pulled)
        _ok(hosts.cas(hosts.b, laptop, "checkout", "org/m@2", str(tmp_path / "out")))
        assert (tmp_path / "out" / "w.bin").read_bytes() == bytes(data)
        _ok(hosts.cas(hosts.a, far, "verify", "--all"))
        # The client namespace cannot reach the server's loopback: only the veth address.
        r = hosts.cas(hosts.b, laptop, "push", f"ssh://127.0.0.1:{server.port}{far}",
                      env=env)
        assert r.returncode != 0 and "E_NET" in r.stderr
    finally:
        server.stop()


def test_two_hosts_over_http(tmp_path: Path, hosts: Hosts) -> None:
    served = tmp_path / "served"
    _ok(hosts.cas(hosts.a, served, "init"))
    token = _ok(hosts.cas(hosts.a, served, "token", "add", "ci", "--write",
                          "--json")).stdout
    token = re.search(r'"token":"([^"]+)"', token).group(1)  # type: ignore[union-attr]
    proc = subprocess.Popen(["ip", "netns", "exec", hosts.a, sys.executable, "-m",
                             "cas.cli.main", "serve", "--http", f"{hosts.ip_a}:0",
                             str(served)], stderr=subprocess.PIPE, text=True)
    try:
        m = re.search(r"on (http://[^/]+/)", proc.stderr.readline())  # type: ignore[union-attr]
        assert m
        env = {"CAS_TOKEN": token}
        client = tmp_path / "client"
        _ok(hosts.cas(hosts.b, client, "init"))
        src = write_files(tmp_path / "m", {"w.bin": os.urandom(500_000)})
        _ok(hosts.cas(hosts.b, client, "add", "org/m", str(src)))
        _ok(hosts.cas(hosts.b, client, "push", m.group(1), env=env))
        clone = tmp_path / "clone"
        _ok(hosts.cas(hosts.b, clone, "clone", m.group(1), str(clone), env=env))
        _ok(hosts.cas(hosts.b, clone, "checkout", "org/m", str(tmp_path / "out")))
        assert (tmp_path / "out" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
