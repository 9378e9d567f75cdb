"""Shell completion of model names and versions, read from the store the command line names.

Click calls these callbacks (``shell_complete=``) when the shell asks for completions (see
``cas completion``). They read the store named by ``--store`` earlier on the line, else the
default store, without taking a lock or writing anything, and they never fail: no store, a
damaged registry or anything else unexpected gives no completions, never an error on the
user's terminal in the middle of typing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

if TYPE_CHECKING:
    from cas.registry import Registry


def _store_path(ctx: click.Context) -> Path:
    """The store the line names: the command's ``--store``, the group's, else the default."""
    from cas.store import default_store_path

    c: click.Context | None = ctx
    while c is not None:
        for key in ("store_", "store"):
            value = c.params.get(key)
            if isinstance(value, str) and value:
                return Path(value).expanduser()
        c = c.parent
    return default_store_path()


@contextmanager
def _registry(ctx: click.Context) -> Iterator[Registry | None]:
    """The store's registry opened read-only, or None when there is no store."""
    from cas.registry import Registry

    path = _store_path(ctx)
    if not (path / "config.json").is_file() or not (path / "registry").is_dir():
        yield None
        return
    reg = Registry(path / "registry")
    try:
        yield reg
    finally:
        reg.close()


def _quietly(f: Callable[[click.Context, str], list[CompletionItem]]
             ) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    def callback(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
        try:
            return f(ctx, incomplete)
        except Exception:  # noqa: BLE001 - completion must never fail loudly
            return []

    callback.__name__ = f.__name__
    callback.__doc__ = f.__doc__
    return callback


def _names(ctx: click.Context, incomplete: str) -> list[str]:
    with _registry(ctx) as reg:
        if reg is None:
            return []
        return [n for n in reg.model_names() if n.startswith(incomplete)]


@_quietly
def complete_model(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """Model names that start with what was typed."""
    return [CompletionItem(n) for n in _names(ctx, incomplete)]


@_quietly
def complete_spec(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    """``NAME``, then after ``NAME@`` the model's tags and live version numbers."""
    name, at, selector = incomplete.partition("@")
    if not at:
        return [CompletionItem(n) for n in _names(ctx, incomplete)]
    with _registry(ctx) as reg:
        if reg is None or name not in reg.model_names():
            return []
        tags = sorted(t for (_, t) in reg.tags(name))
        seqs = [str(v.seq) for v in reversed(reg.versions(name))]  # newest first
    return [CompletionItem(f"{name}@{s}", help=help_)
            for s, help_ in [*((t, "tag") for t in tags), *((s, "version") for s in seqs)]
            if s.startswith(selector)]
