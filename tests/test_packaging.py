"""The installed package holds every module: a subpackage missing from pyproject.toml's package
list works in the editable checkout and breaks every regular install."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_in_the_package_list() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"cas." + ".".join(p.parent.relative_to(ROOT / "cas").parts)
             for p in (ROOT / "cas").rglob("__init__.py") if p.parent != ROOT / "cas"}
    missing = found - listed
    assert not missing, f"add to [tool.setuptools] packages and package-dir: {sorted(missing)}"
    assert all(config["package-dir"].get(name) for name in found)
