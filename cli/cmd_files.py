"""Commands that write a version's files out: checkout, cat, and checkouts (where cas wrote)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from cas.cli.app import Ctx, cli, pass_ctx, progress_for
from cas.cli.complete import complete_spec
from cas.cli.render import count, format_table, human_bytes, human_time

from cas.errors import ArgsError


@cli.command()
@click.argument("spec", metavar="NAME[@V]", required=False, shell_complete=complete_spec)
@click.argument("dest", type=click.Path(path_type=Path), required=False)
@click.option("--lock", "from_lock", is_flag=True,
              help="Instead of NAME[@V] DEST: write every model of the repository's cas.lock "
                   "at its path (the root is the top of the git work tree, else the current "
                   "folder), after checking the version's sizes and SHA-256 against the lock; "
                   "a version not here is pulled from the cas remote.")
@click.option("-f", "--force", is_flag=True,
              help="Overwrite files in DEST that cas did not write; with --clean, delete "
                   "them too.")
@click.option("--clean", is_flag=True,
              help="Remove the files cas wrote in DEST that are not in the version (and "
                   "folders left empty); refused while DEST holds other files not in the "
                   "version, unless --force.")
@click.option("--include", "include", multiple=True, metavar="PATTERN",
              help="Only files that PATTERN matches, in gitignore syntax: '*.json' at any "
                   "depth, '/*.json' at the top only, 'onnx/' a folder (repeatable).")
@click.option("--cached", is_flag=True,
              help="Write through the page cache, leaving the files in memory for a program "
                   "that loads them next (slower; default: direct writes).")
@click.option("--accept-license", is_flag=True,
              help="Accept the version's licence where it requires acceptance (recorded "
                   "as 'cas license --accept' does).")
@pass_ctx
def checkout(ctx: Ctx, spec: str | None, dest: Path | None, force: bool, clean: bool,
             include: tuple[str, ...], cached: bool, from_lock: bool,
             accept_license: bool) -> None:
    """Write the files of NAME[@V] under DEST, byte-identical and SHA-256 verified.

    Files appear under their names only once complete and durable. Files cas wrote in DEST
    before are replaced; other files are never touched without --force. Files of DEST that
    are not in the version are left alone (a warning names them) unless --clean.

    \b
    Examples:
      cas checkout org/model@prod ./serve --clean
      cas checkout org/model ./tok --include 'tokenizer*' --include '/*.json'
      cas checkout --lock
    """
    if from_lock:
        if spec is not None or dest is not None or include or cached:
            raise ArgsError("--lock takes no NAME, DEST, --include or --cached")
        checkout_lock(ctx, force, clean)
        return
    if spec is None or dest is None:
        raise ArgsError("checkout needs NAME[@V] DEST (or --lock)")
    with ctx.open() as store, progress_for(ctx) as bar:
        from cas import presence

        version = store.resolve(spec)
        if version.id in presence.load(store.backend):
            from cas.sync import get

            got = get(store, version, progress=bar)
            ctx.out.note(f"fetched the content of {version.ref} from {got.remote or got.url} "
                         f"({human_bytes(got.bytes_sent)})")
        if accept_license:
            from cas.licenses import require_accepted

            require_accepted(store, version, store.manifest(version), True)
        r = store.checkout(spec, dest, force=force, clean=clean, include=include,
                           progress=bar, cached=cached)
    text = (f"checked out {r.name}@{r.seq} to {r.dest}: {r.files} files, "
            f"{human_bytes(r.bytes_written)}, SHA-256 verified")
    if r.removed_files or r.removed_dirs:
        text += (f"; removed {count(r.removed_files, 'file')} and "
                 f"{count(r.removed_dirs, 'folder')} not in the version")
    ctx.out.result(r, text)


def checkout_lock(ctx: Ctx, force: bool, clean: bool) -> None:
    """``cas checkout --lock``: every model of cas.lock at its path."""
    from cas.codelock import checkout_locked, find_root

    with ctx.open() as store, progress_for(ctx) as bar:
        r = checkout_locked(store, find_root(), force=force, clean=clean, progress=bar)
    lines = [f"checked out {m.name}@{m.seq} to {m.path}: {m.files} files, "
             f"{human_bytes(m.bytes_written)}, SHA-256 verified"
             + (" (fetched from the cas remote)" if m.fetched else "") for m in r.models]
    ctx.out.result(r, lines or ["cas.lock locks no models"])


@cli.command()
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.argument("path")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write to this file instead of standard output (needed with --json).")
@pass_ctx
def cat(ctx: Ctx, spec: str, path: str, output: Path | None) -> None:
    """Write one file of NAME[@V] to standard output, verified as it streams.

    Every chunk is checked against its BLAKE3 before its bytes are written, and the whole
    file's SHA-256 at the end (exit code 4, E_VERIFY, if it differs). With -o, the file
    appears under its name only once verified and durable.

    \b
    Examples:
      cas cat org/model@prod config.json | jq .architectures
      cas cat org/model tokenizer.json -o /tmp/tokenizer.json
    """
    if output is None and ctx.out.json:
        raise ArgsError("cas cat --json needs -o FILE: standard output carries the file")
    with ctx.open() as store:
        if output is not None:
            r = store.cat(spec, path, Path(output))
            ctx.out.result(r, f"wrote {r.path} of {r.name}@{r.seq} to {output}: "
                              f"{human_bytes(r.size)}, SHA-256 verified")
            return
        try:
            store.cat(spec, path, sys.stdout.buffer)
        except BrokenPipeError:
            # The reader went away (| head): stop quietly, and keep Python from failing
            # again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


@cli.command("checkouts")
@pass_ctx
def checkouts_cmd(ctx: Ctx) -> None:
    """List the folders cas checked versions out into (recorded in the store), newest first.

    A checkout that was interrupted shows as 'writing'; a folder that was deleted or replaced
    since shows as 'gone'.

    \b
    Examples:
      cas checkouts
      cas checkouts --json
    """
    with ctx.open() as store:
        r = store.checkouts()
    rows = [[c.dest, f"{c.name}@{c.seq}", human_time(c.time),
             c.state if c.present else "gone",
             f"{c.files}" + (f" ({', '.join(c.include)})" if c.include else "")]
            for c in r.checkouts]
    ctx.out.result(r, format_table(["PATH", "VERSION", "WHEN", "STATE", "FILES"], rows)
                   if rows else "no checkouts recorded")
