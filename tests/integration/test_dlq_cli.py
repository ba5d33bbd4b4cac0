"""`zbroker dlq` (broker/cli/dlq.py) through typer's CliRunner, against a fake broker with a
scripted dead-letter queue."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner, Result

from broker.cli import app as zbroker
from broker.cli.dlq import app
from broker.protocol import (
    DLQ_LIST,
    DLQ_PURGE,
    DLQ_REPLAY,
    DLQ_SHOW,
    ERR_UNKNOWN_COMMAND,
    Dlq,
    Error,
)
from tests.fakes import (
    DeadLetterQueue,
    FakeBroker,
    Received,
    Reply,
    StartBroker,
    dead_letter,
    dead_letter_requests,
    unused_endpoint,
)

# Typical ids: 32 hex digits (Client's), and map's "<prefix>.<position>".
LONG_ID = "0123456789abcdef0123456789abcdef"
MAP_ID = "fedcba9876543210fedcba9876543210.17"
TIMED_OUT = dead_letter(LONG_ID, "sum_squares", exit_code=124, error=("Timeout", "ran 5 s"))
LOST = dead_letter(MAP_ID, "multiply", exit_code=69, error=("NodeLost", "[bold]lost[/bold]"))
DIVIDED = dead_letter("t-1", "divide", attempts=1, failed_at=1_795_363_200.5)
ARGUMENTS = {LONG_ID: b"[1,10000000]", MAP_ID: b"[6,7]", "t-1": b"[1,0]"}


def local(failed_at: float) -> str:
    return datetime.fromtimestamp(failed_at).strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture
def queue() -> DeadLetterQueue:
    entries = (TIMED_OUT, LOST, DIVIDED)
    return DeadLetterQueue((entry, ARGUMENTS[entry["task_id"]]) for entry in entries)


@pytest.fixture
def broker(fake_broker: StartBroker, queue: DeadLetterQueue) -> FakeBroker:
    return fake_broker(queue)


def dlq(*argv: str, root: typer.Typer = app) -> Result:
    # COLUMNS: rich sizes tables to the terminal; this is the 80-column one.
    return CliRunner().invoke(root, list(argv), env={"COLUMNS": "80", "NO_COLOR": "1"})


# ------------------------------------------------------------------------------ list


def test_list_prints_a_table_that_fits_80_columns(broker: FakeBroker) -> None:
    done = dlq("list", "--broker", broker.url)
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].rstrip() == "Dead letters, newest first"
    assert lines[1].split() == [
        "task",
        "id",
        "function",
        "attempts",
        "exit",
        "error",
        "failed",
        "at",
    ]
    divided = next(line for line in lines if line.startswith("t-1 "))
    assert divided.split() == [
        "t-1",
        "divide",
        "1",
        "1",
        "ZeroDivision",
        *local(1_795_363_200.5)[:16].split(),
    ]
    text = done.stdout
    for entry in (TIMED_OUT, LOST):
        assert entry["task_id"][:16] in text  # long ids fold onto a second line
        assert f" {entry['exit_code']} " in text
    assert "[bold]lost[/bold]" not in text and "NodeLost" in text  # the type, no markup
    assert lines[-1] == "zbroker dlq show TASK_ID for a task's error and arguments"
    assert dead_letter_requests(broker) == [Dlq(DLQ_LIST, None, 50)]


def test_list_limit_and_json(broker: FakeBroker) -> None:
    done = dlq("list", "--broker", broker.url, "--limit", "1")
    assert done.exit_code == 0, done.output
    assert "showing the newest 1 of 3 (--limit 0 shows all)" in done.stdout
    done = dlq("list", "--broker", broker.url, "--limit", "0", "--json")
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.stdout) == [TIMED_OUT, LOST, DIVIDED]
    assert [r.limit for r in dead_letter_requests(broker)] == [1, None]


def test_list_of_an_empty_queue(fake_broker: StartBroker) -> None:
    broker = fake_broker(DeadLetterQueue([]))
    done = dlq("list", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (0, "The dead-letter queue is empty.\n")
    assert orjson.loads(dlq("list", "--broker", broker.url, "--json").stdout) == []


# ------------------------------------------------------------------------------ show


def test_show_prints_the_entry_and_its_arguments(broker: FakeBroker) -> None:
    done = dlq("show", "t-1", "--broker", broker.url)
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == [
        "task id:   t-1",
        "function:  divide",
        "priority:  5",
        "attempts:  1 (retries allowed: 0)",
        "exit code: 1",
        "error:     ZeroDivisionError: division by zero",
        f"failed at: {local(1_795_363_200.5)}",
        "arguments: [1,0]",
        "zbroker dlq replay t-1 runs it again; purge forgets it",
    ]
    done = dlq("show", MAP_ID, "--broker", broker.url)
    assert "error:     NodeLost: [bold]lost[/bold]\n" in done.stdout  # data, not markup
    assert f"zbroker dlq replay {MAP_ID} runs it again; purge forgets it\n" in done.stdout
    done = dlq("show", MAP_ID, "--broker", broker.url, "--json")
    assert done.exit_code == 0, done.output
    assert orjson.loads(done.stdout) == {**LOST, "args": [6, 7]}
    assert dead_letter_requests(broker) == [
        Dlq(DLQ_SHOW, "t-1"),
        Dlq(DLQ_SHOW, MAP_ID),
        Dlq(DLQ_SHOW, MAP_ID),
    ]


def test_show_of_an_unknown_task_exits_1(broker: FakeBroker) -> None:
    done = dlq("show", "nosuch", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (1, "")
    assert done.stderr == (
        "error: task 'nosuch' is not in the dead-letter queue; "
        "`zbroker dlq list` shows the task ids that are\n"
    )


# ------------------------------------------------------------------------------ replay


def test_replay_one_task(broker: FakeBroker, queue: DeadLetterQueue) -> None:
    done = dlq("replay", "t-1", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (0, "replayed t-1: it is queued again\n")
    done = dlq("replay", "t-1", "--broker", broker.url)
    assert done.exit_code == 1
    assert done.stderr.startswith("error: task 't-1' is not in the dead-letter queue;")
    assert queue.replayed == ["t-1"]


def test_replay_all(broker: FakeBroker, queue: DeadLetterQueue) -> None:
    done = dlq("replay", "--all", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (0, "replayed 3 dead letter(s)\n")
    assert queue.replayed == [LONG_ID, MAP_ID, "t-1"]
    assert dead_letter_requests(broker) == [Dlq(DLQ_REPLAY, None)]


@pytest.mark.parametrize("command", ["replay", "purge"])
def test_replay_and_purge_need_a_task_id_or_all(broker: FakeBroker, command: str) -> None:
    done = dlq(command, "--broker", broker.url)
    assert done.exit_code == 2
    assert done.stderr == (
        f"error: give the TASK_ID to {command} (see zbroker dlq list), "
        f"or --all to {command} every dead letter\n"
    )
    done = dlq(command, "t-1", "--all", "--broker", broker.url)
    assert done.exit_code == 2
    assert "give a TASK_ID or --all, not both" in done.stderr
    assert broker.requests == []  # nothing reached the broker


# ------------------------------------------------------------------------------ purge


def test_purge_one_then_all(broker: FakeBroker, queue: DeadLetterQueue) -> None:
    done = dlq("purge", "t-1", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (0, "purged 1 dead letter(s)\n")
    done = dlq("purge", "t-1", "--broker", broker.url)
    assert done.exit_code == 1 and "'t-1' is not in the dead-letter queue" in done.stderr
    done = dlq("purge", "--all", "--broker", broker.url)
    assert (done.exit_code, done.stdout) == (0, "purged 2 dead letter(s)\n")
    assert queue.entries == {} and queue.replayed == []
    assert dead_letter_requests(broker)[-1] == Dlq(DLQ_PURGE, None)


def test_purge_help_says_all_is_required() -> None:
    done = dlq("purge", "--help")
    assert done.exit_code == 0
    assert "Emptying the whole queue needs --all" in " ".join(done.stdout.split())


# ------------------------------------------------------------------------------ trouble


@pytest.mark.parametrize("argv", [["list"], ["show", "t-1"], ["replay", "--all"], ["purge", "x"]])
def test_no_broker_exits_3(argv: list[str]) -> None:
    url = unused_endpoint()
    done = dlq(*argv, "--broker", url, "--timeout", "0.3")
    assert (done.exit_code, done.stdout) == (3, "")
    assert done.stderr == (
        f"error: cannot reach the broker at {url}: nothing accepts connections there "
        "(connection refused or no route) (tried for 0.3 s); is `zbroker start` running "
        "there, and is the address right? (use --broker to point elsewhere)\n"
    )


def test_a_broker_without_dlq_exits_1(fake_broker: StartBroker) -> None:
    def old_broker(received: Received) -> list[Reply]:
        return [(received.identity, Error(ERR_UNKNOWN_COMMAND, "unknown command 'DLQ'"))]

    broker = fake_broker(old_broker)
    done = dlq("list", "--broker", broker.url)
    assert done.exit_code == 1
    assert done.stderr == (
        f"error: the broker at {broker.url} refused DLQ: unknown command 'DLQ' "
        "[unknown_command]; the broker is older than this command: upgrade and restart it\n"
    )


def test_a_bad_endpoint_exits_2() -> None:
    done = dlq("list", "--broker", "localhost:5000")
    assert done.exit_code == 2
    assert done.stderr.startswith("error: cannot use 'localhost:5000' as the broker's address")
    assert "tcp://127.0.0.1:5000" in done.stderr


def test_a_too_long_task_id_exits_2(broker: FakeBroker) -> None:
    done = dlq("show", "x" * 257, "--broker", broker.url)
    assert done.exit_code == 2 and "1 to 256 characters" in done.stderr
    assert broker.requests == []


# ------------------------------------------------------------------------------ mounting


def test_mounted_as_zbroker_dlq(broker: FakeBroker) -> None:
    done = dlq("dlq", "list", "--broker", broker.url, "--json", root=zbroker)
    assert done.exit_code == 0, done.output
    assert len(orjson.loads(done.stdout)) == 3
    done = dlq("--help", root=zbroker)
    assert "dead-letter queue" in done.stdout


def test_every_option_and_argument_has_help() -> None:
    group = get_command(app)
    commands = getattr(group, "commands", {})
    assert set(commands) == {"list", "show", "replay", "purge"}
    for name, command in commands.items():
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"zbroker dlq {name} {param.name}"
