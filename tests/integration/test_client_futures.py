"""`Client.submit` and its futures against the scripted fake broker: one DEALER socket for
all of them, batches, resends, cancellation and closing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest

from broker.protocol import (
    EXIT_CANCELLED,
    WAS_QUEUED,
    Cancel,
    Cancelled,
    ErrorInfo,
    Execute,
    TaskCompleted,
)
from client import BrokerError, Client, ClientError, TaskFailed
from client.futures import FIRST_COMPLETED
from tests.fakes import (
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
)
from tests.support import wait_until

FUNCTIONS = {"multiply": lambda a, b: a * b, "divide": lambda a, b: a / b}


@pytest.fixture
def functions_broker(fake_broker: StartBroker) -> FakeBroker:
    return fake_broker(serve_functions(FUNCTIONS))


def _task_ids(broker: FakeBroker) -> list[str]:
    return [execute.spec.task_id for _, execute in broker.executes()]


def _io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ztb-client")]


def test_futures_resolve_with_their_results(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        futures = [client.submit("multiply", n, 3) for n in range(500)]
        assert [future.result(10) for future in futures] == [3 * n for n in range(500)]
        assert all(future.done() and future.exception() is None for future in futures)
    assert Counter(_task_ids(functions_broker)) == Counter(f.task_id for f in futures)
    # One socket for all of them: one ROUTER identity.
    assert len({identity for identity, _ in functions_broker.executes()}) == 1


def test_the_io_thread_starts_on_the_first_submit_and_ends_on_close(
    functions_broker: FakeBroker,
) -> None:
    before = len(_io_threads())
    client = Client(functions_broker.url)
    try:
        assert client.execute("multiply", 2, 2) == 4
        assert len(_io_threads()) == before
        assert client.submit("multiply", 2, 3).result(10) == 6
        assert len(_io_threads()) == before + 1
    finally:
        client.close()
    assert len(_io_threads()) == before


def test_a_failed_task_is_the_future_s_exception(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        future = client.submit("divide", 1, 0, task_id="zero")
        error = future.exception(10)
        assert isinstance(error, TaskFailed)
        assert (error.task_id, error.exit_code, error.error_type) == (
            "zero",
            1,
            "ZeroDivisionError",
        )
        with pytest.raises(TaskFailed, match="division by zero"):
            future.result()


def test_an_error_reply_is_a_broker_error(fake_broker: StartBroker) -> None:
    broker = fake_broker(refuse_all)
    with Client(broker.url) as client:
        future = client.submit("multiply", 1, 2, task_id="big")
        with pytest.raises(BrokerError) as info:
            future.result(10)
    assert (info.value.code, info.value.task_id) == ("too_large", "big")


def test_bad_arguments_and_options_fail_before_sending(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        with pytest.raises(TypeError, match="argument 2"):
            client.submit("multiply", 1, {1})
        with pytest.raises(ValueError, match="retry_on must be None"):
            client.submit("multiply", 1, 2, retry_on="sometimes")
        with pytest.raises(ValueError, match="priority must be"):
            client.submit("multiply", 1, 2, priority=10)
    assert functions_broker.executes() == []


def test_options_ride_on_each_task(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url, retry_on="timeout", retries=2) as client:
        client.submit("multiply", 1, 2, task_id="default").result(10)
        client.submit("multiply", 1, 2, task_id="own", retry_on="all", priority=9).result(10)
        client.submit("multiply", 1, 2, task_id="none", retry_on=[]).result(10)
        client.map("multiply", [(1, 2)], retry_on=["exception"])
        client.execute("multiply", 1, 2, task_id="blocking", retry_on="exception")
    specs = {execute.spec.task_id: execute.spec for _, execute in functions_broker.executes()}
    assert (specs["default"].retry_on, specs["default"].retries) == (("timeout",), 2)
    assert (specs["own"].retry_on, specs["own"].priority) == (("exception", "timeout"), 9)
    assert specs["none"].retry_on == ()
    assert specs["blocking"].retry_on == ("exception",)
    [mapped] = [spec for task_id, spec in specs.items() if task_id.endswith(".0")]
    assert mapped.retry_on == ("exception",)


def test_lost_replies_are_resent_with_the_same_task_ids(fake_broker: StartBroker) -> None:
    broker = fake_broker(drop_first(20, serve_functions(FUNCTIONS)))
    with Client(broker.url, resend_interval=0.2) as client:
        futures = [client.submit("multiply", n, 2) for n in range(50)]
        assert [future.result(10) for future in futures] == [2 * n for n in range(50)]
    counts = Counter(_task_ids(broker))
    assert set(counts) == {f.task_id for f in futures}
    assert max(counts.values()) >= 2  # the dropped ones went again, under their own ids


def test_futures_go_again_in_pairs_to_a_broker_that_refuses_packed_executes(
    fake_broker: StartBroker,
) -> None:
    """Submitted together, tasks go packed (protocol.md 2.5); a broker older than document
    1.17 refuses that whole (ERROR malformed, no task id), and the I/O thread sends every
    task again in pairs, which are answered."""
    broker = fake_broker(before_packing(serve_functions(FUNCTIONS)))
    with Client(broker.url, resend_interval=30) as client:
        # Submitted faster than the I/O thread sends one message: its bursts hold several.
        futures = [client.submit("multiply", n, 2) for n in range(500)]
        assert [future.result(10) for future in futures] == [2 * n for n in range(500)]
    sent = [(r.packed, r.message) for r in broker.requests if isinstance(r.message, Execute)]
    assert any(packed for packed, _ in sent)  # what the first burst held went packed
    in_pairs = {execute.spec.task_id for packed, execute in sent if not packed}
    assert in_pairs == {f.task_id for f in futures}  # and every task in pairs


def test_futures_do_not_time_out_with_the_client(fake_broker: StartBroker) -> None:
    held: list[Received] = []

    def hold(received: Received) -> list[Reply]:
        held.append(received)
        return []

    broker = fake_broker(hold)
    with Client(broker.url, timeout=0.2, resend_interval=0.1) as client:
        future = client.submit("multiply", 4, 5)
        with pytest.raises(TimeoutError):
            future.result(0.5)  # the caller's wait, not the Client's timeout
        assert not future.done()
        broker.send(held[0].identity, completed(held[0], 20)[1])
        assert future.result(10) == 20


def test_submits_from_several_threads_share_one_socket(functions_broker: FakeBroker) -> None:
    results: dict[int, list[Any]] = {}
    with Client(functions_broker.url) as client:
        start = threading.Barrier(4)

        def submit(worker: int) -> None:
            start.wait()
            futures = [client.submit("multiply", worker, n) for n in range(200)]
            results[worker] = [future.result(20) for future in futures]

        threads = [threading.Thread(target=submit, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
    assert results == {w: [w * n for n in range(200)] for w in range(4)}
    task_ids = _task_ids(functions_broker)
    assert len(set(task_ids)) == len(task_ids) == 800


def test_as_completed_and_wait(fake_broker: StartBroker) -> None:
    held: list[Received] = []

    def hold_all_but_fast(received: Received) -> list[Reply]:
        assert isinstance(received.message, Execute)
        if received.message.spec.task_id == "fast":
            return [completed(received, "fast")]
        held.append(received)
        return []

    broker = fake_broker(hold_all_but_fast)
    with Client(broker.url) as client:
        slow = [client.submit("multiply", n, 1, task_id=f"slow{n}") for n in range(3)]
        fast = client.submit("multiply", 0, 0, task_id="fast")
        done, not_done = client.wait([*slow, fast], timeout=10, return_when=FIRST_COMPLETED)
        assert done == {fast} and not_done == set(slow)
        wait_until(lambda: len(held) == 3, 5, what="the slow tasks at the broker")
        for received in held:
            broker.send(received.identity, completed(received, "slow")[1])
        finished = list(client.as_completed([*slow, fast], timeout=10))
        assert set(finished) == {*slow, fast}
        assert [future.result() for future in slow] == ["slow"] * 3


def test_cancel_sends_cancel_and_ignores_the_later_answer(fake_broker: StartBroker) -> None:
    def cancel_queued(received: Received) -> list[Reply]:
        message = received.message
        if isinstance(message, Cancel):
            error = ErrorInfo("Cancelled", "cancelled by a client")
            answer = TaskCompleted(message.task_id, EXIT_CANCELLED, b"null", error)
            return [
                (received.identity, answer),
                (received.identity, Cancelled(message.task_id, WAS_QUEUED)),
            ]
        return []

    broker = fake_broker(cancel_queued)
    with Client(broker.url, resend_interval=0.2) as client:
        called: list[Future[Any]] = []
        future = client.submit("multiply", 1, 2, task_id="doomed")
        future.add_done_callback(called.append)
        broker.take(Execute)
        assert future.cancel() is True
        assert future.cancelled() and future.done() and called == [future]
        with pytest.raises(CancelledError):
            future.result(0)
        got = broker.take(Cancel)
        assert got.message == Cancel("doomed")
        assert future.cancel() is True  # as for any cancelled Future; no second CANCEL
        # The 130 answer came and was ignored; a later future still works on the socket.
        other = client.submit("multiply", 1, 2, task_id="after")
        wait_until(lambda: broker.count(Execute) >= 1, 5, what="the next EXECUTE")
        received = broker.take(Execute)
        broker.send(received.identity, completed(received, 2)[1])
        assert other.result(10) == 2


def test_cancel_of_an_answered_future_returns_false(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        future = client.submit("multiply", 3, 3)
        assert future.result(10) == 9
        assert future.cancel() is False
        assert not future.cancelled()
    assert not any(isinstance(r.message, Cancel) for r in functions_broker.requests)


def test_close_fails_pending_futures_without_hanging(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)
    client = Client(broker.url, resend_interval=0.1)
    futures = [client.submit("multiply", n, 1) for n in range(10)]
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 5
    for future in futures:
        with pytest.raises(ClientError, match="closed before the broker answered"):
            future.result(5)
    with pytest.raises(ClientError, match="closed"):
        client.submit("multiply", 1, 1)
    assert futures[0].cancel() is False  # done, with its error


def test_close_from_a_done_callback_does_not_hang(functions_broker: FakeBroker) -> None:
    before = len(_io_threads())
    client = Client(functions_broker.url)
    closed = threading.Event()

    def close(_: Future[Any]) -> None:
        client.close()
        closed.set()

    try:
        client.submit("multiply", 1, 1).add_done_callback(close)
        assert closed.wait(10)
        # The thread ends once the callback returns, and takes the context with it.
        wait_until(lambda: len(_io_threads()) == before, 5, what="the I/O thread's end")
    finally:
        client.close()


def test_submit_async_awaits_the_result(functions_broker: FakeBroker) -> None:
    async def main(client: Client) -> list[Any]:
        return await asyncio.gather(*(client.submit_async("multiply", n, 5) for n in range(20)))

    with Client(functions_broker.url) as client:
        assert asyncio.run(main(client)) == [5 * n for n in range(20)]


def test_cancelling_the_awaiting_task_cancels_the_task(fake_broker: StartBroker) -> None:
    broker = fake_broker(ignore_all)

    async def main(client: Client) -> None:
        waiting = asyncio.ensure_future(client.submit_async("multiply", 1, 1, task_id="a"))
        while not broker.count(Execute):
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    with Client(broker.url) as client:
        asyncio.run(asyncio.wait_for(main(client), 10))
        assert broker.take(Cancel).message == Cancel("a")


def test_big_integers_stay_exact(functions_broker: FakeBroker) -> None:
    with Client(functions_broker.url) as client:
        assert client.submit("multiply", 2**70, 3).result(10) == 3 * 2**70
    [(_, execute)] = functions_broker.executes()
    assert execute.spec.args == b"[1180591620717411303424,3]"
