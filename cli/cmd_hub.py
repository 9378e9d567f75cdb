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
@click.option("--ollama", "ollama", is_flag=False, flag_value="", default=None,
              metavar="[OLLAMA_MODELS]",
              help="Register the models of the Ollama store at OLLAMA_MODELS (default: "
                   "$OLLAMA_MODELS, else ~/.ollama/models); the arguments name them "
                   "(MODEL[:TAG], default: all). Nothing is copied out of the store.")
@click.option("--include", "include", multiple=True, metavar="GLOB",
              help="Only files of the repository that GLOB matches (gitignore syntax; "
                   "repeatable).")
@click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
              help="Leave out files that GLOB matches (gitignore syntax; repeatable).")
@click.option("-m", "--message", default="", help="Message of the version.")
@click.option("-t", "--tag", "tags", multiple=True, help="Tag the version (repeatable).")
@pass_ctx
def import_cmd(ctx: Ctx, args: tuple[str, ...], hf_cache: str | None, ollama: str | None,
               include: tuple[str, ...], exclude: tuple[str, ...], message: str,
               tags: tuple[str, ...]) -> None:
    """Register a model from another tool: the Hugging Face Hub, its cache or Ollama.

    SOURCE hf://ORG/NAME[@REVISION] downloads the repository at REVISION (default: main)
    through huggingface_hub (HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply), verifies every
    file against the Hub's SHA-256 or git blob id, and registers it as a version of NAME
    (default: ORG/NAME) recording the source commit and the model card's licence. An
    interrupted import resumes; importing the same commit again does nothing. Free disk is
    checked before anything is written.

    --ollama registers each Ollama model as a version of NAMESPACE/MODEL tagged with its
    Ollama tag, each blob checked against its digest first.

    \b
    Examples:
      cas import hf://sentence-transformers/all-MiniLM-L6-v2@main --exclude 'onnx/'
      cas import --ollama ~/.ollama/models llama3.2:1b
    """
    if ollama is not None:
        if hf_cache is not None or include or exclude or message or tags:
            raise ArgsError("--ollama takes only model names")
        _import_ollama(ctx, ollama, list(args))
        return
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


def _import_ollama(ctx: Ctx, where: str, names: list[str]) -> None:
    from cas.ollama import import_models

    root = _cache_arg(where)
    if root is not None and not root.is_dir() and not where.startswith((".", "/", "~")):
        names.insert(0, where)  # ``--ollama llama3``: a model, not a folder
        root = None
    with ctx.open(create=True) as store, progress_for(ctx) as bar:
        r = import_models(store, root, names, progress=bar)
    lines = []
    for m in r.models:
        if m.status == "registered":
            lines.append(f"{m.ollama_name}: registered as {m.name}@{m.seq} "
                         f"({count(m.files, 'file')}, {human_bytes(m.total_size)}, stored "
                         f"{human_bytes(m.new_stored_bytes)} new)")
        elif m.status in ("present", "unchanged"):
            lines.append(f"{m.ollama_name}: {m.name}@{m.seq} already")
        else:
            lines.append(f"{m.ollama_name}: skipped")
    if not r.models:
        lines.append(f"no models in {r.models_dir}")
    ctx.out.result(r, lines)


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
@click.option("--ollama", "ollama", is_flag=False, flag_value="", default=None,
              metavar="[OLLAMA_MODELS]",
              help="Write the version (a GGUF model) into the Ollama store at OLLAMA_MODELS "
                   "(default: $OLLAMA_MODELS, else ~/.ollama/models).")
@click.option("--as", "as_name", metavar="MODEL:TAG",
              help="The Ollama name (default: the name it was imported as, else "
                   "NAMESPACE/MODEL:latest from the model name).")
@click.option("--layout", "layout", is_flag=False, flag_value="models", default=None,
              metavar="[DIR]",
              help="Install the version in the models/ layout at DIR (default: ./models): "
                   "llama-cpp/OWNER/REPO for GGUF, transformers/OWNER/REPO otherwise, "
                   "configs/REPO.json, and the registry cas-layout.json.")
@click.option("--link", "share", is_flag=True,
              help="Share bytes with files cas checkout wrote: a reflink where the "
                   "filesystem can, else a hard link (editing one then changes both); "
                   "otherwise copy.")
@click.option("--accept-license", is_flag=True,
              help="Accept the version's licence where it requires acceptance.")
@pass_ctx
def export_cmd(ctx: Ctx, spec: str, hf_cache: str | None, repo: str | None,
               ollama: str | None, as_name: str | None, layout: str | None, share: bool,
               accept_license: bool) -> None:
    """Write version NAME[@V] in another tool's layout, verified.

    --hf-cache writes blobs named as the Hub names them, a snapshot of relative symlinks
    holding exactly the version's files, and refs/main: huggingface_hub and transformers
    then load it with HF_HUB_OFFLINE=1. A version imported from the Hub keeps its Hub commit
    as the snapshot name; another uses its registry commit.

    --ollama writes blobs sha256-<hex> and the manifest as Ollama does (model layer, and the
    template, system, params and licence the version carries). --layout installs it in the
    deterministic models/ layout. Exporting again writes nothing that is there already.

    \b
    Examples:
      cas export org/model@prod --hf-cache
      cas export team/llama-gguf@3 --ollama --as llama-team:q4 --link
    """
    kinds = [k for k, v in (("--hf-cache", hf_cache), ("--ollama", ollama),
                            ("--layout", layout)) if v is not None]
    if len(kinds) != 1:
        raise ArgsError("give one target: --hf-cache [PATH], --ollama [DIR] or --layout [DIR]"
                        if not kinds else f"give one target, not {' and '.join(kinds)}")
    if repo and hf_cache is None:
        raise ArgsError("--repo applies to --hf-cache")
    if as_name and ollama is None:
        raise ArgsError("--as applies to --ollama")
    with ctx.open() as store, progress_for(ctx) as bar:
        if ollama is not None:
            from cas.ollama import export_model

            o = export_model(store, spec, _cache_arg(ollama), as_name, share=share,
                             accept_license=accept_license, progress=bar)
            ctx.out.result(o, f"exported {o.name}@{o.seq} to Ollama as {o.ollama_name} in "
                              f"{o.models_dir}: {count(len(o.layers), 'layer')} "
                              f"({count(o.blobs_written, 'blob')} written, {o.blobs_reused} "
                              f"reused), id {o.digest[:12]}, verified")
            return
        if layout is not None:
            from cas.layout import export_layout

            la = export_layout(store, spec, _cache_arg(layout), share=share,
                               accept_license=accept_license, progress=bar)
            ctx.out.result(la, f"installed {la.name}@{la.seq} in {la.root}/{la.path}: "
                               f"{count(la.files, 'file')}, {human_bytes(la.total_size)} "
                               f"({la.files_written} written, {la.files_kept} kept, "
                               f"{la.files_removed} removed), verified")
            return
        from cas.hfcache import export_version

        r = export_version(store, spec, _cache_arg(hf_cache), repo, progress=bar, share=share,
                           accept_license=accept_license)
    ctx.out.result(r, f"exported {r.name}@{r.seq} as {r.repo} snapshot {r.snapshot[:12]} in "
                      f"{r.path}: {count(r.files, 'file')}, {human_bytes(r.total_size)} "
                      f"({count(r.blobs_written, 'blob')} written, {r.blobs_reused} reused), "
                      "verified")


@cli.command("compat")
@click.argument("spec", metavar="NAME[@V]", shell_complete=complete_spec)
@click.option("--dest", type=click.Path(path_type=Path), default=None,
              help="Where the model would be written, for the free-disk check (default: "
                   "the current folder).")
@pass_ctx
def compat_cmd(ctx: Ctx, spec: str, dest: Path | None) -> None:
    """Check whether version NAME[@V] can run here: RAM, GPU memory (nvidia-smi), free disk
    and CPU features against its size, dtypes and format. Weights are not read; each failed
    check is a warning. Exit code 0 either way; --json has the whole report ("runs").

    \b
    Examples:
      cas compat org/model@prod
      cas compat team/llama-gguf --dest /srv/models --json
    """
    from cas.compat import check_version

    with ctx.open() as store:
        r = check_version(store, spec, dest)
    h = r.host
    lines = [f"{r.name}@{r.seq}: {r.format}, {'/'.join(r.dtypes) or 'dtype unknown'}, "
             f"{human_bytes(r.total_size)}; needs about {human_bytes(r.memory_needed)} to run"]
    for c in r.checks:
        state = "ok" if c.ok else ("--" if c.check == "gpu" and not h.gpus else "LOW")
        lines.append(f"  {c.check:<4} {state:<3} {c.message}")
    lines.append("runs here" if r.runs else "does not fit here (see the warnings)")
    ctx.out.result(r, lines)


@cli.command("license")
@click.argument("spec", metavar="NAME[@V]", required=False, shell_complete=complete_spec)
@click.option("--accept", is_flag=True, help="Record that you accept the version's licence.")
@click.option("--require", "require", metavar="ID",
              help="Mark licence ID (as versions record it) as needing acceptance.")
@click.option("--unrequire", "unrequire", metavar="ID", help="Undo --require ID.")
@click.option("--author", metavar="'NAME <EMAIL>'", help="Who accepts (default: as add).")
@pass_ctx
def license_cmd(ctx: Ctx, spec: str | None, accept: bool, require: str | None,
                unrequire: str | None, author: str | None) -> None:
    """Show the licence of NAME[@V] and its acceptance, or accept it.

    Versions of gated Hub repositories, and those under a licence marked with --require,
    are refused by checkout and export (E_LICENSE) until accepted. Acceptances (who, when)
    are kept in the registry (refs/cas/licenses), per model and licence.

    \b
    Examples:
      cas license meta/llama-3-8b --accept
      cas license --require llama3
    """
    from cas import licenses

    if require or unrequire:
        if spec or accept or (require and unrequire):
            raise ArgsError("--require/--unrequire ID take no NAME and no --accept")
        with ctx.open() as store:
            rr = licenses.set_required(store, require or unrequire or "", bool(require),
                                       author)
        verb = "requires acceptance" if rr.required else "no longer requires acceptance"
        ctx.out.result(rr, f"licence {rr.license} {verb}" + ("" if rr.changed else
                                                              " (already)"))
        return
    if not spec:
        raise ArgsError("give NAME[@V] (or --require ID)")
    with ctx.open() as store:
        version = store.resolve(spec)
        st = (licenses.accept_version(store, version, author) if accept
              else licenses.status(store, version))
    lines = [f"{st.name}@{st.seq}: licence {st.license or 'not recorded'}"]
    if st.requires:
        why = " and ".join({"gated": "a gated Hub repository",
                            "marked": "a licence marked --require"}[w] for w in st.requires)
        lines.append(f"acceptance required ({why})")
        if st.accepted is not None:
            lines.append(f"accepted by {st.accepted.by} at {st.accepted.at}"
                         + (" (recorded now)" if st.recorded else ""))
        else:
            lines.append(f"not accepted: cas license {st.name}@{st.seq} --accept")
    else:
        lines.append("no acceptance required")
    ctx.out.result(st, lines)
