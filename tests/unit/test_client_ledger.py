"""The futures' bookkeeping (client/ledger.py): what is sent, resent and settled, with plain
objects for futures and time as an argument."""

from __future__ import annotations

import random

import pytest

from broker.protocol import (
    ERR_NOT_FOUND,
    EXIT_CANCELLED,
    Batch,
    Cancel,
    Cancelled,
    Error,
    ErrorInfo,
    Execute,
    Heartbeat,
    TaskCompleted,
    TaskSpec,
    decode,
    dumps_payload,
)
from client.engine import outgoing_frames
from client.errors import BrokerError, NotFound, TaskFailed
from client.ledger import Ledger, Settled

INTERVAL = 2.0


class Future:
    """A stand-in: the ledger only keeps futures and hands them back."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def spec(task_id: str, *args: object, function: str = "multiply") -> TaskSpec:
    return TaskSpec(task_id, function, dumps_payload(list(args)))


def done(task_id: str, result: object = None, exit_code: int = 0) -> TaskCompleted:
    error = None if exit_code == 0 else ErrorInfo("ValueError", "bad")
    return TaskCompleted(task_id, exit_code, dumps_payload(result), error)


def values(settled: list[Settled[Future]]) -> dict[str, object]:
    return {s.future.name: s.value if s.error is None else s.error for s in settled}


@pytest.fixture
def ledger() -> Ledger[Future]:
    return Ledger(INTERVAL)


def test_new_tasks_go_out_once_in_order(ledger: Ledger[Future]) -> None:
    for n in range(3):
        assert ledger.submitted(Future(f"f{n}"), spec(f"t{n}", n, 2), 0.0) == []
    sent = ledger.outgoing()
    assert [m.spec.task_id for m in sent if isinstance(m, Execute)] == ["t0", "t1", "t2"]
    assert ledger.outgoing() == []
    assert len(ledger) == 3
    ledger.check_invariants()


def test_an_answer_settles_its_future_and_only_once(ledger: Ledger[Future]) -> None:
    a, b = Future("a"), Future("b")
    ledger.submitted(a, spec("ta", 2, 3), 0.0)
    ledger.submitted(b, spec("tb", 1, 0), 0.0)
    ledger.outgoing()
    batch = Batch((done("ta", 6), done("tb", exit_code=1)))
    settled = values(ledger.answered(batch, 1.0))
    assert settled["a"] == 6
    assert isinstance(settled["b"], TaskFailed) and settled["b"].exit_code == 1
    assert ledger.answered(done("ta", 6), 1.1) == []  # a resend's second answer
    assert len(ledger) == 0 and ledger.resend_due() is None
    ledger.check_invariants()


def test_an_error_reply_fails_the_task_it_names(ledger: Ledger[Future]) -> None:
    a = Future("a")
    ledger.submitted(a, spec("ta"), 0.0)
    ledger.outgoing()
    assert ledger.answered(Error("malformed", "nope", None), 0.5) == []  # names no task
    [settled] = ledger.answered(Error("too_large", "too big", "ta"), 1.0)
    assert isinstance(settled.error, BrokerError) and settled.error.code == "too_large"


def test_silence_resends_everything_unanswered(ledger: Ledger[Future]) -> None:
    for n in range(3):
        ledger.submitted(Future(f"f{n}"), spec(f"t{n}"), 10.0)
    ledger.outgoing()
    assert ledger.resend_due() == 10.0 + INTERVAL
    assert ledger.resends(11.9) == []
    ledger.answered(done("t0"), 11.0)  # any answer ends the silence
    assert ledger.resend_due() == 11.0 + INTERVAL
    assert ledger.resends(12.9) == []
    again = ledger.resends(13.0)
    assert sorted(m.spec.task_id for m in again if isinstance(m, Execute)) == ["t1", "t2"]
    assert ledger.resend_due() == 13.0 + INTERVAL  # counted from the resend
    ledger.answered(Heartbeat(), 14.0)  # unexpected, but still a sign of life
    assert ledger.resend_due() == 14.0 + INTERVAL


def test_the_silence_counts_from_the_first_task_after_an_idle_time(
    ledger: Ledger[Future],
) -> None:
    ledger.submitted(Future("a"), spec("ta"), 0.0)
    ledger.outgoing()
    ledger.answered(done("ta"), 1.0)
    ledger.submitted(Future("b"), spec("tb"), 100.0)
    ledger.outgoing()
    assert ledger.resends(100.0 + INTERVAL / 2) == []
    assert ledger.resend_due() == 100.0 + INTERVAL


def test_a_cancelled_future_before_sending_is_never_sent(ledger: Ledger[Future]) -> None:
    a = Future("a")
    ledger.submitted(a, spec("ta"), 0.0)
    ledger.cancelled(a, "ta")
    assert ledger.outgoing() == []
    assert ledger.resend_due() is None


def test_a_cancelled_future_after_sending_cancels_at_the_broker(ledger: Ledger[Future]) -> None:
    a = Future("a")
    ledger.submitted(a, spec("ta"), 0.0)
    ledger.outgoing()
    ledger.cancelled(a, "ta")
    assert ledger.outgoing() == [Cancel("ta")]
    assert ledger.resends(INTERVAL) == [Cancel("ta")]  # until the broker answers it
    cancelled = done("ta", exit_code=EXIT_CANCELLED)
    assert ledger.answered(cancelled, 3.0) == []  # the answer for it is ignored
    assert ledger.answered(Cancelled("ta", "queued"), 3.1) == []
    assert ledger.resend_due() is None
    ledger.check_invariants()


def test_a_cancel_the_broker_refuses_is_dropped(ledger: Ledger[Future]) -> None:
    a = Future("a")
    ledger.submitted(a, spec("ta"), 0.0)
    ledger.outgoing()
    ledger.cancelled(a, "ta")
    ledger.outgoing()
    assert ledger.answered(Error(ERR_NOT_FOUND, "no such task", "ta"), 1.0) == []
    assert ledger.unanswered_cancels() == set() and ledger.resend_due() is None


def test_futures_of_one_task_id_share_its_answer(ledger: Ledger[Future]) -> None:
    a, b = Future("a"), Future("b")
    ledger.submitted(a, spec("t", 1, 2), 0.0)
    ledger.submitted(b, spec("t", 1, 2), 0.0)
    assert len(ledger.outgoing()) == 1
    ledger.cancelled(a, "t")  # b still waits: nothing is cancelled at the broker
    assert ledger.outgoing() == []
    assert values(ledger.answered(done("t", 2), 1.0)) == {"b": 2}


def test_one_task_id_with_other_arguments_fails_at_once(ledger: Ledger[Future]) -> None:
    ledger.submitted(Future("a"), spec("t", 1, 2), 0.0)
    [settled] = ledger.submitted(Future("b"), spec("t", 9, 9), 0.0)
    assert isinstance(settled.error, BrokerError) and settled.error.code == "conflict"
    assert len(ledger) == 1


def test_not_found_answers_an_execute_too(ledger: Ledger[Future]) -> None:
    ledger.submitted(Future("a"), spec("t"), 0.0)
    ledger.outgoing()
    [settled] = ledger.answered(Error(ERR_NOT_FOUND, "gone", "t"), 1.0)
    assert isinstance(settled.error, NotFound)


def test_fail_all_settles_every_future_with_its_task_id(ledger: Ledger[Future]) -> None:
    ledger.submitted(Future("a"), spec("ta"), 0.0)
    ledger.submitted(Future("b"), spec("tb"), 0.0)
    settled = values(ledger.fail_all("the client was closed"))
    assert str(settled["a"]) == "task ta: the client was closed"
    assert len(ledger) == 0 and ledger.outgoing() == [] and ledger.resend_due() is None


def test_executes_go_in_batches_of_64_and_cancels_alone() -> None:
    executes = [Execute(spec(f"t{n}", n)) for n in range(130)]
    messages = list(outgoing_frames([*executes[:100], Cancel("x"), *executes[100:]]))
    # [b"", tag, command, header, payload, ...]: two frames per task
    shapes = [(frames[2], (len(frames) - 3) // 2) for frames in messages]
    assert shapes == [(b"EXECUTE", 64), (b"EXECUTE", 36), (b"CANCEL", 0), (b"EXECUTE", 30)]
    # Packed (protocol.md 2.5): the same batches, each in one message of five frames.
    packed = list(outgoing_frames([*executes[:100], Cancel("x"), *executes[100:]], packed=True))
    decoded = [decode(frames[1:]) for frames in packed]
    assert [len(frames) for frames in packed] == [6, 6, 4, 6]
    assert [list(d.items) if isinstance(d, Batch) else [d] for d in decoded] == [
        list(executes[:64]),
        list(executes[64:100]),
        [Cancel("x")],
        list(executes[100:]),
    ]


def test_random_sequences_keep_the_invariants() -> None:
    rng = random.Random(12)
    for _ in range(50):
        ledger: Ledger[Future] = Ledger(INTERVAL)
        futures: dict[str, list[Future]] = {}
        now = 0.0
        for step in range(200):
            now += rng.random()
            task_id = f"t{rng.randrange(10)}"
            roll = rng.random()
            if roll < 0.4:
                future = Future(f"f{step}")
                if not ledger.submitted(future, spec(task_id), now):
                    futures.setdefault(task_id, []).append(future)
            elif roll < 0.55 and futures.get(task_id):
                ledger.cancelled(futures[task_id].pop(), task_id)
            elif roll < 0.75:
                settled = ledger.answered(done(task_id, 1), now)
                assert {s.future for s in settled} == set(futures.pop(task_id, []))
            elif roll < 0.85:
                ledger.answered(Cancelled(task_id, "finished"), now)
            else:
                ledger.outgoing()
                ledger.resends(now)
            ledger.check_invariants()
            assert len(ledger) == sum(map(len, futures.values()))
