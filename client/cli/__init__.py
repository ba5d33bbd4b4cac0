"""`zsubmit`: run tasks on the broker from the shell.

`zsubmit [run] FUNCTION ARG...` runs one task (run.py), `zsubmit result|cancel TASK_ID`
asks about a task by its id (bytask.py), `zsubmit map FUNCTION [FILE]` runs one task per
line (map.py). `run` is the default command: a command line whose first word (options and
their values aside) names no command is a `run`, so `zsubmit multiply 5 10` works as it
always has. `main` is the console script.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from broker import config_file
from client.cli import bytask, map as map_command, run as run_command
from client.cli.common import PROG

DEFAULT = "run"


class _RunContext(typer.Context):
    """`run` is zsubmit's default command: its usage and hints name it as plain zsubmit
    (`zsubmit [OPTIONS] FUNCTION [ARG]...`, `Try 'zsubmit --help'`)."""

    @property
    def command_path(self) -> str:
        return PROG


class _RunCommand(TyperCommand):
    """`run`: keeps the raw command line so that `run` can tell which ARGs came after
    `--`."""

    context_class = _RunContext

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[run_command.RAW_ARGS] = list(args)
        rest: list[str] = super().parse_args(ctx, args)
        return rest


class _DefaultGroup(TyperGroup):
    """Routes a command line to the command its first word names, wherever the options
    before it put it (`zsubmit --broker URL result ID`), and to `run` when it names none.
    Every option may also come from a ZTB_ variable or a --config file (config_file)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        config_file.install(self, PROG)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rest: list[str] = super().parse_args(ctx, route(args, self.commands, self._valued(ctx)))
        return rest

    def _valued(self, ctx: Any) -> set[str]:
        """The options of any command that take a value (the word after them is theirs)."""
        return {
            name
            for command in self.commands.values()
            for param in command.get_params(ctx)
            if isinstance(param, TyperOption) and not param.is_flag and not param.count
            for name in param.opts
        }


def route(args: list[str], commands: Any, valued: set[str]) -> list[str]:
    """`args` with the command first: the first word that is not an option (or an option's
    value) if it names a command, else `run`."""
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            break
        if word.startswith("-") and word != "-":
            index += 2 if word in valued else 1
            continue
        if word in commands:
            return [word, *args[:index], *args[index + 1 :]]
        break
    return [DEFAULT, *args]


app = typer.Typer(
    cls=_DefaultGroup,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command(
    DEFAULT,
    cls=_RunCommand,
    help=run_command.HELP,
    epilog=run_command.EPILOG,
    # No -h: `zsubmit echo -hello` would print the help instead of refusing "-hello".
    context_settings={"ignore_unknown_options": True},
)(run_command.run)
app.command("result", help=bytask.RESULT_HELP, epilog=bytask.RESULT_EPILOG)(bytask.result)
app.command("cancel", help=bytask.CANCEL_HELP, epilog=bytask.CANCEL_EPILOG)(bytask.cancel)
app.command("map", help=map_command.HELP, epilog=map_command.EPILOG)(map_command.map_tasks)


def main() -> None:
    app(prog_name=PROG)
