"""``cas completion SHELL``: the shell completion script for bash, zsh or fish."""

from __future__ import annotations

import click
from cas.cli.app import Ctx, cli, pass_ctx

SHELLS = ("bash", "zsh", "fish")
#: Where each shell's script can live so that new shells load it.
INSTALL_HINTS = {
    "bash": 'eval "$(cas completion bash)"  # in ~/.bashrc',
    "zsh": 'eval "$(cas completion zsh)"  # in ~/.zshrc, after compinit',
    "fish": "cas completion fish > ~/.config/fish/completions/cas.fish",
}


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
@pass_ctx
def completion(ctx: Ctx, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    Completes commands, options, model names and NAME@TAG / NAME@N versions, read from the
    store given by --store on the line, else the default store.

    \b
    Examples:
      eval "$(cas completion bash)"     # in ~/.bashrc
      cas completion fish > ~/.config/fish/completions/cas.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # click ships all three
    script = cls(cli, {}, "cas", "_CAS_COMPLETE").source()
    if ctx.out.json:
        ctx.out.result({"shell": shell, "script": script, "install": INSTALL_HINTS[shell]})
    elif not ctx.out.quiet:
        click.echo(script, nl=not script.endswith("\n"))
