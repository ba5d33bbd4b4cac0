"""The ZTB/1 vocabulary: the tag, command names, exit codes, and one type per message.

Every message is a frozen msgspec Struct: its constructor runs in C (several are built per
task), an assignment to a field fails (at run time, and in mypy), and values compare by
content. Durations are seconds here and integer milliseconds on the wire.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec
from msgspec import Struct

from broker.protocol.errors import ProtocolError
from broker.protocol.limits import (
    PRIORITY_DEFAULT,
    Name,
    Priority,
    QueueTimeout,
    Retries,
    TaskRef,
    TaskTimeout,
)

PROTOCOL_NAME = b"ZTB"
VERSION = 1
TAG = PROTOCOL_NAME + str(VERSION).encode()

# Exit codes carried by RESULT and TASK_COMPLETED (protocol.md 8.2).
EXIT_OK = 0
EXIT_FUNCTION_ERROR = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_BAD_RESULT = 3
EXIT_BAD_REQUEST = 64
EXIT_DEPENDENCY_FAILED = 66
EXIT_NODE_LOST = 69
EXIT_WORKER_CRASHED = 70
EXIT_TIMEOUT = 124
EXIT_EXPIRED = 125
EXIT_UNKNOWN_FUNCTION = 127
EXIT_CANCELLED = 130

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
RETRACT = b"RETRACT"
RETRACTED = b"RETRACTED"
CANCEL = b"CANCEL"
CANCELLED = b"CANCELLED"
FETCH = b"FETCH"
STOP = b"STOP"
WAITING = b"WAITING"
STORED = b"STORED"
ERROR = b"ERROR"

# DLQ operations.
DLQ_LIST, DLQ_SHOW, DLQ_REPLAY, DLQ_PURGE = "list", "show", "replay", "purge"
DLQ_OPS = (DLQ_LIST, DLQ_SHOW, DLQ_REPLAY, DLQ_PURGE)
# Which nodes a STATUS_REPLY lists (STATUS `nodes`, protocol.md 3.10).
NODES_BUSIEST, NODES_ALL = "busiest", "all"

# What EXECUTE `retry_on` may name (protocol.md 5.1): failures retried only when asked.
RETRY_ON_EXCEPTION, RETRY_ON_TIMEOUT = "exception", "timeout"
RETRY_ON = (RETRY_ON_EXCEPTION, RETRY_ON_TIMEOUT)

# What a task was when a CANCEL came (CANCELLED `was`, protocol.md 3.18).
WAS_QUEUED, WAS_HELD, WAS_RUNNING, WAS_FINISHED = "queued", "held", "running", "finished"


class ErrorInfo(Struct, frozen=True, gc=False):
    """Why a task failed: `{"type", "message"}` on the wire."""

    type: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class TaskSpec(Struct, frozen=True, gc=False):
    """One task as its submitter described it: what an EXECUTE carries for each task.

    The broker keeps it whole, never copied field by field: in its task table and queue,
    in the store, in the dead-letter queue and for a replay. A new task option is a field
    here, a key in the EXECUTE header (broker.protocol.encoding and .decoding), a client
    option and a line in protocol.md. `args` is the JSON array of arguments, which the
    broker never decodes. None means "the broker's default" for `retries` and
    `task_timeout`, and "no limit" for `queue_timeout`. The field types carry the limits of
    `broker.protocol.limits`: a decoder of specs (the store's) checks them, the constructor
    does not."""

    task_id: TaskRef  # as the submitter named it; in the broker, scoped (protocol.md 5.11)
    function: Name
    args: bytes
    priority: Priority = PRIORITY_DEFAULT
    retries: Retries | None = None  # extra attempts after failed ones
    queue_timeout: QueueTimeout | None = None  # seconds it may wait for its first start
    task_timeout: TaskTimeout | None = None  # seconds one attempt may run
    # Failures retried besides node loss and crashes: RETRY_ON names, sorted, no repeats;
    # None: the broker's default.
    retry_on: tuple[str, ...] | None = None
    # Tasks that must succeed before this one starts (EXECUTE depends_on); None: none.
    depends_on: tuple[str, ...] | None = None
    # Those of `depends_on` whose results its node receives with the arguments, in this
    # order (EXECUTE inputs, protocol.md 5.8); None: none.
    inputs: tuple[str, ...] | None = None
    # The task that submitted this one, from its node (EXECUTE parent): cancelling that
    # task cancels this one (protocol.md 5.9); None: a client's own task.
    parent: str | None = None
    # The submitter's W3C trace context (EXECUTE traceparent, protocol.md 3.6): the trace
    # the task's spans join; None: not traced. Not part of what the task asks (6).
    traceparent: str | None = None

    def replaced(self, **changes: Any) -> TaskSpec:
        """This spec with the fields named in `changes` set anew (not checked)."""
        return msgspec.structs.replace(self, **changes)


class Replaces(Struct, frozen=True, gc=False):
    """The earlier process of a node that a restarted process stands in for."""

    pid: int
    reason: str  # how it ended, for the error its tasks get


class Claim(Struct, frozen=True, gc=False):
    """An attempt a registering node process still has (protocol.md 7.3): it runs it, holds
    it unstarted (`held`), or finished it (`done`) and holds its RESULT, which it sends once
    registered."""

    task_id: str
    attempt: int
    done: bool = False
    held: bool = False


class Register(Struct, frozen=True, gc=False):
    name: str
    host: str
    pid: int
    functions: tuple[str, ...]
    capacity: int
    replaces: Replaces | None = None
    prefetch: int = 0  # tasks it will hold beyond `capacity`, not started yet
    stop: bool = False  # it stops tasks on STOP (protocol.md 3.20)
    # The attempts this process still has, from an earlier registration (protocol.md 7.3);
    # None: a node that does not say (it predates them), or a process registering first.
    attempts: tuple[Claim, ...] | None = None
    # It adopts a heartbeat interval its broker announces in HEARTBEAT (protocol.md 7.1).
    adopts_interval: bool = False
    packed: bool = False  # it takes RUNs in the packed form (protocol.md 2.5)


class Registered(Struct, frozen=True, gc=False):
    node_id: str
    heartbeat_interval: float  # seconds
    liveness: int
    backlog: int | None = None  # the backlog hint, as in Heartbeat
    stored: bool = False  # the broker confirms the RESULTs it has stored (STORED)
    adopts: bool = False  # the broker took the REGISTER's `attempts` (protocol.md 7.3)
    packed: bool = False  # the broker takes RESULTs in the packed form (protocol.md 2.5)


class Stored(Struct, frozen=True, gc=False):
    """The first `results` RESULTs this registration sent are stored: the node may forget
    them (protocol.md 3.22). Each task of a batch counts as one."""

    results: int


class Deregister(Struct, frozen=True, gc=False):
    pass


class Heartbeat(Struct, frozen=True, gc=False):
    """A sign of life (protocol.md 3.4). From the broker it may carry the backlog hint: the
    tasks queued at the broker, sent to no node yet, for the functions this node offers;
    None: not said (a node's heartbeat, or an older broker's); and a new heartbeat
    interval."""

    backlog: int | None = None
    # From the broker, to a node that registered `adopts_interval`: the heartbeat interval
    # from now on, in seconds (protocol.md 7.1); None: unchanged.
    interval: float | None = None


class Disconnect(Struct, frozen=True, gc=False):
    reason: str


class Execute(Struct, frozen=True, gc=False):
    """Submit the task `spec` (protocol.md 3.6), as client `client` (None: none named)."""

    spec: TaskSpec
    client: str | None = None  # the submitter's client id, its scope without CURVE (5.11)


class Run(Struct, frozen=True, gc=False):
    """Run attempt `attempt` of a task in one free slot (protocol.md 3.7)."""

    task_id: str
    function: str
    args: bytes
    attempt: int = 1
    task_timeout: float | None = None  # seconds this attempt may run
    # The task's inputs (protocol.md 5.8); then `args` is the JSON object {"arguments":
    # ..., "results": [result of inputs[0], ...]}, joined by the broker from the frames.
    inputs: tuple[str, ...] | None = None
    traceparent: str | None = None  # the trace context the node's span is a child of


class Retract(Struct, frozen=True, gc=False):
    """Give back these tasks unless they have started (protocol.md 3.15)."""

    task_ids: tuple[str, ...]


class Retracted(Struct, frozen=True, gc=False):
    """The answer to one RETRACT: every task id it named, in one of two lists."""

    returned: tuple[str, ...]  # given back: never started, and never will be here
    started: tuple[str, ...]  # started, finished or unknown here: a RESULT answers each


class Result(Struct, frozen=True, gc=False):
    """The outcome of one RUN (protocol.md 3.8). `attempt` echoes the RUN's; None from nodes
    that do not send it."""

    task_id: str
    exit_code: int
    result: bytes = b"null"  # the JSON result, never decoded by the broker
    error: ErrorInfo | None = None
    attempt: int | None = None
    retry: bool = False  # the function set calls this failure retryable (error `retry`)
    traceparent: str | None = None  # the node's span of this attempt


class TaskCompleted(Struct, frozen=True, gc=False):
    """The one answer to a task (protocol.md 3.9)."""

    task_id: str
    exit_code: int
    result: bytes = b"null"
    error: ErrorInfo | None = None
    attempts: int = 1
    traceparent: str | None = None  # the span of the attempt that gave this answer


TaskMessage: TypeAlias = Execute | Run | Result | TaskCompleted


class Batch(Struct, frozen=True):
    """Several tasks in one EXECUTE, RUN, RESULT or TASK_COMPLETED message (protocol.md 2.4).

    Each task is decoded on its own: one that does not decode is a ProtocolError in
    `items`, and the others still count. `packed`: in the packed form (protocol.md 2.5),
    the headers in one frame and the payloads in another, not a pair of frames a task."""

    items: tuple[TaskMessage | ProtocolError, ...]
    packed: bool = False


class Status(Struct, frozen=True, gc=False):
    """Ask for the broker's state (protocol.md 3.10): with the busiest nodes (at most
    `limit`, default STATUS_NODES), or with a page of all of them in the order they
    registered (`nodes` "all", from `offset`, at most `limit`, default MAX_STATUS_PAGE).
    `stored`: answered once the broker's store has written what the broker took before it."""

    nodes: str = NODES_BUSIEST
    offset: int = 0
    limit: int | None = None
    stored: bool = False


class StatusReply(Struct, frozen=True):
    body: dict[str, Any]


class Dlq(Struct, frozen=True, gc=False):
    """A request about the dead-letter queue: list, show, replay or purge."""

    op: str
    task_id: str | None = None  # show: required; replay/purge: one task, None for all
    limit: int | None = None  # list: at most this many, newest first


class DlqReply(Struct, frozen=True):
    body: dict[str, Any]
    args: bytes | None = None  # show: the task's arguments, as they were submitted


class Cancel(Struct, frozen=True, gc=False):
    """Cancel a task: it never starts, or is stopped where it runs (protocol.md 3.17)."""

    task_id: str
    client: str | None = None  # as in Execute


class Cancelled(Struct, frozen=True, gc=False):
    """The answer to one CANCEL: what the task was when it came (a WAS_ name)."""

    task_id: str
    was: str


class Fetch(Struct, frozen=True, gc=False):
    """Ask for a task's answer by its id, waiting for it if pending (protocol.md 3.19)."""

    task_id: str
    client: str | None = None  # as in Execute


class Stop(Struct, frozen=True, gc=False):
    """Stop these tasks, held or running, and answer each RESULT 130 (protocol.md 3.20)."""

    task_ids: tuple[str, ...]


class Waiting(Struct, frozen=True, gc=False):
    """A running task waits for other tasks (`waiting` true: its slot is lent out until it
    goes on) or goes on (false) (protocol.md 3.21)."""

    task_id: str
    waiting: bool


class Error(Struct, frozen=True, gc=False):
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
    | Dlq
    | DlqReply
    | Error
    | Retract
    | Retracted
    | Cancel
    | Cancelled
    | Fetch
    | Stop
    | Waiting
    | Stored
    | Batch
)
