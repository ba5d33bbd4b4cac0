"""`zbroker` itself and `zbroker status` (broker/cli/) through typer's CliRunner, against a fake
broker: what the commands print, and how trouble with the broker maps to exit codes (1
refused or not ZTB/1, 2 bad command line, 3 no answer)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import orjson
import pytest
from typer.main import get_command
from typer.testing import CliRunner, Result

from broker.cli import app
from broker.protocol import ERR_UNKNOWN_COMMAND, DlqReply, Error, Status, StatusReply
from client.cluster import command as script_command
from tests.fakes import (
    STATUS_BODY,
    FakeBroker,
    Handler,
    Received,
    Reply,
    StartBroker,
    ignore_all,
    unused_endpoint,
)

NODE = {
    "id": "node-1",
    "name": "node-a",
    "host": "worker1",
    "pid": 4242,
    "functions": ["add", "multiply", "divide", "power"],
    "capacity": 4,
    "prefetch": 64,
    "active": 6,
    "held": 2,
    "completed": 17,
    "last_seen": 0.25,
    "state": "ready",
}
BODY: dict[str, Any] = {
    "strategy": "least-loaded",
    "nodes": [NODE],
    "queued": 2,
    "running": 4,
    "held": 2,
    "dead_letters": 3,
    "counters": {"received": 42, "malformed": 0},
}


def answer_status(body: dict[str, Any]) -> Handler:
    def handle(received: Received) -> list[Reply]:
        assert isinstance(received.message, Status)
        return [(received.identity, StatusReply(body))]

    return handle


def zbroker(*argv: str) -> Result:
    # COLUMNS: rich sizes tables to the terminal; this is the 100-column one.
    return CliRunner().invoke(app, list(argv), env={"COLUMNS": "100", "NO_COLOR": "1"})


# ------------------------------------------------------------------------------ zbroker


def test_version_is_the_installed_package() -> None:
    done = zbroker("--version")
    assert (done.exit_code, done.stdout) == (0, f"zbroker {metadata.version('zmq-taskbroker')}\n")


def test_every_command_option_and_argument_has_help() -> None:
    def commands(group: Any, path: str) -> Iterator[tuple[str, Any]]:
        for name, command in getattr(group, "commands", {}).items():
            yield f"{path} {name}", command
            yield from commands(command, f"{path} {name}")

    found = dict(commands(get_command(app), "zbroker"))
    assert set(found) >= {"zbroker start", "zbroker status", "zbroker dlq", "zbroker dlq list"}
    for name, command in found.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"


# ------------------------------------------------------------------------------ status


def test_status_prints_the_nodes_and_the_queue(fake_broker: StartBroker) -> None:
    broker = fake_broker(answer_status(BODY))
    done = zbroker("status", "--broker", broker.url)
    assert done.exit_code == 0, done.output
    row = next(line for line in done.stdout.splitlines() if "node-a" in line)
    assert row.split("│")[1:-1] == [
        " node-a ",
        " worker1 ",
        " 4242 ",
        " ready ",
        "  4/4 ",
        "    2 ",
        "   17 ",
        " 0.2s ago ",
        " add, multiply, divide +1 more ",
    ]
    assert (
        "znodes: 1   processes: 1   queued: 2   running: 4   held by nodes: 2   dead letters: 3\n"
        in done.stdout
    )
    assert "counters: malformed=0, received=42\n" in done.stdout


def _process(name: str, host: str, pid: int) -> dict[str, Any]:
    return {**NODE, "name": name, "host": host, "pid": pid, "id": f"id-{pid}"}


def test_status_groups_the_processes_of_each_znode(fake_broker: StartBroker) -> None:
    """An elastic znode's processes register as NAME.K from one host: one group each, its
    totals first, then its processes in order of their numbers (10 after 9); beside it a
    znode of one process and a namesake on another host."""
    nodes = [
        _process("w.10", "h1", 10),
        _process("w.2", "h1", 2),
        _process("w.9", "h1", 9),
        _process("w.2", "h2", 22),
        _process("solo", "h1", 5),
        _process("v1.2.x", "h1", 6),
    ]
    broker = fake_broker(answer_status({**BODY, "nodes": nodes}))
    done = zbroker("status", "--broker", broker.url)
    assert done.exit_code == 0, done.output
    rows = [line.split("│")[1:-1] for line in done.stdout.splitlines() if line.count("│") > 3]
    cells = [[cell.strip() for cell in row] for row in rows]
    cells = [row for row in cells if any(row[:-1])]  # not a cell's wrapped second line
    each = ["ready", "4/4", "2", "17", "0.2s ago"]  # 6 sent, 2 of them held: 4 running
    listed = "add, multiply"  # the functions column, cut to fit 100 columns
    assert [row[:-1] for row in cells] == [
        ["solo", "h1", "5", *each],
        ["v1.2.x", "h1", "6", *each],
        ["w (3 processes)", "h1", "", "", "12/12", "6", "51", ""],
        ["w.2", "", "2", *each],
        ["w.9", "", "9", *each],
        ["w.10", "", "10", *each],
        ["w.2", "h2", "22", *each],
    ]
    # The same functions are said once per znode, on its totals' row.
    starts = [row[-1].startswith(listed) for row in cells]
    assert starts == [True, True, True, False, False, False, True]
    assert "znodes: 4   processes: 6" in done.stdout


def test_status_json_prints_the_body(fake_broker: StartBroker) -> None:
    broker = fake_broker(answer_status(BODY))
    done = zbroker("status", "--broker", broker.url, "--json")
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.stdout) == BODY


def test_a_lost_status_request_is_resent(fake_broker: StartBroker) -> None:
    # zbroker asks through the client's ReqLink, Lazy Pirate resends included.
    answered = answer_status(STATUS_BODY)
    seen: list[Received] = []

    def drop_first(received: Received) -> list[Reply]:
        seen.append(received)
        return [] if len(seen) == 1 else list(answered(received))

    broker = fake_broker(drop_first)
    done = zbroker("status", "--broker", broker.url, "--json", "--timeout", "10")
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.stdout) == STATUS_BODY
    first, second = broker.requests
    assert first.message == second.message == Status()
    assert first.identity != second.identity  # a fresh REQ socket for the resend


def test_no_broker_exits_3_within_the_connect_timeout() -> None:
    url = unused_endpoint()
    started = time.monotonic()
    done = zbroker("status", "--broker", url, "--connect-timeout", "0.5")
    assert (done.exit_code, done.stdout) == (3, "")
    assert done.stderr == (
        f"error: cannot reach the broker at {url}: nothing accepts connections there "
        "(connection refused or no route) (tried for 0.5 s); is `zbroker start` running "
        "there, and is the address right? (use --broker to point elsewhere)\n"
    )
    assert time.monotonic() - started < 3  # the connect timeout, not --timeout (5 s)


def test_a_silent_broker_exits_3_with_no_answer(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)
    done = zbroker("status", "--broker", broker.url, "--timeout", "0.5")
    assert (done.exit_code, done.stdout) == (3, "")
    assert done.stderr == (
        f"error: no answer from the broker at {broker.url} within 0.5 s; "
        "is `zbroker start` running there? (use --broker to point elsewhere)\n"
    )


@pytest.mark.parametrize("url", ["localhost:5000", "tcp://", "tcp://127.0.0.1:notaport"])
def test_a_url_that_is_not_an_endpoint_exits_2(url: str) -> None:
    done = zbroker("status", "--broker", url)
    assert (done.exit_code, done.stdout) == (2, "")
    assert done.stderr.startswith(f"error: cannot use {url!r} as the broker's address: ")
    assert done.stderr.endswith("; give an endpoint like tcp://127.0.0.1:5000\n")


def test_a_bad_timeout_exits_2() -> None:
    done = zbroker("status", "--timeout", "0")
    assert done.exit_code == 2
    assert "--timeout" in done.stderr


def test_a_refusal_exits_1(fake_broker: StartBroker) -> None:
    def refuse(received: Received) -> list[Reply]:
        return [(received.identity, Error(ERR_UNKNOWN_COMMAND, "unknown command 'STATUS'"))]

    broker = fake_broker(refuse)
    done = zbroker("status", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (1, "")
    assert done.stderr == (
        f"error: the broker at {broker.url} refused STATUS: unknown command 'STATUS' "
        "[unknown_command]; the broker is older than this command: upgrade and restart it\n"
    )


def test_an_answer_that_is_not_ztb_exits_1_at_once(fake_broker: StartBroker) -> None:
    brokers: list[FakeBroker] = []

    def speak_http(received: Received) -> list[Reply]:
        brokers[0].send_raw(received.identity, b"", b"HTTP/1.1 400 Bad Request")
        return []

    brokers.append(fake_broker(speak_http))
    url = brokers[0].url
    done = zbroker("status", "--broker", url, "--timeout", "30")
    assert (done.exit_code, done.stdout) == (1, "")
    assert done.stderr.startswith(f"error: the answer from {url} is not ZTB/1 (")
    assert done.stderr.endswith("); is it a ZTB broker?\n")
    assert len(brokers[0].requests) == 1  # not resent: a resend gets the same answer


def test_an_answer_of_the_wrong_kind_exits_1(fake_broker: StartBroker) -> None:
    def answer_dlq(received: Received) -> list[Reply]:
        return [(received.identity, DlqReply({"purged": 0}))]

    broker = fake_broker(answer_dlq)
    done = zbroker("status", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (1, "")
    assert done.stderr == (f"error: the broker at {broker.url} answered DlqReply to Status\n")


@pytest.mark.parametrize("script", ["zbroker", "znode", "zsubmit"])
def test_every_command_prints_its_version(script: str) -> None:
    done = subprocess.run(
        [*script_command(script), "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{script} {metadata.version('zmq-taskbroker')}\n"
