"""Commands about the store as a whole: init, upgrade, config, verify, du."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from cas.cli.app import Ctx, NonEmptyPath, ReportedFailure, cli, pass_ctx, progress_for
from cas.cli.complete import complete_model, complete_spec
from cas.cli.render import human_bytes

from cas.errors import ArgsError, CasError, VerifyError, error_of_code
from cas.store import Store


@cli.command()
@click.argument("path", required=False, type=NonEmptyPath())
@click.option("--no-derive", is_flag=True,
              help="Never store a tensor as its difference from the previous version: "
                   "more space for fine-tunes and dtype conversions, faster restores of them.")
@click.option("--description", metavar="TEXT", help="A human description of this store.")
@pass_ctx
def init(ctx: Ctx, path: str | None, no_derive: bool, description: str | None) -> None:
    """Create a store at PATH (default: --store, $CAS_HOME or the XDG data directory).

    On an existing store, succeeds when the options agree with it (and says so), and fails
    with E_CONFLICT when they do not.

    \b
    Examples:
      cas init
      cas init /data/cas --no-derive --description "inference fleet cache"
    """
    target = Path(path) if path else ctx.store_path
    store = Store.init(target, derive=False if no_derive else None, description=description)
    with store:
        doc = {"store": str(store.path), "created": store.created, "uuid": store.uuid,
               "format_version": store.config.version, "chunker": store.config.chunker,
               "derive": store.config.derives}
        if store.created:
            text = f"initialized cas store at {store.path}"
        else:
            text = f"already initialized: {store.path}"
            if store.uuid is None:
                text += (f" (format version {store.config.version}; "
                         "'cas upgrade' brings it to the current one)")
    ctx.out.result(doc, text)


@cli.command()
@pass_ctx
def upgrade(ctx: Ctx) -> None:
    """Bring the store's format to the current version (gives it a store UUID).

    Stores of earlier versions keep working without it; commands that need the store's
    identity ask for it. Idempotent; only config.json changes, atomically.

    \b
    Examples:
      cas upgrade
      cas upgrade --store /data/cas --json
    """
    with ctx.open() as store:
        old, new, changed = store.upgrade()
        doc = {"store": str(store.path), "from_version": old, "to_version": new,
               "uuid": store.uuid, "derive": store.config.derives, "changed": changed}
    if old != new:
        text = f"upgraded {doc['store']} from format version {old} to {new} (uuid {doc['uuid']})"
    elif changed:
        text = (f"{doc['store']} is at format version {new}; sealed its config.json with a "
                "checksum")
    else:
        text = f"{doc['store']} is already at format version {new}"
    ctx.out.result(doc, text)


@cli.group("config", invoke_without_command=False)
def config_group() -> None:
    """Read and change the store's settings (description, restore window).

    \b
    Examples:
      cas config set description "training box 3"
      cas config list
    """


@config_group.command("get")
@click.argument("key")
@pass_ctx
def config_get(ctx: Ctx, key: str) -> None:
    """Print the value of setting KEY.

    \b
    Examples:
      cas config get restore_window
    """
    with ctx.open() as store:
        value = store.settings.get(key)
    ctx.out.result({"key": key, "value": value}, value)


@config_group.command("set")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--unset", is_flag=True, help="Reset KEY to its default.")
@pass_ctx
def config_set(ctx: Ctx, key: str, value: str | None, unset: bool) -> None:
    """Set setting KEY to VALUE (validated; written atomically).

    \b
    Examples:
      cas config set restore_window 30d
      cas config set description --unset
    """
    if unset == (value is not None):
        raise ArgsError("give either VALUE or --unset")
    with ctx.open() as store:
        stored = store.set_setting(key, None if unset else value)
        shown = store.settings.get(key)
    ctx.out.result({"key": key, "value": shown, "set": stored is not None},
                   f"{key} = {shown}" + ("  (default)" if stored is None else ""))


@config_group.command("list")
@pass_ctx
def config_list(ctx: Ctx) -> None:
    """List every setting with its value, and the store's identity.

    \b
    Examples:
      cas config list
      cas config list --json
    """
    with ctx.open() as store:
        listing = store.settings.listing()
        doc = {"store": str(store.path), "uuid": store.uuid,
               "format_version": store.config.version, "settings": listing}
    width = max(len(k) for k in listing)
    lines = [f"{'store':<{width}}  {doc['store']}",
             f"{'uuid':<{width}}  {doc['uuid'] or '(none: run cas upgrade)'}",
             f"{'format':<{width}}  version {doc['format_version']}"]
    for key, info in listing.items():
        note = "" if info["set"] else "  (default)"
        if not info["known"]:
            note = "  (unknown to this cas; kept)"
        lines.append(f"{key:<{width}}  {info['value'] if info['value'] != '' else '(empty)'}"
                     f"{note}")
    ctx.out.result(doc, lines)


@cli.command()
@click.argument("spec", metavar="[NAME[@V]]", required=False, shell_complete=complete_spec)
@click.option("--all", "all_", is_flag=True,
              help="Verify everything a restore reads: every pack (header, objects, trailer), "
                   "index and midx, and every version and registry commit.")
@click.option("--files", is_flag=True,
              help="With --all: also hash every live version's files whole (SHA-256 against "
                   "the manifest, once per distinct file); recommended for periodic deep checks.")
@click.option("--repair", is_flag=True,
              help="With --all: rebuild missing or damaged pack indexes from their packs; move "
                   "packs that cannot be indexed to packs/quarantine/.")
@click.option("--from", "from_", metavar="PATH|REMOTE", type=NonEmptyPath(),
              help="With --all --repair: first store good copies of damaged or missing "
                   "objects from the original files under PATH, or from a remote store (a "
                   "configured name, a URL, or a folder holding a store); no version is "
                   "added.")
@pass_ctx
def verify(ctx: Ctx, spec: str | None, all_: bool, files: bool, repair: bool,
           from_: str | None) -> None:
    """Verify one version, or with --all the whole store; name every bad chunk.

    Exits 0 when everything is sound (files set aside in quarantine are a warning), else
    E_VERIFY (exit 4) after listing every problem found.

    \b
    Examples:
      cas verify --all --files
      cas verify --all --repair --from ./checkpoints/run-7
      cas verify --all --repair --from origin
    """
    if bool(spec) == all_:
        raise ArgsError("give either NAME[@V] or --all")
    with ctx.open() as store, progress_for(ctx) as bar:
        remote = _remote_source(store, from_) if from_ else None
        report = store.verify(spec, bar, repair=repair, files=files,
                              heal_from=Path(from_) if from_ and not remote else None,
                              heal_remote=remote)
    if report.healed_objects:
        ctx.out.note(f"stored {report.healed_objects} objects from {from_}")
    for pack_id in report.repaired_indexes:
        ctx.out.note(f"rebuilt the index of pack {pack_id}")
    if not report.ok:
        if not ctx.out.json:
            for w in report.warnings:
                sys.stderr.write(f"cas: warning: {w.message} [{w.code}]\n")
            for b in report.bad_objects:
                sys.stderr.write(f"bad chunk {b.id} in pack {b.pack}: {b.reason}\n")
            for bv in report.broken_versions:
                sys.stderr.write(f"broken version {bv.version}: {', '.join(bv.files) or '-'}\n")
                for r in bv.reasons:
                    sys.stderr.write(f"    {r}\n")
            for p in report.problems:
                sys.stderr.write(f"problem: {p}\n")
        raise ReportedFailure(VerifyError(report.summary()), {"report": report})
    ctx.out.result(report, report.summary())


def _remote_source(store: Store, spec: str) -> str | None:
    """``spec`` when it names a remote store (a configured remote, an ssh or http URL, or a
    folder holding a store), else None (a folder of original files)."""
    from cas import remotes as rem

    if spec in rem.load(store.backend):
        return spec
    try:
        url = rem.parse_url(spec)
    except CasError:
        return None
    if url.kind != "dir":
        return spec
    return spec if (Path(url.path or url.url) / "config.json").exists() and \
        _claims_cas(Path(url.path or url.url)) else None


def _claims_cas(path: Path) -> bool:
    try:
        Store.open(path).close()
    except CasError:
        return False
    return True


@cli.command()
@click.argument("name", required=False, shell_complete=complete_model)
@pass_ctx
def du(ctx: Ctx, name: str | None) -> None:
    """Disk usage of the store or of model NAME: logical, stored, unique and shared bytes.

    For the store, also what live, pinned and removed versions need and what gc can
    reclaim; for a model, per version what is new, what it needs in all, and how much of
    that are other versions' chunks it is derived from (see cas/usage.py).

    A model whose history or manifests cannot be read is left out of the counts and named
    on stderr; the command then exits with that model's error code after printing the rest.

    \b
    Examples:
      cas du
      cas du org/model --json
    """
    with ctx.open() as store:
        u = store.du(name)
    if u.errors and not ctx.out.json:
        for e in u.errors:
            sys.stderr.write(f"cas: error: model {e.name}: {e.message} [{e.code}]\n")
    lines = [(f"{u.scope}: logical {human_bytes(u.logical)}, stored {human_bytes(u.stored)} "
             f"(unique {human_bytes(u.unique)}, shared {human_bytes(u.shared)}), "
             f"dedupe {u.dedupe_ratio:.2f}x")]
    for v in u.versions:
        line = (f"  {v.version:<32} logical {human_bytes(v.logical):>10}  "
                f"new {human_bytes(v.new_stored):>10}  needs {human_bytes(v.needs):>10}")
        if v.borrowed:
            line += f" (of which {human_bytes(v.borrowed)} other versions' chunks)"
        lines.append(line)
    if name is None:
        lines += [f"  live and tagged versions need   {human_bytes(u.live):>10}",
                  f"  pinned versions need            {human_bytes(u.pinned):>10}",
                  f"  only removed versions need      {human_bytes(u.restore_window):>10}"
                  "  (restorable; 'cas gc --expire-removed' returns it)",
                  f"  reclaimable by gc               {human_bytes(u.reclaimable):>10}",
                  f"  pack files on disk              {human_bytes(u.pack_bytes):>10}"]
    if u.errors:
        # Counted without the unreadable models; the exit code is the first one's error.
        if not ctx.out.json:
            for line in lines:
                sys.stdout.write(line + "\n")
        first = u.errors[0]
        raise ReportedFailure(error_of_code(first.code, f"{_count_models(len(u.errors))} "
                                            f"could not be counted: {first.name}: "
                                            f"{first.message}"),
                              {"usage": u})
    ctx.out.result(u, lines)


def _count_models(n: int) -> str:
    return f"{n} model{'' if n == 1 else 's'}"
