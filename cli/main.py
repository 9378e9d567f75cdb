"""``cas`` console entry point: runs a command and maps every failure to one line and an exit
code. The command families register on the click group in :mod:`cas.cli.commands`, imported
after :func:`cas.cli.prestart.prestart` has had its chance to start an ssh connection."""

from __future__ import annotations

import os
import sys
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "cli":  # ``from cas.cli.main import cli``: the group with every command
        from cas.cli.commands import cli

        return cli
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run a command, map every failure to one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in args
    from cas.cli.prestart import prestart, serve_stdio

    if serve_stdio(args):  # what an ssh remote runs, started without the command line
        sys.exit(0)
    prestart(args)
    import click
    from cas.cli.app import ReportedFailure
    from cas.cli.commands import cli
    from cas.cli.render import PipeClosed, fail

    from cas.errors import ArgsError, CasError, Interrupted

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
