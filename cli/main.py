"""``cas`` console entry point: runs a command and maps every failure to one line and an exit
code. Importing this module registers every command family on the click group."""

from __future__ import annotations

import os
import sys

import click
from cas.cli import cmd_add, cmd_completion, cmd_diff, cmd_files, cmd_models, cmd_store  # noqa: E501, F401  (registers commands)
from cas.cli import cmd_retain  # noqa: F401  (registers commands)
from cas.cli import cmd_gc  # noqa: F401  (registers commands)
from cas.cli import cmd_remote  # noqa: F401  (registers commands)
from cas.cli import cmd_pins  # noqa: F401  (registers commands)
from cas.cli import cmd_sync  # noqa: F401  (registers commands)
from cas.cli import cmd_bundle  # noqa: F401  (registers commands)
from cas.cli import cmd_codelock, cmd_hub, cmd_lfs  # noqa: F401  (registers commands)
from cas.cli.app import ReportedFailure, cli
from cas.cli.render import PipeClosed, fail

from cas.errors import ArgsError, CasError, Interrupted


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run a command, map every failure to one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in args
    try:
        code = cli.main(args=args, prog_name="cas", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except ReportedFailure as exc:
        import msgspec

        sys.exit(fail(exc.error, json_mode, msgspec.to_builtins(exc.extra)))
    except CasError as exc:
        sys.exit(fail(exc, json_mode))
    except click.exceptions.Abort:
        sys.exit(fail(Interrupted("interrupted"), json_mode))
    except KeyboardInterrupt:
        sys.exit(fail(Interrupted("interrupted"), json_mode))
    except click.ClickException as exc:
        if json_mode:
            sys.exit(fail(ArgsError(exc.format_message()), True))
        exc.show()
        sys.exit(ArgsError.exit_code)
    except (BrokenPipeError, PipeClosed):
        # The reader went away (``cas ls | head``): not an error. Point stdout at /dev/null
        # so that the interpreter's final flush cannot fail again and change the exit code.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug, reported as one
        sys.exit(fail(exc, json_mode))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
