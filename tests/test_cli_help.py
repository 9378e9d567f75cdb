"""Every command's --help ends with examples that name real commands."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from cas.cli.main import cli


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    yield prefix, group
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


@pytest.mark.parametrize("path", [p for p, _ in _commands(cli)], ids=lambda p: " ".join(p) or "cas")
def test_help_ends_with_examples(path):
    out = CliRunner().invoke(cli, [*path, "--help"]).output
    lines = [line for line in out.splitlines() if line.strip()]
    tail = lines[lines.index("  Examples:") + 1:] if "  Examples:" in lines else []
    assert 1 <= len(tail) <= 3, out
    # the examples come last and each one runs this command
    assert all(" ".join(("cas", *path)) in line for line in tail), out
    assert lines.index("  Examples:") > lines.index("Options:"), out
