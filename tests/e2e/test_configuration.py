"""Options from ZTB_ variables and a --config file, and JSON logs, with the real commands:
a broker bound where its file says, a znode set up by the same file, zsubmit pointed at
them by ZTB_BROKER; a flag over its variable over the file; the lines about a task in
`--log-format json`; a bad file refused with exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from client.cluster import command
from client.control import ControlClient
from client.errors import BrokerTimeout, BrokerUnreachable
from client.link import ReqLink
from tests.e2e.conftest import Cluster, free_port
from tests.support import Spawner, wait_until

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def clean_environment(**variables: str) -> dict[str, str]:
    """This process's environment without its ZTB_ variables, with `variables` added."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("ZTB_")}
    return {**kept, "COLUMNS": "1000", "NO_COLOR": "1", **variables}


def run(*argv: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`argv[0]` (zbroker, znode, zsubmit) with the rest, in `env`; its output captured."""
    return subprocess.run(
        [*command(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout, env=env
    )


def node_names(url: str) -> list[str]:
    try:
        with ReqLink(url, resend_interval=1.0, connect_timeout=1.0) as link:
            return sorted(node["name"] for node in ControlClient(link).status(timeout=1.0)["nodes"])
    except (BrokerTimeout, BrokerUnreachable):
        return []


def one_line(stderr: str) -> str:
    """An error message out of its box, its words one space apart."""
    return " ".join(stderr.replace("│", " ").split())


def read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def test_a_broker_bound_by_its_file_runs_tasks_for_zsubmit_pointed_by_ztb_broker(
    spawner: Spawner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    ready = tmp_path / "broker.endpoint"
    config = tmp_path / "ztb.toml"
    config.write_text(
        f'[zbroker.start]\nbind = "{url}"\nstore = "none"\nready-file = "{ready}"\n'
        "heartbeat-interval = 0.2\n"
        # min/max: a node process that read this file too would refuse its --concurrency 1.
        f'[znode]\nbroker = "{url}"\nfunctions = ["math"]\nname = "confnode"\nmin = 1\nmax = 1\n'
    )
    for name in [n for n in os.environ if n.startswith("ZTB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ZTB_CONFIG", str(config))  # the spawned commands inherit it
    broker = spawner.start("zbroker", "zbroker", "start")
    assert (
        wait_until(lambda: read(ready), 30, what="the broker's ready file", alive=[broker]) == url
    )
    znode = spawner.start("znode", "znode")
    wait_until(
        lambda: node_names(url) == ["confnode.0"], 30, what="confnode.0", alive=[broker, znode]
    )

    done = run("zsubmit", "add", "2", "3", env=clean_environment(ZTB_BROKER=url))
    assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr


def test_a_flag_beats_its_variable_which_beats_the_file(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_broker("--store", "none")
    cluster.start_node()
    cluster.wait_nodes("node0")
    good, dead = cluster.url, f"tcp://127.0.0.1:{free_port()}"  # nothing listens on `dead`

    def zsubmit(in_file: str, *flags: str, **variables: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "ztb.toml"
        config.write_text(f'[zsubmit]\nbroker = "{in_file}"\nconnect-timeout = 0.5\n')
        env = clean_environment(ZTB_CONFIG=str(config), **variables)
        return run("zsubmit", *flags, "multiply", "6", "7", env=env)

    assert zsubmit(good).stdout == "42\n"  # the file's broker
    refused = zsubmit(dead)
    assert refused.returncode == 3, refused.stderr
    assert f"cannot reach the broker at {dead}" in refused.stderr
    assert zsubmit(dead, ZTB_BROKER=good).stdout == "42\n"  # the variable beats the file
    assert zsubmit(good, ZTB_BROKER=dead).returncode == 3  # ... both ways
    assert zsubmit(dead, "--broker", good, ZTB_BROKER=dead).stdout == "42\n"  # the flag wins


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every whole line of `text` (a log being written) as a JSON object with the fields
    every log line has."""
    whole = text[: text.rfind("\n") + 1]
    lines = [json.loads(line) for line in whole.splitlines() if line.strip()]
    for line in lines:
        assert TIMESTAMP.match(line["ts"]), line
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert isinstance(line["logger"], str) and isinstance(line["message"], str), line
    return lines


def about(lines: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("task_id") == task_id]


def test_json_logs_carry_the_task_id_and_node_of_the_lines_about_a_task(
    cluster: Cluster, tmp_path: Path
) -> None:
    log_file = tmp_path / "broker.jsonl"
    cluster.start_broker("--store", "none", "--log-format", "json", "--log-file", str(log_file))
    node = cluster.start_node("--log-format", "json", "--prefetch", "0")
    cluster.wait_nodes("node0")
    env = clean_environment(ZTB_BROKER=cluster.url)

    detached = run("zsubmit", "--detach", "sleep", "30", env=env)
    assert detached.returncode == 0, detached.stderr
    task_id = detached.stdout.strip()
    wait_until(lambda: cluster.status()["running"] == 1, 15, what="the task running")
    cancelled = run("zsubmit", "cancel", task_id, env=env)
    assert cancelled.returncode == 0, cancelled.stderr

    # The broker logs the cancel; the node process that ran it, its restart to stop it.
    [line] = wait_until(
        lambda: about(json_lines(log_file.read_text()), task_id), 15, what="the cancel logged"
    )
    assert line["message"] == f"task {task_id} cancelled while running on node node0"
    assert (line["level"], line["logger"], line["node"]) == ("INFO", "broker.core", "node0")
    assert cluster.broker is not None and json_lines(cluster.broker.log())  # stderr: JSON too
    [restart] = wait_until(
        lambda: about(json_lines(node.log()), task_id), 15, what="the node's restart logged"
    )
    assert (restart["logger"], restart["node"]) == ("node.restarts", "node0")
    assert "this node process restarts to stop it" in restart["message"]


@pytest.mark.parametrize(
    ("argv", "table", "key"),
    [
        (["zbroker", "start"], "zbroker.start", "bnid"),
        (["zbroker", "status"], "zbroker.start", "bnid"),  # the whole file is checked
        (["znode"], "znode", "concurency"),
        (["zsubmit", "add", "1", "2"], "zsubmit", "brokr"),
    ],
)
def test_a_bad_config_file_stops_each_command_with_exit_2(
    tmp_path: Path, argv: list[str], table: str, key: str
) -> None:
    config = tmp_path / "ztb.toml"
    tool = argv[0]
    config.write_text(f'[{table}]\n{key} = "x"\n')
    done = run(*argv, "--config", str(config), env=clean_environment())
    assert done.returncode == 2, done.stderr
    message = one_line(done.stderr)
    assert f"{config}: unknown key '{key}' in [{table}]; did you mean" in message, message
    assert "ZTB_CONFIG" in message and tool in done.stderr

    config.write_text(f"[{table}]\nheartbeat-interval = 'fast'\n")
    if tool == "zsubmit":  # zsubmit has no such option: its file's value is of a wrong type
        config.write_text("[zsubmit]\ntimeout = 'long'\n")
    done = run(*argv, env=clean_environment(ZTB_CONFIG=str(config)))
    assert done.returncode == 2, done.stderr
    message = one_line(done.stderr)
    assert f"{config}: [{table}]" in message and "fix the value" in message, message

    missing = tmp_path / "missing.toml"
    done = run(*argv, "--config", str(missing), env=clean_environment())
    assert done.returncode == 2, done.stderr
    assert f"{missing}: cannot read the config file" in one_line(done.stderr)
