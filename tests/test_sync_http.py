"""push, pull, fetch and clone against a real ``cas serve --http`` on loopback: bearer tokens
(deny by default, read or write, never logged), HTTPS with a certificate the client checks."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CasCli, write_files


class Server:
    def __init__(self, store: Path, *flags: str) -> None:
        self.log = store.parent / f"serve-{os.getpid()}-{id(self)}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cas.cli.main", "serve", "--http", "127.0.0.1:0",
             *flags, str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "cas: serving PATH on http://HOST:PORT/"
        m = re.search(r"on (https?://[^/]+/)", line)
        assert m, line + self.proc.stderr.read()
        self.url = m.group(1)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        return self.proc.stderr.read()


@pytest.fixture
def far(tmp_path: Path) -> CasCli:
    c = CasCli(tmp_path / "far")
    c("init")
    return c


@pytest.fixture
def server(far: CasCli) -> Iterator[Server]:
    s = Server(far.store)
    yield s
    s.stop()


def _token(far: CasCli, name: str, *flags: str) -> str:
    return far("token", "add", name, *flags, "--json").json["token"]


def _model(tmp_path: Path) -> Path:
    return write_files(tmp_path / "model", {"w.bin": os.urandom(800_000),
                                            "config.json": b'{"a": 1}'})


def test_deny_by_default_then_read_and_write_tokens(tmp_path: Path, far: CasCli,
                                                    server: Server) -> None:
    a = CasCli(tmp_path / "a")
    a("init")
    src = _model(tmp_path)
    a("add", "org/m", str(src))
    a("remote", "add", "fleet", server.url)
    r = a("push", "fleet", "--json", ok=False)
    assert r.json["error"]["code"] == "E_PERM"
    assert "token" in r.json["error"]["message"]

    reader = _token(far, "readers")
    writer = _token(far, "ci", "--write")
    assert reader.startswith("cas_") and reader != writer
    a.env["CAS_TOKEN"] = reader
    r = a("push", "fleet", "--json", ok=False)
    assert r.json["error"]["code"] == "E_PERM"
    assert "may read, not write" in r.json["error"]["message"]
    assert not list((far.store / "packs").glob("*.pack"))

    # The write token, kept with 'cas remote token' from stdin (mode 0600), not in argv.
    del a.env["CAS_TOKEN"]
    proc = subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(a.store),
                           "remote", "token", "fleet"], input=writer + "\n", text=True,
                          capture_output=True, env=a.env)
    assert proc.returncode == 0, proc.stderr
    cred = a.store / "credentials.json"
    assert cred.stat().st_mode & 0o777 == 0o600
    assert (far.store / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert writer not in (far.store / "tokens.json").read_text()
    out = a("push", "fleet", "--json").json
    assert out["refs"][0]["status"] == "ok" and out["objects_sent"] > 0
    assert far("verify", "--all", "--json").json["ok"]

    # A reader clones, pulls and fetches.
    b = CasCli(tmp_path / "b")
    b.env["CAS_TOKEN"] = reader
    b("clone", server.url, str(b.store))
    b("checkout", "org/m@1", str(tmp_path / "out"))
    assert (tmp_path / "out" / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    assert b("fetch", "--json").json["registry_objects"] == 0

    # A removed token stops working without a restart.
    far("token", "remove", "readers")
    listed = far("token", "list", "--json").json["tokens"]
    assert [t["name"] for t in listed] == ["ci"]
    assert "token" not in str(listed[0])
    r = b("pull", "--json", ok=False)
    assert r.json["error"]["code"] == "E_PERM"


def test_tokens_never_in_output_or_logs(tmp_path: Path, far: CasCli) -> None:
    writer = _token(far, "ci", "--write")
    server = Server(far.store)
    a = CasCli(tmp_path / "a")
    a("init")
    a("add", "org/m", str(_model(tmp_path)))
    a.env["CAS_TOKEN"] = writer
    outs = [a("push", server.url), a("push", server.url, "--json"), a("remote", "list")]
    bad = CasCli(tmp_path / "a")
    bad.env["CAS_TOKEN"] = writer + "x"
    outs.append(bad("push", server.url, ok=False))
    log = server.stop()
    for o in outs:
        assert writer not in o.out + o.err
    assert writer not in log
    r = a("remote", "add", "leak", f"http://user:{writer}@127.0.0.1:1/", ok=False)
    assert r.code != 0 and writer not in r.out + r.err


def test_append_only_server_refuses_force(tmp_path: Path, far: CasCli) -> None:
    writer = _token(far, "ci", "--write")
    server = Server(far.store, "--append-only")
    try:
        a = CasCli(tmp_path / "a")
        a("init")
        a.env["CAS_TOKEN"] = writer
        a("add", "org/m", str(_model(tmp_path)))
        a("push", server.url)
        b = CasCli(tmp_path / "b")
        b("init")
        b.env["CAS_TOKEN"] = writer
        write_files(tmp_path / "other", {"w.bin": os.urandom(5000)})
        b("add", "org/m", str(tmp_path / "other"))
        r = b("push", server.url, "--force", "--json", ok=False)
        assert r.json["error"]["code"] == "E_PERM"
        assert "append-only" in r.json["error"]["message"]
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_https_checks_the_certificate(tmp_path: Path, far: CasCli) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    writer = _token(far, "ci", "--write")
    server = Server(far.store, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert server.url.startswith("https://")
        a = CasCli(tmp_path / "a")
        a("init")
        a.env["CAS_TOKEN"] = writer
        a("add", "org/m", str(_model(tmp_path)))
        r = a("push", server.url, "--json", ok=False)  # an unknown authority: refused
        assert r.json["error"]["code"] == "E_NET"
        a.env["CAS_CA_BUNDLE"] = str(cert)
        out = a("push", server.url, "--json").json
        assert out["refs"][0]["status"] == "ok"
    finally:
        server.stop()


def test_an_http_remote_is_never_a_verified_copy_for_a_drop(tmp_path: Path, far: CasCli,
                                                           server: Server) -> None:
    """A hold must last the whole drop; an HTTP request cannot, so the server refuses it and
    the drop, with only that copy, is refused too: the content stays."""
    a = CasCli(tmp_path / "a")
    a("init")
    a("add", "org/m", str(_model(tmp_path)))
    a.env["CAS_TOKEN"] = _token(far, "ci", "--write")
    a("remote", "add", "fleet", server.url)
    a("push", "fleet")
    r = a("drop", "org/m@1", "--json", ok=False)
    assert r.json["error"]["code"] == "E_CONFLICT"
    assert "ssh or folder remote" in r.json["error"]["message"]
    assert a("verify", "--all", "--json").json["ok"]
    a("checkout", "org/m@1", str(tmp_path / "out"))
