"""The ZTB/1 vocabulary: constants, command names, exit and error codes, and the message
types. `broker.protocol` is the codec that every part imports; it re-exports all of this.

Imports only the standard library and msgspec: the four per-task messages, built several
times per round trip, are frozen msgspec Structs, whose constructor runs in C.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar, dataclass_transform

from msgspec import Struct

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type[T]) -> type[T]:
    """A value type: `@dataclass(frozen=True, slots=True)` as mypy sees it, so an assignment
    to a field fails the type check; at run time a slots dataclass with a hash.

    A frozen dataclass's `__init__` sets each field through `object.__setattr__`, which costs
    about four times a plain one's (1.2 against 0.25 us for Execute). The four per-task
    messages, built several times per round trip, are msgspec Structs instead."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


PROTOCOL_NAME = b"ZTB"
VERSION = 1
TAG = PROTOCOL_NAME + str(VERSION).encode()

DEFAULT_BROKER_URL = "tcp://127.0.0.1:5000"
DEFAULT_HEARTBEAT_INTERVAL = 1.0  # seconds
DEFAULT_LIVENESS = 3  # missed intervals before a peer is declared dead
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # bytes, all frames of one message
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
MAX_NAME_LENGTH = 256  # task ids, function names, node names
MAX_RETRIES = 100  # extra attempts a task may ask for
MAX_TIMEOUT_MS = 7 * 86_400_000  # the longest execution timeout a task may ask for

# Exit codes carried by RESULT and TASK_COMPLETED (see protocol.md, "Error model").
EXIT_OK = 0
EXIT_FUNCTION_ERROR = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_BAD_RESULT = 3
EXIT_BAD_REQUEST = 64
EXIT_NODE_LOST = 69
EXIT_WORKER_CRASHED = 70
EXIT_TIMEOUT = 124
EXIT_EXPIRED = 125
EXIT_UNKNOWN_FUNCTION = 127

# Command frames.
REGISTER = b"REGISTER"
REGISTERED = b"REGISTERED"
DEREGISTER = b"DEREGISTER"
HEARTBEAT = b"HEARTBEAT"
DISCONNECT = b"DISCONNECT"
EXECUTE = b"EXECUTE"
RUN = b"RUN"
RESULT = b"RESULT"
TASK_COMPLETED = b"TASK_COMPLETED"
STATUS = b"STATUS"
STATUS_REPLY = b"STATUS_REPLY"
DLQ = b"DLQ"
DLQ_REPLY = b"DLQ_REPLY"
ERROR = b"ERROR"

# DLQ operations.
DLQ_LIST, DLQ_SHOW, DLQ_REPLAY, DLQ_PURGE = "list", "show", "replay", "purge"
DLQ_OPS = (DLQ_LIST, DLQ_SHOW, DLQ_REPLAY, DLQ_PURGE)

# ERROR codes.
ERR_MALFORMED = "malformed"
ERR_UNSUPPORTED_VERSION = "unsupported_version"
ERR_UNKNOWN_COMMAND = "unknown_command"
ERR_TOO_LARGE = "too_large"
ERR_NOT_REGISTERED = "not_registered"
ERR_NOT_FOUND = "not_found"


class ProtocolError(Exception):
    """A message that does not follow protocol.md. The only exception decoders raise."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.task_id = task_id


@frozen
class ErrorInfo:
    type: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@frozen
class Replaces:
    """The earlier process of a node that a restarted process stands in for."""

    pid: int
    reason: str  # how it ended, for the error its tasks get


@frozen
class Register:
    name: str
    host: str
    pid: int
    functions: tuple[str, ...]
    capacity: int
    replaces: Replaces | None = None


@frozen
class Registered:
    node_id: str
    heartbeat_interval: float  # seconds; milliseconds on the wire
    liveness: int


@frozen
class Deregister:
    pass


@frozen
class Heartbeat:
    pass


@frozen
class Disconnect:
    reason: str


class Execute(Struct, frozen=True, gc=False):
    task_id: str
    function: str
    payload: bytes  # JSON array of arguments, never decoded by the broker
    priority: int = PRIORITY_DEFAULT
    retries: int | None = None  # extra attempts after failures; None: the broker's default
    queue_timeout: float | None = None  # seconds it may wait to start; ms on the wire
    timeout: float | None = None  # seconds one attempt may run; ms on the wire


class Run(Struct, frozen=True, gc=False):
    task_id: str
    function: str
    payload: bytes
    attempt: int = 1
    timeout: float | None = None  # seconds this attempt may run; ms on the wire


class Result(Struct, frozen=True, gc=False):
    task_id: str
    exit_code: int
    payload: bytes = b"null"  # JSON result, never decoded by the broker
    error: ErrorInfo | None = None


class TaskCompleted(Struct, frozen=True, gc=False):
    task_id: str
    exit_code: int
    payload: bytes = b"null"
    error: ErrorInfo | None = None
    attempts: int = 1


TaskMessage: TypeAlias = Execute | Run | Result | TaskCompleted


@frozen
class Batch:
    """Several tasks in one EXECUTE, RUN, RESULT or TASK_COMPLETED message (protocol.md 2.1).

    Each pair of frames is decoded on its own: a pair that does not decode is a
    ProtocolError in `items`, and the others still count."""

    items: tuple[TaskMessage | ProtocolError, ...]


@frozen
class Status:
    pass


@frozen
class StatusReply:
    body: dict[str, Any] = field(hash=False)


@frozen
class DeadLetters:
    """A request about the dead-letter queue: list, show, replay or purge."""

    op: str
    task_id: str | None = None  # show: required; replay/purge: one task, None for all
    limit: int | None = None  # list: at most this many, newest first


@frozen
class DeadLettersReply:
    body: dict[str, Any] = field(hash=False)
    payload: bytes | None = None  # show: the task's arguments, as it was submitted


@frozen
class Error:
    code: str
    message: str
    task_id: str | None = None


Message: TypeAlias = (
    Register
    | Registered
    | Deregister
    | Heartbeat
    | Disconnect
    | Execute
    | Run
    | Result
    | TaskCompleted
    | Status
    | StatusReply
    | DeadLetters
    | DeadLettersReply
    | Error
    | Batch
)
