"""The quick-start demo: it runs the installed ``cas``, whatever folder it is started from, and
it can run twice on one store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cas.demo import BASE_NAME, TUNED_NAME, cas_command

REPO = Path(__file__).resolve().parent.parent


def test_cas_command_is_not_shadowed_by_a_source_folder(tmp_path: Path) -> None:
    """Started from a folder holding a ``cas/`` package without ``cas.cli`` (as a source
    checkout's root does for a regular install), the demo's command still runs cas."""
    (tmp_path / "cas").mkdir()
    (tmp_path / "cas" / "__init__.py").write_text("")
    shadowed = subprocess.run([sys.executable, "-m", "cas.cli.main", "--version"],
                              cwd=tmp_path, capture_output=True, text=True)
    assert shadowed.returncode != 0  # what `python -m` does there
    run = subprocess.run([*cas_command(), "--version"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("cas, version")


@pytest.mark.slow
def test_demo_runs_twice_on_the_default_store(tmp_path: Path) -> None:
    """The README's `python -m cas.demo`, from the repository root, twice on one default store:
    the second run registers nothing and still exits 0."""
    env = {**os.environ, "CAS_HOME": str(tmp_path / "home")}
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "cas.demo"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert run.stdout.rstrip().endswith("demo done.")
    ls = subprocess.run([*cas_command(), "--json", "ls"], env=env, capture_output=True,
                        text=True, check=True)
    models = {m["name"]: m["versions"] for m in json.loads(ls.stdout)["models"]}
    assert models == {BASE_NAME: 1, TUNED_NAME: 1}
