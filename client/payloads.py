"""Payload frames on the client side: task arguments out, results and replies in.
Pure code: no socket, so both clients and their tests share it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from broker.protocol import (
    ERR_MALFORMED,
    Batch,
    Error,
    Message,
    ProtocolError,
    RemoteProtocolError,
    TaskCompleted,
    decode,
    dumps_payload,
    input_placeholder,
    loads_payload,
)
from client.errors import BadReply, ClientError, TaskFailed
from client.futures import TaskFuture

_log = logging.getLogger(__name__)

_SUPPORTED = "None, bool, int, float, str, and lists/tuples/dicts (with str keys) of those"


def encode_arguments(args: Sequence[Any]) -> bytes:
    """The arguments frame for `args`; TypeError naming the argument JSON cannot carry."""
    try:
        return dumps_payload(list(args))
    except TypeError:
        pass
    for position, arg in enumerate(args, 1):
        try:
            dumps_payload(arg)
        except TypeError as exc:
            if isinstance(arg, TaskFuture):
                raise TypeError(
                    f"argument {position} is a future: only Client.submit and submit_async "
                    "take futures as arguments (the task then gets its result)"
                ) from None
            raise TypeError(
                f"argument {position} ({type(arg).__name__}) cannot be sent to a node: {exc}; "
                f"task arguments must be JSON values: {_SUPPORTED}"
            ) from None
    raise TypeError(f"task arguments must be JSON values: {_SUPPORTED}")


def encode_arguments_and_inputs(args: Sequence[Any]) -> tuple[bytes, tuple[str, ...] | None]:
    """The arguments frame for `args`, each future in them (at any depth of lists, tuples
    and dict values) written as the placeholder of its task's result, and the task ids of
    those futures (EXECUTE inputs, protocol.md 5.8), or None when there are none."""
    try:
        return dumps_payload(list(args)), None  # most arguments hold no future
    except TypeError:
        pass
    found: dict[str, None] = {}
    return encode_arguments(_placeholders(list(args), found)), tuple(found) or None


def _placeholders(value: Any, found: dict[str, None]) -> Any:
    """`value` with each TaskFuture replaced by its placeholder, its task id added to
    `found`."""
    if isinstance(value, TaskFuture):
        found[value.task_id] = None
        return input_placeholder(value.task_id)
    if isinstance(value, list | tuple):
        return [_placeholders(item, found) for item in value]
    if isinstance(value, dict):
        return {key: _placeholders(item, found) for key, item in value.items()}
    return value


def result_of(function: str, completed: TaskCompleted, task_timeout: float | None = None) -> Any:
    """The decoded result of a completed task; TaskFailed if its exit code is not 0.
    `task_timeout`: the limit the task was sent with, for the message of a timeout."""
    if completed.exit_code != 0:
        raise TaskFailed.from_completed(function, completed, task_timeout)
    try:
        return loads_payload(completed.result)
    except ValueError as exc:
        raise ClientError(
            f"the result of {function} (task {completed.task_id}) is not valid JSON: {exc}"
        ) from None


def replies(frames: list[bytes], url: str) -> list[Message]:
    """The messages in a reply: one, or the tasks of a batch (protocol.md 2.4). BadReply if
    the reply does not decode; a task of a batch that does not is logged and skipped."""
    try:
        message = decode(frames)
    except RemoteProtocolError as exc:
        raise BadReply(
            exc.code, f"the answer from {url} is not ZTB/1 ({exc.message}); is it a ZTB broker?"
        ) from None
    if not isinstance(message, Batch):
        return [message]
    found: list[Message] = []
    for item in message.items:
        if isinstance(item, ProtocolError):
            _log.warning("ignoring a malformed task in a reply from %s: %s", url, item)
        else:
            found.append(item)
    return found


def dealer_reply(frames: list[bytes], url: str) -> Message | None:
    """The message in a reply on a DEALER socket (the empty delimiter first), or None,
    logged, when it breaks the protocol: a pipelined client skips it and goes on."""
    if len(frames) < 3 or frames[0] != b"":
        _log.warning("ignoring a reply without the empty delimiter frame from %s", url)
        return None
    try:
        return decode(frames[1:])
    except RemoteProtocolError as exc:
        _log.warning("ignoring a malformed reply from the broker at %s: %s", url, exc)
        return None


def refuses_packing(message: Message, url: str) -> bool:
    """Whether `message` is how a broker before protocol.md 2.5 (document 1.17) answers a
    packed EXECUTE: ERROR malformed without a task id, the whole message refused. Said in
    the log: the caller sends its tasks again, in pairs from then on."""
    if type(message) is not Error or message.task_id is not None:
        return False
    if message.code != ERR_MALFORMED:
        return False
    _log.info(
        "the broker at %s does not read packed EXECUTEs (protocol.md 2.5: it is older than "
        "document 1.17): sending them again in pairs (%s)",
        url,
        message.message,
    )
    return True


def first_answer(
    frames: list[bytes], answers: Callable[[Message], bool], url: str
) -> Message | None:
    """The first message in a reply that `answers` accepts, or None."""
    for message in replies(frames, url):
        if answers(message):
            return message
    return None
