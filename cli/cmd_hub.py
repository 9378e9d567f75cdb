"""``import`` and ``export``: models in and out of other tools' layouts.

Each command takes a source or target kind; today the Hugging Face Hub (``hf://``) and the
Hugging Face cache (``--hf-cache``). Other kinds are further options of the same commands.
"""

from __future__ import annotations

from pathlib import Path

import click
from cas.cli.app import Ctx, cli, pass_ctx, progress_for
from cas.cli.complete import complete_spec
from cas.cli.render import count, human_bytes

from cas.errors import ArgsError


def _quiet_hub_logging() -> None:
    """huggingface_hub logs retries as warnings on stderr; cas reports its own errors."""
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def _cache_arg(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@cli.command("import")
@click.argument("args", nargs=-1, metavar="SOURCE [NAME] | --hf-cache [PATH] [REPO...]")
@click.option("--hf-cache", "hf_cache", is_flag=False, flag_value="", default=None,
              metavar="[PATH]",
              help="Register every snapshot of the Hugging Face cache at PATH (default: "
                   "$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub); the "
                   "arguments name the repositories (default: all). Nothing is downloaded.")
@click.option("--include", "include", multiple=True, metavar="GLOB",
              help="Only files of the repository that GLOB matches (gitignore syntax; "
                   "repeatable).")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
              help="Leave out files that GLOB matches (gitignore syntax; repeatable).")
@click.option("-m", "--message", default="", help="Message of the version.")
@click.option("-t", "--tag", "tags", multiple=True, help="Tag the version (repeatable).")
@pass_ctx
def import_cmd(ctx: Ctx, args: tuple[str, ...], hf_cache: str | None,
               include: tuple[str, ...], exclude: tuple[str, ...], message: str,
               tags: tuple[str, ...]) -> None:
    """Register a model from another tool: the Hugging Face Hub or its cache.

    SOURCE hf://ORG/NAME[@REVISION] downloads the repository at REVISION (default: main)
    through huggingface_hub (HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply), verifies every
    file against the Hub's SHA-256 or git blob id, and registers it as a version of NAME
    (default: ORG/NAME) recording the source commit and the model card's licence. An
    interrupted import resumes; importing the same commit again does nothing. Free disk is
    checked before anything is written.

    \b
    Examples:
      cas import hf://sentence-transformers/all-MiniLM-L6-v2@main --exclude 'onnx/'
      cas import --hf-cache ~/.cache/huggingface/hub sentence-transformers/all-MiniLM-L6-v2
    """
    if hf_cache is not None:
        if include or exclude or message or tags:
            raise ArgsError("--include, --exclude, --message and --tag apply to hf:// imports")
        repos = list(args)
        cache = _cache_arg(hf_cache)
        if cache is not None and not cache.is_dir() and "/" in hf_cache and \
                not hf_cache.startswith((".", "/", "~")):
            # ``--hf-cache ORG/NAME``: a repository, not a cache folder.
            repos.insert(0, hf_cache)
            cache = None
        _import_cache(ctx, cache, repos)
        return
    if not args:
        raise ArgsError("give a source (hf://ORG/NAME[@REVISION]) or --hf-cache")
    if len(args) > 2:
        raise ArgsError(f"too many arguments: {' '.join(args[2:])}")
    from cas.hub import parse_source

    source = parse_source(args[0])
    _quiet_hub_logging()
    from cas.hub import import_repo

    with ctx.open(create=True) as store, progress_for(ctx) as bar:
        r = import_repo(store, source, args[1] if len(args) > 1 else None, include=include,
                        exclude=exclude, message=message, tags=list(tags), progress=bar)
    if not r.created and r.downloaded_bytes == 0:
        text = f"{r.name}@{r.seq} is {r.source} already: nothing to do"
    elif not r.created:
        text = (f"{r.source} has the content of {r.name}@{r.seq}: no new version "
                f"(downloaded {human_bytes(r.downloaded_bytes)})")
    else:
        text = (f"imported {r.source} as {r.name}@{r.seq}: {count(r.files, 'file')}, "
                f"{human_bytes(r.total_size)}, downloaded {human_bytes(r.downloaded_bytes)}, "
                f"stored {human_bytes(r.new_stored_bytes)} new")
        if r.license:
            text += f", licence {r.license}"
    ctx.out.result(r, text)


def _import_cache(ctx: Ctx, cache: Path | None, repos: list[str]) -> None:
    from cas.hfcache import import_cache

    with ctx.open(create=True) as store, progress_for(ctx) as bar:
        r = import_cache(store, cache, repos or None, progress=bar)
    lines = []
    for v in r.versions:
        if v.status == "registered":
            lines.append(f"{v.repo} {v.snapshot[:12]}: registered as {v.name}@{v.seq} "
                         f"({count(v.files, 'file')}, {human_bytes(v.total_size)}, stored "
                         f"{human_bytes(v.new_stored_bytes)} new)")
        elif v.status in ("present", "unchanged"):
            lines.append(f"{v.repo} {v.snapshot[:12]}: {v.name}@{v.seq} already")
        else:
            lines.append(f"{v.repo} {v.snapshot[:12]}: skipped")
    if not r.versions:
        lines.append(f"no model snapshots in {r.cache}")
    ctx.out.result(r, lines)


@cli.command("export")
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.option("--hf-cache", "hf_cache", is_flag=False, flag_value="", default=None,
              metavar="[PATH]",
              help="Write the version into the Hugging Face cache at PATH (default: "
                   "$HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).")
@click.option("--repo", metavar="ORG/NAME",
              help="Repository id in the cache (default: the one it was imported from, else "
                   "the model name).")
@pass_ctx
def export_cmd(ctx: Ctx, spec: str, hf_cache: str | None, repo: str | None) -> None:
    """Write version NAME[@V] in another tool's layout, verified.

    --hf-cache writes blobs named as the Hub names them, a snapshot of relative symlinks
    holding exactly the version's files, and refs/main: huggingface_hub and transformers
    then load it with HF_HUB_OFFLINE=1. A version imported from the Hub keeps its Hub commit
    as the snapshot name; another uses its registry commit.

    \b
    Examples:
      cas export org/model@prod --hf-cache
      cas export team/bert@3 --hf-cache /srv/hf/hub --repo team/bert-serving
    """
    if hf_cache is None:
        raise ArgsError("give a target: --hf-cache [PATH]")
    from cas.hfcache import export_version

    with ctx.open() as store, progress_for(ctx) as bar:
        r = export_version(store, spec, _cache_arg(hf_cache), repo, progress=bar)
    ctx.out.result(r, f"exported {r.name}@{r.seq} as {r.repo} snapshot {r.snapshot[:12]} in "
                      f"{r.path}: {count(r.files, 'file')}, {human_bytes(r.total_size)} "
                      f"({count(r.blobs_written, 'blob')} written, {r.blobs_reused} reused), "
                      "verified")
