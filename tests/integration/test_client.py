"""The REQ client, the pipelined client and `zsubmit`, against a scripted fake broker."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import orjson
import pytest
import zmq

from broker.protocol import Error, Execute, RemoteProtocolError
from client import (
    BadEndpoint,
    BadReply,
    BrokerError,
    BrokerTimeout,
    Client,
    ClientError,
    TaskFailed,
)
from client.link import ConnectWatch
from tests.fakes import (
    STATUS_BODY,
    FakeBroker,
    Received,
    Reply,
    StartBroker,
    before_packing,
    completed,
    drop_first,
    ignore_all,
    refuse_all,
    serve_functions,
    unused_endpoint,
)
from tests.support import BIN

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b,
    "power": lambda a, b: a**b,
    "echo": lambda *args: list(args),
}


@pytest.fixture
def functions_broker(fake_broker: StartBroker) -> FakeBroker:
    return fake_broker(serve_functions(FUNCTIONS))


def _arguments(received: Received) -> Any:
    assert isinstance(received.message, Execute)
    return orjson.loads(received.message.spec.args)


# ------------------------------------------------------------------------------ execute


def test_execute_returns_the_result(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        assert client.execute("multiply", 5, 10) == 50
        assert client.execute("echo", "a", [1, 2], {"k": None}) == ["a", [1, 2], {"k": None}]
    (_, execute), _ = functions_broker.executes()
    assert execute.spec.function == "multiply" and execute.spec.priority == 5
    assert orjson.loads(execute.spec.args) == [5, 10]


def test_big_integers_stay_exact(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        assert client.execute("power", 3, 100) == 3**100
        assert client.execute("multiply", 2**70, 3) == 3 * 2**70


def test_failed_task_raises_task_failed(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client, pytest.raises(TaskFailed) as info:
        client.execute("divide", 1, 0, task_id="t-1")
    failure = info.value
    assert (failure.task_id, failure.exit_code, failure.attempts) == ("t-1", 1, 1)
    assert (failure.error_type, failure.message) == ("ZeroDivisionError", "division by zero")
    assert str(failure) == "divide failed (exit 1, ZeroDivisionError): division by zero"


def test_execute_raw_returns_failures_without_raising(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        outcome = client.execute_raw("nosuch", [1])
    assert outcome.exit_code == 127
    assert outcome.error is not None and outcome.error.type == "UnknownFunction"


def test_error_reply_raises_broker_error(fake_broker: StartBroker) -> None:
    broker = fake_broker(refuse_all)
    with Client(broker.url) as client, pytest.raises(BrokerError) as info:
        client.execute("multiply", 1, 2, task_id="t-2")
    assert (info.value.code, info.value.message, info.value.task_id) == (
        "too_large",
        "message too large",
        "t-2",
    )


def test_unsupported_argument_is_a_type_error(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client, pytest.raises(TypeError, match="argument 2"):
        client.execute("echo", 1, {1, 2})
    assert functions_broker.executes() == []


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"priority": 10}, r"priority must be an integer from 0 to 9 \(9 runs first\), got 10"),
        ({"priority": True}, "priority must be an integer from 0 to 9"),
        ({"retries": 101}, r"retries must be an integer from 0 to 100 \(or None"),
        ({"retries": 1.5}, "retries must be an integer from 0 to 100"),
        ({"queue_timeout": 0}, "queue_timeout must be 0.001 to 86400 seconds or None, got 0"),
    ],
)
def test_a_bad_task_option_fails_before_sending(
    functions_broker: FakeBroker, option: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Client(functions_broker.url, **option)
    with Client(functions_broker.url) as client:
        with pytest.raises(ValueError, match=message):
            client.execute("multiply", 1, 2, **option)
        with pytest.raises(ValueError, match=message):
            client.execute_raw("multiply", [1, 2], **option)
        if "priority" in option:
            with pytest.raises(ValueError, match=message):
                client.map("multiply", [(1, 2)], **option)
    assert functions_broker.requests == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.execute("", 1), "function must be a string of 1 to 256 characters"),
        (lambda c: c.execute("f", task_id="x" * 257), "task_id must be a string of 1 to 256"),
        (lambda c: c.execute("f", timeout=0), "timeout must be a positive number of seconds"),
        (lambda c: c.map("f", [()], window=0), "window must be a positive integer"),
    ],
)
def test_a_bad_argument_fails_before_sending(
    functions_broker: FakeBroker, call: Callable[[Client], object], message: str
) -> None:
    with Client(functions_broker.url) as client, pytest.raises(ValueError, match=message):
        call(client)
    with pytest.raises(ValueError, match="resend_interval must be positive"):
        Client(functions_broker.url, resend_interval=0)
    assert functions_broker.requests == []


def test_lost_request_is_resent_on_a_fresh_socket(fake_broker: StartBroker) -> None:
    broker = fake_broker(drop_first(1, serve_functions(FUNCTIONS)))
    with Client(broker.url, resend_interval=0.2, timeout=10) as client:
        assert client.execute("multiply", 6, 7) == 42
    (first_identity, first), (second_identity, second) = broker.executes()
    assert first.spec.task_id == second.spec.task_id
    assert first_identity != second_identity


def test_a_request_lost_after_the_first_answer_is_resent_too(
    fake_broker: StartBroker, make_socket: Callable[[int], zmq.Socket[Any]]
) -> None:
    """The first answer may come in the same poll as the handshake's monitor event, which
    closes the connect watch: a later request the broker loses is still resent each
    resend_interval, not waited for until the timeout."""
    serve = serve_functions(FUNCTIONS)
    seen: list[Received] = []

    def lose_the_second(received: Received) -> list[Reply]:
        if isinstance(received.message, Execute):
            seen.append(received)
            if len(seen) == 2:
                return []
        return list(serve(received))

    broker = fake_broker(lose_the_second)
    with Client(broker.url, resend_interval=0.2, timeout=3) as client:
        assert client.execute("multiply", 6, 7) == 42
        # The state that race leaves, made here: the contact reached, and a watch that the
        # event closed still the link's (one of a spare socket: a socket's monitor cannot
        # be opened twice at once).
        link = client._link
        if link._watch is not None:
            link._watch.close()
        else:
            spare = make_socket(zmq.REQ)
            link._watch = ConnectWatch(spare, link.contact)
            link._watch.close()
        link.contact.reached = True
        assert client.execute("multiply", 2, 3) == 6  # BrokerTimeout after 3 s, before
    assert len(seen) == 3 and seen[1].message == seen[2].message


def test_stale_reply_is_ignored(fake_broker: StartBroker) -> None:
    answered: list[Received] = []

    def stale_then_right(received: Received) -> list[Reply]:
        answered.append(received)
        if len(answered) == 1:
            return [completed(received, "stale", task_id="someone-else")]
        return [completed(received, "right")]

    broker = fake_broker(stale_then_right)
    with Client(broker.url, resend_interval=5, timeout=10) as client:
        assert client.execute("anything") == "right"
    first, second = (execute for _, execute in broker.executes())
    assert first.spec.task_id == second.spec.task_id


def test_no_answer_raises_broker_timeout(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)
    started = time.monotonic()
    with Client(broker.url, timeout=0.5, resend_interval=0.2) as client:
        with pytest.raises(BrokerTimeout) as info:
            client.execute("multiply", 1, 2)
        elapsed = time.monotonic() - started
        assert isinstance(info.value, TimeoutError)
        assert broker.url in str(info.value) and "zbroker start" in str(info.value)
        assert 0.5 <= elapsed < 5
        # Every resend repeated the one task id.
        assert len({execute.spec.task_id for _, execute in broker.executes()}) == 1


def test_a_reply_that_is_not_ztb_raises_bad_reply(fake_broker: StartBroker) -> None:
    brokers: list[FakeBroker] = []

    def speak_http(received: Received) -> list[Reply]:
        brokers[0].send_raw(received.identity, b"", b"HTTP/1.1 400 Bad Request")
        return []

    brokers.append(fake_broker(speak_http))
    with Client(brokers[0].url, timeout=30) as client, pytest.raises(BadReply) as info:
        client.execute("multiply", 1, 2)
    assert isinstance(info.value, RemoteProtocolError)
    assert str(info.value).endswith("is it a ZTB broker?")
    assert len(brokers[0].executes()) == 1  # raised at once, not resent until the timeout


def test_a_url_that_is_not_an_endpoint_raises_bad_endpoint() -> None:
    with Client("localhost:5000") as client, pytest.raises(BadEndpoint) as info:
        client.execute("multiply", 1, 2)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("cannot use 'localhost:5000' as the broker's address")


def test_a_closed_client_refuses_every_call(functions_broker: FakeBroker) -> None:
    client = Client(functions_broker.url)
    client.close()
    client.close()  # a second close does nothing
    calls: list[Callable[[], object]] = [
        lambda: client.execute("multiply", 1, 2),
        lambda: client.map("multiply", [(1, 2)]),
        client.status,
        client.dead_letters,
    ]
    for call in calls:
        with pytest.raises(ClientError, match="this client is closed; create a new Client"):
            call()
    assert functions_broker.requests == []


def test_status_returns_the_body(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        assert client.status() == STATUS_BODY


# ------------------------------------------------------------------------------ map


def test_map_returns_results_in_input_order(fake_broker: StartBroker) -> None:
    held: list[Received] = []

    def reverse_order(received: Received) -> list[Reply]:
        held.append(received)
        if len(held) < 6:
            return []
        return [completed(r, _arguments(r)[0] * 2) for r in reversed(held)]

    broker = fake_broker(reverse_order)
    with Client(broker.url, timeout=10) as client:
        assert client.map("double", [(i,) for i in range(6)]) == [0, 2, 4, 6, 8, 10]


def test_map_keeps_at_most_window_tasks_in_flight(fake_broker: StartBroker) -> None:
    held: list[Received] = []
    arrived = 0
    total = 10

    def batches(received: Received) -> list[Reply]:
        # Answer only full batches of 4 (and the last 2), so a client that sent a
        # fifth task before any answer would show up in max_in_flight.
        nonlocal arrived
        arrived += 1
        held.append(received)
        if len(held) < 4 and arrived < total:
            return []
        replies = [completed(r, "ok") for r in held]
        held.clear()
        return replies

    broker = fake_broker(batches)
    with Client(broker.url, timeout=10, resend_interval=30) as client:
        assert client.map("f", [()] * total, window=4) == ["ok"] * total
    assert broker.max_in_flight == 4


def test_map_resends_outstanding_tasks(fake_broker: StartBroker) -> None:
    broker = fake_broker(drop_first(5, serve_functions(FUNCTIONS)))
    with Client(broker.url, timeout=10, resend_interval=0.2) as client:
        assert client.map("multiply", [(i, 10) for i in range(5)]) == [0, 10, 20, 30, 40]
    task_ids = [execute.spec.task_id for _, execute in broker.executes()]
    assert len(task_ids) == 10
    assert all(task_ids.count(task_id) == 2 for task_id in task_ids)


def test_map_packs_its_executes_and_reads_packed_answers(fake_broker: StartBroker) -> None:
    """protocol.md 2.5: several tasks to an EXECUTE go packed."""
    broker = fake_broker(serve_functions(FUNCTIONS))
    with Client(broker.url, timeout=10) as client:
        assert client.map("multiply", [(i, 3) for i in range(20)]) == [3 * i for i in range(20)]
    executes = [r for r in broker.requests if isinstance(r.message, Execute)]
    assert len(executes) == 20 and all(r.packed for r in executes)


def test_map_sends_again_in_pairs_to_a_broker_that_refuses_packed_executes(
    fake_broker: StartBroker,
) -> None:
    """A broker older than document 1.17 refuses a packed EXECUTE whole (ERROR malformed,
    no task id): the client sends every task again, in pairs, and they are answered; its
    later maps and futures send pairs from the start."""
    broker = fake_broker(before_packing(serve_functions(FUNCTIONS)))
    with Client(broker.url, timeout=10, resend_interval=30) as client:
        assert client.map("multiply", [(i, 3) for i in range(20)]) == [3 * i for i in range(20)]
        executes = [r for r in broker.requests if isinstance(r.message, Execute)]
        assert sum(r.packed for r in executes) == 20  # each task once packed, refused
        assert sum(not r.packed for r in executes) == 20  # and once in pairs, answered
        assert client.map("multiply", [(i, 2) for i in range(20)]) == [2 * i for i in range(20)]
        futures = [client.submit("multiply", i, 5) for i in range(20)]
        assert [f.result(timeout=10) for f in futures] == [5 * i for i in range(20)]
    executes = [r for r in broker.requests if isinstance(r.message, Execute)]
    assert len(executes) == 80 and sum(r.packed for r in executes) == 20


def test_map_raises_at_the_failing_position(functions_broker: FakeBroker) -> None:
    arguments = [(1, 1), (1, 0), (4, 2)]
    with Client(functions_broker.url) as client:
        results = client.imap("divide", arguments)
        assert next(results) == 1.0
        with pytest.raises(TaskFailed, match="ZeroDivisionError"):
            next(results)
        mixed = client.map("divide", arguments, return_exceptions=True)
    assert mixed[0] == 1.0 and mixed[2] == 2.0
    assert isinstance(mixed[1], TaskFailed) and mixed[1].exit_code == 1


def test_map_error_reply_fails_that_task(fake_broker: StartBroker) -> None:
    def refuse_second(received: Received) -> list[Reply]:
        assert isinstance(received.message, Execute)
        if _arguments(received) == [2]:
            return [(received.identity, Error("malformed", "bad", received.message.spec.task_id))]
        return [completed(received, "ok")]

    broker = fake_broker(refuse_second)
    with Client(broker.url, timeout=10) as client:
        results = client.map("f", [(1,), (2,), (3,)], return_exceptions=True)
        with pytest.raises(BrokerError, match="bad"):
            client.map("f", [(1,), (2,), (3,)])
    assert results[0] == results[2] == "ok"
    assert isinstance(results[1], BrokerError) and results[1].code == "malformed"


def test_map_without_answers_raises_broker_timeout(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)
    started = time.monotonic()
    client = Client(broker.url, timeout=0.5, resend_interval=0.2)
    with client, pytest.raises(BrokerTimeout):
        client.map("f", [(1,), (2,)])
    assert 0.5 <= time.monotonic() - started < 5
    assert len(broker.executes()) >= 4  # the first two, then at least one resend


# ------------------------------------------------------------------------------ zsubmit


def zsubmit(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "zsubmit"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_zsubmit_prints_the_result(functions_broker: FakeBroker) -> None:
    done = zsubmit("--broker", functions_broker.url, "multiply", "5", "10")
    assert (done.returncode, done.stdout, done.stderr) == (0, "50\n", "")
    done = zsubmit("--broker", functions_broker.url, "power", "2", "100")
    assert done.stdout == f"{2**100}\n"


def test_zsubmit_json_prints_the_whole_answer(functions_broker: FakeBroker) -> None:
    done = zsubmit(
        "--broker", functions_broker.url, "--json", "--priority", "9", "multiply", "5", "10"
    )
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)
    assert body.keys() == {"task_id", "exit_code", "result", "error", "attempts"}
    assert (body["exit_code"], body["result"], body["error"], body["attempts"]) == (0, 50, None, 1)
    [(_, execute)] = functions_broker.executes()
    assert execute.spec.task_id == body["task_id"] and execute.spec.priority == 9


def test_zsubmit_failed_task_exits_1(functions_broker: FakeBroker) -> None:
    done = zsubmit("--broker", functions_broker.url, "divide", "1", "0")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "error: divide failed (exit 1, ZeroDivisionError): division by zero\n"
    done = zsubmit("--broker", functions_broker.url, "--json", "divide", "1", "0")
    assert done.returncode == 1
    body = orjson.loads(done.stdout)
    assert body["exit_code"] == 1
    assert body["error"] == {"type": "ZeroDivisionError", "message": "division by zero"}


def test_zsubmit_broker_error_exits_1(fake_broker: StartBroker) -> None:
    broker = fake_broker(refuse_all)
    done = zsubmit("--broker", broker.url, "multiply", "1", "2")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: the broker refused the request")
    assert "message too large [too_large]" in done.stderr


def test_zsubmit_without_broker_exits_3() -> None:
    url = unused_endpoint()
    done = zsubmit("--broker", url, "--connect-timeout", "0.5", "multiply", "1", "2")
    assert done.returncode == 3
    assert done.stderr == (
        f"error: cannot reach the broker at {url}: nothing accepts connections there "
        "(connection refused or no route) (tried for 0.5 s); is `zbroker start` running "
        "there, and is the address right? (use --broker to point elsewhere, "
        "--connect-timeout S to wait longer)\n"
    )


def test_zsubmit_bad_endpoint_exits_2() -> None:
    done = zsubmit("--broker", "localhost:5000", "multiply", "1", "2")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("error: cannot use 'localhost:5000' as the broker's address")


def test_zsubmit_version() -> None:
    done = zsubmit("--version")
    assert (done.returncode, done.stdout) == (0, f"zsubmit {metadata.version('zmq-taskbroker')}\n")


def test_zsubmit_reads_json_else_strings(functions_broker: FakeBroker) -> None:
    url = functions_broker.url
    done = zsubmit("--broker", url, "echo", "-3", "hello", "-2.5", '"42"', "[1, 2]", "null")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == [-3, "hello", -2.5, "42", [1, 2], None]
    done = zsubmit("echo", "1", "--broker", url, "--", "-x", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == [1, "-x", "--json"]


def test_zsubmit_refuses_unknown_options(functions_broker: FakeBroker) -> None:
    url = functions_broker.url
    done = zsubmit("--broker", url, "multiply", "5", "--timout", "10")
    assert done.returncode == 2
    assert "no such option: --timout" in done.stderr
    for argv in (["echo", "-hello"], ["-x", "echo"]):
        done = zsubmit("--broker", url, *argv)
        assert done.returncode == 2
        assert "no such option: -" in done.stderr and "after --" in done.stderr
    assert functions_broker.executes() == []
