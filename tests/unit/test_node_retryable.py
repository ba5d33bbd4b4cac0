"""Retryable exceptions a function set declares (`@retryable`): a task failing with one is
answered exit 1 with error `retry` true, any other failure without it."""

from __future__ import annotations

import math

import pytest

from broker.protocol import Result, Run, decode, dumps_payload
from node import runner
from node.registry import load_set, retryable, retryable_exceptions
from node.slots.inline import InlineSlot
from tests import retrying_tasks

FUNCTIONS = load_set("tests.retrying_tasks")


def answer(function: str, *args: object) -> Result:
    """The RESULT a one-slot node sends for `function(*args)`."""
    slot = InlineSlot(FUNCTIONS, lambda: None, lambda: math.inf, lambda run: None)
    slot.submit(Run("t", function, dumps_payload(list(args)), attempt=2))
    slot.lock.acquire()  # as `start()` does, without the watchdog
    message = decode(slot.run_next(math.inf))
    assert isinstance(message, Result)
    return message


def test_the_set_offers_its_functions_with_their_declarations() -> None:
    functions = load_set("tests.retrying_tasks")
    assert functions == {"fetch": retrying_tasks.fetch, "parse": retrying_tasks.parse}
    assert retryable_exceptions(retrying_tasks.fetch) == (ConnectionError, TimeoutError)
    assert retryable_exceptions(retrying_tasks.parse) == ()


@pytest.mark.parametrize("outcome", ["refused", "timeout"])
def test_a_declared_exception_or_a_subclass_is_retryable(outcome: str) -> None:
    result = answer("fetch", outcome)
    assert (result.exit_code, result.retry, result.attempt) == (1, True, 2)
    assert result.error is not None
    assert result.error.type in ("ConnectionRefusedError", "TimeoutError")


def test_an_undeclared_exception_is_not_retryable() -> None:
    result = answer("fetch", "bad")
    assert (result.exit_code, result.retry) == (1, False)
    assert result.error is not None and result.error.type == "ValueError"
    plain = answer("parse", "x")
    assert (plain.exit_code, plain.retry) == (1, False)


def test_success_and_other_exit_codes_are_never_retryable() -> None:
    assert answer("fetch", "fine") == Result("t", 0, b'"fine"', None, attempt=2)
    assert answer("fetch").exit_code == 2  # bad arguments
    outcome = runner.run_task(FUNCTIONS, "nothing", b"[]")
    assert (outcome.exit_code, outcome.retry) == (127, False)


def test_declarations_add_up_and_bad_ones_are_refused() -> None:
    @retryable(KeyError)
    @retryable(OSError)
    def twice() -> None:
        raise FileNotFoundError("gone")

    assert retryable_exceptions(twice) == (OSError, KeyError)
    assert runner.run_task({"twice": twice}, "twice", b"[]").retry
    with pytest.raises(TypeError, match="at least one exception class"):
        retryable()
    with pytest.raises(TypeError, match="takes exception classes"):
        retryable("ConnectionError")  # type: ignore[arg-type]
