"""Control requests to a running broker (`zbroker status`, `zbroker dlq`): one REQ round trip
each. The socket code lives here so the CLIs stay thin; nothing here prints."""

from __future__ import annotations

from typing import Any, TypeVar

import zmq

from broker import protocol as p

Reply = TypeVar("Reply", p.StatusReply, p.DeadLettersReply)


class BrokerUnreachable(Exception):
    """The broker did not answer in time."""


class BadEndpoint(ValueError):
    """The broker URL is not a ZeroMQ endpoint this process can connect to."""


class NotFound(p.ProtocolError):
    """The broker answered ERROR `not_found`: no such task (in the dead-letter queue)."""


def request(url: str, message: p.Message, timeout: float) -> p.Message:
    """Send one control message and return the broker's decoded answer."""
    context: zmq.Context[Any] = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        try:
            sock.connect(url)
        except zmq.ZMQError as exc:
            raise BadEndpoint(
                f"cannot use {url!r} as the broker's address: {exc}; "
                "give an endpoint like tcp://127.0.0.1:5000"
            ) from None
        sock.send_multipart(p.encode(message))
        if not sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise BrokerUnreachable(
                f"no answer from the broker at {url} within {timeout:g} s; "
                "is `zbroker start` running there? (use --broker to point elsewhere)"
            )
        frames = sock.recv_multipart()
    finally:
        sock.close(linger=0)
    try:
        return p.decode(frames)
    except p.ProtocolError as exc:
        raise p.ProtocolError(
            exc.code, f"the answer from {url} is not ZTB/1 ({exc.message}); is it a ZTB broker?"
        ) from None


def status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    return _ask(url, p.Status(), p.StatusReply, timeout).body


def dead_letters(url: str, limit: int | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """{"dead_letters": [entry, ...] newest first, at most `limit`, "total": all of them}."""
    reply = _ask(url, p.DeadLetters(p.DLQ_LIST, limit=limit), p.DeadLettersReply, timeout)
    _expect(reply.body, "dead_letters", list)
    return reply.body


def dead_letter(url: str, task_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """One dead letter's entry plus "args", its arguments decoded; arguments that are not
    JSON (it failed for that) give "args": None and "raw_args": their text. NotFound if
    the task is not in the dead-letter queue."""
    reply = _ask(url, p.DeadLetters(p.DLQ_SHOW, task_id), p.DeadLettersReply, timeout)
    entry = dict(_expect(reply.body, "dead_letter", dict))
    if reply.payload is None:
        raise p.ProtocolError(p.ERR_MALFORMED, "the broker's DLQ_REPLY has no arguments frame")
    try:
        entry["args"] = p.loads_payload(reply.payload)
    except ValueError:
        entry["args"], entry["raw_args"] = None, reply.payload.decode("utf-8", "replace")
    return entry


def replay(url: str, task_id: str | None, timeout: float = 5.0) -> dict[str, list[str]]:
    """Queue one dead letter again (None: all of them): {"replayed": [...], "missing": [...]}."""
    reply = _ask(url, p.DeadLetters(p.DLQ_REPLAY, task_id), p.DeadLettersReply, timeout)
    return {key: _expect(reply.body, key, list) for key in ("replayed", "missing")}


def purge(url: str, task_id: str | None, timeout: float = 5.0) -> int:
    """Forget one dead letter (None: all of them); how many were removed."""
    reply = _ask(url, p.DeadLetters(p.DLQ_PURGE, task_id), p.DeadLettersReply, timeout)
    purged: int = _expect(reply.body, "purged", int)
    return purged


def _ask(url: str, message: p.Message, kind: type[Reply], timeout: float) -> Reply:
    """The broker's answer of type `kind`. An ERROR raises NotFound (`not_found`) or
    ProtocolError, whose message says what the broker refused."""
    command = p.encode(message)[1].decode()
    reply = request(url, message, timeout)
    if isinstance(reply, p.Error):
        if reply.code == p.ERR_NOT_FOUND:
            raise NotFound(reply.code, reply.message, reply.task_id)
        hint = ""
        if reply.code == p.ERR_UNKNOWN_COMMAND:
            hint = "; the broker is older than this command: upgrade and restart it"
        text = f"the broker at {url} refused {command}: {reply.message} [{reply.code}]{hint}"
        raise p.ProtocolError(reply.code, text)
    if not isinstance(reply, kind):
        raise p.ProtocolError(p.ERR_MALFORMED, f"expected {command}_REPLY, got {reply!r}")
    return reply


def _expect(body: dict[str, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise p.ProtocolError(
            p.ERR_MALFORMED, f"the broker's DLQ_REPLY has no {kind.__name__} {key!r}: {body!r}"
        )
    return value
