"""`zsubmit` as a process against the scripted fake broker: its commands (run, result,
cancel, map) and how it reads arguments, what it says when things go wrong, and its exit
codes. The same commands against a real cluster are in tests/e2e/test_zsubmit.py."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pytest

from broker.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ERR_NOT_FOUND,
    ERR_UNKNOWN_COMMAND,
    Cancel,
    Cancelled,
    Error,
    ErrorInfo,
    Execute,
    Fetch,
    Status,
    StatusReply,
    TaskCompleted,
    dumps_payload,
    loads_payload,
)
from tests.fakes import (
    STATUS_BODY,
    FakeBroker,
    Received,
    Reply,
    StartBroker,
    ignore_all,
    serve_functions,
    unused_endpoint,
)
from tests.support import BIN, interruptible

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "echo": lambda *args: list(args),
    "divide": lambda a, b: a / b,
    "result": lambda *args: ["the function called result", *args],
}


def zsubmit(
    *argv: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "zsubmit"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        cwd=cwd,
        check=False,
    )


@pytest.fixture
def functions(fake_broker: StartBroker) -> FakeBroker:
    return fake_broker(serve_functions(FUNCTIONS))


def echoed(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return loads_payload(done.stdout.encode())


# ------------------------------------------------------------------------------ by task id

ANSWERS = {
    "done": TaskCompleted("done", 0, dumps_payload(3**50)),
    "failed": TaskCompleted("failed", 1, b"null", ErrorInfo("ZeroDivisionError", "oops"), 2),
}


def by_task_id(received: Received) -> list[Reply]:
    """FETCH: "done" and "failed" are answered, "pending" never, anything else not_found.
    CANCEL: "done" was finished, "running" and "queued" were what they say."""
    message = received.message
    if isinstance(message, Fetch):
        if message.task_id == "pending":
            return []
        if message.task_id in ANSWERS:
            return [(received.identity, ANSWERS[message.task_id])]
    if isinstance(message, Cancel):
        was = {"done": "finished", "running": "running", "queued": "queued"}
        if message.task_id in was:
            return [(received.identity, Cancelled(message.task_id, was[message.task_id]))]
    assert isinstance(message, (Fetch, Cancel))
    return [(received.identity, Error(ERR_NOT_FOUND, "no such task", message.task_id))]


@pytest.fixture
def tasks(fake_broker: StartBroker) -> FakeBroker:
    return fake_broker(by_task_id)


def test_result_prints_a_finished_tasks_result(tasks: FakeBroker) -> None:
    done = zsubmit("result", "done", "--broker", tasks.url)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{3**50}\n", "")
    # Options may come before the command, as they do before a FUNCTION.
    done = zsubmit("--broker", tasks.url, "result", "done", "--json")
    body = echoed(done)
    assert (body["task_id"], body["exit_code"], body["result"]) == ("done", 0, 3**50)
    assert [r.message for r in tasks.requests] == [Fetch("done"), Fetch("done")]


def test_result_of_a_failed_task_exits_1(tasks: FakeBroker) -> None:
    done = zsubmit("result", "failed", "--broker", tasks.url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: task failed failed (exit 1, ZeroDivisionError): oops\n"


def test_result_of_an_unknown_task_exits_4(tasks: FakeBroker) -> None:
    done = zsubmit("result", "nope", "--broker", tasks.url)
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr == (
        "error: the broker knows no task 'nope' of this client: never submitted with this "
        "--curve key or --client-id (ids are per client), or answered longer ago than it "
        "keeps answers (zbroker start --keep-results)\n"
    )


def test_result_of_a_pending_task_waits_then_exits_3(tasks: FakeBroker) -> None:
    done = zsubmit("result", "pending", "--wait", "0.5", "--broker", tasks.url)
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr.startswith("error: task pending is not done after 0.5 s: still queued ")
    assert "zsubmit result pending --wait S waits longer" in done.stderr


@pytest.mark.parametrize(
    ("task_id", "code", "said"),
    [
        ("running", 0, "cancelled task running (it was running; its node stops it)\n"),
        ("queued", 0, "cancelled task queued (it was queued, and never runs)\n"),
        (
            "done",
            5,
            "task done had finished already: nothing to cancel "
            "(zsubmit result done shows its answer)\n",
        ),
    ],
)
def test_cancel_says_what_the_task_was(
    tasks: FakeBroker, task_id: str, code: int, said: str
) -> None:
    done = zsubmit("cancel", task_id, "--broker", tasks.url)
    assert (done.returncode, done.stdout, done.stderr) == (code, said, "")


def test_cancel_of_an_unknown_task_exits_4(tasks: FakeBroker) -> None:
    done = zsubmit("--broker", tasks.url, "cancel", "nope", "--json")
    assert (done.returncode, done.stdout) == (4, "")
    assert done.stderr.startswith("error: the broker knows no task 'nope'")


def test_an_older_broker_says_to_upgrade(fake_broker: StartBroker) -> None:
    def old(received: Received) -> list[Reply]:
        return [(received.identity, Error(ERR_UNKNOWN_COMMAND, "unknown command 'CANCEL'"))]

    broker = fake_broker(old)
    done = zsubmit("cancel", "t", "--broker", broker.url)
    assert done.returncode == 1
    assert done.stderr == (
        f"error: the broker at {broker.url} does not know this request (unknown command "
        "'CANCEL'): it is older than this zsubmit; upgrade and restart it\n"
    )


def test_a_function_named_like_a_command_runs_with_run(functions: FakeBroker) -> None:
    assert echoed(zsubmit("--broker", functions.url, "run", "result", "1")) == [
        "the function called result",
        1,
    ]


# ------------------------------------------------------------------------------ submitting


def test_task_id_is_the_one_sent(functions: FakeBroker) -> None:
    done = zsubmit("--broker", functions.url, "--json", "--task-id", "job-7", "echo", "1")
    assert echoed(done)["task_id"] == "job-7"
    [(_, execute)] = functions.executes()
    assert execute.spec.task_id == "job-7"


def test_detach_prints_the_id_once_the_broker_holds_the_task(fake_broker: StartBroker) -> None:
    def hold(received: Received) -> list[Reply]:
        if isinstance(received.message, Status):
            return [(received.identity, StatusReply(STATUS_BODY))]
        return []  # the task is held, never answered

    broker = fake_broker(hold)
    done = zsubmit("--broker", broker.url, "--detach", "--task-id", "bg-1", "echo", "x")
    assert (done.returncode, done.stdout, done.stderr) == (0, "bg-1\n", "")
    kinds = [type(r.message) for r in broker.requests]
    assert kinds == [Execute, Status]  # the STATUS confirms the EXECUTE was taken
    done = zsubmit("--broker", broker.url, "--detach", "echo", "x")
    assert len(done.stdout.strip()) == 32  # a random id, uuid4 hex


def test_detach_of_a_refused_task_exits_1(fake_broker: StartBroker) -> None:
    def refuse(received: Received) -> list[Reply]:
        if isinstance(received.message, Execute):
            spec = received.message.spec
            return [(received.identity, Error("conflict", "other arguments", spec.task_id))]
        return [(received.identity, StatusReply(STATUS_BODY))]

    broker = fake_broker(refuse)
    done = zsubmit("--broker", broker.url, "--detach", "--task-id", "t", "echo", "x")
    assert (done.returncode, done.stdout) == (1, "")
    assert "other arguments [conflict]" in done.stderr


def test_ctrl_c_twice_leaves_the_task_running(fake_broker: StartBroker) -> None:
    """The first Ctrl-C sends CANCEL; a second, before the answer, leaves the task be."""
    broker = fake_broker(ignore_all)
    proc = subprocess.Popen(
        [str(BIN / "zsubmit"), "--broker", broker.url, "--task-id", "long", "echo", "1"],
        preexec_fn=interruptible,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        broker.take(Execute, timeout=15)
        proc.send_signal(signal.SIGINT)
        broker.take(Cancel, timeout=15)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out) == (130, "")
    assert err == (
        "\nzsubmit: interrupted: cancelling task long (Ctrl-C again leaves it running)\n"
        "zsubmit: task long was left running; zsubmit result long prints its result when it "
        "is done\n"
    )


def test_no_answer_names_the_task_to_fetch_later(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)
    done = zsubmit("--broker", broker.url, "--timeout", "0.5", "--task-id", "slow", "echo")
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr == (
        f"error: no answer from the broker at {broker.url} within 0.5 s; task slow may still "
        "be queued or running: zsubmit result slow --wait S waits for its answer, zsubmit "
        "cancel slow stops it (--timeout 0 waits forever)\n"
    )


# ------------------------------------------------------------------------------ arguments


def test_a_dash_reads_one_argument_from_stdin(functions: FakeBroker) -> None:
    url = functions.url
    assert echoed(zsubmit("--broker", url, "echo", "-", stdin="abc\n")) == ["abc"]
    assert echoed(zsubmit("--broker", url, "echo", "1", "-", stdin='{"a": [1]}\n')) == [
        1,
        {"a": [1]},
    ]
    assert echoed(zsubmit("--broker", url, "echo", '"-"')) == ["-"]  # the string itself


def test_only_one_argument_comes_from_stdin(functions: FakeBroker) -> None:
    done = zsubmit("--broker", functions.url, "echo", "-", "-", stdin="x")
    assert done.returncode == 2 and "stdin can give one ARG" in done.stderr
    assert functions.executes() == []


def test_an_at_file_is_read(functions: FakeBroker, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("line one\nline two\n")
    (tmp_path / "list.json").write_text("[1, 2, 3]\n")
    done = zsubmit("--broker", functions.url, "echo", "@notes.txt", "@list.json", cwd=tmp_path)
    assert echoed(done) == ["line one\nline two", [1, 2, 3]]


def test_a_missing_at_file_is_a_usage_error(functions: FakeBroker, tmp_path: Path) -> None:
    done = zsubmit("--broker", functions.url, "echo", "@nope.txt", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "error: cannot read argument 1 from @nope.txt: No such file or directory (to send a "
        "string that starts with @, quote it as JSON: '\"@nope.txt\"')\n"
    )


@pytest.mark.parametrize(
    ("word", "error"),
    [
        ("1.2.3", "unexpected content after document: line 1 column 4 (char 3)"),
        ("[1, 2", "unexpected end of data: line 1 column 6 (char 5)"),
        ("{a: 1}", "unexpected character, expected a string key: line 1 column 2 (char 1)"),
    ],
)
def test_an_argument_that_looks_like_json_but_is_not_is_warned_of(
    functions: FakeBroker, word: str, error: str
) -> None:
    done = zsubmit("--broker", functions.url, "echo", "ok", word)
    assert echoed(done) == ["ok", word]
    assert done.stderr == (
        f"warning: argument 2 {word!r} looks like JSON but is not ({error}); it is sent as a "
        "string. Quote it as a JSON string to send a string without this warning, or correct "
        "the JSON\n"
    )


def test_plain_words_are_strings_without_a_warning(functions: FakeBroker) -> None:
    done = zsubmit("--broker", functions.url, "echo", "hello", "x1", "-5", "@")
    assert (echoed(done), done.stderr) == (["hello", "x1", -5, "@"], "")


def test_an_oversized_argument_is_refused_before_sending(
    functions: FakeBroker, tmp_path: Path
) -> None:
    big = tmp_path / "big.txt"
    big.write_text("x" * (DEFAULT_MAX_MESSAGE_SIZE + 10))
    done = zsubmit("--broker", functions.url, "--task-id", "big", "echo", f"@{big}")
    assert (done.returncode, done.stdout) == (1, "")
    size = DEFAULT_MAX_MESSAGE_SIZE + 14  # the text, quoted, in a JSON array
    assert done.stderr.startswith(
        f"error: the EXECUTE of task big (echo, {size:,} bytes of arguments) is "
    )
    assert "over the message size limit of 16,777,216 bytes; send a reference" in done.stderr
    assert functions.executes() == []


# ------------------------------------------------------------------------------ map


def test_map_prints_results_in_order_and_reports_failed_lines(
    functions: FakeBroker, tmp_path: Path
) -> None:
    lines = ["[1, 2]", "[1, 0]", "", "not json", "5", "[9, 3]"]
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    for args, stdin in ([str(source)], None), (["-"], source.read_text()), ([], source.read_text()):
        done = zsubmit("map", "divide", *args, "--broker", functions.url, stdin=stdin)
        assert done.returncode == 1
        assert done.stdout == "0.5\nnull\nnull\nnull\n3.0\n"
        assert done.stderr == (
            "line 2: divide failed (exit 1, ZeroDivisionError): division by zero\n"
            "line 4: not JSON (invalid literal, expected 'null': line 1 column 1 (char 0))\n"
            "line 5: not a JSON array of arguments, like [2, 10] (found a number)\n"
            "error: 3 of 5 lines failed\n"
        )


def test_map_json_prints_whole_answers(functions: FakeBroker) -> None:
    done = zsubmit("--broker", functions.url, "map", "--json", "divide", stdin="[1, 4]\n[1, 0]\n")
    assert done.returncode == 1
    first, second = (orjson.loads(line) for line in done.stdout.splitlines())
    assert first.keys() == {"line", "task_id", "exit_code", "result", "error", "attempts"}
    assert (first["line"], first["exit_code"], first["result"]) == (1, 0, 0.25)
    assert (second["line"], second["exit_code"]) == (2, 1)
    assert second["error"] == {"type": "ZeroDivisionError", "message": "division by zero"}
    sent = [execute.spec.task_id for _, execute in functions.executes()]
    assert [first["task_id"], second["task_id"]] == sent


def test_map_of_successes_exits_0(functions: FakeBroker) -> None:
    stdin = "".join(f'["{n}"]\n' for n in range(500))
    done = zsubmit("map", "echo", "--broker", functions.url, "--window", "50", stdin=stdin)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [f'["{n}"]' for n in range(500)]
    assert functions.max_in_flight <= 50


def test_map_of_a_file_that_is_not_there_exits_2(tmp_path: Path) -> None:
    done = zsubmit("map", "echo", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot read {tmp_path / 'nope.jsonl'}: No such file")


# ------------------------------------------------------------------------------ every command


@pytest.mark.parametrize("command", [[], ["run"], ["result"], ["cancel"], ["map"]])
def test_every_command_has_its_version(command: list[str]) -> None:
    done = zsubmit(*command, "--version")
    assert (done.returncode, done.stdout) == (0, f"zsubmit {metadata.version('zmq-taskbroker')}\n")


@pytest.mark.parametrize(
    "argv",
    [["echo", "1"], ["result", "t"], ["cancel", "t"], ["map", "echo"]],
    ids=lambda argv: argv[0],
)
def test_every_command_refuses_a_url_that_is_not_an_endpoint(argv: list[str]) -> None:
    done = zsubmit("--broker", "localhost:5000", *argv, stdin="[1]\n")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("error: cannot use 'localhost:5000' as the broker's address")


@pytest.mark.parametrize(
    "argv",
    [["echo", "1"], ["--detach", "echo", "1"], ["result", "t"], ["cancel", "t"], ["map", "echo"]],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_every_command_says_when_nothing_is_there(argv: list[str]) -> None:
    url = unused_endpoint()
    done = zsubmit("--broker", url, "--connect-timeout", "0.3", *argv, stdin="[1]\n")
    assert (done.returncode, done.stdout) == (3, "")
    assert done.stderr.startswith(f"error: cannot reach the broker at {url}: nothing accepts ")


def test_help_names_the_commands_and_their_exit_codes() -> None:
    def help_text(*command: str) -> str:
        done = zsubmit(*command, "--help")
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.replace("│", " ").split())  # unboxed, unwrapped

    text = help_text()
    # The run command's usage is zsubmit's own; typer 0.29 writes {FUNCTION} for FUNCTION.
    assert re.match(r"Usage: zsubmit \[OPTIONS\] {?FUNCTION}? \[ARG\]\.\.\.", text)
    for command in ("result TASK_ID", "cancel TASK_ID", "map FUNCTION [FILE|-]"):
        assert command in text
    assert "130 interrupted by Ctrl-C" in text
    assert "4 the broker knows no task TASK_ID" in help_text("result")
    assert "5 the task had finished already" in help_text("cancel")
    assert re.match(r"Usage: zsubmit map \[OPTIONS\] {?FUNCTION}? \[FILE\|-\]", help_text("map"))


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--queue-timeout", "100000"], "queue_timeout must be 0.001 to 86400 seconds"),
        (["--task-id", ""], "task_id must be a string of 1 to 256 characters"),
        (["--detach", "--task-id", "x" * 257], "task_id must be a string of 1 to 256"),
    ],
)
def test_options_out_of_range_are_usage_errors(
    functions: FakeBroker, argv: list[str], said: str
) -> None:
    done = zsubmit("--broker", functions.url, *argv, "echo", "1")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"error: {said}")
    assert functions.requests == []


@pytest.mark.parametrize(
    ("argv", "sent"),
    [
        ([], None),
        (["--retry-on", "exception"], ("exception",)),
        (["--retry-on", "timeout,exception"], ("exception", "timeout")),
        (["--retry-on", "all"], ("exception", "timeout")),
        (["--retry-on", "none"], ()),
    ],
)
def test_retry_on_goes_with_the_task(
    functions: FakeBroker, argv: list[str], sent: tuple[str, ...] | None
) -> None:
    assert echoed(zsubmit("--broker", functions.url, *argv, "echo", "1")) == [1]
    done = zsubmit("--broker", functions.url, "map", *argv, "echo", stdin="[2]\n")
    assert (done.returncode, done.stdout) == (0, "[2]\n"), done.stderr
    assert [execute.spec.retry_on for _, execute in functions.executes()] == [sent, sent]


def test_an_unknown_retry_on_is_a_usage_error(functions: FakeBroker) -> None:
    done = zsubmit("--broker", functions.url, "--retry-on", "crash", "echo", "1")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "error: --retry-on 'crash': unknown crash; give one of exception, timeout, all, none, "
        "or exception,timeout\n"
    )
    assert functions.requests == []
