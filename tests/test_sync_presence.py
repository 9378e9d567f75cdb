"""Presence and whereis with directory remotes, through the real CLI.

A store may hold a version's registry entry without its content (``clone --no-content``,
``pull``/``push NAME@V``, a removed version whose restore window had closed on the sender).
What these tests hold the commands to: such a version is "elsewhere", never damage (ls,
show, verify, gc, du); ``checkout`` brings its content from a remote that has it or says
why none could; ``NAME@V`` moves one version's content only; removed versions still
restorable travel with their content. ``whereis`` reports the location log: this store,
its remotes and stores it learned of through them, as claims that a damaged entry cannot
turn into a failure.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


from cas.errors import NotFoundError
from cas.store import Store
from conftest import CasCli, model_folder, read_files

NAME = "org/m"
SIZE = 200_000


def _model(folder: Path, seed: int) -> Path:
    return model_folder(folder, seed, SIZE)


_files = read_files

# -- helpers -------------------------------------------------------------------------------------


def _origin(tmp_path: Path, versions: int, name: str = "origin") -> tuple[Path, list[Path]]:
    """A store at ``tmp_path/name`` holding ``versions`` versions of NAME (set up through the
    library: what is under test is what the CLI does with it); their folders."""
    path = tmp_path / name
    folders = [_model(tmp_path / f"src{i}", seed=i) for i in range(1, versions + 1)]
    Store.init(path).close()
    with Store.open(path) as store:
        for folder in folders:
            store.add(NAME, folder)
    return path, folders


def _error(run) -> dict:  # type: ignore[no-untyped-def]
    assert "Traceback" not in run.err, run.err
    return run.json["error"]


def _present(cli: CasCli) -> dict[int, bool]:
    """seq -> present, from ``ls --long --json``."""
    return {v["seq"]: v["present"] for v in cli("--json", "ls", "--long").json["versions"]}


def _verify_all(cli: CasCli) -> dict:
    """``verify --all --json``: it must exit 0 and call nothing broken."""
    run = cli("--json", "verify", "--all", ok=False)
    assert "Traceback" not in run.err, run.err
    doc = run.json
    assert run.code == 0, doc
    assert (doc["broken_versions"], doc["bad_objects"], doc["problems"]) == ([], [], [])
    return doc


def _status(doc: dict) -> dict[str, str]:
    return {r["ref"]: r["status"] for r in doc["refs"]}


# -- clone --no-content --------------------------------------------------------------------------


def test_a_clone_without_content_lists_every_version_as_elsewhere_never_as_broken(  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    origin, src = _origin(tmp_path, 2)
    here = CasCli(tmp_path / "here")
    doc = here("--json", "clone", "--no-content", str(origin)).json
    assert _status(doc) == {f"refs/models/{NAME}": "ok"}
    assert (doc["objects_sent"], doc["bytes_sent"], doc["packs"]) == (0, 0, 0)

    lines = [ln for ln in here("ls", "--long").out.splitlines() if ln.startswith(NAME)]
    assert len(lines) == 2 and all("(elsewhere)" in ln for ln in lines), lines
    shown = here("--json", "show", f"{NAME}@1").json
    assert shown["present"] is False and shown["seq"] == 1

    doc = _verify_all(here)
    assert doc["not_present"] == [f"{NAME}@1", f"{NAME}@2"]
    run = here("--json", "verify", f"{NAME}@2", ok=False)
    assert run.code == NotFoundError.exit_code and _error(run)["code"] == "E_NOT_FOUND"
    assert "cas pull" in _error(run)["message"]

    # gc keeps working and deletes nothing: the registry entries stay, content still comes
    gc = here("--json", "gc", "--now").json
    assert (gc["packs_deleted"], gc["registry_objects_pruned"]) == (0, 0)
    assert here("--json", "du").json["ok"]
    assert _present(here) == {1: False, 2: False}
    here("checkout", f"{NAME}@2", str(tmp_path / "out2"), "-q")
    assert _files(tmp_path / "out2") == _files(src[1])
    gc = here("--json", "gc", "--now").json
    assert gc["packs_deleted"] == 0  # what checkout brought is a version's content now
    assert _present(here) == {1: False, 2: True}
    assert _verify_all(here)["not_present"] == [f"{NAME}@1"]


# -- checkout of an absent version ---------------------------------------------------------------


def test_checkout_of_an_absent_version_fetches_its_content_from_origin(  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    origin, src = _origin(tmp_path, 2)
    here = CasCli(tmp_path / "here")
    here("clone", "--no-content", str(origin), "-q")
    run = here("checkout", f"{NAME}@1", str(tmp_path / "out"))
    assert "fetched the content of" in run.err and "origin" in run.err, run.err
    assert _files(tmp_path / "out") == _files(src[0])

    assert _present(here) == {1: True, 2: False}
    assert here("--json", "show", f"{NAME}@1").json["present"] is True
    assert here("--json", "verify", f"{NAME}@1").json["versions_checked"] == 1
    assert _verify_all(here)["not_present"] == [f"{NAME}@2"]


def test_checkout_of_an_absent_version_with_no_remote_holding_it_says_why(  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    origin, _src = _origin(tmp_path, 1)
    here = CasCli(tmp_path / "here")
    here("clone", "--no-content", str(origin), "-q")
    # another registry-only clone: it has the version registered, not its content
    CasCli(tmp_path / "catalog")("clone", "--no-content", str(origin), "-q")
    here("remote", "remove", "origin", "-q")

    dest = tmp_path / "out"
    run = here("--json", "checkout", f"{NAME}@1", str(dest), ok=False)
    assert run.code == NotFoundError.exit_code and _error(run)["code"] == "E_NOT_FOUND"
    assert "no remote is configured" in _error(run)["message"]
    assert not dest.exists() or _files(dest) == {}

    here("remote", "add", "catalog", str(tmp_path / "catalog"), "-q")
    run = here("--json", "checkout", f"{NAME}@1", str(dest), ok=False)
    assert _error(run)["code"] == "E_NOT_FOUND"
    message = _error(run)["message"]
    assert "catalog" in message and "does not hold" in message, message
    assert not dest.exists() or _files(dest) == {}
    assert _present(here) == {1: False}
    assert _verify_all(here)["not_present"] == [f"{NAME}@1"]


# -- one version's content -----------------------------------------------------------------------


def test_pull_of_one_version_brings_that_versions_content_only(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    origin, src = _origin(tmp_path, 3)
    here = CasCli(tmp_path / "here")
    here("clone", "--no-content", str(origin), "-q")
    doc = here("--json", "pull", "origin", f"{NAME}@2").json
    assert SIZE <= doc["bytes_sent"] < 1.5 * SIZE, doc  # one version's worth, not three
    assert _present(here) == {1: False, 2: True, 3: False}
    assert _verify_all(here)["not_present"] == [f"{NAME}@1", f"{NAME}@3"]
    run = here("checkout", f"{NAME}@2", str(tmp_path / "out"))
    assert "fetched" not in run.err  # it is here: nothing more comes
    assert _files(tmp_path / "out") == _files(src[1])
    # a pull of the whole model brings the rest
    doc = here("--json", "pull", "origin").json
    assert 2 * SIZE <= doc["bytes_sent"] < 2.5 * SIZE, doc
    assert _present(here) == {1: True, 2: True, 3: True}
    assert _verify_all(here)["not_present"] == []


def test_push_of_one_version_to_a_new_remote_sends_its_content_only(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    origin, src = _origin(tmp_path, 3)
    here = CasCli(origin)
    remote = tmp_path / "remote"
    doc = here("--json", "push", str(remote), f"{NAME}@2").json
    assert _status(doc) == {f"refs/models/{NAME}": "ok"} and doc["registry_objects"] > 0
    assert SIZE <= doc["bytes_sent"] < 1.5 * SIZE, doc
    far = CasCli(remote)
    assert _present(far) == {1: False, 2: True, 3: False}
    assert _verify_all(far)["not_present"] == [f"{NAME}@1", f"{NAME}@3"]
    far("checkout", f"{NAME}@2", str(tmp_path / "out2"), "-q")  # no remote there: its own
    assert _files(tmp_path / "out2") == _files(src[1])

    doc = here("--json", "push", str(remote), NAME).json
    assert _status(doc) == {f"refs/models/{NAME}": "up-to-date"}
    assert 2 * SIZE <= doc["bytes_sent"] < 2.5 * SIZE, doc
    assert _present(far) == {1: True, 2: True, 3: True}
    doc = _verify_all(far)
    assert (doc["not_present"], doc["versions_checked"]) == ([], 3)
    far("checkout", f"{NAME}@3", str(tmp_path / "out3"), "-q")
    assert _files(tmp_path / "out3") == _files(src[2])


# -- removed versions ----------------------------------------------------------------------------


def test_a_removed_version_still_restorable_travels_with_its_content(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    origin, src = _origin(tmp_path, 2)
    here = CasCli(origin)
    here("rm", f"{NAME}@1", "-q")
    remote = tmp_path / "remote"
    doc = here("--json", "push", str(remote)).json
    assert 2 * SIZE <= doc["bytes_sent"] < 2.5 * SIZE, doc
    far = CasCli(remote)
    doc = _verify_all(far)
    assert (doc["not_present"], doc["versions_checked"]) == ([], 2)
    assert far("--json", "restore", f"{NAME}@1").json["restored"] == [f"{NAME}@1"]
    assert _present(far) == {1: True, 2: True}
    far("checkout", f"{NAME}@1", str(tmp_path / "out"), "-q")  # the remote has no remote
    assert _files(tmp_path / "out") == _files(src[0])


def test_a_removed_version_whose_window_closed_does_not_travel(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    origin, src = _origin(tmp_path, 2)
    here = CasCli(origin)
    here("rm", f"{NAME}@1", "-q")
    # expired, though its packs are still here (gc's grace period keeps them)
    here("gc", "--expire-removed", "0", "-q")
    remote = tmp_path / "remote"
    doc = here("--json", "push", str(remote)).json
    assert SIZE <= doc["bytes_sent"] < 1.5 * SIZE, doc  # v2 only
    far = CasCli(remote)
    doc = _verify_all(far)  # v1 is elsewhere (nowhere, in fact), never broken
    assert doc["versions_checked"] == 1 and f"{NAME}@2" not in doc["not_present"]
    far("checkout", f"{NAME}@2", str(tmp_path / "out2"), "-q")
    assert _files(tmp_path / "out2") == _files(src[1])
    # restore there cannot give back content that never came: refused, or registered
    # without it (then a checkout says so), and verify stays clean
    run = far("--json", "restore", f"{NAME}@1", ok=False)
    assert "Traceback" not in run.err, run.err
    if run.code == 0:
        assert _present(far)[1] is False
        run = far("--json", "checkout", f"{NAME}@1", str(tmp_path / "out1"), ok=False)
        assert _error(run)["code"] == "E_NOT_FOUND"
        assert not (tmp_path / "out1" / "model.bin").exists()
        assert f"{NAME}@1" in _verify_all(far)["not_present"]
    else:
        assert _error(run)["code"] == "E_NOT_FOUND"
        _verify_all(far)


# -- whereis -------------------------------------------------------------------------------------


def _uuid(path: Path) -> str:
    with Store.open(path) as store:
        assert store.uuid
        return store.uuid


def _holders(doc: dict) -> dict[str, dict[str, dict]]:
    """version -> store uuid -> holder, from ``whereis --json``."""
    return {w["version"]: {h["uuid"]: h for h in w["stores"]} for w in doc["versions"]}


def _git(registry: Path, *args: str, stdin: bytes | None = None) -> str:
    return subprocess.run(["git", "--git-dir", str(registry), *args], input=stdin,
                          capture_output=True, check=True).stdout.decode().strip()


def _rewrite_log(store: Path, entries: dict[str, str], *, missing: bool = False) -> None:
    """Commit a new tip of ``store``'s location log by hand (git plumbing): its files, with
    ``entries`` (file name -> blob id) replacing or adding files."""
    reg = store / "registry"
    files = {}
    for line in _git(reg, "ls-tree", "refs/cas/locations").splitlines():
        meta, path = line.split("\t")
        files[path] = meta.split()[2]
    files.update(entries)
    listing = "".join(f"100644 blob {sha}\t{path}\n" for path, sha in sorted(files.items()))
    tree = _git(reg, "mktree", *(["--missing"] if missing else []), stdin=listing.encode())
    commit = _git(reg, "commit-tree", tree, "-p", "refs/cas/locations", "-m", "by hand")
    _git(reg, "update-ref", "refs/cas/locations", commit)


def _blob(store: Path, data: bytes) -> str:
    return _git(store / "registry", "hash-object", "-w", "--stdin", stdin=data)


def _entry(uuid: str, serial: int, versions: dict, description: str) -> bytes:
    return json.dumps({"uuid": uuid, "serial": serial, "updated_at": "2030-01-01T00:00:00+00:00",
                       "versions": versions, "description": description,
                       "schema": "cas.location", "version": 1}).encode()


def test_whereis_lists_this_store_its_remote_and_stores_learned_through_it(  # type: ignore[no-untyped-def]
        tmp_path: Path, git) -> None:
    # A pushes to folder remote r; B clones r without content, brings v1's content only and
    # pushes back; A fetches: it learns of B through r, without ever contacting it.
    a_path, _src = _origin(tmp_path, 2, name="a")
    a = CasCli(a_path)
    r_path = tmp_path / "r"
    a("remote", "add", "r", str(r_path), "-q")
    a("push", "r", "-q")
    b = CasCli(tmp_path / "b")
    b("clone", "--no-content", str(r_path), "-q")
    b("pull", "origin", f"{NAME}@1", "-q")
    b("push", "origin", "-q")
    assert a("--json", "fetch", "r").json["warnings"] == []
    ua, ur, ub = _uuid(a.store), _uuid(r_path), _uuid(b.store)

    doc = a("--json", "whereis", NAME).json
    held = _holders(doc)
    assert set(held) == {f"{NAME}@1", f"{NAME}@2"}
    assert set(held[f"{NAME}@1"]) == {ua, ur, ub}
    assert set(held[f"{NAME}@2"]) == {ua, ur}  # B holds v2's registry entry, not its content
    one = held[f"{NAME}@1"]
    assert (one[ua]["here"], one[ua]["remotes"]) == (True, [])
    assert (one[ur]["here"], one[ur]["remotes"]) == (False, ["r"])
    assert (one[ub]["here"], one[ub]["remotes"]) == (False, [])
    for h in [*held[f"{NAME}@1"].values(), *held[f"{NAME}@2"].values()]:
        assert h["updated_at"].startswith("20") and h["verified"] is None, h
    vid = {w["version"]: w["id"] for w in doc["versions"]}[f"{NAME}@2"]

    verified = _holders(a("--json", "whereis", NAME, "--verify").json)
    assert verified[f"{NAME}@1"][ur]["verified"] is True
    assert verified[f"{NAME}@2"][ur]["verified"] is True
    assert verified[f"{NAME}@1"][ub]["verified"] is None  # not a remote of A: not asked
    run = a("whereis", f"{NAME}@2")  # NAME@V: that version only; human output
    assert run.out.startswith(f"{NAME}@2 ") and f"{NAME}@1" not in run.out
    assert "here" in run.out and " r " in run.out and ub not in run.out

    # Entries are claims: damaged ones in r's log, put there by hand, are ignored by A's
    # fetch, nothing fails, and whereis still answers as before.
    stranger, unknown = "00000000-0000-4000-8000-000000000000", "11111111-0000-4000-8000-0000"
    _rewrite_log(r_path, {
        f"{ub}.json": _blob(r_path, b"not json {"),
        # A's own entry, forged with a huge serial: a store never takes its own from elsewhere
        f"{ua}.json": _blob(r_path, _entry(ua, 10**9, {}, "forged")),
        # an entry filed under another store's name
        f"{stranger}.json": _blob(r_path, _entry(ub, 10**9, {NAME: [vid]}, "renamed")),
        # a field this schema version does not have
        f"{unknown}00000000.json": _blob(r_path, _entry(unknown + "00000000", 1, {NAME: [vid]},
                                                        "x")[:-1] + b', "extra": 1}'),
    })
    run = a("--json", "fetch", "r", ok=False)
    assert run.code == 0 and "Traceback" not in run.err, (run.out, run.err)
    assert all(w["code"].startswith("W_") for w in run.json["warnings"])
    run = a("--json", "whereis", NAME, ok=False)
    assert run.code == 0 and "Traceback" not in run.err, (run.out, run.err)
    assert _holders(run.json) == held  # B's earlier entry kept; nothing forged taken
    a("push", "r", "-q")  # a push merges both ways: still A's own entry here
    assert _holders(a("--json", "whereis", NAME).json)[f"{NAME}@2"][ua]["here"] is True


def test_whereis_in_a_store_whose_location_log_is_damaged_does_not_silently_forget_itself(  # type: ignore[no-untyped-def]
        tmp_path: Path, git) -> None:
    a_path, _src = _origin(tmp_path, 1, name="a")
    a = CasCli(a_path)
    r_path = tmp_path / "r"
    a("push", str(r_path), "-q")
    ur = _uuid(r_path)
    _rewrite_log(r_path, {"22222222-0000-4000-8000-000000000000.json": "12" * 20},
                 missing=True)
    # other stores are not stopped by it
    run = a("--json", "push", str(r_path), ok=False)
    assert run.code == 0 and "Traceback" not in run.err, (run.out, run.err)
    # the store itself holds the version: whereis there says so, or warns that its log is
    # damaged, rather than answer that no store holds it
    doc = CasCli(r_path)("--json", "whereis", NAME).json
    (where,) = doc["versions"]
    assert ur in {h["uuid"] for h in where["stores"]}, doc
    # and the log is whole again: the next whereis reads it without a warning
    doc = CasCli(r_path)("--json", "whereis", NAME).json
    assert doc["warnings"] == [] and ur in {h["uuid"] for h in doc["versions"][0]["stores"]}
