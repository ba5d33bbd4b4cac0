"""`retry_on` as the clients take it (client/options.py) and as TaskSpec carries it."""

from __future__ import annotations

import pytest

from broker.protocol import Execute, TaskSpec, encode, loads_payload
from client.futures import TaskFuture
from client.options import TaskOptions, check_retry_on, with_dependencies, with_inputs
from client.payloads import encode_arguments, encode_arguments_and_inputs


@pytest.mark.parametrize(
    ("given", "carried"),
    [
        (None, None),
        ([], ()),
        ("exception", ("exception",)),
        ("timeout", ("timeout",)),
        ("all", ("exception", "timeout")),
        (["timeout", "exception", "timeout"], ("exception", "timeout")),
        (("timeout",), ("timeout",)),
        (iter(["exception"]), ("exception",)),
    ],
)
def test_retry_on_is_carried_sorted_without_repeats(
    given: object, carried: tuple[str, ...] | None
) -> None:
    assert check_retry_on(given) == carried  # type: ignore[arg-type]


@pytest.mark.parametrize("given", ["never", ["all"], ["exception", "crash"], 1, [None], b"timeout"])
def test_a_bad_retry_on_names_the_allowed_values(given: object) -> None:
    with pytest.raises(ValueError) as info:
        check_retry_on(given)  # type: ignore[arg-type]
    assert str(info.value).startswith(
        "retry_on must be None (the broker's default), 'exception', 'timeout', 'all', "
        "or a list of 'exception' and 'timeout', got "
    )


def test_task_options_keep_retry_on_and_a_call_may_override_it() -> None:
    options = TaskOptions(retry_on="all")  # type: ignore[arg-type]
    assert options.retry_on == ("exception", "timeout")
    assert options.spec("t", "f", b"[]").retry_on == ("exception", "timeout")
    assert options.spec("t", "f", b"[]", retry_on="timeout").retry_on == ("timeout",)
    assert options.spec("t", "f", b"[]", retry_on=[]).retry_on == ()
    assert options.spec("t", "f", b"[]", retry_on=None).retry_on == ("exception", "timeout")
    assert TaskOptions().retry_on is None
    assert options.override(None, None, "exception").retry_on == ("exception",)
    assert options.override(None, None) is options
    with pytest.raises(ValueError, match="retry_on"):
        TaskOptions(retry_on=("sometimes",))


def test_retry_on_reaches_the_execute_header() -> None:
    spec = TaskOptions(retry_on=("exception",)).spec("r", "fetch_page", b"[]")
    assert b'"retry_on":["exception"]' in encode(Execute(spec))[2]
    assert b'"retry_on":[]' in encode(Execute(TaskOptions(retry_on=()).spec("r", "f", b"[]")))[2]
    assert b"retry_on" not in encode(Execute(TaskOptions().spec("r", "f", b"[]")))[2]


# ------------------------------------------------------------------ futures as arguments


def test_futures_in_arguments_become_placeholders_and_inputs() -> None:
    a = TaskFuture("a", "add", lambda future, task_id: None)
    b = TaskFuture("b", "add", lambda future, task_id: None)
    frame, inputs = encode_arguments_and_inputs([a, {"k": [b, 2**70]}, (a,)])
    assert inputs == ("a", "b")
    assert loads_payload(frame) == [
        {"$result": "a"},
        {"k": [{"$result": "b"}, 2**70]},
        [{"$result": "a"}],
    ]
    assert encode_arguments_and_inputs([1, "x"]) == (b'[1,"x"]', None)


def test_futures_and_after_are_merged_into_one_list_of_dependencies() -> None:
    spec = TaskSpec("t", "f", b"[]")
    spec = with_inputs(spec, ("a", "b"))
    spec = with_dependencies(spec, ["c", "a"])
    assert (spec.depends_on, spec.inputs) == (("a", "b", "c"), ("a", "b"))
    with pytest.raises(ValueError, match="at most 256"):
        with_dependencies(spec, [f"x{i}" for i in range(300)])


def test_a_future_where_no_future_is_taken_says_where_it_is() -> None:
    a = TaskFuture("a", "add", lambda future, task_id: None)
    with pytest.raises(TypeError, match=r"argument 2 is a future: only Client\.submit"):
        encode_arguments([1, a])
