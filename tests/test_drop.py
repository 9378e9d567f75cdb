"""``cas drop`` and ``cas get`` across stores: a version's content leaves a store only while
enough other stores verifiably hold all of it, and comes back byte for byte.

Directory remotes are other stores on this disk; the ssh cases run ``cas serve --stdio``
behind the real OpenSSH server of tests/sshd.py. The last part drives the drop protocol of
:mod:`cas.drop` step by step (``begin`` / ``hold`` / ``commit`` of two stores dropping the
same version while each counts the other), in every interleaving, with no threads: whatever
the order, one copy stays.
"""

from __future__ import annotations

import io
import itertools
import subprocess
from pathlib import Path

import pytest

from cas import drop as dr
from cas import presence, transfer
from cas.errors import CasError
from cas.gc import GcOptions, collect
from cas.peer import LocalPeer
from cas.store import Store
from conftest import CasCli, model_folder, read_files
from sshd import Sshd, require_sshd
from test_checkout_races import Paused

SIZE = 200_000


def _cli(path: Path, sshd: Sshd | None = None) -> CasCli:
    c = CasCli(path)
    if sshd is not None:
        c.env["CAS_SSH"] = sshd.ssh_command()
    c("init")
    return c


def _pushed(tmp_path: Path, *remotes: str, seed: int = 1) -> tuple[CasCli, Path]:
    """Store ``a`` with ``org/m@1`` (from ``src``), pushed to each directory remote named."""
    a = _cli(tmp_path / "a")
    src = model_folder(tmp_path / "src", seed, SIZE)
    a("add", "org/m", str(src))
    for name in remotes:
        a("remote", "add", name, str(tmp_path / name))
        a("push", name)
    return a, src


def _fail(c: CasCli, *args: str) -> dict:
    r = c("--json", *args, ok=False)
    assert r.code != 0 and "Traceback" not in r.err, (r.out, r.err)
    return r.json["error"]


def _present(store: Path, spec: str) -> bool:
    with Store.open(store) as s:
        return s.resolve(spec).id not in presence.load(s.backend)


def _pack_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "packs").glob("pack-*.pack"))


def test_drop_here_then_get_brings_it_back(tmp_path: Path) -> None:
    a, src = _pushed(tmp_path, "far")
    before = _pack_bytes(a.store)
    out = a("--json", "drop", "org/m@1", "--no-gc").json
    assert out["dropped"] and out["where"] == "here"
    assert (out["known"], out["verified"]) == (1, 1)
    assert [(c["remote"], c["verified"]) for c in out["copies"]] == [("far", True)]
    # Absent here: not an error anywhere, and said so by show, ls -l and verify.
    assert not _present(a.store, "org/m@1")
    assert a("--json", "show", "org/m@1").json["present"] is False
    assert "(elsewhere)" in a("ls", "-l", "org/m").out
    v = a("--json", "verify", "--all").json
    assert v["ok"] and v["not_present"] == ["org/m@1"] and v["versions_checked"] == 0
    # gc reclaims its bytes; the far copy is untouched.
    a("gc", "--now")
    assert _pack_bytes(a.store) < before - SIZE // 2
    assert _present(tmp_path / "far", "org/m@1")
    got = a("--json", "get", "org/m@1").json
    assert got["status"] == "got" and got["objects_sent"] > 0 and got["remote"] == "far"
    assert _present(a.store, "org/m@1")
    a("checkout", "org/m@1", str(tmp_path / "out"))
    assert read_files(tmp_path / "out") == read_files(src)
    assert a("--json", "verify", "--all").json["versions_checked"] == 1
    # A second get moves nothing.
    assert a("--json", "get", "org/m@1").json["status"] == "present"


def test_get_from_a_named_remote(tmp_path: Path) -> None:
    a, src = _pushed(tmp_path, "one", "two")
    a("drop", "org/m@1")
    a("gc", "--now")
    got = a("--json", "get", "org/m@1", "--from", "two").json
    assert got["remote"] == "two" and got["objects_sent"] > 0
    a("checkout", "org/m@1", str(tmp_path / "out"))
    assert read_files(tmp_path / "out") == read_files(src)
    # A remote without it is named in the error.
    a("drop", "org/m@1", "--from", "one")
    a("drop", "org/m@1")
    err = _fail(a, "get", "org/m@1", "--from", "one")
    assert err["code"] == "E_NOT_FOUND" and "one" in err["message"]


def test_drop_refused_without_a_copy_names_each_store_asked(tmp_path: Path) -> None:
    a, _ = _pushed(tmp_path)
    err = _fail(a, "drop", "org/m@1")
    assert err["code"] == "E_CONFLICT" and "no other store could be asked" in err["message"]
    # Two configured remotes, neither holding it: both are named with their answer.
    for name in ("empty1", "empty2"):
        a("remote", "add", name, str(tmp_path / name))
        CasCli(tmp_path / name)("init")
    err = _fail(a, "drop", "org/m@1")
    assert err["code"] == "E_CONFLICT"
    assert "empty1: E_" in err["message"] and "empty2: E_" in err["message"]
    assert _present(a.store, "org/m@1")
    # --dry-run with a copy: verified, nothing dropped.
    a("push", "empty1")
    out = a("--json", "drop", "org/m@1", "--dry-run").json
    assert out["dry_run"] and not out["dropped"] and out["verified"] == 1
    assert _present(a.store, "org/m@1")


def test_numcopies_counts_known_copies_and_force_stops_at_mincopies(tmp_path: Path) -> None:
    a, _ = _pushed(tmp_path, "one")
    assert a("--json", "copies", "--numcopies", "2").json["numcopies"] == 2
    err = _fail(a, "drop", "org/m@1")
    assert err["code"] == "E_CONFLICT" and "1 known, 1 verified" in err["message"]
    # A second copy that the location log knows of (its remote is no longer configured,
    # so it cannot be asked) makes two known, one of them verified: enough.
    a("remote", "add", "two", str(tmp_path / "two"))
    a("push", "two")
    a("remote", "remove", "two")
    out = a("--json", "drop", "org/m@1", "--dry-run").json
    assert (out["known"], out["verified"]) == (2, 1)
    notes = {c["uuid"]: c["note"] for c in out["copies"] if not c["verified"]}
    assert list(notes.values()) == ["known from the location log"]
    # mincopies 2: the log's claim is not enough; --force does not go below mincopies.
    a("copies", "--mincopies", "2")
    err = _fail(a, "drop", "org/m@1")
    assert err["code"] == "E_CONFLICT" and "2 known, 1 verified" in err["message"]
    err = _fail(a, "drop", "org/m@1", "--force")
    assert err["code"] == "E_CONFLICT" and "needs 2 verified" in err["message"]
    # mincopies 1, numcopies 3: two known; --force lowers the need to one verified.
    a("copies", "--numcopies", "3", "--mincopies", "1")
    assert _fail(a, "drop", "org/m@1")["code"] == "E_CONFLICT"
    out = a("--json", "drop", "org/m@1", "--force").json
    assert out["dropped"] and out["verified"] == 1
    assert not _present(a.store, "org/m@1")
    # The setting is refused where it could drop a last copy.
    assert _fail(a, "copies", "--mincopies", "0")["code"] == "E_ARGS"
    assert _fail(a, "copies", "--numcopies", "1", "--mincopies", "2")["code"] == "E_ARGS"


def _lose_packs(store: Path) -> None:
    for p in [*(store / "packs").glob("pack-*"), *(store / "packs").glob("midx-*")]:
        p.unlink()


def _mark_absent(store: Path) -> None:
    with Store.open(store) as s:
        v = s.resolve("org/m@1")
        with s.writing():
            presence.update(s.backend, {v.id: presence.Absent(v.name, v.seq)})


@pytest.mark.parametrize("how", [_lose_packs, _mark_absent], ids=["packs-lost", "absent"])
def test_a_remote_that_claims_content_it_lacks_fails_the_drop(tmp_path: Path, how) -> None:  # type: ignore[no-untyped-def]
    a, _ = _pushed(tmp_path, "far")
    how(tmp_path / "far")
    # The location log still says far holds it: the claim alone never makes a drop.
    out = a("--json", "whereis", "org/m@1").json
    assert ["far"] in [s["remotes"] for s in out["versions"][0]["stores"]]
    err = _fail(a, "drop", "org/m@1")
    assert err["code"] == "E_CONFLICT" and "far: E_NOT_FOUND" in err["message"]
    assert "0 verified" in err["message"]
    assert _fail(a, "drop", "org/m@1", "--force")["code"] == "E_CONFLICT"
    assert _present(a.store, "org/m@1")
    assert a("--json", "verify", "--all").json["versions_checked"] == 1


def test_drop_from_a_directory_remote(tmp_path: Path) -> None:
    a, src = _pushed(tmp_path, "far")
    far = CasCli(tmp_path / "far")
    out = a("--json", "drop", "org/m@1", "--from", "far").json
    assert out["dropped"] and out["where"] == "far"
    assert [(c["remote"], c["verified"]) for c in out["copies"]] == [("(this store)", True)]
    assert not _present(far.store, "org/m@1") and _present(a.store, "org/m@1")
    assert far("--json", "verify", "--all").json["not_present"] == ["org/m@1"]
    # Now the only copy is here: dropping it here is refused, and so is dropping it again
    # from far (nothing there).
    assert _fail(a, "drop", "org/m@1")["code"] == "E_CONFLICT"
    assert _fail(a, "drop", "org/m@1", "--from", "far")["code"] == "E_NOT_FOUND"
    # The far side gets it back by a push.
    a("push", "far")
    assert far("--json", "verify", "--all").json["versions_checked"] == 1
    far("checkout", "org/m@1", str(tmp_path / "out"))
    assert read_files(tmp_path / "out") == read_files(src)


def test_pinned_versions_are_refused(tmp_path: Path) -> None:
    a, _ = _pushed(tmp_path, "far")
    a("pin", "org/m@1")
    err = _fail(a, "drop", "org/m@1")
    assert err["code"] == "E_CONFLICT" and "pinned" in err["message"]
    a("unpin", "org/m@1")
    # Pinned for every store: far refuses to drop it too.
    a("pin", "org/m@1", "--everywhere")
    a("push", "far")
    err = _fail(a, "drop", "org/m@1", "--from", "far")
    assert err["code"] == "E_CONFLICT" and "pinned" in err["message"]
    assert _present(a.store, "org/m@1") and _present(tmp_path / "far", "org/m@1")


def test_a_version_in_use_by_a_checkout_is_refused(tmp_path: Path) -> None:
    a, src = _pushed(tmp_path, "far")
    paused = Paused(a.store, "scanned", "checkout", "org/m@1", str(tmp_path / "out"))
    try:
        paused.wait_paused()
        err = _fail(a, "drop", "org/m@1")
        assert err["code"] == "E_CONFLICT" and "in use" in err["message"]
        assert "use " in err["message"]  # the lease is described
    finally:
        code, out, err_text = paused.resume()
    assert code == 0, (out, err_text)
    assert read_files(tmp_path / "out") == read_files(src)
    assert a("--json", "drop", "org/m@1").json["dropped"]


# -- ssh ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Sshd:
    require_sshd()
    server = Sshd(tmp_path_factory.mktemp("sshd"), tmp_path_factory.mktemp("served"))
    yield server
    server.stop()


def test_drop_here_and_from_an_ssh_remote(tmp_path: Path, sshd: Sshd) -> None:
    a = _cli(tmp_path / "a", sshd)
    src = model_folder(tmp_path / "src", 4, SIZE)
    a("add", "org/m", str(src))
    far = tmp_path / "far"
    a("remote", "add", "nas", sshd.url(far), "--cas-command", sshd.cas)
    a("push", "nas")
    # Here, with the copy over ssh verified and held by the server.
    out = a("--json", "drop", "org/m@1").json
    assert out["dropped"] and [(c["remote"], c["verified"]) for c in out["copies"]] == [
        ("nas", True)]
    a("gc", "--now")
    got = a("--json", "get", "org/m@1", "--from", "nas").json
    assert got["objects_sent"] > 0
    a("checkout", "org/m@1", str(tmp_path / "out"))
    assert read_files(tmp_path / "out") == read_files(src)
    # From the ssh remote, counting this store's copy.
    out = a("--json", "drop", "org/m@1", "--from", "nas").json
    assert out["dropped"] and out["where"] == "nas"
    assert not _present(far, "org/m@1")
    err = _fail(a, "drop", "org/m@1")
    assert err["code"] == "E_CONFLICT" and "nas: E_NOT_FOUND" in err["message"]
    # An ssh server refuses a drop of a version in use there just as a local store does.
    a("push", "nas")
    paused = Paused(far, "scanned", "checkout", "org/m@1", str(tmp_path / "out2"))
    try:
        paused.wait_paused()
        err = _fail(a, "drop", "org/m@1", "--from", "nas")
        assert err["code"] == "E_CONFLICT" and "in use" in err["message"]
    finally:
        assert paused.resume()[0] == 0
    assert _present(far, "org/m@1")


# -- two stores dropping the same version at once ---------------------------------------------


class _Dropper:
    """One store's drop of the version, as :func:`cas.drop.drop` runs it, counting the other
    store's copy: ``begin`` (the drop lease here), ``hold`` (the other store verifies and
    holds), ``commit``, ``end`` (both leases released). A step that raises ends the drop."""

    STEPS = ("begin", "hold", "commit", "end")

    def __init__(self, here: Path, other: Path, blob: str) -> None:
        self.here = Store.open(here)
        self.other = LocalPeer(Store.open(other))
        self.blob = blob
        self.lease = None
        self.target = None
        self.refused: str | None = None
        self.committed = False

    def step(self, name: str) -> None:
        if self.refused is not None:
            return
        try:
            if name == "begin":
                self.lease, self.target = dr.begin(self.here, self.blob)
            elif name == "hold":
                self.other.hold([self.blob])
            elif name == "end":
                self.end()
            else:
                dr.commit(self.here, self.target, self.lease)
                self.committed = True
        except CasError as exc:
            self.refused = f"{name}: {exc.code}"
            self.end()

    def end(self) -> None:
        self.other.release_holds()
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def close(self) -> None:
        self.end()
        self.here.close()
        self.other.close()


def _interleavings(n: int) -> list[tuple[int, ...]]:
    """Every order of two sequences of ``n`` steps: which dropper moves at each turn."""
    out = []
    for firsts in itertools.combinations(range(2 * n), n):
        out.append(tuple(0 if i in firsts else 1 for i in range(2 * n)))
    return out


@pytest.fixture(scope="module")
def twin_stores(tmp_path_factory: pytest.TempPathFactory) -> dict:
    top = tmp_path_factory.mktemp("twins")
    a = _cli(top / "a")
    src = model_folder(top / "src", 9, 50_000)
    a("add", "org/m", str(src))
    a("remote", "add", "b", str(top / "b"))
    a("push", "b")
    b = CasCli(top / "b")
    b("remote", "add", "a", str(top / "a"))
    subprocess.run(["cp", "-a", str(top / "a"), str(top / "a0")], check=True)
    subprocess.run(["cp", "-a", str(top / "b"), str(top / "b0")], check=True)
    with Store.open(top / "a") as s:
        blob = s.registry.commit_versions(s.registry.head("org/m").decode())[1].decode()
    return {"top": top, "blob": blob, "src": src}


def _copy_sound(store: Path, blob: str) -> bool:
    with Store.open(store) as s:
        peer = LocalPeer(s)
        return bool(peer.present([blob])) and not transfer.missing(s, peer.closure([blob]))


@pytest.mark.parametrize("order", _interleavings(4))
def test_two_stores_dropping_at_once_never_lose_the_last_copy(twin_stores: dict,
                                                              order: tuple[int, ...]) -> None:
    top, blob = twin_stores["top"], twin_stores["blob"]
    for name in ("a", "b"):
        subprocess.run(["rm", "-rf", str(top / name)], check=True)
        subprocess.run(["cp", "-a", str(top / f"{name}0"), str(top / name)], check=True)
    droppers = [_Dropper(top / "a", top / "b", blob), _Dropper(top / "b", top / "a", blob)]
    turns = [0, 0]
    try:
        for who in order:
            droppers[who].step(_Dropper.STEPS[turns[who]])
            turns[who] += 1
    finally:
        for d in droppers:
            d.close()
    committed = [d.committed for d in droppers]
    assert not all(committed), (order, [d.refused for d in droppers])
    # A drop that ran alone (the other had not begun) succeeds; the later one is refused.
    if order in ((0, 0, 0, 0, 1, 1, 1, 1), (1, 1, 1, 1, 0, 0, 0, 0)):
        assert committed == [order[0] == 0, order[0] == 1]
    survivors = [name for name in ("a", "b") if _copy_sound(top / name, blob)]
    assert survivors, order
    # The survivor's copy outlives a gc that takes what the dropped one no longer needs,
    # and reads back byte for byte.
    for name in ("a", "b"):
        with Store.open(top / name) as s:
            collect(s, GcOptions(grace=0.0, expire_removed=0.0, repack_threshold=0.0))
            assert s.verify().ok, (order, name)
    with Store.open(top / survivors[0]) as s:
        for rel, data in read_files(twin_stores["src"]).items():
            out = io.BytesIO()
            s.cat("org/m@1", rel, out)
            assert out.getvalue() == data, (order, rel)
    # A refused drop can run again once the other has ended.
    if len(survivors) == 2:
        again = CasCli(top / "a")("--json", "drop", "org/m@1", "--no-gc").json
        assert again["dropped"]


def test_a_hold_outlives_a_drop_begun_after_it(twin_stores: dict) -> None:
    """A hold in B (taken by a drop elsewhere that counts B's copy) stops B's own drop until
    it is released, and a drop running in B stops a hold there."""
    top, blob = twin_stores["top"], twin_stores["blob"]
    for name in ("a", "b"):
        subprocess.run(["rm", "-rf", str(top / name)], check=True)
        subprocess.run(["cp", "-a", str(top / f"{name}0"), str(top / name)], check=True)
    with Store.open(top / "b") as b:
        lease = dr.hold(b, [blob])
        with pytest.raises(CasError) as info:
            dr.begin(b, blob)
        assert info.value.code == "E_CONFLICT" and "keep" in info.value.message
        # The CLI in another process sees the hold too.
        err = _fail(CasCli(top / "b"), "drop", "org/m@1")
        assert err["code"] == "E_CONFLICT"
        lease.release()
        drop_lease, target = dr.begin(b, blob)
        assert target.id == b.resolve("org/m@1").id
        # And a hold asked while the drop runs is refused.
        with pytest.raises(CasError) as info:
            dr.hold(b, [blob])
        assert info.value.code == "E_CONFLICT" and "dropping" in info.value.message
        drop_lease.release()
