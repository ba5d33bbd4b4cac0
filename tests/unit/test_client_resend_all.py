"""The futures' bookkeeping on a reconnection (client/ledger.py `resend_all`): everything
sent and unanswered goes again at once, and the resend on silence counts from then."""

from __future__ import annotations

from broker.protocol import Cancel, Execute, TaskCompleted, TaskSpec, dumps_payload
from client.ledger import Ledger

INTERVAL = 2.0


class Future:
    """A stand-in: the ledger only keeps futures and hands them back."""


def spec(task_id: str) -> TaskSpec:
    return TaskSpec(task_id, "multiply", dumps_payload([2, 3]))


def sent_ids(messages: list[Execute | Cancel]) -> list[tuple[str, str]]:
    return [
        ("EXECUTE", m.spec.task_id) if isinstance(m, Execute) else ("CANCEL", m.task_id)
        for m in messages
    ]


def test_a_reconnection_resends_what_went_and_is_unanswered_at_once() -> None:
    ledger: Ledger[Future] = Ledger(INTERVAL)
    answered, waiting, cancelled = Future(), Future(), Future()
    ledger.submitted(answered, spec("answered"), 0.0)
    ledger.submitted(waiting, spec("waiting"), 0.0)
    ledger.submitted(cancelled, spec("cancelled"), 0.0)
    ledger.outgoing()
    ledger.cancelled(cancelled, "cancelled")  # its CANCEL unanswered
    ledger.outgoing()
    ledger.answered(TaskCompleted("answered", 0, dumps_payload(6), None), 0.5)
    ledger.submitted(Future(), spec("unsent"), 0.6)  # not sent yet: goes as new, once
    assert sent_ids(ledger.resend_all(0.7)) == [("EXECUTE", "waiting"), ("CANCEL", "cancelled")]
    assert ledger.resend_due() == 0.7 + INTERVAL
    assert ledger.resends(0.7 + INTERVAL - 0.01) == []
    assert sent_ids(ledger.outgoing()) == [("EXECUTE", "unsent")]
    ledger.check_invariants()


def test_a_reconnection_with_nothing_in_flight_sends_nothing() -> None:
    ledger: Ledger[Future] = Ledger(INTERVAL)
    assert ledger.resend_all(1.0) == []
    assert ledger.resend_due() is None
