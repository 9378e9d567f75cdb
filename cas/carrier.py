"""The ssh carrier of the sync protocol: the command that runs ``cas serve --stdio`` on the far
side, starting it, starting it early, and ending it.

An ssh connection costs a few hundred milliseconds (key exchange, authentication, then the far
side's own start-up), about as much as the rest of a no-op push. The command line
(:mod:`cas.cli.prestart`) therefore starts ssh before it imports the rest of cas, and
:func:`start` hands that process to :func:`cas.rpc.connect` when the command it needs is the
one already running. A process started early that nobody takes is ended at exit.

This module imports nothing heavy: it runs before the rest of the CLI is loaded.
"""

from __future__ import annotations

import atexit
import os
import shlex
import subprocess
import tempfile
import threading
from typing import IO, Any

#: Seconds ``stop`` waits for ssh to exit after its pipes are closed, before killing it.
EXIT_WAIT = 30.0

_early: dict[tuple[str, ...], tuple[subprocess.Popen[bytes], IO[bytes]]] = {}


def ssh_command(url: Any, remote: Any) -> list[str]:
    """The command that runs ``cas serve --stdio PATH`` on the far side of an ssh URL:
    ``CAS_SSH`` (split as a shell would) or ``ssh``, then the host, then the remote's
    ``cas_command`` (default ``cas``)."""
    base = shlex.split(os.environ.get("CAS_SSH") or "ssh")
    if url.port:
        base += ["-p", str(url.port)]
    dest = f"{url.user}@{url.host}" if url.user else url.host
    far = remote.cas_command or "cas"
    return [*base, "--", dest, f"{far} serve --stdio {shlex.quote(url.path)}"]


def _spawn(cmd: list[str]) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    # ssh's own messages (and the far side's stderr) go to a file: read back to name the
    # cause when the connection fails, and never able to block the far side.
    errors = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errors)
    except BaseException:
        errors.close()
        raise
    return proc, errors


def prestart(cmd: list[str]) -> None:
    """Start ``cmd`` now, for a later :func:`start` of the same command. Never raises: a
    failure here is found again, and reported, by that later call."""
    key = tuple(cmd)
    if key in _early:
        return
    try:
        _early[key] = _spawn(cmd)
    except (OSError, ValueError):
        return
    if len(_early) == 1:
        atexit.register(_end_unused)


def start(cmd: list[str]) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """``cmd`` running, with pipes on stdin and stdout and its stderr going to the returned
    temporary file: the process :func:`prestart` started for it when there is one.

    Raises:
        OSError: the command could not be run.
    """
    taken = _early.pop(tuple(cmd), None)
    return taken if taken is not None else _spawn(cmd)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Close ``proc``'s pipes and wait for it to exit (killed after :data:`EXIT_WAIT`).

    The wait is a blocking ``waitpid`` with a timer, not a polling loop: the far side's exit
    takes tens of milliseconds, and polling would add up to half of that again.
    """
    for f in (proc.stdin, proc.stdout):
        try:
            f.close()  # type: ignore[union-attr]
        except OSError:
            pass
    timer = threading.Timer(EXIT_WAIT, proc.kill)
    timer.daemon = True
    timer.start()
    try:
        proc.wait()
    finally:
        timer.cancel()


def _end_unused() -> None:
    while _early:
        _, (proc, errors) = _early.popitem()
        try:
            proc.kill()
        except OSError:
            pass
        stop(proc)
        errors.close()
