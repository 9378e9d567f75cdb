"""git-lfs integration: ``cas lfs install`` and the transfer agent ``cas lfs-agent``
(see :mod:`cas.lfs`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from cas.cli.app import Ctx, cli, pass_ctx


@cli.group("lfs", invoke_without_command=False)
def lfs_group() -> None:
    """Keep a git-lfs repository's large files in the cas store and a cas remote: chunked,
    deduplicated across versions, verified by their LFS oid.

    \b
    Examples:
      cas lfs install --remote /mnt/nas/models
    """


@lfs_group.command("install")
@click.option("--remote", metavar="REMOTE",
              help="Remote (a configured name or a URL/path) that uploads go to and missing "
                   "objects come from; without it, objects stay in this store.")
@click.option("--model", metavar="NAME",
              help="Model that holds the objects (default: lfs/<repository>, from the "
                   "origin URL, the same in every clone).")
@click.option("--local", "scope", flag_value="local", default=True,
              help="Configure this repository (the default).")
@click.option("--global", "scope", flag_value="global",
              help="Configure every repository of this user (~/.gitconfig).")
@pass_ctx
def lfs_install(ctx: Ctx, remote: str | None, model: str | None, scope: str) -> None:
    """Make git-lfs use cas as its transfer agent: sets lfs.standalonetransferagent and
    lfs.customtransfer.cas.{path,args,concurrent} (the cas that runs this command, found
    without PATH) and runs 'git lfs install'. Creates the store if there is none. A fresh
    clone runs this once, then 'git lfs pull' (clone with GIT_LFS_SKIP_SMUDGE=1 before).

    \b
    Examples:
      cas lfs install --remote /mnt/nas/models
      cas lfs install --remote nas --model lfs/my-repo
    """
    from cas.demo import cas_command
    from cas.lfs import install

    with ctx.open(create=True) as store:
        store_path = Path(os.path.abspath(store.path))
    r = install(Path.cwd(), cas_command(), store=store_path, model=model, remote=remote,
                scope=scope)
    where = f" with remote {r.remote}" if r.remote else " (no remote: objects stay here)"
    model_text = r.model or "lfs/<repository>"
    ctx.out.result(r, f"git-lfs ({r.scope}) stores its objects as versions of {model_text} "
                      f"in {r.store}{where}")


@cli.command("lfs-agent")
@click.option("--remote", metavar="REMOTE", help="Remote for uploads and missing objects.")
@click.option("--model", metavar="NAME",
              help="Model that holds the objects (default: lfs/<repository>, as install).")
@pass_ctx
def lfs_agent(ctx: Ctx, remote: str | None, model: str | None) -> None:
    """git-lfs standalone custom transfer agent: JSON lines on stdin and stdout (git-lfs runs
    it; set up by 'cas lfs install'). Uploads are stored chunked and pushed to the remote;
    downloads come from this store, else the remote, and are verified against their oid.
    An object that fails is reported to git-lfs in its 'complete' event.

    \b
    Examples:
      cas lfs-agent --model lfs/my-repo --remote nas    (git-lfs runs it so)
    """
    from cas.lfs import LfsObjects, default_model, lfs_tmp_dir, run_agent

    stores = []

    def open_objects() -> LfsObjects:
        name = model or default_model(Path.cwd())
        store = ctx.open()
        stores.append(store)
        return LfsObjects(store, name, remote)

    tmp: list[Path] = []

    def tmp_dir() -> Path:
        if not tmp:
            tmp.append(lfs_tmp_dir())
        return tmp[0]

    try:
        stats = run_agent(open_objects, sys.stdin, sys.stdout, tmp_dir)
    finally:
        for s in stores:
            s.close()
    if stats.failed:
        ctx.out.note(f"cas lfs-agent: {stats.failed} object(s) failed (reported to git-lfs)")
