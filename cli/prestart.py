"""What the command line does before the rest of cas is imported: start the ssh connection of
``cas push|pull|fetch``, and run ``cas serve --stdio`` (the far side of that connection).

A no-op push over ssh is mostly waiting: for ssh's key exchange and authentication, then for
the far side's ``cas serve`` to start. Importing the command line and the store here takes
about as long again, so :func:`prestart` reads just enough of the arguments to know the
remote, and when it is an ssh remote starts the connection (:func:`cas.carrier.prestart`)
while the imports run. The command then takes that connection if it needs the same one.

Reading the arguments here never decides anything: when they are unusual (help, an unknown
option before the remote, a name that is not configured, no store), nothing is started and
the command runs as it would have. Nothing is started offline (``--offline``,
``CAS_OFFLINE``).
"""

from __future__ import annotations

import os

VERBS = frozenset({"push", "pull", "fetch"})
#: Options (global or of these commands) that take a value.
_VALUED = frozenset({"--store", "--lock-timeout"})
_FLAGS = frozenset({"--json", "-q", "--quiet", "--offline", "--force", "--rebase"})


def _sniff(args: list[str]) -> tuple[str | None, str | None] | None:
    """``(store, remote)`` named by a push/pull/fetch command line (either may be None:
    the default), or None when the line is not one or is unusual."""
    store: str | None = None
    verb: str | None = None
    positional: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--offline":
            return None
        if arg in _VALUED:
            value = next(it, None)
            if value is None:
                return None
            if arg == "--store":
                store = value
        elif arg.startswith("--store="):
            store = arg.partition("=")[2]
        elif arg.startswith("-"):
            if arg not in _FLAGS:
                return None
        elif verb is None:
            if arg not in VERBS:
                return None
            verb = arg
        else:
            positional.append(arg)
    if verb is None:
        return None
    return store, positional[0] if positional else None


def prestart(args: list[str]) -> None:
    """Start ssh now when ``args`` is a push, pull or fetch to an ssh remote. Never raises."""
    if os.environ.get("CAS_OFFLINE", "").strip() not in ("", "0"):
        return
    sniffed = _sniff(args)
    if sniffed is None:
        return
    try:
        _start(*sniffed)
    except Exception:  # noqa: BLE001 - the command itself reports whatever is wrong
        return


def _start(store_arg: str | None, spec: str | None) -> None:
    from pathlib import Path

    from cas import carrier, remotes
    from cas.storage.local import LocalBackend
    from cas.storage.local import default_store_path

    root = Path(store_arg) if store_arg else default_store_path()
    if not (root / "config.json").is_file():
        return
    configured = remotes.load(LocalBackend(root))
    spec = remotes.default_name(configured, spec)
    if spec is None:
        return
    if spec in configured:
        remote = configured[spec]
        url = remotes.parse_url(remote.url)
    else:
        url = remotes.parse_url(spec)
        remote = remotes.Remote(url.url)
    if url.kind == "ssh":
        carrier.prestart(carrier.ssh_command(url, remote))


def serve_stdio(args: list[str]) -> bool:
    """Run ``cas serve --stdio [PATH] [--read-only] [--append-only] [--raw-storage]
    [--restrict-to DIR]...`` without importing the command line (click and every command
    family: tens of milliseconds of each ssh sync's start-up on the far side). Returns False,
    having done nothing, for any other command line (the command then runs as usual, and
    reports what is wrong with it)."""
    if not args or args[0] != "serve" or "--stdio" not in args:
        return False
    path: str | None = None
    restrict: list[str] = []
    flags = {"--read-only": False, "--append-only": False, "--raw-storage": False}
    it = iter(args[1:])
    for arg in it:
        if arg == "--stdio":
            continue
        if arg in flags:
            flags[arg] = True
        elif arg == "--restrict-to":
            value = next(it, None)
            if not value:
                return False
            restrict.append(value)
        elif arg.startswith("-") or path is not None or not arg:
            return False
        else:
            path = arg
    from cas.serve import serve_stdio as serve

    serve(path, tuple(restrict), read_only=flags["--read-only"],
          append_only=flags["--append-only"], raw_storage=flags["--raw-storage"])
    exit_after_serving()
    return True


def exit_after_serving() -> None:
    """End a ``serve --stdio`` process whose session is over: the client waits for this exit,
    and the store is closed and every lease released, so the interpreter's teardown (tens of
    milliseconds of a no-op sync) is skipped, unless a profiler waits to write its report."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    if sys.getprofile() is None:
        os._exit(0)
