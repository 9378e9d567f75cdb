"""Every command family, registered on the click group by importing its module."""

from __future__ import annotations

from cas.cli import cmd_add, cmd_completion, cmd_diff, cmd_files, cmd_models, cmd_store  # noqa: E501, F401  (registers commands)
from cas.cli import cmd_retain  # noqa: F401  (registers commands)
from cas.cli import cmd_gc  # noqa: F401  (registers commands)
from cas.cli import cmd_remote  # noqa: F401  (registers commands)
from cas.cli import cmd_pins  # noqa: F401  (registers commands)
from cas.cli import cmd_sync  # noqa: F401  (registers commands)
from cas.cli import cmd_bundle  # noqa: F401  (registers commands)
from cas.cli import cmd_codelock, cmd_hub, cmd_lfs  # noqa: F401  (registers commands)
from cas.cli import cmd_evict  # noqa: F401  (registers commands)
from cas.cli.app import cli

__all__ = ["cli"]
