"""The ``cas`` click group and what every command shares: the context (store, output), the
global flags, progress bars and the error carrier for already-rendered failures.

Commands live in one module per family (``cmd_*.py``) and register on :data:`cli`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from cas.cli.render import Output, ProgressBar

from cas import __version__
from cas.errors import ArgsError, CasError
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

    @click.option("--store", "store_", metavar="PATH", default=None, callback=nonempty_store,
                  help="Store to use (same as the global option).")
    @click.option("--json", "json_", is_flag=True, help="Print one JSON document.")
    @click.option("-q", "--quiet", "quiet_", is_flag=True, help="Print nothing but errors.")
    @click.option("--offline", "offline_", is_flag=True,
                  help="Use no network (same as the global option).")
    @click.pass_obj
    @functools.wraps(f)
    def wrapper(obj: Ctx, *args: Any, store_: str | None, json_: bool, quiet_: bool,
                offline_: bool, **kwargs: Any) -> None:
        if offline_:
            import os

            os.environ["CAS_OFFLINE"] = "1"
        if store_:
            obj.store_arg = store_
        if json_:
            obj.out.json = True
        if quiet_:
            obj.out.quiet = True
        f(obj, *args, **kwargs)

    return wrapper


class NonEmptyPath(click.Path):
    """A path argument that refuses the empty string: "" is a mistake (an unset variable),
    not the current folder, which ``Path("")`` would silently become."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            name = param.human_readable_name if param is not None else "path"
            raise ArgsError(f"{name} is empty")
        return super().convert(value, param, ctx)


def nonempty_store(ctx: click.Context, param: click.Parameter, value: str | None
                   ) -> str | None:
    """Click callback for ``--store``: an empty value is refused, not taken as the default."""
    if value is not None and not value.strip():
        raise ArgsError("--store is empty")
    return value


_EXAMPLES = "\b\nExamples:"


def _examples_last(cmd: click.Command) -> None:
    """Move a docstring's closing ``Examples:`` block into the epilog, so that ``--help``
    shows it at the end, after the options (click puts the docstring before them)."""
    import inspect

    if cmd.help and not cmd.epilog:
        text = inspect.cleandoc(cmd.help)
        if _EXAMPLES in text:
            head, _, examples = text.partition(_EXAMPLES)
            cmd.help = head.rstrip()
            cmd.epilog = _EXAMPLES + examples


class CasCommand(click.Command):
    """A cas command: examples at the end of its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _examples_last(self)


class CasGroup(click.Group):
    """The group of cas commands: subcommands and subgroups get the examples layout too."""

    command_class = CasCommand
    group_class = type

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _examples_last(self)


@click.group(cls=CasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store", metavar="PATH", envvar=None, callback=nonempty_store,
              help="Store to use (default: $CAS_HOME, else the XDG data directory).")
@click.option("--json", "json_mode", is_flag=True, help="Print one JSON document.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--lock-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for another writer.")
@click.option("--offline", is_flag=True,
              help="Use no network: ssh and http remotes fail at once (E_NET); folders and "
                   "bundles work. Same as CAS_OFFLINE=1.")
@click.version_option(version=__version__, prog_name="cas")
@click.pass_context
def cli(click_ctx: click.Context, store: str | None, json_mode: bool, quiet: bool,
        lock_timeout: float, offline: bool) -> None:
    """cas: a content-addressed, git-backed store for ML model files.

    \b
    Examples:
      cas add org/model ./checkpoint -m "run 7" --tag candidate --metric eval/acc=0.91
      cas checkout org/model@candidate ./serve
    """
    from cas.locking import check_timeout

    if offline:
        import os

        os.environ["CAS_OFFLINE"] = "1"  # what every network path checks (cas.rpc.check_online)
    click_ctx.obj = Ctx(store, json_mode, quiet, check_timeout(lock_timeout))



class ReportedFailure(Exception):
    """A CasError whose details were already rendered; carries extra JSON fields."""

    def __init__(self, error: CasError, extra: dict[str, Any]) -> None:
        super().__init__(error.message)
        self.error = error
        self.extra = extra



def parse_pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key:
            raise ArgsError(f"{what} {v!r} must be KEY=VALUE")
        out[key] = val
    return out




def parse_metrics(values: tuple[str, ...]) -> dict[str, float]:
    """``--metric NAME=NUMBER`` pairs."""
    import math

    metrics: dict[str, float] = {}
    for k, v in parse_pairs(values, "--metric").items():
        try:
            metrics[k] = float(v)
        except ValueError:
            raise ArgsError(f"--metric {k}={v!r}: not a number") from None
        if not math.isfinite(metrics[k]):
            raise ArgsError(f"--metric {k}={v!r}: not a finite number")
    return metrics


def provenance_options(f: Callable[..., None]) -> Callable[..., None]:
    """The provenance flags shared by ``add`` and ``annotate``."""
    for opt in reversed([
        click.option("--run-id", metavar="ID", help="Training run that made the weights."),
        click.option("--dataset", "datasets", multiple=True, metavar="NAME[@REV]",
                     help="A dataset trained on (repeatable)."),
        click.option("--code-rev", metavar="REV", help="Revision of the training code."),
        click.option("--seed", type=int, help="Random seed of the training run."),
        click.option("--env", "env", multiple=True, metavar="KEY=VALUE",
                     help="Environment of the run, e.g. torch=2.5.1 (repeatable)."),
    ]):
        f = opt(f)
    return f


def parse_provenance(run_id: str | None = None, datasets: tuple[str, ...] = (),
                     code_rev: str | None = None, seed: int | None = None,
                     env: tuple[str, ...] = ()) -> Any:
    from cas.format.manifest import Provenance

    return Provenance(run_id=run_id, datasets=list(datasets), code_revision=code_rev,
                      seed=seed, environment=parse_pairs(env, "--env"))
