"""Air-gapped sync through the real CLI: ``cas state export`` and ``cas bundle``.

A sender store and one or more site stores, each its own folder (the site never sees the
sender: only bundle and state files cross). What these tests hold the commands to: a full
bundle makes an empty store hold the models byte for byte; a bundle cut against a site's
state (``--since``, then ``--since-site``) carries only what the site lacks; prerequisites are
checked before anything is written and named when missing; a re-import adds nothing; refs
move fast-forward only unless ``--force``; ``-`` streams through stdout and stdin; the state
file of a large site stays small.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from cas import bundle as bd
from cas import transfer
from cas.chunking import ChunkerParams
from cas.errors import error_of_code
from cas.ingest import AddOptions
from cas.peer import LocalPeer
from cas.store import Store
from conftest import (CasCli, CasRun, edit_model, model_folder, pack_sizes, read_files,
                      registry_git, write_files)

A, B = "org/a", "org/b"
REF_A, REF_B = f"refs/models/{A}", f"refs/models/{B}"
TAG = f"refs/tags/{A}@prod"


def _model(folder: Path, seed: int = 0, size: int = 1 << 20) -> Path:
    return model_folder(folder, seed, size)


_edit, _files = edit_model, read_files

# -- helpers -------------------------------------------------------------------------------------


def _store(tmp_path: Path, name: str) -> CasCli:
    """A new store (made through the library: setup, not what is tested)."""
    Store.init(tmp_path / name).close()
    return CasCli(tmp_path / name)


def _add(cli: CasCli, name: str, folder: Path, tag: str | None = None) -> None:
    with Store.open(cli.store) as s:
        s.add(name, folder, AddOptions(tags=[tag] if tag else []))


def _create(cli: CasCli, out: Path, since: Path | None = None, since_site: str | None = None
            ) -> None:
    with Store.open(cli.store) as s:
        bd.create(s, str(out), [], bd.read_state(since.read_bytes()) if since else None,
                  since_site)


def _export(cli: CasCli, state: Path) -> None:
    with Store.open(cli.store) as s:
        state.write_bytes(bd.export_state(s))


def _import(cli: CasCli, path: Path) -> None:
    with Store.open(cli.store) as s:
        result = bd.import_bundle(s, str(path))
    assert {r.status for r in result.refs} <= {"ok", "up-to-date"}, result


def _refs(store: Path) -> dict[str, str]:
    """Every ref of ``store``'s registry (read with real git): name -> id."""
    out = registry_git(store, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ") for line in out.splitlines())


def _synced(store: Path) -> dict[str, str]:
    return {r: v for r, v in _refs(store).items()
            if r.startswith(("refs/models/", "refs/tags/", "refs/pins/"))}


def _written(store: Path) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """What a write would change: pack files, refs, registry object files."""
    objects = sorted(str(p.relative_to(store)) for p in (store / "registry" / "objects").rglob("*")
                     if p.is_file())
    return pack_sizes(store), _refs(store), objects


def _status(doc: dict) -> dict[str, str]:
    return {r["ref"]: r["status"] for r in doc["refs"]}


def _checks_out(cli: CasCli, spec: str, src: Path, dest: Path) -> None:
    cli("checkout", spec, str(dest), "-q")
    assert _files(dest) == _files(src), spec


def _sound(cli: CasCli) -> None:
    doc = cli("--json", "verify", "--all").json
    assert doc["ok"] and not doc["bad_objects"] and not doc["broken_versions"], doc
    assert not doc["problems"] and not doc["bad_packs"], doc


def _failed(run: CasRun, code: str) -> dict:
    """``run`` (made with ``--json``) failed with error ``code``, its exit code and a one-line
    message, no traceback; its JSON document."""
    assert "Traceback" not in run.err, run.err
    doc = run.json
    assert doc["ok"] is False and doc["error"]["code"] == code, doc
    assert run.code == error_of_code(code, "").exit_code, (run.code, doc)
    assert doc["error"]["message"] and "\n" not in doc["error"]["message"]
    return doc


def _cas_bytes(store: Path, *args: str, data: bytes | None = None
               ) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI with binary stdin/stdout."""
    return subprocess.run([sys.executable, "-m", "cas.cli.main", "--store", str(store), *args],
                          input=data, capture_output=True, timeout=300)


def _blob(store: Path, model: str, seq: int) -> str:
    with Store.open(store) as s:
        head = s.registry.head(model)
        assert head is not None
        return s.registry.commit_versions(head.decode())[seq].decode()


def _lacking(sender: Path, site: Path, blobs: list[str]) -> list[bytes]:
    """Ids of the objects the versions ``blobs`` (manifest blobs of ``sender``) need that
    ``site`` lacks."""
    with Store.open(sender) as s, Store.open(site) as t:
        return transfer.missing(t, LocalPeer(s).closure(blobs))


@pytest.fixture
def sender(tmp_path: Path) -> CasCli:
    """``org/a`` v1 and ``org/b`` v1."""
    c = _store(tmp_path, "sender")
    _add(c, A, _model(tmp_path / "a1", 1))
    _add(c, B, _model(tmp_path / "b1", 2, 200_000))
    return c


# -- a full bundle -------------------------------------------------------------------------------


def test_a_full_bundle_fills_an_empty_store(sender: CasCli, tmp_path: Path) -> None:
    sender("tag", A, "prod", "-q")
    full = tmp_path / "full.cbundle"
    made = sender("--json", "bundle", "create", str(full)).json
    assert _status(made) == {REF_A: "ok", REF_B: "ok", TAG: "ok"}
    assert made["objects"] > 0 and made["registry_objects"] > 0 and made["warnings"] == []
    assert made["prerequisites"] == 0 and made["site"] == ""
    assert full.stat().st_size > (1 << 20) + 200_000  # incompressible content, all of it

    # list-heads: the refs as the sender has them, nothing expected at the receiver
    heads = sender("--json", "bundle", "list-heads", str(full)).json
    theirs = _synced(sender.store)
    assert {u["ref"]: u["new"] for u in heads["refs"]} == theirs
    assert all(u["old"] is None for u in heads["refs"])
    assert heads["commits"] == [] and heads["versions"] == []
    assert sorted(heads["content"]) == sorted([_blob(sender.store, A, 1),
                                               _blob(sender.store, B, 1)])
    assert set(heads["required"]) <= set(heads["caps"])
    with Store.open(sender.store) as s:
        assert heads["sender"] == s.uuid
    human = sender("bundle", "list-heads", str(full)).out.splitlines()
    assert f"{theirs[REF_A]}  {REF_A}" in human and f"{theirs[REF_B]}  {REF_B}" in human

    # verify the file alone
    alone = sender("--json", "bundle", "verify", "--no-store", str(full)).json
    assert (alone["objects"], alone["registry_objects"]) == (made["objects"],
                                                             made["registry_objects"])
    assert alone["missing"] == [] and alone["would"] == [] and alone["unchecked_derived"] == 0

    # verify against the empty site: nothing missing, every ref would be created
    site = _store(tmp_path, "site")
    before = _written(site.store)
    check = site("--json", "bundle", "verify", str(full)).json
    assert check["missing"] == [] and _status({"refs": check["would"]}) == {
        REF_A: "ok", REF_B: "ok", TAG: "ok"}
    assert "import would: ok" in site("bundle", "verify", str(full)).out
    assert _written(site.store) == before  # verify writes nothing

    got = site("--json", "bundle", "import", str(full)).json
    assert _status(got) == {REF_A: "ok", REF_B: "ok", TAG: "ok"}
    assert got["objects"] == made["objects"] and got["warnings"] == []
    assert _synced(site.store) == theirs
    assert [m["name"] for m in site("--json", "ls").json["models"]] == [A, B]
    _sound(site)
    _checks_out(site, f"{A}@prod", tmp_path / "a1", tmp_path / "out-a")
    _checks_out(site, B, tmp_path / "b1", tmp_path / "out-b")
    after = site("--json", "bundle", "verify", str(full)).json
    assert {w["status"] for w in after["would"]} == {"up-to-date"}


def test_a_bundle_can_be_imported_into_a_store_that_does_not_exist_yet(
        sender: CasCli, tmp_path: Path) -> None:
    full = tmp_path / "full.cbundle"
    _create(sender, full)
    site = CasCli(tmp_path / "new-site")
    assert _status(site("--json", "bundle", "import", str(full)).json)[REF_A] == "ok"
    _sound(site)
    _checks_out(site, A, tmp_path / "a1", tmp_path / "out")


# -- incremental bundles -------------------------------------------------------------------------


def test_an_incremental_bundle_carries_only_what_the_site_lacks(sender: CasCli, tmp_path: Path
                                                                ) -> None:
    full = tmp_path / "full.cbundle"
    _create(sender, full)
    site = _store(tmp_path, "site")
    _import(site, full)
    state = tmp_path / "site-state.json"
    exported = site("--json", "state", "export", str(state)).json
    assert exported["bytes"] == state.stat().st_size
    doc = json.loads(state.read_bytes())
    with Store.open(site.store) as s:
        assert doc["uuid"] == s.uuid
    assert doc["tips"] == {r: v for r, v in _synced(site.store).items()
                           if r.startswith("refs/models/")}

    _add(sender, A, _edit(tmp_path / "a1", tmp_path / "a2", 500_000), "prod")
    v2 = _blob(sender.store, A, 2)
    lacking = _lacking(sender.store, site.store, [v2])
    assert 0 < len(lacking) <= 4  # a chunk or two, the chunk list
    inc = tmp_path / "v2.cbundle"
    made = sender("--json", "bundle", "create", str(inc), "--since", str(state)).json
    assert _status(made) == {REF_A: "ok", TAG: "ok"}  # org/b is where the site has it
    assert made["objects"] == len(lacking)
    assert made["site"] == doc["uuid"] and made["prerequisites"] > 0
    assert inc.stat().st_size * 4 < full.stat().st_size
    heads = sender("--json", "bundle", "list-heads", str(inc)).json
    assert (REF_A, doc["tips"][REF_A]) in [(u["ref"], u["old"]) for u in heads["refs"]]
    assert heads["content"] == [v2] and doc["tips"][REF_A] in heads["commits"]
    assert A in {v["model"] for v in heads["versions"]}
    again = sender("bundle", "create", str(tmp_path / "again.cbundle"), "--since", str(state))
    assert f"next time, --since-site {doc['uuid'][:8]}" in again.out

    packs, _, registry_objects = _written(site.store)
    got = site("--json", "bundle", "import", str(inc)).json
    assert _status(got) == {REF_A: "ok", TAG: "ok"}
    assert got["objects"] == len(lacking)
    assert sum(pack_sizes(site.store).values()) - sum(packs.values()) < inc.stat().st_size
    # every registry object it carried was one the site lacked
    assert len(set(_written(site.store)[2]) - set(registry_objects)) == made["registry_objects"]
    _sound(site)
    _checks_out(site, f"{A}@prod", tmp_path / "a2", tmp_path / "out2")
    _checks_out(site, f"{A}@1", tmp_path / "a1", tmp_path / "out1")

    # v3 without a new state file: the sender remembers what the site holds now
    _add(sender, A, _edit(tmp_path / "a2", tmp_path / "a3", 900_000))
    lacking = _lacking(sender.store, site.store, [_blob(sender.store, A, 3)])
    v3 = tmp_path / "v3.cbundle"
    made = sender("--json", "bundle", "create", str(v3), "--since-site", doc["uuid"][:8]).json
    assert _status(made) == {REF_A: "ok"} and made["objects"] == len(lacking)
    assert made["site"] == doc["uuid"]
    assert v3.stat().st_size * 4 < full.stat().st_size
    assert _status(site("--json", "bundle", "import", str(v3)).json) == {REF_A: "ok"}
    assert _synced(site.store) == _synced(sender.store)
    _sound(site)
    _checks_out(site, A, tmp_path / "a3", tmp_path / "out3")


def test_since_site_names_an_unknown_site_clearly(sender: CasCli, tmp_path: Path) -> None:
    run = sender("--json", "bundle", "create", str(tmp_path / "x.cbundle"), "--since-site",
                 "0123abcd", ok=False)
    assert "0123abcd" in _failed(run, "E_NOT_FOUND")["error"]["message"]
    assert not (tmp_path / "x.cbundle").exists()
    both = sender("--json", "bundle", "create", str(tmp_path / "x.cbundle"), "--since",
                  "s.json", "--since-site", "0123", ok=False)
    _failed(both, "E_ARGS")


def _chain(sender: CasCli, tmp_path: Path) -> tuple[Path, list[Path], list[Path]]:
    """A full bundle of ``org/a`` v1 (with ``org/b``) and three incremental ones (v2, v3,
    v4), cut for a site that imported the full one; the folders of v1..v4."""
    full = tmp_path / "full.cbundle"
    _create(sender, full)
    first = _store(tmp_path, "first")
    _import(first, full)
    state = tmp_path / "state.json"
    _export(first, state)
    uuid = json.loads(state.read_bytes())["uuid"]
    folders = [tmp_path / "a1"]
    bundles = []
    for seq in (2, 3, 4):
        folders.append(_edit(folders[-1], tmp_path / f"a{seq}", 200_000 * seq))
        _add(sender, A, folders[-1])
        bundles.append(tmp_path / f"v{seq}.cbundle")
        if seq == 2:
            _create(sender, bundles[-1], since=state)
        else:
            _create(sender, bundles[-1], since_site=uuid)
    shutil.rmtree(first.store)
    return full, bundles, folders


def test_a_chain_of_bundles_out_of_order_names_the_missing_prerequisite_then_imports_in_order(
        sender: CasCli, tmp_path: Path) -> None:
    full, bundles, folders = _chain(sender, tmp_path)
    site = _store(tmp_path, "site")
    _import(site, full)
    v2 = sender("--json", "show", f"{A}@2").json
    v3 = sender("--json", "show", f"{A}@3").json
    for b, needed in ((bundles[1], v2), (bundles[2], v3)):  # v3 before v2; v4 before v3
        before = _written(site.store)
        run = site("--json", "bundle", "import", str(b), ok=False)
        message = _failed(run, "E_NOT_FOUND")["error"]["message"]
        assert needed["commit"] in message and needed["manifest"]["id"] in message, message
        human = site("bundle", "import", str(b), ok=False)
        assert needed["commit"] in human.err and "Traceback" not in human.err
        assert _written(site.store) == before  # no pack, no registry object, no ref
        check = site("--json", "bundle", "verify", str(b), ok=False)
        assert needed["commit"] in " ".join(_failed(check, "E_NOT_FOUND")["check"]["missing"])
    assert site("--json", "show", A).json["seq"] == 1
    _sound(site)
    # in order, the same bundles then import
    for seq, b in zip((2, 3, 4), bundles):
        doc = site("--json", "bundle", "import", str(b)).json
        assert _status(doc) == {REF_A: "ok"}, seq
        assert site("--json", "show", A).json["seq"] == seq
    assert _synced(site.store) == _synced(sender.store)
    _sound(site)
    for seq in (2, 4):
        _checks_out(site, f"{A}@{seq}", folders[seq - 1], tmp_path / f"out{seq}")


def test_importing_the_same_bundle_again_stores_nothing_new(sender: CasCli, tmp_path: Path
                                                            ) -> None:
    full = tmp_path / "full.cbundle"
    _create(sender, full)
    site = _store(tmp_path, "site")
    _import(site, full)
    before = _written(site.store)
    again = site("--json", "bundle", "import", str(full)).json
    assert set(_status(again).values()) == {"up-to-date"}
    assert _written(site.store) == before
    _sound(site)


# -- stdout and stdin ----------------------------------------------------------------------------


def test_a_bundle_streams_through_stdout_and_stdin(sender: CasCli, tmp_path: Path) -> None:
    made = _cas_bytes(sender.store, "bundle", "create", "-")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith(bd.MAGIC)
    assert b"wrote -" in made.stderr  # the summary goes to stderr, out of the bundle's way
    quiet = _cas_bytes(sender.store, "--json", "bundle", "create", "-")
    assert quiet.returncode == 0 and quiet.stdout.startswith(bd.MAGIC), quiet.stderr
    for data in (made.stdout, quiet.stdout):  # nothing but the bundle on stdout
        path = tmp_path / "piped.cbundle"
        path.write_bytes(data)
        sender("bundle", "verify", "--no-store", str(path), "-q")
    heads = _cas_bytes(sender.store, "--json", "bundle", "list-heads", "-", data=made.stdout)
    assert {u["ref"] for u in json.loads(heads.stdout)["refs"]} == set(_synced(sender.store))

    site = _store(tmp_path, "site")
    got = _cas_bytes(site.store, "--json", "bundle", "import", "-", data=made.stdout)
    assert got.returncode == 0, got.stderr
    assert set(_status(json.loads(got.stdout)).values()) == {"ok"}
    _sound(site)
    _checks_out(site, A, tmp_path / "a1", tmp_path / "out")

    # a pipe from one store to another, neither side holding the whole bundle
    other = _store(tmp_path, "other")
    base = [sys.executable, "-m", "cas.cli.main", "--store"]
    with subprocess.Popen([*base, str(sender.store), "-q", "bundle", "create", "-"],
                          stdout=subprocess.PIPE) as create:
        imported = subprocess.run([*base, str(other.store), "--json", "bundle", "import", "-"],
                                  stdin=create.stdout, capture_output=True, timeout=300)
        assert create.stdout is not None
        create.stdout.close()
    assert create.returncode == 0 and imported.returncode == 0, imported.stderr
    assert _synced(other.store) == _synced(sender.store)
    _checks_out(other, B, tmp_path / "b1", tmp_path / "out-b")


# -- chunker parameters --------------------------------------------------------------------------


def test_a_bundle_from_a_store_with_other_chunker_parameters_imports_with_a_warning(
        tmp_path: Path) -> None:
    theirs = ChunkerParams(avg_size=32768, min_size=8192, max_size=131072)
    Store.init(tmp_path / "sender", chunker=theirs).close()
    sender = CasCli(tmp_path / "sender")
    _add(sender, A, _model(tmp_path / "a1", 1, 500_000))
    full = tmp_path / "full.cbundle"
    _create(sender, full)
    heads = sender("--json", "bundle", "list-heads", str(full)).json
    assert heads["chunker"] == msgspec.to_builtins(theirs)

    site = _store(tmp_path, "site")
    doc = site("--json", "bundle", "import", str(full)).json
    assert _status(doc) == {REF_A: "ok"}
    assert [w["code"] for w in doc["warnings"]] == ["W_CHUNKER_DIFFERS"]
    _sound(site)
    _checks_out(site, A, tmp_path / "a1", tmp_path / "out")
    human = CasCli(tmp_path / "site2")("bundle", "import", str(full))
    assert "[W_CHUNKER_DIFFERS]" in human.err
    with Store.open(site.store) as s:  # the site keeps its own parameters
        assert s.config.chunker == ChunkerParams()

    # the other way: the sender cuts against the state of a site with other parameters
    state = tmp_path / "state.json"
    _export(site, state)
    _add(sender, A, _edit(tmp_path / "a1", tmp_path / "a2", 1000))
    made = sender("--json", "bundle", "create", str(tmp_path / "v2.cbundle"), "--since",
                  str(state)).json
    assert [w["code"] for w in made["warnings"]] == ["W_CHUNKER_DIFFERS"]
    _import(site, tmp_path / "v2.cbundle")
    _checks_out(site, A, tmp_path / "a2", tmp_path / "out2")
    _sound(site)


# -- selections ----------------------------------------------------------------------------------


def test_a_bundle_of_named_models_carries_only_them(sender: CasCli, tmp_path: Path) -> None:
    only_b = tmp_path / "b.cbundle"
    made = sender("--json", "bundle", "create", str(only_b), B).json
    assert _status(made) == {REF_B: "ok"}
    heads = sender("--json", "bundle", "list-heads", str(only_b)).json
    assert [u["ref"] for u in heads["refs"]] == [REF_B]
    assert heads["content"] == [_blob(sender.store, B, 1)]
    assert only_b.stat().st_size < 400_000  # org/a's megabyte is not in it
    site = _store(tmp_path, "site")
    _import(site, only_b)
    assert [m["name"] for m in site("--json", "ls").json["models"]] == [B]
    _sound(site)
    _checks_out(site, B, tmp_path / "b1", tmp_path / "out")
    run = sender("--json", "bundle", "create", str(tmp_path / "x.cbundle"), "org/nope",
                 ok=False)
    assert "org/nope" in _failed(run, "E_NOT_FOUND")["error"]["message"]


def test_a_bundle_of_one_version_registers_the_others_without_content(
        sender: CasCli, tmp_path: Path) -> None:
    for seq in (2, 3):
        _add(sender, A, _model(tmp_path / f"a{seq}", 10 + seq, 400_000))
    one = tmp_path / "one.cbundle"
    made = sender("--json", "bundle", "create", str(one), f"{A}@2").json
    assert _status(made) == {REF_A: "ok"}
    heads = sender("--json", "bundle", "list-heads", str(one)).json
    assert heads["content"] == [_blob(sender.store, A, 2)]
    assert made["objects"] == len(_lacking(sender.store, _store(tmp_path, "empty").store,
                                           [_blob(sender.store, A, 2)]))
    assert 400_000 < one.stat().st_size < 600_000  # v2 alone: not v1's megabyte, not v3

    site = _store(tmp_path, "site")
    doc = site("--json", "bundle", "import", str(one)).json
    assert _status(doc) == {REF_A: "ok"}
    versions = {v["seq"]: v["present"] for v in site("--json", "ls", "-l").json["versions"]}
    assert versions == {1: False, 2: True, 3: False}
    report = site("--json", "verify", "--all").json
    assert report["ok"] and sorted(report["not_present"]) == [f"{A}@1", f"{A}@3"]
    _checks_out(site, f"{A}@2", tmp_path / "a2", tmp_path / "out2")
    run = site("--json", "checkout", f"{A}@1", str(tmp_path / "out1"), ok=False)
    _failed(run, "E_NOT_FOUND")
    assert not (tmp_path / "out1" / "model.bin").exists()
    _sound(site)


def test_a_bundle_cut_against_a_state_brings_the_content_the_site_registered_without(
        tmp_path: Path) -> None:
    sender = _store(tmp_path, "sender")
    for seq in (1, 2, 3):
        _add(sender, A, _model(tmp_path / f"a{seq}", seq, 100_000))
    one = tmp_path / "one.cbundle"
    sender("bundle", "create", str(one), f"{A}@2", "-q")
    site = _store(tmp_path, "site")
    _import(site, one)
    state = tmp_path / "state.json"
    _export(site, state)
    with Store.open(sender.store) as s:
        ids = {s.registry.state(A).version(seq).id for seq in (1, 3)}
    assert set(json.loads(state.read_bytes())["absent"]) == ids
    rest = tmp_path / "rest.cbundle"
    made = sender("--json", "bundle", "create", str(rest), "--since", str(state)).json
    _import(site, rest)
    versions = {v["seq"]: v["present"] for v in site("--json", "ls", "-l").json["versions"]}
    assert versions == {1: True, 2: True, 3: True}, made
    _checks_out(site, f"{A}@1", tmp_path / "a1", tmp_path / "out1")
    _checks_out(site, f"{A}@3", tmp_path / "a3", tmp_path / "out3")
    _sound(site)


# -- conflicts -----------------------------------------------------------------------------------


def test_a_ref_the_site_moved_meanwhile_is_rejected_and_force_replaces_it(
        sender: CasCli, tmp_path: Path) -> None:
    full = tmp_path / "full.cbundle"
    _create(sender, full)
    site = _store(tmp_path, "site")
    _import(site, full)
    state = tmp_path / "state.json"
    _export(site, state)
    _add(site, A, _model(tmp_path / "site-a2", 20, 100_000))  # the site's own v2
    _add(sender, A, _edit(tmp_path / "a1", tmp_path / "a2", 4000))
    inc = tmp_path / "v2.cbundle"
    _create(sender, inc, since=state)

    here = _synced(site.store)
    check = site("--json", "bundle", "verify", str(inc)).json
    assert _status({"refs": check["would"]}) == {REF_A: "rejected"}
    run = site("--json", "bundle", "import", str(inc), ok=False)
    doc = _failed(run, "E_CONFLICT")
    assert REF_A in doc["error"]["message"]
    assert _status(doc["result"]) == {REF_A: "rejected"}
    human = site("bundle", "import", str(inc), ok=False)
    assert "rejected" in human.out and "[E_CONFLICT]" in human.err
    assert _synced(site.store) == here  # nothing moved
    _sound(site)
    _checks_out(site, f"{A}@2", tmp_path / "site-a2", tmp_path / "mine")

    forced = site("--json", "bundle", "import", str(inc), "--force").json
    assert _status(forced) == {REF_A: "ok"}
    assert _synced(site.store)[REF_A] == _synced(sender.store)[REF_A]
    _sound(site)
    _checks_out(site, f"{A}@2", tmp_path / "a2", tmp_path / "theirs")


def test_a_state_whose_tip_the_sender_never_saw_is_refused_at_create(
        sender: CasCli, tmp_path: Path) -> None:
    full = tmp_path / "full.cbundle"
    _create(sender, full)
    site = _store(tmp_path, "site")
    _import(site, full)
    _add(site, A, _model(tmp_path / "site-a2", 20, 100_000))
    state = tmp_path / "state.json"
    _export(site, state)
    _add(sender, A, _edit(tmp_path / "a1", tmp_path / "a2", 4000))
    out = tmp_path / "v2.cbundle"
    run = sender("--json", "bundle", "create", str(out), "--since", str(state), ok=False)
    doc = _failed(run, "E_CONFLICT")
    assert _status(doc["result"]) == {REF_A: "rejected"}


# -- the state file ------------------------------------------------------------------------------


def test_the_state_of_500_models_of_10_versions_fits_in_64_kib(
        tmp_path: Path, git: str) -> None:
    """The registry is written by ``git fast-import`` (one pack, as ``git gc`` would leave
    it, which cas reads): commits with cas's messages and manifests, every version naming
    the content of one small file that the store holds, so all 5000 are held whole."""
    from cas.commits import commit_message
    from cas.versions import new_version_id

    t0 = time.monotonic()
    site = _store(tmp_path, "site")
    _add(site, "seed/tiny", write_files(tmp_path / "tiny", {"w.bin": b"tiny\n"}))
    with Store.open(site.store) as s:
        seed = s.manifest(s.resolve("seed/tiny"))
    commands = []
    for m in range(500):
        name = f"team-{m % 25:02d}/bert-base-finetune-{m:03d}"
        for seq in range(1, 11):
            vid = new_version_id()
            manifest = msgspec.structs.replace(seed, name=name, seq=seq, id=vid).encode()
            message = commit_message(f"add {name} v{seq}", "add", [seq], [],
                                     version_id=vid).encode()
            commands += [b"commit refs/models/%s\n" % name.encode(),
                         b"committer Site <site@example.org> %d +0000\n" % (1_700_000_000 + seq),
                         b"data %d\n%s\n" % (len(message), message),
                         b"M 100644 inline versions/%06d.json\n" % seq,
                         b"data %d\n%s\n" % (len(manifest), manifest)]
    subprocess.run([git, "--git-dir", str(site.store / "registry"), "fast-import", "--quiet"],
                   input=b"".join(commands), check=True)
    assert site("--json", "show", "team-07/bert-base-finetune-007@10").json["present"]

    state = tmp_path / "state.json"
    doc = site("--json", "state", "export", str(state)).json
    print(f"state of 501 models, 5001 versions: {doc['bytes']} bytes")
    assert doc["bytes"] == state.stat().st_size <= 64 * 1024
    parsed = bd.read_state(state.read_bytes())
    assert len(parsed.tips) == 501 and parsed.absent == []
    # exact: a bundle cut against it from the same store carries nothing
    made = site("--json", "bundle", "create", str(tmp_path / "none.cbundle"), "--since",
                str(state)).json
    assert made["refs"] == [] and made["objects"] == 0 and made["registry_objects"] == 0
    assert time.monotonic() - t0 < 30
