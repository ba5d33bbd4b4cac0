"""broker/config_file.py: every option from a ZTB_ variable or a TOML file, below the flags;
what the file may hold and how its mistakes are reported; and the three commands, whose
every option is named by the one rule."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner, Result

import broker.cli
import client.cli
import node.cli
from broker import config_file
from broker.config_file import ConfigError, environment_without_options, variable
from node.config import NodeConfig
from node.supervisor import ChildOptions, _command

ROOT = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "1000", "NO_COLOR": "1"}  # error boxes on one line each


@pytest.fixture(autouse=True)
def no_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' own ZTB_ variables only, whatever the shell running them has set."""
    for name in list(os.environ):
        if name.startswith(config_file.PREFIX):
            monkeypatch.delenv(name)


def toy() -> typer.Typer:
    """A command tree shaped like zbroker's: commands, a group of them, shared options."""
    app = typer.Typer(cls=config_file.group_class("toy"), add_completion=False)
    queue = typer.Typer()
    app.add_typer(queue, name="queue")

    @app.command()
    def start(
        bind: str = "tcp://default",
        heartbeat_interval: Annotated[float, typer.Option(min=0.01)] = 1.0,
        retries: Annotated[int, typer.Option(min=0)] = 3,
        functions: Annotated[list[str] | None, typer.Option("--functions", "-f")] = None,
        metrics: Annotated[bool, typer.Option("--metrics/--no-metrics")] = True,
        json_output: Annotated[bool, typer.Option("--json")] = False,
        secret: Annotated[int, typer.Option(hidden=True)] = 0,
    ) -> None:
        shown = (bind, heartbeat_interval, retries, functions, metrics, json_output, secret)
        typer.echo(json.dumps(shown))

    @queue.command("list")
    def list_(broker: str = "tcp://default", limit: int = 50) -> None:
        typer.echo(json.dumps([broker, limit]))

    @app.command()
    def status(broker: str = "tcp://default") -> None:
        typer.echo(json.dumps(broker))

    return app


def invoke(app: typer.Typer, *args: str, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), env={**WIDE, **env})


def shown(app: typer.Typer, *args: str, **env: str) -> Any:
    done = invoke(app, *args, **env)
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def one_line(output: str) -> str:
    """An error message out of its box, with its words one space apart."""
    return " ".join(output.replace("│", " ").split())


def test_a_variable_is_ztb_and_the_long_option_in_capitals() -> None:
    assert variable("--heartbeat-interval") == "ZTB_HEARTBEAT_INTERVAL"
    assert variable("--log-format") == "ZTB_LOG_FORMAT"
    assert variable("broker") == "ZTB_BROKER"


def test_a_flag_beats_its_variable_which_beats_the_file_which_beats_the_default(
    tmp_path: Path,
) -> None:
    app = toy()
    config = write(tmp_path / "ztb.toml", "[toy.start]\nretries = 5\n")
    assert shown(app, "start")[2] == 3
    assert shown(app, "start", "--config", config)[2] == 5
    assert shown(app, "start", "--config", config, ZTB_RETRIES="6")[2] == 6
    assert shown(app, "start", "--config", config, "--retries", "7", ZTB_RETRIES="6")[2] == 7
    assert shown(app, "start", ZTB_CONFIG=config)[2] == 5  # the file named by its variable
    assert shown(app, "start", "--retries", "7", ZTB_CONFIG=config)[2] == 7


def test_the_config_flag_beats_ztb_config(tmp_path: Path) -> None:
    first = write(tmp_path / "first.toml", "[toy.start]\nretries = 1\n")
    second = write(tmp_path / "second.toml", "[toy.start]\nretries = 2\n")
    assert shown(toy(), "start", "--config", second, ZTB_CONFIG=first)[2] == 2


def test_keys_take_dashes_or_underscores_and_values_their_toml_types(tmp_path: Path) -> None:
    config = write(
        tmp_path / "ztb.toml",
        '[toy.start]\nbind = "tcp://0.0.0.0:5000"\nheartbeat_interval = 0.5\n'
        'functions = ["math", "util"]\nmetrics = false\njson = true\n',
    )
    assert shown(toy(), "start", "--config", config) == [
        "tcp://0.0.0.0:5000",
        0.5,
        3,
        ["math", "util"],
        False,
        True,
        0,
    ]
    dashes = write(tmp_path / "dashes.toml", "[toy.start]\nheartbeat-interval = 2\n")
    assert shown(toy(), "start", "--config", dashes)[1] == 2.0


def test_a_repeatable_option_takes_a_list_one_value_or_words_of_a_variable(
    tmp_path: Path,
) -> None:
    config = write(tmp_path / "ztb.toml", '[toy.start]\nfunctions = "math"\n')
    assert shown(toy(), "start", "--config", config)[3] == ["math"]
    assert shown(toy(), "start", ZTB_FUNCTIONS="math util")[3] == ["math", "util"]
    assert shown(toy(), "start", "-f", "a", ZTB_FUNCTIONS="math util")[3] == ["a"]


def test_flags_from_variables(tmp_path: Path) -> None:
    assert shown(toy(), "start", ZTB_METRICS="false", ZTB_JSON="1")[4:6] == [False, True]


def test_a_group_table_sets_the_option_for_each_command_under_it_that_takes_it(
    tmp_path: Path,
) -> None:
    config = write(
        tmp_path / "ztb.toml",
        '[toy]\nbroker = "tcp://group"\nlimit = 7\n[toy.queue.list]\nbroker = "tcp://own"\n',
    )
    assert shown(toy(), "status", "--config", config) == "tcp://group"
    assert shown(toy(), "queue", "list", "--config", config) == ["tcp://own", 7]
    assert shown(toy(), "start", "--config", config)[0] == "tcp://default"  # no --broker
    assert shown(toy(), "status", "--config", config, ZTB_BROKER="tcp://env") == "tcp://env"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "[toy.start]\nheartbeat-intervall = 1\n",
            [
                "unknown key 'heartbeat-intervall' in [toy.start]",
                "did you mean 'heartbeat-interval'?",
                "bind, functions, heartbeat-interval",
            ],
        ),
        ("[toy.start]\nsecret = 1\n", ["unknown key 'secret' in [toy.start]"]),
        ("[toy.strat]\nbind = 'x'\n", ["unknown table [toy.strat]", "queue, start, status"]),
        ("[zbrokr.start]\nbind = 'x'\n", ["unknown table 'zbrokr' at the top"]),
        ("bind = 'x'\n", ["unknown key 'bind' at the top", "[znode]"]),
        ("[toy]\nstart = 1\n", ["[toy] start = 1: 'start' is a command", "[toy.start]"]),
        ("[toy.start]\nretries = 2.5\n", ["[toy.start] retries = 2.5:", "integer"]),
        ("[toy.start]\nretries = 'many'\n", ['[toy.start] retries = "many":', "integer"]),
        ("[toy.start]\nretries = true\n", ["[toy.start] retries = true:"]),
        ("[toy.start]\nretries = -1\n", ["[toy.start] retries = -1:", "greater than"]),
        ("[toy.start]\nbind = 5000\n", ["bind = 5000: expects a string: put the value in"]),
        ("[toy.start]\nbind = ['a', 'b']\n", ["takes one value, not a list"]),
        ("[toy.start]\nmetrics = 'no'\n", ['metrics = "no": expects true or false']),
        ("[toy.start]\nfunctions = [1]\n", ["functions = [1]: expects a string"]),
        (
            "[toy.start]\nretries = 1\n[toy.queue.list]\nlimit = 1\nlimit_ = 2\n",
            ["unknown key 'limit_'"],
        ),
        (
            "[toy.start]\nheartbeat-interval = 1\nheartbeat_interval = 2\n",
            ["[toy.start] has both 'heartbeat-interval' and 'heartbeat_interval'"],
        ),
        ("[toy.start\n", ["not valid TOML: Expected ']'", "(at line 1, column 11); fix the"]),
    ],
)
def test_a_file_that_holds_what_no_command_takes_stops_the_command_with_exit_2(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    config = write(tmp_path / "bad.toml", text)
    # Every table of the file is checked, whichever command reads it.
    done = invoke(toy(), "status", "--config", config)
    assert done.exit_code == 2, done.output
    message = one_line(done.output)
    assert f"Invalid value for '--config' (env var: 'ZTB_CONFIG'): {config}" in message
    for word in words:
        assert word in message, message


def test_a_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    done = invoke(toy(), "start", ZTB_CONFIG=missing)
    assert done.exit_code == 2
    assert (
        f"{missing}: cannot read the config file: No such file or directory; give the path of "
        "a readable TOML file (--config PATH or ZTB_CONFIG)"
    ) in one_line(done.output)


def test_help_shows_each_options_variable() -> None:
    text = one_line(invoke(toy(), "start", "--help").stdout)
    for option, name in [
        ("--bind", "ZTB_BIND"),
        ("--heartbeat-interval", "ZTB_HEARTBEAT_INTERVAL"),
        ("--config", "ZTB_CONFIG"),
    ]:
        assert option in text and f"[env var: {name}]" in text
    assert "--secret" not in text and "ZTB_SECRET" not in text


# ---------------------------------------------------------------------- the three commands

COMMANDS = [(broker.cli.app, "zbroker"), (node.cli.app, "znode"), (client.cli.app, "zsubmit")]


def leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from leaves(sub, (*path, name))
    else:
        yield path, command


@pytest.mark.parametrize(("app", "tool"), COMMANDS)
def test_every_option_of_every_command_has_its_variable_and_every_command_a_config(
    app: typer.Typer, tool: str
) -> None:
    found = 0
    for path, command in leaves(typer.main.get_command(app)):
        options = [p for p in command.params if isinstance(p, TyperOption)]
        names = {p.name for p in options}
        assert "config" in names, (tool, path)
        for option in options:
            if option.hidden or (option.is_eager and option.name != "config"):
                assert option.envvar is None, (tool, path, option.name)
                continue
            long = next(o for o in option.opts if o.startswith("--"))
            wanted = "ZTB_CONFIG" if option.name == "config" else variable(long)
            assert (option.envvar, option.show_envvar) == (wanted, True), (tool, path, long)
            found += 1
    assert found > 10


@pytest.mark.parametrize(
    ("app", "args", "names"),
    [
        (broker.cli.app, ["start", "--help"], ["ZTB_BIND", "ZTB_STORE", "ZTB_LOG_FORMAT"]),
        (broker.cli.app, ["status", "--help"], ["ZTB_BROKER", "ZTB_CONFIG"]),
        (broker.cli.app, ["dlq", "list", "--help"], ["ZTB_BROKER", "ZTB_LIMIT"]),
        (node.cli.app, ["--help"], ["ZTB_FUNCTIONS", "ZTB_CONCURRENCY", "ZTB_LOG_FORMAT"]),
        (client.cli.app, ["--help"], ["ZTB_BROKER", "ZTB_LOG_LEVEL", "ZTB_CONFIG"]),
        (client.cli.app, ["map", "--help"], ["ZTB_BROKER", "ZTB_WINDOW", "ZTB_LOG_FILE"]),
    ],
)
def test_the_commands_help_shows_the_variables(
    app: typer.Typer, args: list[str], names: list[str]
) -> None:
    done = invoke(app, *args)
    assert done.exit_code == 0, done.output
    for name in names:
        assert f"[env var: {name}]" in done.stdout


def readme_toml() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Configuration") :]
    found = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize(("app", "tool"), COMMANDS)
def test_the_readmes_sample_file_is_one_every_command_takes(
    app: typer.Typer, tool: str, tmp_path: Path
) -> None:
    path = tmp_path / "ztb.toml"
    path.write_text(readme_toml())
    config_file.check_file(path, typer.main.get_command(app), tool)
    path.write_text(readme_toml().replace("functions =", "function ="))
    if tool == "znode":
        with pytest.raises(ConfigError, match="unknown key 'function' in \\[znode\\]"):
            config_file.check_file(path, typer.main.get_command(app), tool)


@pytest.fixture
def root_logging() -> Iterator[None]:
    """`zbroker start` sets up logging: the root logger is given back as it was."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_zbroker_start_takes_its_options_in_that_order(root_logging: None, tmp_path: Path) -> None:
    """--strategy is checked before anything listens: which value reached it shows."""
    config = write(tmp_path / "ztb.toml", '[zbroker.start]\nstrategy = "from-file"\n')
    runs = [
        ([], {}, "from-file"),
        ([], {"ZTB_STRATEGY": "from-env"}, "from-env"),
        (["--strategy", "from-flag"], {"ZTB_STRATEGY": "from-env"}, "from-flag"),
    ]
    for flags, env, wanted in runs:
        done = invoke(broker.cli.app, "start", *flags, ZTB_CONFIG=config, **env)
        assert done.exit_code == 2, done.output
        assert f"'{wanted}'; choose least-loaded or round-robin" in one_line(done.output)


def test_zsubmit_refuses_a_bad_file_before_it_sends_anything(tmp_path: Path) -> None:
    config = write(tmp_path / "ztb.toml", "[zsubmit]\nbrokr = 'tcp://x:1'\n")
    done = invoke(client.cli.app, "add", "1", "2", ZTB_CONFIG=config)
    assert done.exit_code == 2
    assert "unknown key 'brokr' in [zsubmit]; did you mean 'broker'?" in one_line(done.output)


def test_a_znodes_processes_get_neither_its_variables_nor_its_file() -> None:
    environ = {"PATH": "/bin", "ZTB_MIN": "2", "ZTB_CONFIG": "ztb.toml", "ZTB_MINE": "x"}
    kept = environment_without_options(typer.main.get_command(node.cli.app), environ)
    assert kept == {"PATH": "/bin", "ZTB_MINE": "x"}  # a variable of the functions stays


def test_a_znodes_processes_log_in_its_format() -> None:
    argv = _command(
        NodeConfig(("math",)), ChildOptions("DEBUG", "n.log", "json"), 9, None, "n.0", None
    )
    assert argv[argv.index("--log-format") + 1] == "json"
    assert argv[argv.index("--log-level") + 1] == "DEBUG"
    assert argv[argv.index("--log-file") + 1] == "n.log"
