"""broker.protocol: the ZTB/1 codec that the broker, the nodes and the clients share.

protocol.md is the document for this package; the two change together, and
tests/unit/test_protocol_golden.py holds every example of the document to the codec.

- `messages`: the vocabulary (tag, commands, exit codes) and one frozen type per message;
- `limits`: the limits and defaults, stated once;
- `errors`: RemoteProtocolError (a peer broke the protocol) and LocalProtocolError (this
  process tried to); the ERROR codes;
- `encoding` and `decoding`: messages to frames and back, one path per message;
- `payload`: task arguments and results as JSON, integers of any size kept exact;
- `frames`: frame I/O on pyzmq sockets (the only module here that imports zmq; import it
  as `broker.protocol.frames`, it is not re-exported).

Everything but `frames` is re-exported here, so `from broker import protocol as p` is the
one import the other parts need. Task arguments and results are opaque payload frames to
the broker: only nodes and clients decode them.
"""

from broker.protocol.decoding import (
    DECODERS as DECODERS,
    decode as decode,
    oversized as oversized,
)
from broker.protocol.encoding import (
    BATCH_MAX_BYTES as BATCH_MAX_BYTES,
    BATCH_MAX_TASKS as BATCH_MAX_TASKS,
    batches as batches,
    encode as encode,
    encode_batch as encode_batch,
    encode_many as encode_many,
    execute_frames as execute_frames,
    result_frames as result_frames,
    run_frames as run_frames,
)
from broker.protocol.errors import (
    ERR_CONFLICT as ERR_CONFLICT,
    ERR_FORBIDDEN as ERR_FORBIDDEN,
    ERR_MALFORMED as ERR_MALFORMED,
    ERR_NOT_FOUND as ERR_NOT_FOUND,
    ERR_NOT_HOLDER as ERR_NOT_HOLDER,
    ERR_NOT_REGISTERED as ERR_NOT_REGISTERED,
    ERR_TOO_LARGE as ERR_TOO_LARGE,
    ERR_TOO_MANY_TASKS as ERR_TOO_MANY_TASKS,
    ERR_UNKNOWN_COMMAND as ERR_UNKNOWN_COMMAND,
    ERR_UNKNOWN_DEPENDENCY as ERR_UNKNOWN_DEPENDENCY,
    ERR_UNSUPPORTED_VERSION as ERR_UNSUPPORTED_VERSION,
    LocalProtocolError as LocalProtocolError,
    ProtocolError as ProtocolError,
    RemoteProtocolError as RemoteProtocolError,
)
from broker.protocol.limits import (
    DEFAULT_BROKER_URL as DEFAULT_BROKER_URL,
    DEFAULT_HEARTBEAT_INTERVAL as DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_LIVENESS as DEFAULT_LIVENESS,
    DEFAULT_MAX_MESSAGE_SIZE as DEFAULT_MAX_MESSAGE_SIZE,
    MAX_ATTEMPT as MAX_ATTEMPT,
    MAX_BACKLOG as MAX_BACKLOG,
    MAX_CAPACITY as MAX_CAPACITY,
    MAX_CLIENT_LENGTH as MAX_CLIENT_LENGTH,
    MAX_DEPENDENCIES as MAX_DEPENDENCIES,
    MAX_DLQ_LIMIT as MAX_DLQ_LIMIT,
    MAX_NAME_LENGTH as MAX_NAME_LENGTH,
    MAX_PREFETCH as MAX_PREFETCH,
    MAX_QUEUE_TIMEOUT_MS as MAX_QUEUE_TIMEOUT_MS,
    MAX_RETRACT as MAX_RETRACT,
    MAX_RETRIES as MAX_RETRIES,
    MAX_TASK_REF_LENGTH as MAX_TASK_REF_LENGTH,
    MAX_TASK_TIMEOUT_MS as MAX_TASK_TIMEOUT_MS,
    PRIORITY_DEFAULT as PRIORITY_DEFAULT,
    PRIORITY_MAX as PRIORITY_MAX,
    PRIORITY_MIN as PRIORITY_MIN,
)
from broker.protocol.messages import (
    CANCEL as CANCEL,
    CANCELLED as CANCELLED,
    DEREGISTER as DEREGISTER,
    DISCONNECT as DISCONNECT,
    DLQ as DLQ,
    DLQ_LIST as DLQ_LIST,
    DLQ_OPS as DLQ_OPS,
    DLQ_PURGE as DLQ_PURGE,
    DLQ_REPLAY as DLQ_REPLAY,
    DLQ_REPLY as DLQ_REPLY,
    DLQ_SHOW as DLQ_SHOW,
    ERROR as ERROR,
    EXECUTE as EXECUTE,
    EXIT_BAD_ARGUMENTS as EXIT_BAD_ARGUMENTS,
    EXIT_BAD_REQUEST as EXIT_BAD_REQUEST,
    EXIT_BAD_RESULT as EXIT_BAD_RESULT,
    EXIT_CANCELLED as EXIT_CANCELLED,
    EXIT_DEPENDENCY_FAILED as EXIT_DEPENDENCY_FAILED,
    EXIT_EXPIRED as EXIT_EXPIRED,
    EXIT_FUNCTION_ERROR as EXIT_FUNCTION_ERROR,
    EXIT_NODE_LOST as EXIT_NODE_LOST,
    EXIT_OK as EXIT_OK,
    EXIT_TIMEOUT as EXIT_TIMEOUT,
    EXIT_UNKNOWN_FUNCTION as EXIT_UNKNOWN_FUNCTION,
    EXIT_WORKER_CRASHED as EXIT_WORKER_CRASHED,
    FETCH as FETCH,
    HEARTBEAT as HEARTBEAT,
    PROTOCOL_NAME as PROTOCOL_NAME,
    REGISTER as REGISTER,
    REGISTERED as REGISTERED,
    RESULT as RESULT,
    RETRACT as RETRACT,
    RETRACTED as RETRACTED,
    RETRY_ON as RETRY_ON,
    RETRY_ON_EXCEPTION as RETRY_ON_EXCEPTION,
    RETRY_ON_TIMEOUT as RETRY_ON_TIMEOUT,
    RUN as RUN,
    STATUS as STATUS,
    STATUS_REPLY as STATUS_REPLY,
    STOP as STOP,
    STORED as STORED,
    TAG as TAG,
    TASK_COMPLETED as TASK_COMPLETED,
    VERSION as VERSION,
    WAITING as WAITING,
    WAS_FINISHED as WAS_FINISHED,
    WAS_HELD as WAS_HELD,
    WAS_QUEUED as WAS_QUEUED,
    WAS_RUNNING as WAS_RUNNING,
    Batch as Batch,
    Cancel as Cancel,
    Cancelled as Cancelled,
    Claim as Claim,
    Deregister as Deregister,
    Disconnect as Disconnect,
    Dlq as Dlq,
    DlqReply as DlqReply,
    Error as Error,
    ErrorInfo as ErrorInfo,
    Execute as Execute,
    Fetch as Fetch,
    Heartbeat as Heartbeat,
    Message as Message,
    Register as Register,
    Registered as Registered,
    Replaces as Replaces,
    Result as Result,
    Retract as Retract,
    Retracted as Retracted,
    Run as Run,
    Status as Status,
    StatusReply as StatusReply,
    Stop as Stop,
    Stored as Stored,
    TaskCompleted as TaskCompleted,
    TaskMessage as TaskMessage,
    TaskSpec as TaskSpec,
    Waiting as Waiting,
)
from broker.protocol.payload import (
    dumps_payload as dumps_payload,
    input_placeholder as input_placeholder,
    loads_payload as loads_payload,
    with_inputs as with_inputs,
)
