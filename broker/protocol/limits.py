"""The limits and defaults of ZTB/1 (protocol.md 9), stated once.

The decoders check every header field against the annotated types below (msgspec checks them
in C while it parses), the error messages are written from the same types, and the clients
check their options against the same numbers before they send anything.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

DEFAULT_BROKER_URL = "tcp://127.0.0.1:5000"
DEFAULT_HEARTBEAT_INTERVAL = 1.0  # seconds
DEFAULT_LIVENESS = 3  # missed intervals before a peer is declared dead
# Seconds a peer's own timers or waits must run late for it to count as a stall of its loop,
# whose time is not held against the peers it judges (protocol.md 7.2): well above a long
# drain of a batch of messages (tens of milliseconds), well below an expiry.
STALL_MIN = 0.25
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # bytes, all frames of one message

MAX_NAME_LENGTH = 256  # task ids, function names, node names, node ids
MAX_CLIENT_LENGTH = 64  # a client id (EXECUTE, FETCH, CANCEL `client`)
# A task's id as the broker names it to nodes and admins: the submitter's scope (a client
# id, or a CURVE key of 40 characters), "|", and the task id (protocol.md 5.11).
MAX_TASK_REF_LENGTH = MAX_CLIENT_LENGTH + 1 + MAX_NAME_LENGTH
MAX_HOST_LENGTH = 256  # a longer REGISTER `host` is cut to this
MAX_REASON_LENGTH = 1024  # a longer REGISTER `replaces.reason` is cut to this
PRIORITY_MIN, PRIORITY_MAX, PRIORITY_DEFAULT = 0, 9, 5
MAX_RETRIES = 100  # extra attempts a task may ask for
MAX_QUEUE_TIMEOUT_MS = 86_400_000  # one day
MAX_TASK_TIMEOUT_MS = 7 * 86_400_000  # seven days
MAX_CAPACITY = 1_000_000
MAX_PREFETCH = 1_000_000
MAX_RETRACT = 256  # task ids per RETRACT (and per STOP)
# Tasks in one message, in pairs or packed (protocol.md 2.4): a receiver takes a message's tasks
# in one go, and the broker's loop spends about 20 us on each, so this bounds what one message
# holds it up to (about 80 ms); the reference peers send at most 256.
MAX_BATCH_TASKS = 4096
# A node starts no held task while `capacity` + RESULTS_HELD_BACK of its RESULTs wait unsent; the
# broker keeps that many more held attempts counted when a node is lost (protocol.md 5.5).
RESULTS_HELD_BACK = 32
MAX_DEPENDENCIES = 256  # task ids per EXECUTE depends_on
MAX_ATTEMPT = 1_000_000
MAX_CLAIMS = 1_000_000  # attempts one REGISTER may claim (`attempts`)
MAX_PID = 2**63 - 1
MAX_HEARTBEAT_INTERVAL_MS = 86_400_000
MAX_LIVENESS = 1000
MAX_DLQ_LIMIT = 1_000_000
# Nodes a STATUS_REPLY lists: by default the busiest STATUS_NODES; a page of the full list
# at most MAX_STATUS_PAGE (protocol.md 3.10).
STATUS_NODES = 50
MAX_STATUS_PAGE = 500
MAX_EXIT_CODE = 255
MAX_BACKLOG = 2**63 - 1

# Header fields as the decoders check them.
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
ClientId = Annotated[str, Meta(min_length=1, max_length=MAX_CLIENT_LENGTH, pattern=r"^[^|]*$")]
TaskRef = Annotated[str, Meta(min_length=1, max_length=MAX_TASK_REF_LENGTH)]
Priority = Annotated[int, Meta(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
Retries = Annotated[int, Meta(ge=0, le=MAX_RETRIES)]
QueueTimeoutMs = Annotated[int, Meta(ge=1, le=MAX_QUEUE_TIMEOUT_MS)]
TaskTimeoutMs = Annotated[int, Meta(ge=1, le=MAX_TASK_TIMEOUT_MS)]
ExitCode = Annotated[int, Meta(ge=0, le=MAX_EXIT_CODE)]
Attempt = Annotated[int, Meta(ge=1, le=MAX_ATTEMPT)]
Attempts = Annotated[int, Meta(ge=0, le=MAX_ATTEMPT)]
Capacity = Annotated[int, Meta(ge=1, le=MAX_CAPACITY)]
Prefetch = Annotated[int, Meta(ge=0, le=MAX_PREFETCH)]
Pid = Annotated[int, Meta(ge=0, le=MAX_PID)]
ReplacedPid = Annotated[int, Meta(ge=1, le=MAX_PID)]
HeartbeatIntervalMs = Annotated[int, Meta(ge=1, le=MAX_HEARTBEAT_INTERVAL_MS)]
Liveness = Annotated[int, Meta(ge=1, le=MAX_LIVENESS)]
DeadLetterLimit = Annotated[int, Meta(ge=1, le=MAX_DLQ_LIMIT)]
StatusLimit = Annotated[int, Meta(ge=0, le=MAX_STATUS_PAGE)]
Functions = Annotated[list[Name], Meta(min_length=1)]
RetractIds = Annotated[list[TaskRef], Meta(min_length=1, max_length=MAX_RETRACT)]
RetractedIds = Annotated[list[TaskRef], Meta(max_length=MAX_RETRACT)]
Dependencies = Annotated[list[Name], Meta(min_length=1, max_length=MAX_DEPENDENCIES)]
# The same, as a RUN names them and a TaskSpec keeps them (scoped, protocol.md 5.11).
DependencyRefs = Annotated[list[TaskRef], Meta(min_length=1, max_length=MAX_DEPENDENCIES)]
Backlog = Annotated[int, Meta(ge=0, le=MAX_BACKLOG)]
Count = Annotated[int, Meta(ge=0, le=2**63 - 1)]
RetryOn = Annotated[list[Literal["exception", "timeout"]], Meta(max_length=2)]

# The same limits in seconds, as a TaskSpec holds them.
QueueTimeout = Annotated[float, Meta(ge=0.001, le=MAX_QUEUE_TIMEOUT_MS / 1000)]
TaskTimeout = Annotated[float, Meta(ge=0.001, le=MAX_TASK_TIMEOUT_MS / 1000)]
