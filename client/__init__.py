"""Python clients for the ZTB broker.

from client import Client
with Client("tcp://127.0.0.1:5000") as c:
    c.execute("multiply", 5, 10)  # 50
    c.execute("sleep", 60, task_timeout=5)  # TaskFailed, exit 124 after 5 s
    c.submit("multiply", 5, 10).result()  # a future: 50
    c.dead_letters()  # tasks that failed for good
"""

from client.api import Client
from client.control import ControlClient, DeadLetterList
from client.errors import (
    BadEndpoint,
    BadReply,
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    ClientError,
    MessageTooLarge,
    NotFound,
    TaskFailed,
)
from client.futures import TaskFuture
from client.jobs import JobFuture
from client.link import ReqLink
from client.options import TaskOptions

__all__ = [
    "BadEndpoint",
    "BadReply",
    "BrokerError",
    "BrokerTimeout",
    "BrokerUnreachable",
    "Client",
    "ClientError",
    "ControlClient",
    "DeadLetterList",
    "JobFuture",
    "MessageTooLarge",
    "NotFound",
    "ReqLink",
    "TaskFailed",
    "TaskFuture",
    "TaskOptions",
]
