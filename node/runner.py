"""Run one task: decode its arguments, call the function, encode the result.

Pure code (no sockets): slot threads call `run_task` for every task. Every way a task can
go wrong becomes an `Outcome` with the exit code and error protocol.md defines; only a crash
of the process itself escapes (the broker requeues the tasks of a node that dies). An
exception the function declares retryable (`node.registry.retryable`) is marked so.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Struct

from broker.protocol import (
    EXIT_BAD_ARGUMENTS,
    EXIT_BAD_RESULT,
    EXIT_FUNCTION_ERROR,
    EXIT_OK,
    EXIT_UNKNOWN_FUNCTION,
    ErrorInfo,
    Run,
    dumps_payload,
    loads_payload,
    result_frames,
    with_inputs,
)
from broker.tracing import finish, process as process_tracing
from node.registry import retryable_exceptions


class Outcome(Struct, frozen=True, gc=False):
    """What running a task gave: an exit code, the JSON result frame and the error, if any,
    and whether the function declares that error retryable (RESULT error `retry`). A msgspec
    Struct: built once per task, its constructor runs in C."""

    exit_code: int
    result: bytes = b"null"
    error: ErrorInfo | None = None
    retry: bool = False
    traceparent: str | None = None  # the span it ran in, when traced (broker.tracing)


@dataclass(frozen=True, slots=True)
class _Arity:
    """How many positional arguments a function takes, from its signature."""

    signature: inspect.Signature
    fewest: int
    most: float  # inf with *args
    by_count: bool  # whether the count alone decides (no required keyword-only parameter)

    def fits(self, count: int) -> bool:
        return self.by_count and self.fewest <= count <= self.most


# None: the callable has no introspectable signature, so arguments are not checked up front.
_arities: dict[Callable[..., Any], _Arity | None] = {}


def result_of(run: Run, outcome: Outcome) -> list[bytes]:
    """The RESULT frames of `run` that gave `outcome`."""
    return result_frames(
        run.task_id,
        outcome.exit_code,
        outcome.result,
        outcome.error,
        run.attempt,
        outcome.retry,
        outcome.traceparent,
    )


def run_traced(functions: Mapping[str, Callable[..., Any]], run: Run) -> Outcome:
    """`run_task` for a RUN that carries a trace context: in a span `ztb.run FUNCTION` when
    this process traces (broker.tracing), whose context its RESULT then carries. The slots
    call it only for such RUNs: the others pay no call for tracing."""
    tracing = process_tracing()
    if tracing is None:
        return run_task(functions, run.function, run.args, run.inputs)
    attributes = {
        "ztb.task.id": run.task_id,
        "ztb.task.function": run.function,
        "ztb.task.attempt": run.attempt,
    }
    span = tracing.start(f"ztb.run {run.function}", run.traceparent, attributes)
    outcome = run_task(functions, run.function, run.args, run.inputs)
    trace = tracing.traceparent(span)
    finish(span, outcome.exit_code)
    return msgspec.structs.replace(outcome, traceparent=trace)


def _arity(function: Callable[..., Any]) -> _Arity | None:
    try:
        return _arities[function]
    except KeyError:
        pass
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        arity = None
    else:
        params = signature.parameters.values()
        positional = [p for p in params if p.kind in _POSITIONAL]
        fewest = sum(1 for p in positional if p.default is inspect.Parameter.empty)
        varargs = any(p.kind is p.VAR_POSITIONAL for p in params)
        required_keywords = any(
            p.kind is p.KEYWORD_ONLY and p.default is inspect.Parameter.empty for p in params
        )
        most = math.inf if varargs else len(positional)
        arity = _Arity(signature, fewest, most, not required_keywords)
    _arities[function] = arity
    return arity


def _failure(exit_code: int, error_type: str, message: str) -> Outcome:
    return Outcome(exit_code, b"null", ErrorInfo(error_type, message))


def _plural(count: int) -> str:
    return "argument" if count == 1 else "arguments"


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _bad_fit(name: str, signature: inspect.Signature, given: int, exc: TypeError) -> Outcome:
    """E.g. "multiply() takes 2 arguments (a, b), got 3"."""
    params = [p for p in signature.parameters.values() if p.kind in _POSITIONAL]
    names = [p.name for p in params]
    required = sum(1 for p in params if p.default is inspect.Parameter.empty)
    varargs = [p.name for p in signature.parameters.values() if p.kind is p.VAR_POSITIONAL]
    if varargs:
        names.append("*" + varargs[0])
        takes = f"at least {required} {_plural(required)}"
    elif required == len(params):
        takes = f"{required} {_plural(required)}"
    else:
        takes = f"{required} to {len(params)} arguments"
    fits = required <= given and (bool(varargs) or given <= len(params))
    if fits:  # the count is right, so something else is (e.g. a keyword-only parameter)
        message = f"{name}() cannot be called with positional arguments only: {exc}"
    else:
        listed = f" ({', '.join(names)})" if names else ""
        message = f"{name}() takes {takes}{listed}, got {given}"
    return _failure(EXIT_BAD_ARGUMENTS, "BadArguments", message)


_JSON_KINDS = {
    dict: "an object",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _arguments(encoded: bytes, inputs: tuple[str, ...] | None = None) -> list[Any] | Outcome:
    try:
        args = loads_payload(encoded)
    except ValueError as exc:
        return _failure(EXIT_BAD_ARGUMENTS, "BadArguments", f"arguments are not valid JSON: {exc}")
    if inputs is not None:  # {"arguments", "results"} (protocol.md 5.8)
        results = args.get("results") if isinstance(args, dict) else None
        if not isinstance(results, list) or len(results) != len(inputs):
            return _failure(
                EXIT_BAD_ARGUMENTS,
                "BadArguments",
                f'a RUN with {len(inputs)} inputs carries {{"arguments", "results"}} '
                f"with {len(inputs)} results",
            )
        args = with_inputs(args.get("arguments"), dict(zip(inputs, results, strict=True)))
    if not isinstance(args, list):
        kind = _JSON_KINDS.get(type(args), type(args).__name__)
        return _failure(
            EXIT_BAD_ARGUMENTS, "BadArguments", f"arguments must be a JSON array, got {kind}"
        )
    return args


def run_task(
    functions: Mapping[str, Callable[..., Any]],
    function: str,
    args: bytes,
    inputs: tuple[str, ...] | None = None,
) -> Outcome:
    """Run `function` from `functions` on the JSON array of arguments `args`; with `inputs`,
    `args` is {"arguments", "results"}, and the results of the inputs take their
    placeholders' places in the arguments (protocol.md 5.8)."""
    fn = functions.get(function)
    if fn is None:
        return _failure(
            EXIT_UNKNOWN_FUNCTION, "UnknownFunction", f"this node has no function {function!r}"
        )
    values = _arguments(args, inputs)
    if isinstance(values, Outcome):
        return values
    arity = _arity(fn)
    if arity is not None and not arity.fits(len(values)):
        try:  # for the exact reason (a fit by count is one by `bind` too)
            arity.signature.bind(*values)
        except TypeError as exc:
            return _bad_fit(function, arity.signature, len(values), exc)
    try:
        result = fn(*values)
    except (Exception, SystemExit) as exc:
        error = ErrorInfo(type(exc).__name__, str(exc))
        retry = isinstance(exc, retryable_exceptions(fn))
        return Outcome(EXIT_FUNCTION_ERROR, b"null", error, retry)
    try:
        return Outcome(EXIT_OK, dumps_payload(result))
    except (TypeError, ValueError) as exc:
        return _failure(
            EXIT_BAD_RESULT, "BadResult", f"{function}() returned a result JSON cannot carry: {exc}"
        )
