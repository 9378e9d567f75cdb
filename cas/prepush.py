"""Before git sends a push: send the models that the pushed commits' cas.lock names.

Whoever fetches the code must be able to fetch the models it locks, so the pre-push hook
(``cas-pre-push``, installed by pre-commit or by ``cas hooks install``) does what git-lfs does
for its objects: before git sends its refs, the content of every version that ``cas.lock``
names in any pushed commit goes to the cas remote. A version that cannot be sent (the remote
is unreachable, refuses it, or the version is neither in the local store nor at the remote)
stops the push with one line saying why.

Which commits: for each ref git pushes, the commits between what the git remote has and the
new tip (``git rev-list NEW ^OLD``; for a new branch, those no ref of that git remote has),
and the tip itself. Their cas.lock blobs are read with two ``git cat-file`` batches.

Which cas remote: ``git config cas.remote`` (each clone's own setting), else the lock's
``remote`` field. Which store: ``git config cas.store``, else the default store
(``$CAS_HOME`` ...).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import msgspec

from cas.codelock import FILE_NAME, LockedModel, LockFile, decode, find_version, git_config
from cas.errors import ArgsError, CasError, CasWarning, NetError, NotFoundError

ZERO = "0" * 40


class PushRange(msgspec.Struct, frozen=True):
    """One ref git is about to push: the new tip, and what the git remote has (or zeros)."""

    local_sha: str
    remote_sha: str


def ranges_from_stdin(text: str) -> list[PushRange]:
    """The lines git writes to a pre-push hook: ``<local ref> <local sha> <remote ref>
    <remote sha>``; blank lines are skipped.

    Raises:
        ArgsError: a line of another shape.
    """
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ArgsError(f"pre-push input line {line[:80]!r} is not "
                            "'<local ref> <local sha> <remote ref> <remote sha>'")
        out.append(PushRange(parts[1], parts[3]))
    return out


def ranges_from_env() -> list[PushRange] | None:
    """The range pre-commit passes to a ``pre-push`` stage hook (``PRE_COMMIT_TO_REF``,
    ``PRE_COMMIT_FROM_REF``), or None when not run by pre-commit."""
    to_ref = os.environ.get("PRE_COMMIT_TO_REF")
    if not to_ref:
        return None
    return [PushRange(to_ref, os.environ.get("PRE_COMMIT_FROM_REF") or ZERO)]


def _git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    r = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True,
                       check=False)
    if r.returncode != 0:
        raise ArgsError(f"git {' '.join(args)}: {r.stderr.decode(errors='replace').strip()}")
    return r.stdout


def pushed_commits(root: Path, ranges: list[PushRange], git_remote: str = "") -> list[str]:
    """The commits that the pushes of ``ranges`` send, and each tip (deletions skipped)."""
    out: dict[str, None] = {}
    for r in ranges:
        if r.local_sha == ZERO:
            continue
        out[r.local_sha] = None
        if r.remote_sha != ZERO and _is_commit(root, r.remote_sha):
            args = ["rev-list", r.local_sha, f"^{r.remote_sha}"]
        elif git_remote:
            args = ["rev-list", r.local_sha, "--not", f"--remotes={git_remote}"]
        else:
            args = ["rev-list", r.local_sha]
        for c in _git(root, *args).decode().split():
            out[c] = None
    return list(out)


def _is_commit(root: Path, sha: str) -> bool:
    r = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=root,
                       capture_output=True, check=False)
    return r.returncode == 0


def locks_at(root: Path, commits: list[str]) -> list[tuple[str, LockFile]]:
    """``(commit, lock)`` for each distinct cas.lock among ``commits`` (the first commit that
    has it); commits without one are skipped.

    Raises:
        SchemaError | FormatError: a pushed commit's cas.lock is not valid (names the commit).
    """
    if not commits:
        return []
    check = _git(root, "cat-file", "--batch-check",
                 stdin="".join(f"{c}:{FILE_NAME}\n" for c in commits).encode())
    blobs: dict[str, str] = {}
    for commit, line in zip(commits, check.decode().splitlines()):
        parts = line.split()
        if len(parts) == 3 and parts[1] == "blob":
            blobs.setdefault(parts[0], commit)
    if not blobs:
        return []
    data = _git(root, "cat-file", "--batch", stdin="".join(f"{b}\n" for b in blobs).encode())
    out = []
    pos = 0
    for blob, commit in blobs.items():
        end = data.index(b"\n", pos)
        sha, _, size = data[pos:end].decode().split()
        body = data[end + 1:end + 1 + int(size)]
        pos = end + 1 + int(size) + 1
        try:
            out.append((commit, decode(body, f"{FILE_NAME} of commit {commit[:12]}")))
        except CasError as exc:
            raise type(exc)(exc.message) from None
    return out


class SentVersion(msgspec.Struct, frozen=True):
    name: str
    id: str
    #: Its number in the local store (0: not here, already at the remote).
    seq: int
    #: "sent" (pushed now, or already there), "at-remote" (only the remote has it).
    status: str


class PrePushResult(msgspec.Struct):
    remote: str = ""
    url: str = ""
    versions: list[SentVersion] = []
    objects_sent: int = 0
    bytes_sent: int = 0
    #: One line per version that could not be sent; non-empty means the push must stop.
    problems: list[str] = []
    warnings: list[CasWarning] = []


def store_path(root: Path) -> Path:
    """``git config cas.store``, else the default store path."""
    from cas.store import default_store_path

    configured = git_config(root, "cas.store")
    return Path(configured).expanduser() if configured else default_store_path()


def send_locked(root: Path, ranges: list[PushRange], git_remote: str = ""
                ) -> list[PrePushResult]:
    """Send to the cas remote the versions the pushed commits lock (see the module
    docstring), one result per cas remote. Problems are reported in the results, not
    raised, except for a git or lock-file failure (``CasError``)."""
    commits = pushed_commits(root, ranges, git_remote)
    by_remote: dict[str, dict[tuple[str, str], LockedModel]] = {}
    configured = git_config(root, "cas.remote")
    for _, lock in locks_at(root, commits):
        remote = configured or lock.remote
        wanted = by_remote.setdefault(remote, {})
        for m in lock.models:
            wanted.setdefault((m.name, m.id), m)
    if not by_remote or not any(by_remote.values()):
        return []
    from cas.store import Store

    try:
        store: Store | None = Store.open(store_path(root))
    except NotFoundError:
        store = None
    try:
        return [_send(store, remote, list(wanted.values()))
                for remote, wanted in sorted(by_remote.items()) if wanted]
    finally:
        if store is not None:
            store.close()


def _send(store: object, remote: str, models: list[LockedModel]) -> PrePushResult:
    from cas import remotes as rem
    from cas.store import Store

    result = PrePushResult(remote)
    if not remote:
        result.problems = [f"{m.name}@{m.seq}: no cas remote to send it to (set one with "
                           "`git config cas.remote REMOTE` or `cas lock --remote REMOTE`)"
                           for m in models]
        return result
    if not isinstance(store, Store):
        result.problems = [f"{m.name}@{m.seq}: no local cas store (set `git config cas.store "
                           "PATH` or CAS_HOME)" for m in models]
        return result
    try:
        _, url, _ = rem.resolve(store.backend, remote)
        result.url = url.url
        if url.kind == "dir" and not (Path(url.path or url.url) / "config.json").is_file():
            raise NetError(f"no cas store at {url.url} (not mounted, or not created: "
                           f"`cas push {remote}` once creates it)")
        here, elsewhere = [], []
        for m in models:
            v = find_version(store, m.name, m.id)
            (here if v is not None else elsewhere).append((m, v))
        if here:
            from cas.sync import push

            pushed = push(store, remote, sorted({f"{v.name}@{v.seq}" for _, v in here}))
            result.objects_sent, result.bytes_sent = pushed.objects_sent, pushed.bytes_sent
            result.warnings += pushed.warnings
            refused = {r.ref: r.reason for r in pushed.rejected}
            for m, v in here:
                reason = next((why for ref, why in refused.items()
                               if ref.endswith(f"/{m.name}")), None)
                if reason is not None:
                    result.problems.append(f"{m.name}@{v.seq}: the cas remote refused it: "
                                           f"{reason}")
                else:
                    result.versions.append(SentVersion(m.name, m.id, v.seq, "sent"))
        if elsewhere:
            result.versions += _at_remote(store, remote, [m for m, _ in elsewhere],
                                          result.problems)
    except CasError as exc:
        reach = "cannot reach" if isinstance(exc, NetError | NotFoundError) else "failed at"
        result.problems.append(f"{reach} the cas remote {remote!r}"
                               f"{f' ({result.url})' if result.url else ''}: {exc.message}")
    return result


def _at_remote(store: object, remote: str, models: list[LockedModel],
               problems: list[str]) -> list[SentVersion]:
    """Versions not in the local store: fine if the remote has them (someone else sent them)."""
    from cas.sync import catalog

    view, _, done = catalog(store, remote)  # type: ignore[arg-type]
    out = []
    try:
        for m in models:
            if find_version(view, m.name, m.id) is not None:
                out.append(SentVersion(m.name, m.id, 0, "at-remote"))
            else:
                problems.append(f"{m.name} version {m.id} ({m.name}@{m.seq} where it was "
                                "locked) is neither in the local store nor at the cas "
                                f"remote {remote!r}")
    finally:
        done()
    return out
