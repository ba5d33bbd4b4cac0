"""Client's dead-letter queue methods, against a fake broker with a scripted queue."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import pytest

from broker.protocol import (
    DLQ_LIST,
    DLQ_PURGE,
    DLQ_REPLAY,
    DLQ_SHOW,
    ERR_UNKNOWN_COMMAND,
    Dlq,
    DlqReply,
    Error,
)
from client import BrokerError, BrokerTimeout, Client, ClientError, NotFound
from tests.fakes import (
    DeadLetterQueue,
    FakeBroker,
    Received,
    Reply,
    StartBroker,
    dead_letter,
    dead_letter_requests,
    ignore_all,
)

NEWEST = dead_letter("t-3", "sleep", exit_code=124, error=("Timeout", "ran longer than 1 s"))
MIDDLE = dead_letter("t-2", "multiply", exit_code=69, error=("NodeLost", "node lost"))
OLDEST = dead_letter("t-1", "divide")
ARGUMENTS = {"t-3": b"[10]", "t-2": b"[36893488147419103232,3]", "t-1": b"[1,0]"}


@pytest.fixture
def queue() -> DeadLetterQueue:
    return DeadLetterQueue(
        (entry, ARGUMENTS[entry["task_id"]]) for entry in (NEWEST, MIDDLE, OLDEST)
    )


@pytest.fixture
def dlq_broker(fake_broker: StartBroker, queue: DeadLetterQueue) -> FakeBroker:
    return fake_broker(queue)


def test_dead_letters_lists_the_entries_newest_first(dlq_broker: FakeBroker) -> None:
    with Client(dlq_broker.url) as client:
        assert client.dead_letters() == [NEWEST, MIDDLE, OLDEST]
        assert client.dead_letters(limit=2) == [NEWEST, MIDDLE]
    assert dead_letter_requests(dlq_broker) == [
        Dlq(DLQ_LIST, None, None),
        Dlq(DLQ_LIST, None, 2),
    ]


def test_dead_letter_adds_the_decoded_arguments(dlq_broker: FakeBroker) -> None:
    with Client(dlq_broker.url) as client:
        entry = client.dead_letter("t-2")
    assert entry == {**MIDDLE, "args": [2**65, 3]}  # big integers stay exact
    assert dead_letter_requests(dlq_broker) == [Dlq(DLQ_SHOW, "t-2")]


def test_dead_letter_with_arguments_that_are_not_json(fake_broker: StartBroker) -> None:
    entry = dead_letter("bad", "echo", exit_code=2, error=("BadArguments", "not JSON"))
    broker = fake_broker(DeadLetterQueue([(entry, b"[1, oops")]))
    with Client(broker.url) as client:
        assert client.dead_letter("bad") == {**entry, "args": None, "raw_args": "[1, oops"}


def test_unknown_task_raises_not_found(dlq_broker: FakeBroker) -> None:
    with Client(dlq_broker.url) as client, pytest.raises(NotFound) as info:
        client.dead_letter("nosuch")
    failure = info.value
    assert isinstance(failure, KeyError) and isinstance(failure, BrokerError)
    assert (failure.code, failure.task_id) == ("not_found", "nosuch")
    assert str(failure) == (
        "the broker does not have task 'nosuch': "
        "task 'nosuch' is not in the dead-letter queue [not_found]"
    )
    copy = pickle.loads(pickle.dumps(failure))
    assert type(copy) is NotFound and str(copy) == str(failure)


def test_replay_one_then_all(dlq_broker: FakeBroker, queue: DeadLetterQueue) -> None:
    with Client(dlq_broker.url) as client:
        assert client.replay("t-2") == {"replayed": ["t-2"], "missing": []}
        assert client.replay("t-2") == {"replayed": [], "missing": ["t-2"]}
        assert client.replay() == {"replayed": ["t-3", "t-1"], "missing": []}
        assert client.dead_letters() == []
    assert queue.replayed == ["t-2", "t-3", "t-1"]
    requests = dead_letter_requests(dlq_broker)
    assert requests[:3] == [
        Dlq(DLQ_REPLAY, "t-2"),
        Dlq(DLQ_REPLAY, "t-2"),
        Dlq(DLQ_REPLAY, None),
    ]


def test_purge_one_then_all(dlq_broker: FakeBroker, queue: DeadLetterQueue) -> None:
    with Client(dlq_broker.url) as client:
        assert client.purge_dead_letters("t-1") == 1
        assert client.purge_dead_letters("t-1") == 0
        assert client.purge_dead_letters() == 2
        assert client.dead_letters() == []
    assert queue.replayed == []
    assert dead_letter_requests(dlq_broker)[2] == Dlq(DLQ_PURGE, None)


def test_a_lost_dlq_request_is_resent(fake_broker: StartBroker, queue: DeadLetterQueue) -> None:
    dropped: list[Received] = []

    def drop_first(received: Received) -> list[Reply]:
        if not dropped:
            dropped.append(received)
            return []
        return queue(received)

    broker = fake_broker(drop_first)
    with Client(broker.url, resend_interval=0.2) as client:
        assert client.dead_letters(timeout=10) == [NEWEST, MIDDLE, OLDEST]
    first, second = broker.requests
    assert first.message == second.message == Dlq(DLQ_LIST)
    assert first.identity != second.identity  # a fresh REQ socket for the resend


def test_no_answer_raises_broker_timeout(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)
    started = time.monotonic()
    with Client(broker.url, resend_interval=0.2) as client, pytest.raises(BrokerTimeout):
        client.purge_dead_letters("t-1", timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 5


def test_a_broker_without_dlq_raises_broker_error(fake_broker: StartBroker) -> None:
    def old_broker(received: Received) -> list[Reply]:
        return [(received.identity, Error(ERR_UNKNOWN_COMMAND, "unknown command 'DLQ'"))]

    broker = fake_broker(old_broker)
    with Client(broker.url) as client, pytest.raises(BrokerError) as info:
        client.dead_letters()
    assert not isinstance(info.value, NotFound)
    assert info.value.code == ERR_UNKNOWN_COMMAND


def test_a_reply_without_its_fields_is_a_client_error(fake_broker: StartBroker) -> None:
    def wrong_body(received: Received) -> list[Reply]:
        return [(received.identity, DlqReply({"purged": "all"}))]

    broker = fake_broker(wrong_body)
    with Client(broker.url) as client, pytest.raises(ClientError, match="'purged'"):
        client.purge_dead_letters()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.dead_letters(limit=0), "limit must be an integer from 1"),
        (lambda c: c.dead_letters(limit=True), "limit must be an integer from 1"),
        (lambda c: c.dead_letter(""), "task_id must be a string of 1 to 256"),
        (lambda c: c.replay("x" * 257), "task_id must be a string of 1 to 256"),
        (lambda c: c.purge_dead_letters("t-1", timeout=0), "timeout must be a positive"),
    ],
)
def test_bad_arguments_fail_before_sending(
    dlq_broker: FakeBroker, call: Callable[[Client], object], message: str
) -> None:
    with Client(dlq_broker.url) as client, pytest.raises(ValueError, match=message):
        call(client)
    assert dlq_broker.requests == []
