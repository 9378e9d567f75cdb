"""Parallel transfer streams: a large push or pull over http or ssh splits the objects that need
no other object sent with them into parts, each over its own connection, then sends the rest
over the first; the result is the same store as one stream makes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from cas import sync, transfer
from cas.store import Store
from conftest import CasCli, read_files
from sshd import Sshd, require_sshd
from test_sync_http import Server


def _store_with(tmp_path: Path, name: str, models: int = 1) -> tuple[CasCli, list[Path]]:
    """A store holding ``models`` versions of org/m: a safetensors model and fine-tunes of it
    (stored as derived chunks, which need their bases sent first)."""
    c = CasCli(tmp_path / name)
    c("init")
    rng = np.random.default_rng(5)
    tensors = {f"layer.{i}.weight": (rng.standard_normal((256, 512)) * 0.02).astype(np.float32)
               for i in range(8)}
    srcs = []
    for v in range(models):
        d = tmp_path / f"{name}-v{v + 1}"
        d.mkdir()
        save_file(tensors, str(d / "model.safetensors"))
        c("add", "org/m", str(d))
        srcs.append(d)
        tensors = {k: t + (rng.standard_normal(t.shape) * 1e-4).astype(np.float32)
                   for k, t in tensors.items()}
    return c, srcs


def test_parts_split_the_first_generation_and_the_rest_follows(tmp_path: Path) -> None:
    c, _ = _store_with(tmp_path, "a", models=2)
    store = Store.open(c.store)
    ids = [oid for p in store.packs.packs.values() for oid in p.ids()]
    gens = transfer.plan(store, ids)
    assert len(gens) >= 2  # the fine-tunes' derived chunks need their bases first
    for n in (1, 2, 3, 7):
        parts = [transfer.select(gens, (i, n)) for i in range(n)]
        firsts = [loc.entry.oid for p in parts for loc in p[0]]
        assert sorted(firsts) == sorted(loc.entry.oid for loc in gens[0])  # all, once each
        assert transfer.select(gens, (n, n)) == gens[1:]
        # Contiguous slices of the plan's order, so neighbours are still read together.
        assert [loc.entry.oid for p in parts for loc in p[0]] == [
            loc.entry.oid for loc in gens[0]]
    for bad in ((0, 0), (4, 3), (-1, 2), (0, 65)):
        with pytest.raises(Exception) as exc:
            transfer.select(gens, bad)
        assert getattr(exc.value, "code", "") == "E_ARGS"
    store.close()


def _parallel(monkeypatch: pytest.MonkeyPatch, store: CasCli, streams: int) -> None:
    monkeypatch.setattr(sync, "PARALLEL_MIN_BYTES", 0)
    store("config", "set", "transfer_streams", str(streams))


def test_push_and_pull_over_http_in_parallel_streams(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    far = CasCli(tmp_path / "far")
    far("init")
    monkeypatch.setenv("CAS_TOKEN", far("token", "add", "ci", "--write", "--json").json["token"])
    server = Server(far.store)
    try:
        a, srcs = _store_with(tmp_path, "a", models=2)
        _parallel(monkeypatch, a, 3)
        store = Store.open(a.store)
        r = sync.push(store, server.url)
        store.close()
        assert {x.status for x in r.refs} == {"ok"}
        assert r.packs >= 4  # three parts of the plain chunks, then the derived ones
        assert far("verify", "--all", "--json").json["ok"]
        b = CasCli(tmp_path / "b")
        b("init")
        _parallel(monkeypatch, b, 2)
        store = Store.open(b.store)
        r = sync.pull(store, server.url)
        store.close()
        assert r.packs >= 3 and r.objects_sent > 0
        assert b("verify", "--all", "--json").json["ok"]
        for v, src in enumerate(srcs, 1):
            b("checkout", f"org/m@{v}", str(tmp_path / f"out{v}"))
            assert read_files(tmp_path / f"out{v}") == read_files(src)
    finally:
        server.stop()


def test_pull_over_ssh_opens_one_more_connection_per_extra_stream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_sshd()
    (tmp_path / "sshd").mkdir()
    sshd = Sshd(tmp_path / "sshd", tmp_path)
    try:
        a, srcs = _store_with(tmp_path, "a", models=2)
        a.env["CAS_SSH"] = sshd.ssh_command()
        far = tmp_path / "far"
        a("remote", "add", "origin", sshd.url(far), "--cas-command", sshd.cas)
        a("push")
        log = tmp_path / "ssh.log"
        wrapper = tmp_path / "logging-ssh"
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {sshd.ssh_command()} "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setenv("CAS_SSH", str(wrapper))
        b = CasCli(tmp_path / "b")
        b("init")
        b("remote", "add", "origin", sshd.url(far), "--cas-command", sshd.cas)
        _parallel(monkeypatch, b, 3)
        store = Store.open(b.store)
        r = sync.pull(store, "origin")
        store.close()
        assert len(log.read_text().splitlines()) == 3  # the first connection and two twins
        assert r.objects_sent > 0 and {x.status for x in r.refs} == {"ok"}
        assert b("verify", "--all", "--json").json["ok"]
        b("checkout", "org/m@2", str(tmp_path / "out"))
        assert read_files(tmp_path / "out") == read_files(srcs[1])
    finally:
        sshd.stop()


def test_the_streams_setting_is_checked(tmp_path: Path) -> None:
    c = CasCli(tmp_path / "s")
    c("init")
    assert c("config", "get", "transfer_streams").out.strip() == "auto"
    for bad in ("0", "17", "many", "-1"):
        r = c("config", "set", "transfer_streams", bad, "--json", ok=False)
        assert r.json["error"]["code"] == "E_ARGS"
    c("config", "set", "transfer_streams", "2")
    assert c("config", "get", "transfer_streams").out.strip() == "2"
    assert os.cpu_count()
