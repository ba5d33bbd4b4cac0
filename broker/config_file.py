"""Every option of zbroker, znode and zsubmit from the environment or from a TOML file.

`install` runs once on each command tree as typer builds it (through `group_class` and
`command_class`): every option gets the environment variable ZTB_ + its long name in capitals
with `_` for `-` (`--heartbeat-interval`: ZTB_HEARTBEAT_INTERVAL; an option several commands
share, like --broker, has one variable), and every command gets `--config PATH` (or
ZTB_CONFIG), a TOML file with a table per command:

    [zbroker.start]
    bind = "tcp://0.0.0.0:5000"
    heartbeat-interval = 0.5

    [znode]
    functions = ["math"]

Keys are the long options, with `-` or `_`. A table of a command group (`[zbroker]`,
`[zsubmit]`, `[zbroker.dlq]`) holds options for every command under it that takes them, and a
command's own table wins over it. The file's values go into click's `default_map`, which
click consults after the command line and the environment: a flag beats its variable, which
beats the file, which beats the default. The whole file is checked when it is read: an
unknown table or key, or a value of the wrong type, stops the command with exit 2 and a
message naming the file, the table and the key.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

PREFIX = "ZTB_"
CONFIG_VARIABLE = "ZTB_CONFIG"
TOOLS = ("zbroker", "znode", "zsubmit")  # the tables at the top of a file

# No square brackets: typer's rich help would read them as markup.
CONFIG_HELP = (
    "TOML file of option values: a table per command (zbroker.start, znode, zsubmit, ...), "
    "keys as the long options. A flag beats its ZTB_ variable, which beats the file, which "
    "beats the default."
)


class ConfigError(Exception):
    """The file cannot be read, or holds something no command takes; the message says
    which file, table and key, and what to do."""


class _Command(Protocol):
    """What this module needs of a click command (typer's own, or a group)."""

    params: list[Any]


def variable(option: str) -> str:
    """The environment variable of a long option: `--log-format` -> ZTB_LOG_FORMAT."""
    return PREFIX + option.lstrip("-").replace("-", "_").upper()


def environment_without_options(
    command: _Command, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """`environ` (by default this process's) without ZTB_CONFIG and the variables of
    `command`'s options: for the processes it starts with their options on their command
    line, where a variable meant for it would add to them (ZTB_MIN to a znode's node
    process, told --concurrency 1). Other variables, ZTB_ ones of the functions included,
    stay."""
    source = os.environ if environ is None else environ
    names = {CONFIG_VARIABLE, *(p.envvar for p in command.params if isinstance(p.envvar, str))}
    return {name: value for name, value in source.items() if name not in names}


def group_class(tool: str) -> type[TyperGroup]:
    """The typer group class (`typer.Typer(cls=...)`) of command `tool` with subcommands."""

    class ConfiguredGroup(TyperGroup):
        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            install(self, tool)

    return ConfiguredGroup


def command_class(tool: str) -> type[TyperCommand]:
    """The typer command class (`app.command(cls=...)`) of command `tool` that is one
    command (znode)."""

    class ConfiguredCommand(TyperCommand):
        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            install(self, tool)

    return ConfiguredCommand


def install(root: _Command, tool: str) -> None:
    """Give every option under `root` (the command `tool`) its ZTB_ variable, shown in
    --help, and every command a --config option that reads the file for it."""
    model = _model(root, tool)
    for path, command in _commands(root, ()):
        for option in _configurable(command):
            if option.envvar is None:
                option.envvar = variable(_long_name(option))
                option.show_envvar = True
        if not any(getattr(param, "name", None) == "config" for param in command.params):
            command.params.append(_config_option(model, path))


# ---------------------------------------------------------------------------- the commands


def _commands(command: _Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(names below the root, command) of every command that runs, not of the groups."""
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


def _configurable(command: _Command) -> list[TyperOption]:
    """The options a variable or the file may set: not the hidden ones (for the program's
    own children), not --help, --version or --config, and no arguments."""
    return [
        param
        for param in command.params
        if isinstance(param, TyperOption)
        and not param.hidden
        and not param.is_eager
        and any(opt.startswith("--") for opt in param.opts)
    ]


def _long_name(option: TyperOption) -> str:
    """`--heartbeat-interval` -> heartbeat-interval: the option's key in the file."""
    return next(opt for opt in option.opts if opt.startswith("--"))[2:]


@dataclass
class _Table:
    """What a table of the file may hold: the options of the commands under its command, by
    long name, and the tables of its subcommands."""

    name: str  # as the file writes it: zbroker.dlq
    options: dict[str, list[TyperOption]] = field(default_factory=dict)
    tables: dict[str, _Table] = field(default_factory=dict)


def _model(command: _Command, name: str) -> _Table:
    table = _Table(name)
    if isinstance(command, TyperGroup):
        for sub_name, sub in command.commands.items():
            sub_table = table.tables[sub_name] = _model(sub, f"{name}.{sub_name}")
            for key, options in sub_table.options.items():
                table.options.setdefault(key, []).extend(options)
    else:
        table.options = {_long_name(option): [option] for option in _configurable(command)}
    return table


# ------------------------------------------------------------------------ reading the file


def _config_option(model: _Table, path: tuple[str, ...]) -> TyperOption:
    """A --config option, made by typer as for any command, that loads the file's values
    for the command at `path` below the root of `model` into its context's default_map."""
    probe = typer.Typer()

    @probe.command()
    def probe_command(
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                envvar=CONFIG_VARIABLE,
                show_envvar=True,
                is_eager=True,  # read before the options it gives values to
                expose_value=False,
                metavar="PATH",
                help=CONFIG_HELP,
            ),
        ] = None,
    ) -> None:
        """Never runs: typer builds its --config option."""

    built = typer.main.get_command(probe)
    option = next(p for p in built.params if isinstance(p, TyperOption) and p.name == "config")
    option.callback = _loader(model, path)
    return option


def _loader(model: _Table, path: tuple[str, ...]) -> Callable[[Any, Any, Path | None], Any]:
    def load(ctx: Any, param: Any, value: Path | None) -> Path | None:
        if value is None or ctx.resilient_parsing:
            return value
        try:
            found = defaults(value, model, path, ctx)
        except ConfigError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx, param=param) from None
        ctx.default_map = {**(ctx.default_map or {}), **found}
        return value

    return load


def read(path: Path) -> dict[str, Any]:
    """The TOML document at `path`; ConfigError if it cannot be read or parsed."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(
            f"{path}: cannot read the config file: {reason}; give the path of a readable "
            f"TOML file (--config PATH or {CONFIG_VARIABLE})"
        ) from None
    except ValueError as exc:  # tomllib.TOMLDecodeError, or bytes that are not UTF-8
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the file") from None


def defaults(path: Path, model: _Table, command: tuple[str, ...], ctx: Any) -> dict[str, Any]:
    """The values file `path` gives the options of `command` (names below the root of
    `model`), by parameter name, after checking the whole of the file's part for the root.
    `ctx` is the command's context, which checking values needs."""
    tables = _checked(path, model, ctx)
    chain, table = [tables], tables
    for name in command:
        table = table.get(name, {})
        chain.append(table)
    leaf = _find(model, command)
    found: dict[str, Any] = {}
    for table in chain:  # the command's own table last: it wins
        for key, value in table.items():
            options = leaf.options.get(_key(key))
            if options is not None and not isinstance(value, dict):
                option = options[0]
                found[str(option.name)] = _as_given(option, value)
    return found


def check_file(path: Path, root: Any, tool: str) -> None:
    """ConfigError if file `path` holds something that the command `tool`, whose click
    command is `root` (typer.main.get_command), does not take; its tables for the other
    commands are only checked to be tables."""
    _checked(path, _model(root, tool), typer.Context(root, info_name=tool))


def _checked(path: Path, model: _Table, ctx: Any) -> dict[str, Any]:
    """The tables of file `path` for the command of `model`, checked."""
    document = read(path)
    tool = model.name
    for name, value in document.items():
        if name not in (*TOOLS, tool) or not isinstance(value, dict):
            raise ConfigError(
                f"{path}: unknown {'table' if isinstance(value, dict) else 'key'} {name!r} at "
                f"the top; the tables are [zbroker.COMMAND], [znode] and [zsubmit]: put each "
                "option under the command that takes it"
            )
    tables: dict[str, Any] = document.get(tool, {})
    _check(path, tables, model, ctx)
    return tables


def _find(model: _Table, command: tuple[str, ...]) -> _Table:
    for name in command:
        model = model.tables[name]
    return model


def _key(key: str) -> str:
    return key.replace("_", "-")


def _as_given(option: TyperOption, value: Any) -> Any:
    """A repeatable option takes a list; one value alone is a list of one."""
    if option.multiple and not isinstance(value, list):
        return [value]
    return value


def _check(path: Path, table: dict[str, Any], model: _Table, ctx: Any) -> None:
    """ConfigError for the first thing in `table` (for `model`'s command) that no command
    takes, or of a wrong type."""
    seen: dict[str, str] = {}
    for key, value in table.items():
        if key in model.tables:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{path}: [{model.name}] {key} = {_shown(value)}: {key!r} is a command; "
                    f"its options go in a table of their own, [{model.name}.{key}]"
                )
            _check(path, value, model.tables[key], ctx)
            continue
        options = model.options.get(_key(key))
        if options is None:
            raise ConfigError(_unknown(path, model, key, value))
        if _key(key) in seen:
            raise ConfigError(
                f"{path}: [{model.name}] has both {seen[_key(key)]!r} and {key!r}, the same "
                "option: keep one"
            )
        seen[_key(key)] = key
        for option in options:
            problem = _problem(option, _as_given(option, value), ctx)
            if problem is not None:
                raise ConfigError(
                    f"{path}: [{model.name}] {key} = {_shown(value)}: {problem}; fix the value "
                    f"(see {model.name.replace('.', ' ')} --help)"
                )


def _shown(value: Any) -> str:
    """`value` as the file writes it (true, "text", [1, 2]), as far as JSON and TOML agree."""
    try:
        return json.dumps(value)
    except TypeError:  # a date or time
        return str(value)


def _unknown(path: Path, model: _Table, key: str, value: Any) -> str:
    if isinstance(value, dict):
        commands = ", ".join(sorted(model.tables)) or "none"
        return (
            f"{path}: unknown table [{model.name}.{key}]: {model.name.replace('.', ' ')} has "
            f"no command {key!r} (its commands: {commands})"
        )
    keys = sorted(model.options)
    close = difflib.get_close_matches(_key(key), keys, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"{path}: unknown key {key!r} in [{model.name}]; {hint}the keys of [{model.name}] are "
        f"the long options of `{model.name.replace('.', ' ')} --help`: {', '.join(keys)}"
    )


def _problem(option: TyperOption, value: Any, ctx: Any) -> str | None:
    """What is wrong with `value` for `option`, or None if the command takes it."""
    if option.is_flag:
        return None if isinstance(value, bool) else "expects true or false"
    if isinstance(value, list) and not option.multiple:
        return "takes one value, not a list"
    for item in value if option.multiple else [value]:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            return f"expects a string or a number, not {type(item).__name__}"
        if not isinstance(item, str) and _takes_text(option, ctx):
            return "expects a string: put the value in quotes"
    if option.callback is not None:
        return None  # its callback acts; the command checks the value when it runs
    try:
        option.process_value(ctx, value)
    except typer.BadParameter as exc:
        return exc.message
    return None


def _takes_text(option: TyperOption, ctx: Any) -> bool:
    """Whether `option` takes any text (a name, a path), not only numbers or choices."""
    if option.callback is not None:
        return False
    try:
        option.process_value(ctx, ["any text"] if option.multiple else "any text")
    except typer.BadParameter:
        return False
    return True
