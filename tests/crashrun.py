"""Running the real CLI in a forked child whose stores' backends record (and can fail) every
storage call: the harness of the sync and bundle crash tests.

Each store's backend is a :class:`StoreSteps`, a fault wrapper whose labels name its store
(the folder's name) and whose step counter is shared by every store of the child, so one
``plan`` (step number -> fault) reaches any write of any store.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import cas.cli.main as cli_main
import cas.store
from cas.storage.faults import FaultyBackend
from cas.storage.local import LocalBackend

#: Storage verbs that change something.
WRITE_VERBS = {"write", "open_write", "append", "commit", "swap", "delete", "sweep"}


class StoreSteps(FaultyBackend):
    """A fault wrapper whose step counter is shared with the other stores' wrappers, and
    whose labels name its store (the folder's name)."""

    def __init__(self, inner: LocalBackend, plan: dict[int, str] | None, steps: list[str]
                 ) -> None:
        super().__init__(inner, plan)
        self.steps = steps
        self.store_name = Path(inner.root).name

    def _step(self, label: str) -> str | None:
        return super()._step(f"{self.store_name} {label}")


def run_cas(store: Path, args: list[str], plan: dict[int, str] | None = None,
            setup: Callable[[], None] | None = None) -> tuple[int, str, str, list[str]]:
    """Run ``cas --store STORE --json ARGS`` in a forked child, every store's backend wrapped
    with ``plan`` (``setup`` runs in the child first); return (exit status, stdout, stderr,
    steps; none after a crash)."""
    top = store.parent
    out, err, steps_file = top / "child.out", top / "child.err", top / "child.steps"
    steps_file.unlink(missing_ok=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 70
        try:
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False))
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False))
            steps: list[str] = []

            def backend(root: Path) -> StoreSteps:
                return StoreSteps(LocalBackend(root), plan, steps)

            cas.store.LocalBackend = backend  # type: ignore[assignment,misc]
            if setup is not None:
                setup()
            try:
                cli_main.main(["--store", str(store), "--json", *args])
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            steps_file.write_text(json.dumps(steps))
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    steps = json.loads(steps_file.read_text()) if steps_file.exists() else []
    return code, out.read_text(), err.read_text(), steps
