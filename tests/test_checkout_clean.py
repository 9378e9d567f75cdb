"""checkout --clean and the checkout records: extra files are reported, removed only where cas
checked out before (or with --force), through folder descriptors that never follow symlinks;
nothing but the version's files is ever written into DEST."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import blake3
import pytest
from conftest import damage_chunk


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _listing(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


V1 = {"model.bin": b"one" * 100, "old/a.txt": b"a", "old/deep/b.txt": b"b", "cfg.json": b"{}"}
V2 = {"model.bin": b"two" * 100, "cfg.json": b'{"v": 2}', "new/c.txt": b"c"}


@pytest.fixture
def two_versions(cas, tmp_path: Path):  # type: ignore[no-untyped-def]
    cas("add", "m", str(_tree(tmp_path / "v1", V1)))
    cas("add", "m", str(_tree(tmp_path / "v2", V2)))
    return cas


def test_force_over_another_version_warns_about_extra_files(two_versions, tmp_path: Path
                                                            ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = tmp_path / "serve"
    cas("checkout", "m@1", str(dest))
    r = cas("checkout", "m@2", str(dest), "--force")
    assert "[W_EXTRA_FILES]" in r.err and "2 files not in m@2" in r.err
    assert "old/a.txt" in r.err
    r = cas("--json", "checkout", "m@1", str(dest), "--force")
    warn = [w for w in r.json["warnings"] if w["code"] == "W_EXTRA_FILES"]
    assert len(warn) == 1 and "new/c.txt" in warn[0]["message"]
    assert r.json["extra_files"] == 1


def test_clean_removes_what_is_not_in_the_version(two_versions, tmp_path: Path
                                                  ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = tmp_path / "serve"
    cas("checkout", "m@1", str(dest))
    r = cas("--json", "checkout", "m@2", str(dest), "--force", "--clean")
    assert r.json["removed_files"] == 2 and r.json["removed_dirs"] == 2
    assert _listing(dest) == set(V2)
    for rel, data in V2.items():
        assert (dest / rel).read_bytes() == data
    assert not (dest / "old").exists()
    # and back: new/ (emptied) goes, old/ comes back
    r = cas("checkout", "m@1", str(dest), "--force", "--clean")
    assert "removed 1 file and 1 folder not in the version" in r.out
    assert _listing(dest) == set(V1)


def test_clean_is_refused_where_cas_did_not_check_out(two_versions, tmp_path: Path
                                                      ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = _tree(tmp_path / "mine", {"notes.txt": b"keep me"})
    r = cas("checkout", "m@2", str(dest), "--clean", ok=False)
    assert r.code == 10 and "[E_CONFLICT]" in r.err
    assert "not written by cas checkout" in r.err and "notes.txt" in r.err
    assert _listing(dest) == {"notes.txt"}  # refused before anything was written
    assert (dest / "notes.txt").read_bytes() == b"keep me"
    # an empty or missing DEST has nothing to clean: no refusal
    cas("checkout", "m@2", str(tmp_path / "fresh"), "--clean")
    # a folder made again at a recorded path is not the one cas wrote
    fresh = tmp_path / "fresh"
    for p in sorted(fresh.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    fresh.rmdir()
    _tree(fresh, {"theirs.txt": b"x"})
    # The new folder often gets the old one's inode number back: make sure it has it here,
    # so that only the recorded files' identities can tell the two apart.
    import json

    rec_file = next((cas.store / "checkouts").glob("*.json"))
    rec = json.loads(rec_file.read_text())
    st = fresh.stat()
    rec["dest_dev"], rec["dest_ino"] = st.st_dev, st.st_ino
    rec_file.write_text(json.dumps(rec))
    r = cas("checkout", "m@2", str(fresh), "--clean", ok=False)
    assert r.code == 10 and "not written by cas checkout" in r.err
    assert (fresh / "theirs.txt").exists()


def test_clean_with_force_cleans_a_foreign_dest(two_versions, tmp_path: Path
                                                ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = _tree(tmp_path / "mine", {"notes.txt": b"x", "sub/y": b"y"})
    cas("checkout", "m@2", str(dest), "--clean", "--force")
    assert _listing(dest) == set(V2)


def test_clean_removes_a_symlinked_folder_as_a_link(two_versions, tmp_path: Path
                                                    ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    outside = _tree(tmp_path / "outside", {"precious.txt": b"p", "new/c.txt": b"theirs"})
    dest = tmp_path / "serve"
    cas("checkout", "m@2", str(dest))
    os.symlink(outside, dest / "link")
    os.symlink(outside / "precious.txt", dest / "file-link")
    # a symlink where the version needs a folder: cleaned as a link, then the folder is made
    (dest / "new" / "c.txt").unlink()
    (dest / "new").rmdir()
    os.symlink(outside / "new", dest / "new")
    cas("checkout", "m@2", str(dest), "--force", "--clean")
    assert _listing(dest) == set(V2)
    assert not (dest / "new").is_symlink() and (dest / "new" / "c.txt").read_bytes() == b"c"
    assert _listing(outside) == {"precious.txt", "new/c.txt"}
    assert (outside / "new" / "c.txt").read_bytes() == b"theirs"


def test_without_clean_a_symlinked_folder_is_refused(two_versions, tmp_path: Path
                                                     ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "serve"
    dest.mkdir()
    os.symlink(outside, dest / "new")
    r = cas("checkout", "m@2", str(dest), ok=False)
    assert r.code == 10 and "not a plain directory" in r.err
    assert list(outside.iterdir()) == []


def test_clean_with_include_is_refused(two_versions, tmp_path: Path
                                       ) -> None:  # type: ignore[no-untyped-def]
    r = two_versions("checkout", "m@2", str(tmp_path / "d"), "--clean", "--include", "*.json",
                     ok=False)
    assert r.code == 2 and "--clean cannot be combined with --include" in r.err
    assert not (tmp_path / "d").exists()


def test_record_is_kept_in_the_store_and_listed(two_versions, tmp_path: Path, store_path: Path
                                                ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = tmp_path / "serve"
    r = cas("--json", "checkout", "m@2", str(dest))
    real = os.path.realpath(dest)
    rec_path = store_path / "checkouts" / f"{blake3.blake3(real.encode()).hexdigest()}.json"
    rec = json.loads(rec_path.read_bytes())
    assert rec["schema"] == "cas.checkout" and rec["version"] == 1
    assert rec["dest"] == real and rec["name"] == "m" and rec["seq"] == 2
    assert rec["commit"] == r.json["commit"] and rec["state"] == "complete"
    assert sorted(rec["files"]) == sorted(V2)
    assert rec["dest_ino"] == os.stat(dest).st_ino and rec["finished_at"]
    # nothing of cas's own in DEST, and no temp left in the record folder
    assert _listing(dest) == set(V2)
    assert os.listdir(rec_path.parent) == [rec_path.name]
    cas("checkout", "m@1", str(tmp_path / "other"))
    rows = cas("--json", "checkouts").json["checkouts"]
    assert [(c["dest"], c["seq"], c["state"], c["present"]) for c in rows] in (
        [(os.path.realpath(tmp_path / "other"), 1, "complete", True), (real, 2, "complete", True)],
        [(real, 2, "complete", True), (os.path.realpath(tmp_path / "other"), 1, "complete", True)],
    )
    text = cas("checkouts").out
    assert real in text and "m@2" in text and "complete" in text
    # a damaged record is named, not fatal
    rec_path.write_text("{not json")
    r = cas("checkouts")
    assert "[W_BAD_RECORD]" in r.err and rec_path.name in r.err


def test_a_folder_where_a_file_goes(two_versions, tmp_path: Path
                                    ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = tmp_path / "serve"
    cas("checkout", "m@2", str(dest))
    (dest / "cfg.json").unlink()
    _tree(dest / "cfg.json", {"inner": b"i"})
    r = cas("checkout", "m@2", str(dest), "--force", ok=False)
    assert r.code == 10 and "--clean" in r.err
    assert not [n for n in os.listdir(dest) if n.endswith(".cas-tmp")]
    cas("checkout", "m@2", str(dest), "--force", "--clean")
    assert (dest / "cfg.json").read_bytes() == V2["cfg.json"]


@pytest.mark.parametrize("dest", ["/tmp/a\x00b", "relative/path"], ids=["nul", "relative"])
def test_checkouts_reports_a_record_whose_dest_is_not_a_path(
        two_versions, tmp_path: Path, store_path: Path, dest: str) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    cas("checkout", "m@2", str(tmp_path / "serve"))
    rec_path = next((store_path / "checkouts").glob("*.json"))
    rec = json.loads(rec_path.read_bytes())
    bad = store_path / "checkouts" / (f"{'0' * 64}.json")
    bad.write_text(json.dumps({**rec, "dest": dest}))
    r = cas("--json", "checkouts")
    assert [w["code"] for w in r.json["warnings"]] == ["W_BAD_RECORD"]
    assert bad.name in r.json["warnings"][0]["message"]
    assert [c["dest"] for c in r.json["checkouts"]] == [os.path.realpath(tmp_path / "serve")]


def test_a_dest_whose_path_is_not_utf8_is_checked_out_without_a_record(
        two_versions, tmp_path: Path, store_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xffdir")
    r = cas("--json", "checkout", "m@2", dest)
    assert [w["code"] for w in r.json["warnings"]] == ["W_NO_RECORD"]
    assert r.json["dest"].endswith("/bad\\xffdir") and r.json["files"] == len(V2)
    assert _listing(Path(dest)) == set(V2)
    assert not (store_path / "checkouts").exists() or not os.listdir(store_path / "checkouts")
    # with no record, the files are not cas's: --clean towards m@1 needs --force
    r = cas("--json", "checkout", "m@1", dest, "--clean", ok=False)
    assert r.code == 10 and r.json["error"]["code"] == "E_CONFLICT"
    assert "\\xff" in r.json["error"]["message"]
    assert _listing(Path(dest)) == set(V2)


def test_a_dest_that_is_in_or_holds_the_store_is_refused(
        two_versions, tmp_path: Path, store_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    before = _listing(store_path)
    (tmp_path / "alias").symlink_to(store_path.name)
    for dest, where in [(store_path, "is the store"), (tmp_path / "alias", "is the store"),
                        (store_path / "packs", "is inside the store"),
                        (store_path / "new" / "dir", "is inside the store"),
                        (tmp_path, "holds the store")]:
        r = cas("--json", "checkout", "m@2", str(dest), "--force", "--clean", ok=False)
        assert r.code == 2 and r.json["error"]["code"] == "E_ARGS", (dest, r.out)
        assert where in r.json["error"]["message"], (dest, r.out)
    assert _listing(store_path) == before
    assert not (store_path / "new").exists() and not (tmp_path / "cfg.json").exists()
    cas("verify", "--all")


def _record(store_path: Path, dest: Path) -> dict:
    key = blake3.blake3(os.fsencode(os.path.realpath(dest))).hexdigest()
    return json.loads((store_path / "checkouts" / f"{key}.json").read_bytes())


def test_clean_never_deletes_user_files_in_a_folder_cas_checked_out_into(
        two_versions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A checkout into a folder that holds the user's files makes cas own what it wrote
    there, not the folder: --clean later deletes only cas's files, and is refused while
    files cas did not write are in the way."""
    cas = two_versions
    dest = _tree(tmp_path / "proj", {"src/main.py": b"precious", "notes/todo.txt": b"t"})
    r = cas("checkout", "m@1", str(dest))
    assert "[W_EXTRA_FILES]" in r.err
    r = cas("--json", "checkout", "m@2", str(dest), "--clean", ok=False)
    assert r.code == 10 and r.json["error"]["code"] == "E_CONFLICT"
    msg = r.json["error"]["message"]
    assert "2 files not in m@2 that cas did not write" in msg and "src/main.py" in msg
    assert "--force" in msg and "old/a.txt" not in msg
    # refused before anything changed: m@1's files and the user's are all there
    assert _listing(dest) == set(V1) | {"src/main.py", "notes/todo.txt"}
    assert (dest / "model.bin").read_bytes() == V1["model.bin"]
    assert (dest / "src/main.py").read_bytes() == b"precious"
    # without --clean: m@1's leftovers stay and the warning says what --clean would do
    r = cas("checkout", "m@2", str(dest), "--force")
    assert "4 files not in m@2" in r.err and "--clean removes those cas wrote" in r.err
    # once the user's files are gone, --clean removes m@1's leftovers without --force
    (dest / "src/main.py").unlink()
    (dest / "notes/todo.txt").unlink()
    r = cas("--json", "checkout", "m@2", str(dest), "--clean")
    assert r.json["removed_files"] == 2 and r.json["removed_dirs"] == 2  # old/, old/deep/
    # the user's emptied folders are not cas's: left alone
    assert _listing(dest) == set(V2)
    assert (dest / "src").is_dir() and (dest / "notes").is_dir()


def test_force_clean_deletes_user_files_too(two_versions, tmp_path: Path
                                            ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = _tree(tmp_path / "proj", {"src/main.py": b"precious"})
    cas("checkout", "m@1", str(dest))
    r = cas("--json", "checkout", "m@2", str(dest), "--clean", "--force")
    assert r.json["removed_files"] == 3 and r.json["removed_dirs"] == 3
    assert _listing(dest) == set(V2) and not (dest / "src").exists()


def test_the_record_keeps_the_files_cas_wrote_before(two_versions, tmp_path: Path,
                                                     store_path: Path
                                                     ) -> None:  # type: ignore[no-untyped-def]
    """checkout v1; checkout --force v2 (v1's leftovers stay); checkout --clean v2: the
    leftovers are still cas's, removed without --force."""
    cas = two_versions
    dest = tmp_path / "serve"
    cas("checkout", "m@1", str(dest))
    cas("checkout", "m@2", str(dest), "--force")
    assert sorted(_record(store_path, dest)["files"]) == sorted(set(V1) | set(V2))
    r = cas("--json", "checkout", "m@2", str(dest), "--clean")
    assert r.json["removed_files"] == 2 and _listing(dest) == set(V2)
    assert sorted(_record(store_path, dest)["files"]) == sorted(V2)
    # a folder cas does not own (made again at the same path) starts a fresh list
    for p in sorted(dest.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    dest.rmdir()
    _tree(dest, {"old/a.txt": b"theirs"})
    cas("checkout", "m@2", str(dest))
    assert sorted(_record(store_path, dest)["files"]) == sorted(V2)
    r = cas("checkout", "m@2", str(dest), "--clean", ok=False)
    assert r.code == 10 and "old/a.txt" in r.err
    assert (dest / "old" / "a.txt").read_bytes() == b"theirs"
    # what the user asks cas to overwrite (--force) becomes cas's
    cas("checkout", "m@1", str(dest), "--force")
    cas("checkout", "m@2", str(dest), "--clean")
    assert _listing(dest) == set(V2)


def test_a_step_conflict_is_found_before_anything_changes(two_versions, tmp_path: Path
                                                          ) -> None:  # type: ignore[no-untyped-def]
    """A file where the version needs a folder: refused before the record or any file
    changes, so the folder stays cas's and a later --clean needs no --force."""
    cas = two_versions
    dest = tmp_path / "serve"
    cas("checkout", "m@1", str(dest))
    (dest / "new").write_bytes(b"a file where m@2 has a folder")
    r = cas("checkout", "m@2", str(dest), "--force", ok=False)
    assert r.code == 10 and "new: exists and is not a plain directory" in r.err
    assert (dest / "model.bin").read_bytes() == V1["model.bin"]
    assert cas("--json", "checkouts").json["checkouts"][0]["state"] == "complete"
    (dest / "new").unlink()
    r = cas("--json", "checkout", "m@2", str(dest), "--clean")
    assert r.json["removed_files"] == 2 and _listing(dest) == set(V2)
    # a folder where a file goes: the same, before anything changes
    (dest / "cfg.json").unlink()
    (dest / "cfg.json").mkdir()
    r = cas("checkout", "m@1", str(dest), ok=False)
    assert r.code == 10 and "cfg.json is a directory (use --clean" in r.err
    assert _listing(dest) == set(V2) - {"cfg.json"}


def _damage(store_path: Path, spec: str, path: str) -> None:
    """Flip a byte in the middle of the stored bytes of the first chunk of ``path``."""
    damage_chunk(store_path, spec, path)


def test_a_failed_checkout_keeps_the_folder_cas_s(cas, tmp_path: Path, store_path: Path
                                                  ) -> None:  # type: ignore[no-untyped-def]
    """A checkout that fails after it replaced every file the record stamped (a.bin, written
    at once as a large file; z/c.txt is damaged): the record lists and stamps what is cas's
    now, so --clean towards another version needs no --force."""
    import random

    rng = random.Random(17)
    cas("add", "p", str(_tree(tmp_path / "p1", {"a.bin": rng.randbytes(1_200_000)})))
    p2 = {"a.bin": rng.randbytes(1_200_000), "z/c.txt": rng.randbytes(3000)}
    cas("add", "p", str(_tree(tmp_path / "p2", p2)))
    cas("add", "q", str(_tree(tmp_path / "q", {"other.txt": b"o"})))
    _damage(store_path, "p@2", "z/c.txt")
    dest = tmp_path / "serve"
    cas("checkout", "p@1", str(dest))
    r = cas("checkout", "p@2", str(dest), ok=False)
    assert r.code == 4 and "[E_VERIFY]" in r.err
    assert (dest / "a.bin").read_bytes() == p2["a.bin"] and _listing(dest) == {"a.bin"}
    rec = _record(store_path, dest)
    assert rec["state"] == "writing" and rec["files"] == ["a.bin"]
    r = cas("--json", "checkout", "q", str(dest), "--clean")
    assert r.json["removed_files"] == 1 and _listing(dest) == {"other.txt"}


@contextlib.contextmanager
def _mounted(target: Path, source: Path | None = None):  # type: ignore[no-untyped-def]
    """A tmpfs (or a bind mount of ``source``) on ``target`` for the duration; the test is
    skipped where this process may not mount."""
    target.mkdir(parents=True, exist_ok=True)
    argv = (["mount", "--bind", str(source), str(target)] if source is not None
            else ["mount", "-t", "tmpfs", "-o", "size=1m", "cas-test", str(target)])
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting needs root")
    if subprocess.run(argv, capture_output=True).returncode != 0:
        pytest.skip("this host does not let the tests mount")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_clean_stays_on_dest_s_filesystem(two_versions, tmp_path: Path, kind: str
                                          ) -> None:  # type: ignore[no-untyped-def]
    """A filesystem mounted inside DEST (another device, or a bind mount of the same one) is
    neither walked nor cleaned, even with --force --clean."""
    cas = two_versions
    dest = tmp_path / "serve"
    cas("checkout", "m@1", str(dest))
    outside = _tree(tmp_path / "outside", {"keep.txt": b"k"}) if kind == "bind" else None
    with _mounted(dest / "old" / "data", outside) as mnt:
        if kind == "tmpfs":
            _tree(mnt, {"keep.txt": b"k"})
        (mnt / "sub").mkdir()
        r = cas("--json", "checkout", "m@2", str(dest), "--force", "--clean")
        warn = [w for w in r.json["warnings"] if w["code"] == "W_OTHER_FILESYSTEM"]
        assert len(warn) == 1 and "old/data" in warn[0]["message"]
        assert (mnt / "keep.txt").read_bytes() == b"k" and (mnt / "sub").is_dir()
        # the files of m@1 around it are gone; the folders that hold the mount stay
        assert not (dest / "old" / "a.txt").exists() and not (dest / "old" / "deep").exists()
        assert {p for p in _listing(dest) if not p.startswith("old/")} == set(V2)


def test_a_version_folder_on_another_filesystem_is_written_not_walked(
        two_versions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = tmp_path / "serve"
    with _mounted(dest / "new") as mnt:
        _tree(mnt, {"c.txt": b"theirs", "other.txt": b"o"})
        r = cas("checkout", "m@2", str(dest), ok=False)  # new/c.txt exists: looked up
        assert r.code == 10 and "new/c.txt exists (use --force" in r.err
        r = cas("checkout", "m@2", str(dest), "--force", "--clean")
        assert "[W_OTHER_FILESYSTEM]" in r.err
        assert (mnt / "c.txt").read_bytes() == V2["new/c.txt"]
        assert (mnt / "other.txt").read_bytes() == b"o"


def test_an_unreadable_folder_is_skipped_not_fatal(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that cannot be opened (EACCES; root reads anything, so the test makes open
    fail) is reported and left alone, even by --force --clean."""
    from cas import Store, checkouts

    store = Store.init(tmp_path / "store")
    store.add("m", _tree(tmp_path / "v2", V2))
    dest = _tree(tmp_path / "serve", {"locked/secret.txt": b"s", "open/x.txt": b"x"})
    real_open = os.open

    def deny(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if path == "locked" and dir_fd is not None:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(checkouts.os, "open", deny)
    r = store.checkout("m", dest, force=True, clean=True)
    monkeypatch.undo()
    store.close()
    assert [w.code for w in r.warnings] == ["W_UNREADABLE"] and "locked" in r.warnings[0].message
    assert (dest / "locked" / "secret.txt").read_bytes() == b"s"
    assert not (dest / "open").exists()
    assert _listing(dest) == set(V2) | {"locked/secret.txt"}


def test_force_clean_keeps_a_git_repository_in_dest(two_versions, tmp_path: Path
                                                    ) -> None:  # type: ignore[no-untyped-def]
    cas = two_versions
    dest = _tree(tmp_path / "repo", {".git/HEAD": b"ref: refs/heads/main\n", "notes.txt": b"x"})
    r = cas("checkout", "m@2", str(dest), "--clean", "--force")
    assert (dest / ".git" / "HEAD").read_bytes() == b"ref: refs/heads/main\n"
    assert not (dest / "notes.txt").exists() and ".git" not in r.err
