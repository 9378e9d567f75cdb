"""pull when a model changed on both stores, with directory remotes, through the real CLI.

Two stores clone one remote and both change a model. What these tests hold ``pull`` to:
this store's changes are replayed on the remote's history so that its next push
fast-forwards; a version both sides added is renumbered only with ``--rebase``, keeps its id
and says what it was, and its tags and pins follow it; a version that already left this
store is renumbered only with ``--force``; changes both sides made to one version are
refused, naming it, and a refusal leaves the model as it was.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cas import sync
from cas.errors import ArgsError, ConflictError
from cas.ingest import AddOptions
from cas.store import Store
from conftest import CasCli, registry_git, model_folder, read_files

NAME = "org/m"
MODEL_REF = f"refs/models/{NAME}"
SIZE = 100_000


def _model(folder: Path, seed: int) -> Path:
    return model_folder(folder, seed, SIZE)


_files = read_files

# -- helpers -------------------------------------------------------------------------------------


def _add(store_path: Path, seed: int, tmp_path: Path, tags: tuple[str, ...] = ()) -> str:
    """Add a version (set up through the library); its id."""
    folder = _model(tmp_path / f"src{seed}", seed)
    with Store.open(store_path) as store:
        r = store.add(NAME, folder, AddOptions(tags=list(tags)))
        return store.resolve(f"{NAME}@{r.seq}").id


def _two_clones(tmp_path: Path, versions: int = 1) -> tuple[Path, CasCli, CasCli, list[str]]:
    """A remote with ``versions`` versions of NAME and two clones of it, A and B (set up
    through the library); the versions' ids."""
    remote = tmp_path / "remote"
    Store.init(remote).close()
    ids = [_add(remote, 100 + i, tmp_path) for i in range(versions)]
    clis = []
    for name in ("a", "b"):
        store, _ = sync.clone(str(remote), tmp_path / name)
        store.close()
        clis.append(CasCli(tmp_path / name))
    return remote, clis[0], clis[1], ids


def _push(cli: CasCli, remote: str = "origin") -> None:
    """Push through the library (setup)."""
    with Store.open(cli.store) as store:
        r = sync.push(store, remote)
    assert not r.rejected, r.refs


def _refs(store: Path) -> dict[str, str]:
    """The model, tag and pin refs of ``store``, read with real git."""
    out = registry_git(store, "for-each-ref", "--format=%(refname) %(objectname)",
                       "refs/models/", "refs/tags/", "refs/pins/")
    return dict(line.split(" ") for line in out.splitlines())


def _error(run) -> dict:  # type: ignore[no-untyped-def]
    assert "Traceback" not in run.err, run.err
    return run.json["error"]


def _model_result(doc: dict) -> dict:
    (r,) = [r for r in doc["refs"] if r["ref"] == MODEL_REF]
    return r


def _ids(cli: CasCli) -> dict[int, str]:
    return {v["seq"]: v["id"] for v in cli("--json", "ls", "--long").json["versions"]}


def _is_ancestor(store: Path, older: str, newer: str) -> bool:
    return subprocess.run(["git", "--git-dir", str(store / "registry"), "merge-base",
                           "--is-ancestor", older, newer]).returncode == 0


def _refused(cli: CasCli, *args: str) -> str:
    """Run a pull that must be refused with E_CONFLICT, the model ref rejected and no ref of
    this store moved; the rejection's reason."""
    before = _refs(cli.store)
    run = cli("--json", "pull", *args, ok=False)
    assert run.code == ConflictError.exit_code and _error(run)["code"] == "E_CONFLICT", run.out
    r = _model_result(run.json["result"])
    assert r["status"] == "rejected"
    assert _refs(cli.store) == before
    return r["reason"]


# -- replayed without renumbering ----------------------------------------------------------------


def test_an_add_here_is_replayed_on_an_annotation_there(tmp_path: Path, git) -> None:  # type: ignore[no-untyped-def]
    remote, a, b, (id1,) = _two_clones(tmp_path)
    a("annotate", f"{NAME}@1", "--metric", "acc=0.9", "-q")
    a("push", "-q")
    a_tip = _refs(remote)[MODEL_REF]
    id2 = _add(b.store, 2, tmp_path)

    r = _model_result(b("--json", "pull").json)
    assert r["status"] == "ok" and "rebased" in r["reason"] and "renumbered" not in r["reason"]
    history = b("--json", "log", NAME).json["history"]
    assert [(h["action"], h["versions"]) for h in history] == [
        ("add", [2]), ("annotate", [1]), ("add", [1])]
    assert "was" not in history[0]["message"]
    assert _ids(b) == {1: id1, 2: id2}  # B's version keeps its number and id
    assert b("--json", "show", f"{NAME}@1").json["manifest"]["metadata"]["metrics"] == {
        "acc": 0.9}
    b("verify", "--all", "-q")

    doc = b("--json", "push").json  # a fast-forward now: no --force
    assert _model_result(doc)["status"] == "ok"
    assert _refs(remote)[MODEL_REF] == _refs(b.store)[MODEL_REF]
    assert _is_ancestor(remote, a_tip, _refs(remote)[MODEL_REF])
    assert _model_result(a("--json", "pull").json)["status"] == "ok"
    assert _ids(a) == {1: id1, 2: id2}


# -- both added a version ------------------------------------------------------------------------


def test_both_added_a_version_rebase_renumbers_this_stores_after_the_remotes(  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    remote, a, b, (id1,) = _two_clones(tmp_path)
    id_a = _add(a.store, 2, tmp_path)
    _push(a)
    id_b = _add(b.store, 3, tmp_path, tags=("mine",))
    b("pin", f"{NAME}@2", "-q")

    reason = _refused(b, "origin")
    assert "both stores added versions" in reason and "--rebase" in reason, reason
    assert _ids(b) == {1: id1, 2: id_b}

    r = _model_result(b("--json", "pull", "--rebase").json)
    assert r["status"] == "ok" and "v2 -> v3" in r["reason"], r
    mine = b("--json", "show", f"{NAME}@mine").json
    assert (mine["seq"], mine["id"]) == (3, id_b)
    assert "(was v2 here)" in mine["message"], mine["message"]
    assert len(mine["pins"]) == 1  # the pin followed it
    assert _ids(b) == {1: id1, 2: id_a, 3: id_b}
    doc = b("--json", "verify", "--all").json
    assert (doc["versions_checked"], doc["not_present"], doc["broken_versions"]) == (3, [], [])
    b("checkout", f"{NAME}@3", str(tmp_path / "b3"), "-q")
    assert _files(tmp_path / "b3") == _files(tmp_path / "src3")

    doc = b("--json", "push").json
    assert {r["status"] for r in doc["refs"]} == {"ok"} and len(doc["refs"]) == 3
    assert _refs(remote) == _refs(b.store)
    doc = CasCli(remote)("--json", "verify", "--all").json
    assert (doc["versions_checked"], doc["not_present"]) == (3, [])
    doc = a("--json", "pull").json
    assert {r["status"] for r in doc["refs"]} == {"ok"}
    assert _ids(a) == {1: id1, 2: id_a, 3: id_b}
    assert a("--json", "show", f"{NAME}@mine").json["seq"] == 3
    a("checkout", f"{NAME}@mine", str(tmp_path / "a3"), "-q")
    assert _files(tmp_path / "a3") == _files(tmp_path / "src3")


@pytest.mark.parametrize("how", ["named remote", "url"])
def test_a_version_already_pushed_elsewhere_is_renumbered_only_with_force(  # type: ignore[no-untyped-def]
        tmp_path: Path, how: str) -> None:
    remote, a, b, (id1,) = _two_clones(tmp_path)
    id_a = _add(a.store, 2, tmp_path)
    _push(a)
    id_b = _add(b.store, 3, tmp_path)
    other = tmp_path / "other"
    if how == "named remote":
        b("remote", "add", "backup", str(other), "-q")
        b("push", "backup", "-q")
        named = "backup"
    else:
        b("push", str(other), "-q")
        with Store.open(other) as there:
            named = there.uuid
    assert CasCli(other)("--json", "show", f"{NAME}@2").json["id"] == id_b

    reason = _refused(b, "origin", "--rebase")
    assert named in reason and "--force" in reason, reason
    assert _ids(b) == {1: id1, 2: id_b}

    r = _model_result(b("--json", "pull", "origin", "--rebase", "--force").json)
    assert r["status"] == "ok" and "v2 -> v3" in r["reason"], r
    assert _ids(b) == {1: id1, 2: id_a, 3: id_b}


# -- refusals ------------------------------------------------------------------------------------


def test_both_stores_changing_one_version_is_refused_naming_it(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    remote, a, b, (id1, id2) = _two_clones(tmp_path, versions=2)
    a("annotate", f"{NAME}@1", "--metric", "acc=0.9", "-q")
    a("push", "-q")
    b("rm", f"{NAME}@1", "-q")
    for args in ((), ("--rebase",)):
        reason = _refused(b, "origin", *args)
        assert f"{NAME}@1" in reason and "both stores" in reason, reason
    assert _ids(b) == {2: id2}  # still removed here; the annotation did not land
    assert _refs(remote)[MODEL_REF] == _refs(a.store)[MODEL_REF]


def test_pull_force_without_rebase_is_an_argument_error(tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    remote, a, b, _ids1 = _two_clones(tmp_path)
    _add(a.store, 2, tmp_path)
    _push(a)
    tracking = registry_git(b.store, "for-each-ref", "refs/remotes/")
    run = b("--json", "pull", "--force", ok=False)
    assert run.code == ArgsError.exit_code and _error(run)["code"] == "E_ARGS"
    assert "--rebase" in _error(run)["message"]
    assert registry_git(b.store, "for-each-ref", "refs/remotes/") == tracking  # no fetch
    assert len(_ids(b)) == 1
