"""``cas`` commands. Each parses its arguments, calls :class:`cas.Store`, and renders."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from cas.cli.render import Output, ProgressBar, fail, human_bytes

from cas import __version__
from cas.errors import ArgsError, CasError, Interrupted, VerifyError
from cas.store import Store, default_store_path


class Ctx:
    def __init__(self, store: str | None, json_mode: bool, quiet: bool, lock_timeout: float):
        self.store_arg = store
        self.out = Output(json_mode, quiet)
        self.lock_timeout = lock_timeout

    @property
    def store_path(self) -> Path:
        return Path(self.store_arg) if self.store_arg else default_store_path()

    def open(self, create: bool = False) -> Store:
        path = self.store_path
        if create and not (path / "config.json").exists():
            store = Store.init(path)
            self.out.note(f"initialized a new store at {path}")
        else:
            store = Store.open(path)
        store.lock_timeout = self.lock_timeout
        return store


@contextmanager
def progress_for(ctx: Ctx) -> Iterator[ProgressBar | None]:
    bar = ctx.out.progress()
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


def pass_ctx(f: Callable[..., None]) -> Callable[..., None]:
    """Pass the Ctx, and accept the global flags after the command name too
    (``cas ls --json`` as well as ``cas --json ls``)."""

    @click.option("--store", "store_", metavar="PATH", default=None,
                  help="Store to use (same as the global option).")
    @click.option("--json", "json_", is_flag=True, help="Print one JSON document.")
    @click.option("-q", "--quiet", "quiet_", is_flag=True, help="Print nothing but errors.")
    @click.pass_obj
    @functools.wraps(f)
    def wrapper(obj: Ctx, *args: Any, store_: str | None, json_: bool, quiet_: bool,
                **kwargs: Any) -> None:
        if store_:
            obj.store_arg = store_
        if json_:
            obj.out.json = True
        if quiet_:
            obj.out.quiet = True
        f(obj, *args, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store", metavar="PATH", envvar=None,
              help="Store to use (default: $CAS_HOME, else the XDG data directory).")
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON document.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--lock-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for another writer.")
@click.version_option(version=__version__, prog_name="cas")
@click.pass_context
def cli(click_ctx: click.Context, store: str | None, json_mode: bool, quiet: bool,
        lock_timeout: float) -> None:
    """cas: a content-addressed, git-backed store for ML model files."""
    click_ctx.obj = Ctx(store, json_mode, quiet, lock_timeout)


@cli.command()
@click.argument("path", required=False)
@click.option("--no-derive", is_flag=True,
              help="Never store a tensor as its difference from the previous version: "
                   "more space for fine-tunes and dtype conversions, faster restores of them.")
@pass_ctx
def init(ctx: Ctx, path: str | None, no_derive: bool) -> None:
    """Create a store at PATH (default: --store, $CAS_HOME or the XDG data directory)."""
    target = Path(path) if path else ctx.store_path
    store = Store.init(target, derive=not no_derive)
    ctx.out.result({"store": str(store.path), "format_version": store.config.version,
                    "chunker": store.config.chunker,
                    "derive": store.config.derives},
                   f"initialized cas store at {store.path}")


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise ArgsError(f"{what} {v!r} must be KEY=VALUE")
        out[key] = val
    return out


@cli.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-m", "--message", default="", help="Describe this version.")
@click.option("--tag", "tags", multiple=True, help="Tag the new version (repeatable).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Free metadata (repeatable).")
@click.option("--metric", multiple=True, metavar="NAME=NUMBER", help="A metric (repeatable).")
@click.option("--role", help="Role of the model, e.g. base, finetune, adapter, draft.")
@click.option("--base-model", help="Model this one was derived from.")
@click.option("--parent", "parents", multiple=True, metavar="NAME[@V]",
              help="A registered parent version (lineage; repeatable).")
@click.option("--license", "license_", help="License of the weights.")
@click.option("--source", help="Where the files came from (default: the path).")
@click.option("--rehash", is_flag=True, help="Read every file even if the stat cache knows it.")
@pass_ctx
def add(ctx: Ctx, name: str, path: Path, message: str, tags: tuple[str, ...],
        meta: tuple[str, ...], metric: tuple[str, ...], role: str | None,
        base_model: str | None, parents: tuple[str, ...], license_: str | None,
        source: str | None, rehash: bool) -> None:
    """Register PATH (a file or a directory) as a new version of model NAME."""
    from cas.ingest import AddOptions

    metrics: dict[str, float] = {}
    for k, v in _pairs(metric, "--metric").items():
        try:
            metrics[k] = float(v)
        except ValueError:
            raise ArgsError(f"--metric {k}={v!r}: not a number") from None
    opts = AddOptions(message=message, tags=list(tags), role=role, base_model=base_model,
                      license=license_, parents=list(parents), metrics=metrics,
                      extra=_pairs(meta, "--meta"), source=source, rehash=rehash)
    with ctx.open(create=ctx.store_arg is None) as store, progress_for(ctx) as bar:
        r = store.add(name, path, opts, bar)
    ref = f"{r.name}@{r.seq}"
    lines = []
    if r.created:
        lines.append(f"registered {ref} ({r.commit[:12]}): {r.files} files, "
                     f"{human_bytes(r.total_size)}")
        lines.append(f"  {r.new_chunks} new chunks ({human_bytes(r.new_stored_bytes)} stored), "
                     f"{r.reused_chunks} already stored, {r.stat_cache_hits} files unchanged")
    else:
        lines.append(f"unchanged: {ref} already holds this content; no new version")
    if r.tags:
        lines.append(f"  tagged {', '.join(r.tags)}")
    for p in r.stale_cache:
        lines.append(f"  note: {p} changed without a new mtime; the stat cache was refreshed")
    ctx.out.result(r, lines)


@cli.command("ls")
@click.argument("pattern", required=False)
@click.option("--format", "format_", help="Only models of this format.")
@click.option("--role", help="Only models with this role.")
@click.option("--tag", help="Only models that have this tag.")
@pass_ctx
def ls_cmd(ctx: Ctx, pattern: str | None, format_: str | None, role: str | None,
           tag: str | None) -> None:
    """List models; PATTERN is a glob on names such as 'meta-llama/*'."""
    with ctx.open() as store:
        rows = store.ls(pattern, format=format_, role=role, tag=tag)
    lines = [f"{'NAME':<48} {'LATEST':>6} {'VERS':>4} {'SIZE':>10}  {'FORMAT':<11} TAGS"]
    for r in rows:
        if r.error:
            lines.append(f"{r.name:<48} {'@' + str(r.latest):>6} {r.versions:>4}  "
                         f"unreadable manifest: {r.error}")
            continue
        lines.append(f"{r.name:<48} {'@' + str(r.latest):>6} {r.versions:>4} "
                     f"{human_bytes(r.size):>10}  {r.format:<11} {','.join(r.tags)}")
    ctx.out.result({"models": rows}, lines if rows else "no models")


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@pass_ctx
def show(ctx: Ctx, spec: str) -> None:
    """Show one version: its metadata and files."""
    with ctx.open() as store:
        d = store.show(spec)
    m = d.manifest
    md = m.metadata
    lines = [f"{d.name}@{d.seq}  commit {d.commit}",
             f"  registered  {d.registered_at} by {d.author}",
             f"  message     {d.message}"]
    if d.tags:
        lines.append(f"  tags        {', '.join(d.tags)}")
    fields: list[tuple[str, Any]] = [
        ("format", md.format), ("architecture", md.architecture),
        ("parameters", f"{md.parameter_count:,}" if md.parameter_count else None),
        ("dtypes", ", ".join(md.dtypes) or None), ("quantization", md.quantization),
        ("role", md.role), ("base model", md.base_model),
        ("parents", ", ".join(md.parents) or None), ("license", md.license),
        ("source", md.source), ("created", f"{md.created_at} on {md.created_on}"),
    ]
    for label, value in fields:
        if value:
            lines.append(f"  {label:<11} {value}")
    for k, v in md.metrics.items():
        lines.append(f"  metric      {k} = {v:g}")
    for k, v in md.extra.items():
        lines.append(f"  meta        {k} = {v}")
    lines.append(f"  files       {len(m.files)}, {human_bytes(m.total_size)}")
    for f in m.files:
        lines.append(f"    {human_bytes(f.size):>10}  {f.sha256[:16]}  {f.path}"
                     + ("  (x)" if f.executable else ""))
    ctx.out.result(d, lines)


@cli.command()
@click.argument("name")
@pass_ctx
def log(ctx: Ctx, name: str) -> None:
    """History of model NAME, newest first."""
    with ctx.open() as store:
        rows = store.log(name)
    lines = []
    for r in rows:
        tags = f"  [{', '.join(r.tags)}]" if r.tags else ""
        lines.append(f"{r.commit[:12]}  {r.at}  {r.action:<3} @{r.seq:<4} {r.author}  "
                     f"{r.message}{tags}")
    ctx.out.result({"name": name, "history": rows}, lines)


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.argument("tag_name", metavar="TAG")
@click.option("-f", "--force", is_flag=True, help="Move the tag if it exists.")
@click.option("-d", "--delete", is_flag=True, help="Delete the tag instead.")
@pass_ctx
def tag(ctx: Ctx, spec: str, tag_name: str, force: bool, delete: bool) -> None:
    """Tag version NAME[@V] as TAG (then NAME@TAG names it)."""
    with ctx.open() as store:
        v = store.tag(spec, tag_name, force=force, delete=delete)
    what = "deleted tag" if delete else "tagged"
    ctx.out.result({"name": v.name, "seq": v.seq, "commit": v.commit, "tag": tag_name,
                    "deleted": delete}, f"{what} {v.name}@{tag_name} ({v.ref})")


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("-f", "--force", is_flag=True, help="Overwrite files that exist in DEST.")
@click.option("--cached", is_flag=True,
              help="Write through the page cache, leaving the files in memory for a program "
                   "that loads them next (slower; default: direct writes).")
@pass_ctx
def checkout(ctx: Ctx, spec: str, dest: Path, force: bool, cached: bool) -> None:
    """Write the files of NAME[@V] under DEST, byte-identical and SHA-256 verified."""
    with ctx.open() as store, progress_for(ctx) as bar:
        r = store.checkout(spec, dest, force=force, progress=bar, cached=cached)
    ctx.out.result(r, f"checked out {r.name}@{r.seq} to {r.dest}: {r.files} files, "
                      f"{human_bytes(r.bytes_written)}, SHA-256 verified")


@cli.command()
@click.argument("spec", metavar="[NAME[@V]]", required=False)
@click.option("--all", "all_", is_flag=True, help="Verify every object and every version.")
@click.option("--repair", is_flag=True,
              help="With --all: rebuild missing or damaged pack indexes from their packs.")
@pass_ctx
def verify(ctx: Ctx, spec: str | None, all_: bool, repair: bool) -> None:
    """Verify one version, or with --all the whole store; name every bad chunk."""
    if bool(spec) == all_:
        raise ArgsError("give either NAME[@V] or --all")
    with ctx.open() as store, progress_for(ctx) as bar:
        report = store.verify(spec, bar, repair=repair)
    for pack_id in report.repaired_indexes:
        ctx.out.note(f"rebuilt the index of pack {pack_id}")
    if not report.ok:
        if not ctx.out.json:
            for b in report.bad_objects:
                sys.stderr.write(f"bad chunk {b.id} in pack {b.pack}: {b.reason}\n")
            for bv in report.broken_versions:
                sys.stderr.write(f"broken version {bv.version}: {', '.join(bv.files) or '-'}\n")
                for r in bv.reasons:
                    sys.stderr.write(f"    {r}\n")
            for p in report.problems:
                sys.stderr.write(f"problem: {p}\n")
        raise _ReportedFailure(VerifyError(report.summary()), {"report": report})
    ctx.out.result(report, report.summary())


@cli.command()
@click.argument("spec", metavar="NAME[@V]")
@click.option("-f", "--force", is_flag=True, help="Remove a version even if it is tagged.")
@pass_ctx
def rm(ctx: Ctx, spec: str, force: bool) -> None:
    """Unregister a version (NAME@V) or a whole model (NAME)."""
    with ctx.open() as store:
        r = store.rm(spec, force=force)
    lines = [f"removed {', '.join(r['removed'])}"]  # type: ignore[arg-type]
    if r["tags_removed"]:
        lines.append(f"  tags removed: {', '.join(r['tags_removed'])}")  # type: ignore[arg-type]
    lines.append("  disk space is returned by garbage collection (cas gc), not by rm")
    ctx.out.result(r, lines)


@cli.command()
@click.argument("name", required=False)
@pass_ctx
def du(ctx: Ctx, name: str | None) -> None:
    """Disk usage of the store or of model NAME: logical, stored, unique and shared bytes."""
    with ctx.open() as store:
        u = store.du(name)
    lines = [f"{u.scope}: logical {human_bytes(u.logical)}, stored {human_bytes(u.stored)} "
             f"(unique {human_bytes(u.unique)}, shared {human_bytes(u.shared)}), "
             f"dedupe {u.dedupe_ratio:.2f}x"]
    for v in u.versions:
        lines.append(f"  {v.version:<40} logical {human_bytes(v.logical):>10}  "
                     f"stored, new to this model {human_bytes(v.new_stored):>10}")
    if name is None:
        lines.append(f"  pack files on disk: {human_bytes(u.pack_bytes)}")
    ctx.out.result(u, lines)


class _ReportedFailure(Exception):
    """A CasError whose details were already rendered; carries extra JSON fields."""

    def __init__(self, error: CasError, extra: dict[str, Any]) -> None:
        super().__init__(error.message)
        self.error = error
        self.extra = extra


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run a command, map every failure to one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in args
    try:
        cli.main(args=args, prog_name="cas", standalone_mode=False)
    except _ReportedFailure as exc:
        import msgspec

        sys.exit(fail(exc.error, json_mode, msgspec.to_builtins(exc.extra)))
    except CasError as exc:
        sys.exit(fail(exc, json_mode))
    except click.exceptions.Abort:
        sys.exit(fail(Interrupted("interrupted"), json_mode))
    except KeyboardInterrupt:
        sys.exit(fail(Interrupted("interrupted"), json_mode))
    except click.ClickException as exc:
        if json_mode:
            sys.exit(fail(ArgsError(exc.format_message()), True))
        exc.show()
        sys.exit(ArgsError.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug, reported as one
        sys.exit(fail(exc, json_mode))
    sys.exit(0)


if __name__ == "__main__":
    main()
