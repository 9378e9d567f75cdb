"""Models in a code repository: ``cas lock`` (the cas.lock file) and ``cas hooks`` (git's
pre-push hook, a wheelhouse for the pre-commit hooks)."""

from __future__ import annotations

from pathlib import Path

import click
from cas.cli.app import Ctx, cli, pass_ctx
from cas.cli.complete import complete_spec
from cas.cli.render import format_table, human_bytes

from cas.errors import ArgsError


@cli.command("lock")
@click.argument("spec", metavar="NAME[@V]", required=False, shell_complete=complete_spec)
@click.option("--path", "path", metavar="DIR",
              help="Where the model is checked out, relative to the current folder (default: "
                   "where NAME is locked already, else models/NAME at the root).")
@click.option("--remove", is_flag=True,
              help="Remove NAME (at every path, or only at --path) from cas.lock.")
@click.option("--remote", metavar="REMOTE",
              help="Record the cas remote (a remote name or URL) that the pre-push hook "
                   "sends to and checkout --lock fetches from; '' clears it.")
@pass_ctx
def lock_cmd(ctx: Ctx, spec: str | None, path: str | None, remove: bool,
             remote: str | None) -> None:
    """Record model versions a code repository uses in cas.lock at its root.

    The root is the top of the git work tree the current folder is in (the current folder
    when it is in none). cas.lock lists, per model, its checkout path, name, version id,
    sequence number and each file's path, size and SHA-256; `cas checkout --lock` writes
    them out, and the pre-commit hooks check them. Without NAME, lists what is locked.

    \b
    Examples:
      cas lock org/bert@prod --path models/bert --remote origin
      cas lock org/bert --remove
    """
    from cas import codelock

    root = codelock.find_root()
    if remove:
        if spec is None and path is None:
            raise ArgsError("--remove needs NAME or --path")
        rel = codelock.rel_to_root(root, path) if path is not None else None
        name = spec.split("@", 1)[0] if spec else None
        r = codelock.unlock(root, name, rel)
        ctx.out.result(r, [f"unlocked {m.name}@{m.seq} at {m.path}" for m in r.models])
        return
    if spec is None:
        if path is not None:
            raise ArgsError("--path needs NAME")
        lock = codelock.read(root)
        if remote is not None:
            lock.remote = remote
            codelock.write(root, lock)
        r = codelock.LockResult(str(root / codelock.FILE_NAME), "listed", lock.models,
                                lock.remote)
        rows = [[m.path, f"{m.name}@{m.seq}", m.id[:12], str(len(m.files)),
                 human_bytes(sum(f.size for f in m.files))] for m in r.models]
        lines = format_table(["PATH", "VERSION", "ID", "FILES", "SIZE"], rows) if rows \
            else ["no models locked"]
        if lock.remote:
            lines.append(f"cas remote: {lock.remote}")
        ctx.out.result(r, lines)
        return
    rel = codelock.rel_to_root(root, path) if path is not None else None
    with ctx.open() as store:
        r = codelock.lock_model(store, root, spec, rel, remote)
    m = r.models[0]
    ctx.out.result(r, f"{r.action} {m.name}@{m.seq} (id {m.id[:12]}, {len(m.files)} files) "
                      f"at {m.path} in {r.lock_file}")


@cli.group("hooks")
def hooks_group() -> None:
    """Git hooks for repositories that lock models in cas.lock.

    \b
    Examples:
      cas hooks install
      cas hooks wheelhouse ./wheels
    """


@hooks_group.command("install")
@pass_ctx
def hooks_install(ctx: Ctx) -> None:
    """Install git's pre-push hook in the current repository: before git sends its refs, it
    sends the model versions cas.lock names in the pushed commits to the cas remote (git
    config cas.remote, else cas.lock's remote), and stops the push if it cannot.

    A pre-push hook already there (git-lfs's, pre-commit's) is kept as
    pre-push.cas-previous and runs after cas's; installing again only updates cas's part.

    \b
    Examples:
      cas hooks install
    """
    from cas import codelock, hookinstall

    r = hookinstall.install_pre_push(codelock.find_root())
    text = f"{r.action} {r.hook}"
    if r.chained:
        text += f" (then runs {r.chained})"
    ctx.out.result(r, text)


@hooks_group.command("wheelhouse")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@pass_ctx
def hooks_wheelhouse(ctx: Ctx, folder: Path) -> None:
    """Write wheels of cas's dependencies and build backend, repacked from this installation,
    into FOLDER: pre-commit then installs the cas hooks with no package index
    (PIP_NO_INDEX=1 PIP_FIND_LINKS=FOLDER pre-commit install-hooks).

    \b
    Examples:
      cas hooks wheelhouse ~/.cache/cas-wheels
    """
    from cas import hookinstall

    r = hookinstall.build_wheelhouse(folder)
    ctx.out.result(r, f"wrote {len(r.wheels)} wheels to {r.folder}")
