"""Python clients for the ZTB broker.

from client import Client
with Client("tcp://127.0.0.1:5000") as c:
    c.execute("multiply", 5, 10)  # 50
    c.execute("sleep", 60, task_timeout=5)  # TaskFailed, exit 124 after 5 s
    c.dead_letters()  # tasks that failed for good
"""

from client.api import Client
from client.errors import BrokerError, BrokerTimeout, ClientError, NotFound, TaskFailed

__all__ = ["BrokerError", "BrokerTimeout", "Client", "ClientError", "NotFound", "TaskFailed"]
