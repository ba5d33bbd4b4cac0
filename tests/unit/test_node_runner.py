"""run_task: every exit code it can give, decided before or after calling the function."""

from __future__ import annotations

from typing import Any

import pytest

from broker.protocol import (
    EXIT_BAD_ARGUMENTS,
    EXIT_BAD_RESULT,
    EXIT_FUNCTION_ERROR,
    EXIT_OK,
    EXIT_UNKNOWN_FUNCTION,
    dumps_payload,
    loads_payload,
)
from node.functions import mathset, util
from node.runner import Outcome, run_task


def raises_type_error(value: Any) -> None:
    raise TypeError(f"inside the function: {value!r}")


def returns_set() -> set[int]:
    return {1, 2}


def with_varargs(first: int, *rest: int) -> int:
    return first + sum(rest)


def keyword_only(*, flag: bool) -> bool:
    return flag


FUNCTIONS: dict[str, Any] = {
    "multiply": mathset.multiply,
    "sum_squares": mathset.sum_squares,
    "fib": mathset.fib,
    "echo": util.echo,
    "fail": util.fail,
    "noop": util.noop,
    "raises_type_error": raises_type_error,
    "returns_set": returns_set,
    "with_varargs": with_varargs,
    "keyword_only": keyword_only,
    "print": print,  # a builtin: no signature to check up front on every Python
}


def run(function: str, args: Any) -> Outcome:
    return run_task(FUNCTIONS, function, dumps_payload(args))


def test_ok_result_is_json() -> None:
    assert run("multiply", [5, 10]) == Outcome(EXIT_OK, b"50", None)
    assert run("noop", []) == Outcome(EXIT_OK, b"null", None)


def test_big_integers_stay_exact_both_ways() -> None:
    big = 2**200 + 1
    outcome = run("echo", [big])
    assert outcome.exit_code == EXIT_OK
    assert loads_payload(outcome.result) == big
    assert loads_payload(run("sum_squares", [1, 10_000_000]).result) == 333333383333335000000
    assert loads_payload(run("fib", [300]).result) == mathset.fib(300)


def test_unknown_function_is_127() -> None:
    outcome = run("nope", [])
    assert outcome.exit_code == EXIT_UNKNOWN_FUNCTION
    assert outcome.error is not None
    assert outcome.error.type == "UnknownFunction"
    assert "'nope'" in outcome.error.message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (b"not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"a": 1}', "must be a JSON array, got an object"),
        (b"5", "must be a JSON array, got a number"),
        (b"null", "must be a JSON array, got null"),
    ],
)
def test_arguments_not_a_json_array_are_2(args: bytes, expected: str) -> None:
    outcome = run_task(FUNCTIONS, "multiply", args)
    assert outcome.exit_code == EXIT_BAD_ARGUMENTS
    assert outcome.error is not None
    assert outcome.error.type == "BadArguments"
    assert expected in outcome.error.message


@pytest.mark.parametrize(
    ("function", "args", "message"),
    [
        ("multiply", [1, 2, 3], "multiply() takes 2 arguments (a, b), got 3"),
        ("multiply", [1], "multiply() takes 2 arguments (a, b), got 1"),
        ("noop", [1], "noop() takes 0 arguments, got 1"),
        ("fail", ["a", "b"], "fail() takes 0 to 1 arguments (message), got 2"),
        ("with_varargs", [], "with_varargs() takes at least 1 argument (first, *rest), got 0"),
    ],
)
def test_signature_mismatch_is_2_and_says_what_fits(
    function: str, args: list[Any], message: str
) -> None:
    outcome = run(function, args)
    assert outcome.exit_code == EXIT_BAD_ARGUMENTS
    assert outcome.error is not None
    assert outcome.error.type == "BadArguments"
    assert outcome.error.message == message


def test_keyword_only_parameter_cannot_be_filled() -> None:
    outcome = run("keyword_only", [])
    assert outcome.exit_code == EXIT_BAD_ARGUMENTS
    assert outcome.error is not None
    assert "positional arguments only" in outcome.error.message


def test_varargs_accept_any_count() -> None:
    assert run("with_varargs", [1, 2, 3, 4]).result == b"10"


def test_exception_in_function_is_1_with_class_name_and_message() -> None:
    outcome = run("fail", ["boom"])
    assert outcome == Outcome(EXIT_FUNCTION_ERROR, b"null", outcome.error)
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.message) == ("RuntimeError", "boom")


def test_type_error_raised_inside_function_is_1_not_2() -> None:
    outcome = run("raises_type_error", ["x"])
    assert outcome.exit_code == EXIT_FUNCTION_ERROR
    assert outcome.error is not None
    assert outcome.error.type == "TypeError"
    assert outcome.error.message == "inside the function: 'x'"


def test_bad_argument_types_inside_math_are_1() -> None:
    outcome = run("multiply", [2, "x"])
    assert outcome.exit_code == EXIT_FUNCTION_ERROR
    assert outcome.error is not None
    assert "expects a number" in outcome.error.message


def test_division_by_zero_is_1() -> None:
    outcome = run_task({"divide": mathset.divide}, "divide", b"[1, 0]")
    assert outcome.exit_code == EXIT_FUNCTION_ERROR
    assert outcome.error is not None
    assert outcome.error.type == "ZeroDivisionError"


def test_result_json_cannot_carry_is_3() -> None:
    outcome = run("returns_set", [])
    assert outcome.exit_code == EXIT_BAD_RESULT
    assert outcome.error is not None
    assert outcome.error.type == "BadResult"
    assert "returns_set()" in outcome.error.message


def test_callable_without_signature_still_runs() -> None:
    assert run("print", []).exit_code == EXIT_OK


# ------------------------------------------------------------------ inputs (protocol.md 5.8)


def test_inputs_take_their_placeholders_places_at_any_depth() -> None:
    FUNCTIONS["echo"] = lambda *args: list(args)
    try:
        payload = (
            b'{"arguments":[{"$result":"a"},[1,{"k":{"$result":"b"}}],{"$result":"other"}],'
            b'"results":[7,[8,9]]}'
        )
        outcome = run_task(FUNCTIONS, "echo", payload, ("a", "b"))
    finally:
        del FUNCTIONS["echo"]
    assert outcome.exit_code == EXIT_OK
    # A placeholder of a task that is not an input is an ordinary argument.
    assert loads_payload(outcome.result) == [7, [1, {"k": [8, 9]}], {"$result": "other"}]


def test_a_run_with_inputs_computes_on_their_results() -> None:
    payload = b'{"arguments":[{"$result":"a"},10],"results":[3]}'
    outcome = run_task(FUNCTIONS, "multiply", payload, ("a",))
    assert (outcome.exit_code, outcome.result) == (EXIT_OK, b"30")


@pytest.mark.parametrize("payload", [b"[[1,2]]", b'{"a":1}', b"[[1],2,3]", b'[{"x":1},2]'])
def test_a_run_whose_payload_does_not_fit_its_inputs_is_bad_arguments(payload: bytes) -> None:
    outcome = run_task(FUNCTIONS, "multiply", payload, ("a",))
    assert outcome.exit_code == EXIT_BAD_ARGUMENTS
    assert outcome.error is not None and outcome.error.type == "BadArguments"
