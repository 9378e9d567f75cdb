"""Sync with directory remotes: push, fetch, pull and clone through the real CLI.

Each store is its own folder (a host's store, a USB drive, an NFS share). What these tests hold
the commands to: only the objects the receiver lacks move; refs move fast-forward only (tags and
pins are created, not moved) unless ``--force``; a refused ref is ``rejected`` and the command
exits ``E_CONFLICT``; what arrives verifies and checks out byte-exact.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from cas import sync
from cas.chunking import ChunkerParams
from cas.demo import finetune_copy
from cas.errors import ConflictError
from cas.peer import LocalPeer
from cas.store import Store
from conftest import (CasCli, damage_chunk, edit_model, model_folder, pack_sizes, read_files,
                      registry_git, write_files)

NAME = "org/m"
MODEL_REF = f"refs/models/{NAME}"


def _model(folder: Path, seed: int = 0, size: int = 3 << 20) -> Path:
    return model_folder(folder, seed, size)


_edit, _files = edit_model, read_files

# -- helpers -------------------------------------------------------------------------------------


def _status(doc: dict) -> dict[str, str]:
    return {r["ref"]: r["status"] for r in doc["refs"]}


def _store(tmp_path: Path, name: str) -> CasCli:
    c = CasCli(tmp_path / name)
    c("init", "-q")
    return c


def _refs(store: Path, *prefixes: str) -> dict[str, str]:
    """Ref name -> id of ``store``'s registry under ``prefixes`` (default: the models, tags
    and pins a sync moves), read with real git."""
    out = registry_git(store, "for-each-ref", "--format=%(refname) %(objectname)",
                       *(prefixes or ("refs/models/", "refs/tags/", "refs/pins/")))
    return dict(line.split(" ") for line in out.splitlines())


def _checks_out(cli: CasCli, spec: str, src: Path, dest: Path) -> None:
    cli("checkout", spec, str(dest), "-q")
    assert _files(dest) == _files(src)


def _error(run) -> dict:  # type: ignore[no-untyped-def]
    assert "Traceback" not in run.err, run.err
    return run.json["error"]


# -- 1. push to a new folder ---------------------------------------------------------------------


def test_push_to_a_new_folder_makes_a_store_like_this_one(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = _model(tmp_path / "v1")
    cas("add", NAME, str(v1), "-q", "--tag", "prod")
    remote = tmp_path / "drive" / "cas"
    doc = cas("--json", "push", str(remote)).json
    assert doc["ok"] and doc["remote"] == "" and doc["url"] == str(remote)
    assert _status(doc)[MODEL_REF] == "ok" and _status(doc)[f"refs/tags/{NAME}@prod"] == "ok"
    assert doc["objects_sent"] > 0 and doc["bytes_sent"] >= 3 << 20 and doc["packs"] >= 1
    assert doc["registry_objects"] > 0 and doc["warnings"] == []

    with Store.open(cas.store) as here, Store.open(remote) as there:
        assert there.config.chunker == here.config.chunker
        assert there.config.derives == here.config.derives
        assert there.uuid and there.uuid != here.uuid
    far = CasCli(remote)
    assert far("--json", "verify", "--all").json["versions_checked"] == 1
    (row,) = far("--json", "ls").json["models"]
    assert (row["name"], row["latest"], row["tags"]) == (NAME, 1, {"prod": 1})

    clone = CasCli(tmp_path / "clone")
    clone("clone", str(remote), "-q")
    _checks_out(clone, NAME, v1, tmp_path / "out")
    assert _refs(clone.store, "refs/models/") == _refs(cas.store, "refs/models/")


def test_push_into_a_folder_that_is_not_a_store_is_refused(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("add", NAME, str(_model(tmp_path / "v1", size=100_000)), "-q")
    folder = write_files(tmp_path / "photos", {"a.jpg": b"jpeg"})
    run = cas("--json", "push", str(folder), ok=False)
    assert run.code == ConflictError.exit_code and _error(run)["code"] == "E_CONFLICT"
    assert _files(folder) == {"a.jpg": b"jpeg"}
    # a model folder (its config.json is not a store's): not a store, left alone
    model = write_files(tmp_path / "bert", {"config.json": b"{}", "model.bin": b"w"})
    run = cas("--json", "push", str(model), ok=False)
    assert _error(run)["code"] in ("E_CONFLICT", "E_NOT_FOUND")
    assert "not a cas store" in _error(run)["message"]
    assert _files(model) == {"config.json": b"{}", "model.bin": b"w"}


# -- 2. only missing objects move ----------------------------------------------------------------


def test_only_missing_objects_move(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = _model(tmp_path / "v1", size=4 << 20)
    cas("add", NAME, str(v1), "-q")
    remote = tmp_path / "remote"
    first = cas("--json", "push", str(remote)).json

    again = cas("--json", "push", str(remote)).json
    assert set(_status(again).values()) == {"up-to-date"}
    assert (again["objects_sent"], again["bytes_sent"], again["packs"],
            again["registry_objects"]) == (0, 0, 0, 0)

    v2 = _edit(v1, tmp_path / "v2", at=2 << 20)
    cas("add", NAME, str(v2), "-q")
    second = cas("--json", "push", str(remote)).json
    assert _status(second) == {MODEL_REF: "ok"}
    assert 0 < second["bytes_sent"] < first["bytes_sent"] // 10
    assert second["objects_skipped"] > 0  # the unchanged chunks were offered and not sent
    far = CasCli(remote)
    far("verify", "--all", "-q")
    _checks_out(far, f"{NAME}@2", v2, tmp_path / "out2")

    # the other way: a store that holds v1's bytes under another name receives only v2's
    # changed chunks
    here = _store(tmp_path, "here")
    here("add", "other/copy", str(v1), "-q")
    pulled = here("--json", "pull", str(remote), NAME).json
    assert _status(pulled) == {MODEL_REF: "ok"}
    assert pulled["bytes_sent"] <= second["bytes_sent"] and pulled["objects_skipped"] > 0
    _checks_out(here, f"{NAME}@1", v1, tmp_path / "here1")


def test_a_remote_with_other_chunker_parameters_is_accepted_with_a_warning(  # type: ignore[no-untyped-def]
        cas, tmp_path: Path) -> None:
    v1 = _model(tmp_path / "v1", size=500_000)
    cas("add", NAME, str(v1), "-q")
    remote = tmp_path / "remote"
    theirs = ChunkerParams(avg_size=32768, min_size=8192, max_size=131072)
    Store.init(remote, chunker=theirs).close()
    doc = cas("--json", "push", str(remote)).json
    assert _status(doc) == {MODEL_REF: "ok"}
    assert [w["code"] for w in doc["warnings"]] == ["W_CHUNKER_DIFFERS"]
    run = CasCli(cas.store)("push", str(remote))  # human output: the warning on stderr
    assert "[W_CHUNKER_DIFFERS]" in run.err
    far = CasCli(remote)
    far("verify", "--all", "-q")
    _checks_out(far, NAME, v1, tmp_path / "out")
    # a pull into a store with the defaults warns too; a clone takes the remote's parameters
    doc = _store(tmp_path, "here")("--json", "pull", str(remote)).json
    assert _status(doc) == {MODEL_REF: "ok"}
    assert [w["code"] for w in doc["warnings"]] == ["W_CHUNKER_DIFFERS"]
    doc = CasCli(tmp_path / "clone")("--json", "clone", str(remote)).json
    assert _status(doc) == {MODEL_REF: "ok"} and doc["warnings"] == []
    with Store.open(tmp_path / "clone") as clone:
        assert clone.config.chunker == theirs


# -- 3. the real model ---------------------------------------------------------------------------


def test_real_model_fine_tune_sends_only_what_it_added(cas, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       real_model: Path) -> None:
    v1 = tmp_path / "v1"
    shutil.copytree(real_model, v1, ignore=shutil.ignore_patterns(".gitattributes"))
    v2 = tmp_path / "v2"
    finetune_copy(v1, v2)  # only the last layer (and the pooler) change
    size = (v1 / "model.safetensors").stat().st_size

    cas("add", NAME, str(v1), "-q")
    remote = tmp_path / "remote"
    first = cas("--json", "push", str(remote)).json
    assert first["bytes_sent"] > size // 2
    cas("add", NAME, str(v2), "-q")
    (row,) = [r for r in cas("--json", "du", NAME).json["versions"] if r["version"].endswith("@2")]
    added = row["new_stored"]
    second = cas("--json", "push", str(remote)).json
    assert _status(second) == {MODEL_REF: "ok"}
    assert 0 < second["bytes_sent"] <= 1.1 * added, (second["bytes_sent"], added)
    assert second["bytes_sent"] <= size // 10, (second["bytes_sent"], size)

    # Both versions to an empty remote in one push: v2's derived chunks arrive in a later
    # transfer pack than the bases they are decoded against.
    empty = tmp_path / "empty"
    both = cas("--json", "push", str(empty)).json
    assert both["packs"] >= 2
    assert (both["objects_sent"], both["bytes_sent"]) == (
        first["objects_sent"] + second["objects_sent"], first["bytes_sent"] + second["bytes_sent"])
    far = CasCli(empty)
    assert far("--json", "verify", "--all").json["versions_checked"] == 2
    (far_row,) = [r for r in far("--json", "du", NAME).json["versions"]
                  if r["version"].endswith("@2")]
    assert far_row["borrowed"] > 0  # v2 is stored derived from v1 there too
    clone = CasCli(tmp_path / "clone")
    clone("clone", str(empty), "-q")
    _checks_out(clone, f"{NAME}@1", v1, tmp_path / "out1")
    _checks_out(clone, f"{NAME}@2", v2, tmp_path / "out2")


# -- 4. fetch, then pull -------------------------------------------------------------------------


def test_fetch_records_tracking_refs_and_moves_no_content(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = _model(tmp_path / "v1", size=1 << 20)
    cas("add", NAME, str(v1), "-q", "--tag", "prod")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    theirs = _refs(remote)

    here = _store(tmp_path, "here")
    here("remote", "add", "origin", str(remote), "-q")
    doc = here("--json", "fetch").json
    assert doc["remote"] == "origin" and doc["registry_objects"] > 0
    assert _status(doc) == {MODEL_REF: "ok", f"refs/tags/{NAME}@prod": "ok"}
    assert (doc["objects_sent"], doc["bytes_sent"], doc["packs"]) == (0, 0, 0)
    tracking = _refs(here.store, *(f"refs/remotes/origin/{k}/" for k in ("models", "tags",
                                                                         "pins")))
    assert tracking == {"refs/remotes/origin/" + r[len("refs/"):]: sha
                        for r, sha in theirs.items()}
    assert set(tracking) >= {f"refs/remotes/origin/models/{NAME}",
                             f"refs/remotes/origin/tags/{NAME}@prod"}
    assert _refs(here.store, "refs/models/") == {} and _refs(here.store, "refs/tags/") == {}
    assert pack_sizes(here.store) == {}
    assert here("--json", "ls").json["models"] == []

    pulled = here("--json", "pull").json
    assert _status(pulled) == {MODEL_REF: "ok", f"refs/tags/{NAME}@prod": "ok"}
    assert pulled["objects_sent"] > 0 and pulled["registry_objects"] == 0  # fetched already
    assert [m["name"] for m in here("--json", "ls").json["models"]] == [NAME]
    _checks_out(here, f"{NAME}@prod", v1, tmp_path / "out")
    here("verify", "--all", "-q")

    # the remote moves on; a second fetch moves the tracking ref, not the model
    v2 = _edit(v1, tmp_path / "v2", at=1000)
    cas("add", NAME, str(v2), "-q")
    cas("push", str(remote), "-q")
    before = _refs(here.store, "refs/models/")
    doc = here("--json", "fetch").json
    assert _status(doc) == {MODEL_REF: "ok", f"refs/tags/{NAME}@prod": "up-to-date"}
    assert _refs(here.store, "refs/remotes/origin/models/") == {
        f"refs/remotes/origin/models/{NAME}": _refs(remote)[MODEL_REF]}
    assert _refs(here.store, "refs/models/") == before
    assert _status(here("--json", "pull").json)[MODEL_REF] == "ok"
    _checks_out(here, NAME, v2, tmp_path / "out2")


# -- 5. fast-forward rules -----------------------------------------------------------------------


def test_push_and_pull_move_models_fast_forward_only(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = _model(tmp_path / "v1", size=1 << 20)
    cas("add", NAME, str(v1), "-q")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    one, two = CasCli(tmp_path / "one"), CasCli(tmp_path / "two")
    one("clone", str(remote), "-q")
    two("clone", str(remote), "-q")
    a = _edit(v1, tmp_path / "a", at=100, patch=b"run a")
    b = _edit(v1, tmp_path / "b", at=200_000, patch=b"run b")
    one("add", NAME, str(a), "-q")
    two("add", NAME, str(b), "-q")

    assert _status(one("--json", "push").json) == {MODEL_REF: "ok"}
    after_one = _refs(remote)
    assert after_one[MODEL_REF] == _refs(one.store)[MODEL_REF]

    run = two("--json", "push", ok=False)
    assert run.code == ConflictError.exit_code and _error(run)["code"] == "E_CONFLICT"
    (ref,) = run.json["result"]["refs"]
    assert ref["ref"] == MODEL_REF and ref["status"] == "rejected"
    assert "diverged" in ref["reason"] or "fast-forward" in ref["reason"]
    assert _refs(remote) == after_one
    CasCli(remote)("verify", "--all", "-q")

    forced = two("--json", "push", "--force").json
    assert _status(forced) == {MODEL_REF: "ok"}
    assert _refs(remote)[MODEL_REF] == _refs(two.store)[MODEL_REF]
    _checks_out(CasCli(remote), f"{NAME}@2", b, tmp_path / "forced")

    # pull of the diverged model: rejected, one's model stays as it was
    mine = _refs(one.store, "refs/models/")
    run = one("--json", "pull", ok=False)
    assert run.code == ConflictError.exit_code and _error(run)["code"] == "E_CONFLICT"
    assert _status(run.json["result"]) == {MODEL_REF: "rejected"}
    reason = run.json["result"]["refs"][0]["reason"]
    assert "diverged" in reason or "both stores added versions" in reason, reason
    assert _refs(one.store, "refs/models/") == mine
    _checks_out(one, f"{NAME}@2", a, tmp_path / "still-a")

    # pull when this store is ahead: up-to-date, nothing changes
    two("add", NAME, str(_edit(b, tmp_path / "b3", at=300_000, patch=b"v3")), "-q")
    ahead = _refs(two.store, "refs/models/")
    doc = two("--json", "pull").json
    assert _status(doc) == {MODEL_REF: "up-to-date"}
    assert _refs(two.store, "refs/models/") == ahead


# -- 6. tags and pins ----------------------------------------------------------------------------


def test_tags_and_pins_travel_and_are_not_moved_without_force(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = _model(tmp_path / "v1", size=200_000)
    cas("add", NAME, str(v1), "-q", "--tag", "prod")
    cas("add", NAME, str(_edit(v1, tmp_path / "v2", at=10)), "-q")
    cas("pin", f"{NAME}@2", "-q")
    remote = tmp_path / "remote"
    doc = cas("--json", "push", str(remote)).json
    ours = _refs(cas.store)
    (pin,) = [r for r in ours if r.startswith("refs/pins/")]
    assert _status(doc) == {MODEL_REF: "ok", f"refs/tags/{NAME}@prod": "ok", pin: "ok"}
    assert _refs(remote) == ours
    clone = CasCli(tmp_path / "clone")
    clone("clone", str(remote), "-q")
    assert _refs(clone.store, "refs/tags/") == _refs(cas.store, "refs/tags/")
    assert [r for r in _refs(clone.store) if r.startswith("refs/pins/")] == [pin]

    # prod moves here: the remote's prod is not replaced without --force
    cas("tag", f"{NAME}@2", "prod", "--force", "-q")
    run = cas("--json", "push", str(remote), ok=False)
    assert run.code == ConflictError.exit_code and _error(run)["code"] == "E_CONFLICT"
    status = _status(run.json["result"])
    assert status[f"refs/tags/{NAME}@prod"] == "rejected" and status[pin] == "up-to-date"
    assert "--force" in run.json["result"]["refs"][-1]["reason"]
    # (tagging records a commit on the model: that ref fast-forwards, the tag stays)
    assert status[MODEL_REF] in ("ok", "up-to-date")
    assert _refs(remote, "refs/tags/") == {f"refs/tags/{NAME}@prod": ours[f"refs/tags/{NAME}@prod"]}
    assert _refs(remote, "refs/pins/") == {pin: ours[pin]}
    forced = cas("--json", "push", str(remote), "--force").json
    assert _status(forced)[f"refs/tags/{NAME}@prod"] == "ok"
    assert _refs(remote) == _refs(cas.store)
    assert CasCli(remote)("--json", "ls").json["models"][0]["tags"] == {"prod": 2}

    # pull has no --force: the clone keeps its prod, and says so
    run = clone("--json", "pull", ok=False)
    assert _error(run)["code"] == "E_CONFLICT"
    assert _status(run.json["result"])[f"refs/tags/{NAME}@prod"] == "rejected"
    assert clone("--json", "ls").json["models"][0]["tags"] == {"prod": 1}


# -- 7. named models -----------------------------------------------------------------------------


def test_only_the_named_models_move(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("add", "org/a", str(_model(tmp_path / "a", seed=1, size=100_000)), "-q", "--tag", "x")
    cas("add", "org/b", str(_model(tmp_path / "b", seed=2, size=100_000)), "-q", "--tag", "x")
    remote = tmp_path / "remote"
    doc = cas("--json", "push", str(remote), "org/a").json
    assert _status(doc) == {"refs/models/org/a": "ok", "refs/tags/org/a@x": "ok"}
    assert set(_refs(remote)) == {"refs/models/org/a", "refs/tags/org/a@x"}

    # a name this store lacks: E_NOT_FOUND, and nothing moves (org/b neither)
    packs = pack_sizes(remote)
    run = cas("--json", "push", str(remote), "org/b", "org/nope", ok=False)
    assert _error(run)["code"] == "E_NOT_FOUND" and "org/nope" in _error(run)["message"]
    assert set(_refs(remote)) == {"refs/models/org/a", "refs/tags/org/a@x"}
    assert pack_sizes(remote) == packs
    run = cas("--json", "push", str(tmp_path / "fresh"), "org/nope", ok=False)
    assert _error(run)["code"] == "E_NOT_FOUND"
    assert not (tmp_path / "fresh").exists()

    # pull NAME: only that model; one the remote lacks: E_NOT_FOUND, nothing moved
    cas("push", str(remote), "-q")
    here = _store(tmp_path, "here")
    run = here("--json", "pull", str(remote), "org/nope", ok=False)
    assert _error(run)["code"] == "E_NOT_FOUND"
    assert _refs(here.store, "refs/models/") == {} and pack_sizes(here.store) == {}
    doc = here("--json", "pull", str(remote), "org/b").json
    assert _status(doc) == {"refs/models/org/b": "ok", "refs/tags/org/b@x": "ok"}
    assert [m["name"] for m in here("--json", "ls").json["models"]] == ["org/b"]


def test_a_model_name_that_clashes_on_the_other_side_is_rejected(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``org`` and ``org/m`` (one would be a folder of the other), ``Org/M`` and ``org/m``
    (one file on a case-insensitive disk): refused per ref, the other side unchanged."""
    folder = _model(tmp_path / "v1", size=30_000)
    cas("add", NAME, str(folder), "-q")
    for theirs in ("org", "Org/M"):
        other = _store(tmp_path, f"other-{theirs[0]}")
        other("add", theirs, str(folder), "-q")
        remote = tmp_path / f"remote-{theirs[0]}"
        other("push", str(remote), "-q")
        before = _refs(remote)
        run = cas("--json", "push", str(remote), ok=False)
        assert _error(run)["code"] == "E_CONFLICT"
        (ref,) = run.json["result"]["refs"]
        assert (ref["ref"], ref["status"]) == (MODEL_REF, "rejected") and theirs in ref["reason"]
        assert _refs(remote) == before
        # and the other way: a pull into the store that has the other name
        run = other("--json", "pull", str(cas.store), ok=False)
        assert _error(run)["code"] == "E_CONFLICT"
        assert _status(run.json["result"]) == {MODEL_REF: "rejected"}
        assert [m["name"] for m in other("--json", "ls").json["models"]] == [theirs]


# -- 8. default remote ---------------------------------------------------------------------------


def test_default_remote_is_origin_or_the_only_one(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("add", NAME, str(_model(tmp_path / "v1", size=50_000)), "-q")
    for verb in ("push", "fetch", "pull"):
        run = cas("--json", verb, ok=False)
        assert _error(run)["code"] == "E_ARGS" and "remote" in _error(run)["message"], verb

    cas("remote", "add", "usb", str(tmp_path / "usb"), "-q")
    assert cas("--json", "push").json["remote"] == "usb"
    assert (tmp_path / "usb" / "config.json").is_file()

    cas("remote", "add", "backup", str(tmp_path / "backup"), "-q")
    run = cas("--json", "push", ok=False)
    assert _error(run)["code"] == "E_ARGS"
    assert "backup" in _error(run)["message"] and "usb" in _error(run)["message"]
    assert not (tmp_path / "backup").exists()

    cas("remote", "add", "origin", str(tmp_path / "origin"), "-q")
    doc = cas("--json", "push").json
    assert doc["remote"] == "origin" and doc["url"] == str(tmp_path / "origin")
    assert _status(doc) == {MODEL_REF: "ok"}
    assert not (tmp_path / "backup").exists()
    # a push to a configured remote records what it now holds as tracking refs
    assert _refs(cas.store, "refs/remotes/origin/models/") == {
        f"refs/remotes/origin/models/{NAME}": _refs(cas.store)[MODEL_REF]}


# -- 9. two pushers at once ----------------------------------------------------------------------


def test_two_pushers_at_once_one_wins_and_nothing_is_lost(cas, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                          monkeypatch) -> None:
    v1 = _model(tmp_path / "v1", size=1 << 20)
    cas("add", NAME, str(v1), "-q")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    clis = [CasCli(tmp_path / "one"), CasCli(tmp_path / "two")]
    tips = [_edit(v1, tmp_path / "a", at=5000, patch=b"run a"),
            _edit(v1, tmp_path / "b", at=700_000, patch=b"run b")]
    for cli, tip in zip(clis, tips):
        cli("clone", str(remote), "-q")
        cli("add", NAME, str(tip), "-q")

    # Both pushes have read the remote's refs and sent their content; they wait for each
    # other here, before either moves a ref.
    barrier = threading.Barrier(2, timeout=60)
    original = LocalPeer.update_refs

    def update_refs(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.store.path.resolve() == remote.resolve():
            barrier.wait()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LocalPeer, "update_refs", update_refs)
    results: list[sync.SyncResult | BaseException | None] = [None, None]

    def run(i: int) -> None:
        try:
            with Store.open(clis[i].store) as store:
                results[i] = sync.push(store, str(remote))
        except BaseException as exc:  # reported below; the other thread must not hang
            results[i] = exc
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(r, sync.SyncResult) for r in results), results
    statuses = [{r.ref: r.status for r in res.refs} for res in results]  # type: ignore[union-attr]
    assert sorted(s[MODEL_REF] for s in statuses) == ["ok", "rejected"]
    assert all(res.objects_sent > 0 for res in results)  # type: ignore[union-attr]
    winner = 0 if statuses[0][MODEL_REF] == "ok" else 1
    loser = 1 - winner
    assert _refs(remote)[MODEL_REF] == _refs(clis[winner].store)[MODEL_REF]

    far = CasCli(remote)
    assert far("--json", "verify", "--all").json["versions_checked"] == 2
    _checks_out(far, f"{NAME}@1", v1, tmp_path / "far1")
    _checks_out(far, f"{NAME}@2", tips[winner], tmp_path / "far2")
    # the loser's version is still whole in its own store; a plain push is refused, and
    # after pull --rebase (its version renumbered after the winner's) it goes through
    _checks_out(clis[loser], f"{NAME}@2", tips[loser], tmp_path / "loser2")
    clis[loser]("verify", "--all", "-q")
    run = clis[loser]("--json", "push", ok=False)
    assert _error(run)["code"] == "E_CONFLICT"
    assert _refs(remote)[MODEL_REF] == _refs(clis[winner].store)[MODEL_REF]
    clis[loser]("pull", "--rebase", "-q")
    assert _status(clis[loser]("--json", "push").json)[MODEL_REF] == "ok"
    assert far("--json", "verify", "--all").json["versions_checked"] == 3
    _checks_out(far, f"{NAME}@2", tips[winner], tmp_path / "far2-after")
    _checks_out(far, f"{NAME}@3", tips[loser], tmp_path / "far3")


def test_a_writer_in_the_same_process_keeps_a_transfer_pack_being_received(  # type: ignore[no-untyped-def]
        cas, tmp_path: Path, monkeypatch) -> None:
    cas("add", NAME, str(_model(tmp_path / "v1", size=1 << 20)), "-q")
    remote = tmp_path / "remote"
    Store.init(remote).close()
    send = LocalPeer.send

    def send_with_an_interloper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        total, pieces = send(self, *args, **kwargs)
        pieces = list(pieces)

        def stream():  # type: ignore[no-untyped-def]
            yield from pieces[:-1]
            # another thread of this process (a second push, a library user) writes to the
            # remote while this push's transfer pack is being received
            with Store.open(remote) as other, other.writing():
                pass
            yield pieces[-1]
        return total, stream()

    monkeypatch.setattr(LocalPeer, "send", send_with_an_interloper)
    with Store.open(cas.store) as store:
        result = sync.push(store, str(remote))
    assert {r.ref: r.status for r in result.refs} == {MODEL_REF: "ok"}


# -- 10. clone -----------------------------------------------------------------------------------


def test_clone_refuses_an_existing_store_and_a_missing_remote(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("add", NAME, str(_model(tmp_path / "v1", size=50_000)), "-q")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    refs = _refs(cas.store)
    run = cas("--json", "clone", str(remote), ok=False)  # the --store path holds a store
    assert run.code == ConflictError.exit_code and _error(run)["code"] == "E_CONFLICT"
    assert _refs(cas.store) == refs and cas("--json", "remote", "list").json["remotes"] == []

    target = tmp_path / "target"
    run = CasCli(target)("--json", "clone", str(tmp_path / "nowhere"), ok=False)
    assert _error(run)["code"] == "E_NOT_FOUND"
    assert not (target / "config.json").exists() and not (tmp_path / "nowhere").exists()

    doc = CasCli(tmp_path / "x")("--json", "clone", str(remote), str(target)).json
    assert _status(doc) == {MODEL_REF: "ok"} and doc["remote"] == "origin"
    rows = CasCli(target)("--json", "remote", "list").json["remotes"]
    assert [(r["name"], r["url"]) for r in rows] == [("origin", str(remote))]
    assert not (tmp_path / "x").exists()


# -- removed versions ----------------------------------------------------------------------------


def test_a_removed_version_travels_with_its_model_while_it_is_restorable(  # type: ignore[no-untyped-def]
        cas, tmp_path: Path) -> None:
    v1 = _model(tmp_path / "v1", size=300_000)
    cas("add", NAME, str(v1), "-q")
    cas("add", NAME, str(_edit(v1, tmp_path / "v2", at=10)), "-q")
    cas("rm", f"{NAME}@1", "-q")
    remote = tmp_path / "remote"
    assert _status(cas("--json", "push", str(remote)).json) == {MODEL_REF: "ok"}
    far = CasCli(remote)
    # the remote is sound: the removed version's content came with it (not "broken")
    assert far("--json", "verify", "--all").json["broken_versions"] == []
    far("restore", f"{NAME}@1", "-q")
    _checks_out(far, f"{NAME}@1", v1, tmp_path / "out1")
    clone = CasCli(tmp_path / "clone")
    clone("clone", str(remote), "-q")
    _checks_out(clone, f"{NAME}@1", v1, tmp_path / "out2")


# -- bad bytes from a remote ---------------------------------------------------------------------


def test_a_remote_serving_damaged_bytes_is_refused_and_nothing_lands(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    v1 = _model(tmp_path / "v1", size=1 << 20)
    cas("add", NAME, str(v1), "-q")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    damage_chunk(remote, NAME, "model.bin", index=3)
    here = _store(tmp_path, "here")
    run = here("--json", "pull", str(remote), ok=False)
    assert _error(run)["code"] == "E_VERIFY"
    # the one transfer pack held the bad chunk: none of it became visible, no temp is left
    assert _refs(here.store, "refs/models/") == {} and pack_sizes(here.store) == {}
    assert list((here.store / "tmp").iterdir()) == []
    assert here("--json", "ls").json["models"] == []
    here("verify", "--all", "-q")
    # the damage mended on the remote (pushed again from the good copy), the pull succeeds
    shutil.rmtree(remote)
    cas("push", str(remote), "-q")
    assert _status(here("--json", "pull", str(remote)).json) == {MODEL_REF: "ok"}
    _checks_out(here, NAME, v1, tmp_path / "out")


# -- 11. output ----------------------------------------------------------------------------------


def test_human_quiet_and_json_output_of_each_command(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("add", NAME, str(_model(tmp_path / "v1", size=50_000)), "-q", "--tag", "prod")
    remote = tmp_path / "remote"
    run = cas("push", str(remote))
    assert run.out.startswith(f"pushed to {remote}")
    assert f"models/{NAME}" in run.out and f"tags/{NAME}@prod" in run.out and "ok" in run.out
    assert cas("push", str(remote), "--quiet").out == ""

    clone = CasCli(tmp_path / "clone")
    run = clone("clone", str(remote))
    assert f"models/{NAME}" in run.out and f"tags/{NAME}@prod" in run.out
    assert CasCli(tmp_path / "c2")("clone", str(remote), "-q").out == ""
    doc = CasCli(tmp_path / "c3")("--json", "clone", str(remote)).json
    assert doc["ok"] and _status(doc) == {MODEL_REF: "ok", f"refs/tags/{NAME}@prod": "ok"}

    assert clone("fetch", "-q").out == "" and clone("pull", "-q").out == ""
    doc = clone("--json", "fetch").json
    assert doc["ok"] and doc["remote"] == "origin"
    for key in ("refs", "objects_sent", "bytes_sent", "objects_skipped", "registry_objects",
                "packs", "seconds", "warnings"):
        assert key in doc, key
    run = clone("pull")
    assert run.out.startswith("pulled from origin") and f"models/{NAME}" in run.out
    assert "up-to-date" in run.out
    doc = clone("--json", "pull").json
    assert doc["ok"] and set(_status(doc).values()) == {"up-to-date"}
    assert all(set(r) == {"ref", "status", "reason"} for r in doc["refs"])

    # a rejection: one JSON document with the error and the per-ref result
    cas("add", NAME, str(_model(tmp_path / "v2", seed=9, size=50_000)), "-q")
    cas("tag", f"{NAME}@2", "prod", "--force", "-q")
    run = cas("--json", "push", str(remote), ok=False)
    assert run.out.count("\n") == 1 and run.json["ok"] is False
    assert run.json["result"]["refs"]


def test_fetch_names_the_refs_it_recorded(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("add", NAME, str(_model(tmp_path / "v1", size=50_000)), "-q", "--tag", "prod")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    here = _store(tmp_path, "here")
    here("remote", "add", "origin", str(remote), "-q")
    run = here("fetch")
    assert f"models/{NAME}" in run.out and f"tags/{NAME}@prod" in run.out


def test_quiet_prints_only_the_error_when_a_ref_is_rejected(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas("add", NAME, str(_model(tmp_path / "v1", size=50_000)), "-q", "--tag", "prod")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    cas("add", NAME, str(_model(tmp_path / "v2", seed=9, size=50_000)), "-q")
    cas("tag", f"{NAME}@2", "prod", "--force", "-q")
    run = cas("push", str(remote), "--quiet", ok=False)
    assert run.code == ConflictError.exit_code
    assert run.out == ""
    assert "E_CONFLICT" in run.err or "rejected" in run.err


def test_a_push_from_a_store_that_is_only_behind_does_not_say_diverged(  # type: ignore[no-untyped-def]
        cas, tmp_path: Path) -> None:
    v1 = _model(tmp_path / "v1", size=50_000)
    cas("add", NAME, str(v1), "-q")
    remote = tmp_path / "remote"
    cas("push", str(remote), "-q")
    behind = CasCli(tmp_path / "behind")
    behind("clone", str(remote), "-q")
    cas("add", NAME, str(_edit(v1, tmp_path / "v2", at=10)), "-q")
    cas("push", str(remote), "-q")
    # this store has not changed the model since it last saw the remote (its tracking ref
    # says so): refused, but as "behind", not as a divergence
    assert _refs(behind.store, "refs/remotes/origin/models/")[
        f"refs/remotes/origin/models/{NAME}"] == _refs(behind.store)[MODEL_REF]
    run = behind("--json", "push", ok=False)
    assert _error(run)["code"] == "E_CONFLICT"
    (ref,) = run.json["result"]["refs"]
    assert ref["status"] == "rejected"
    assert "diverged" not in ref["reason"] and "both sides" not in ref["reason"]
