"""Python clients for the ZTB broker.

from client import Client
with Client("tcp://127.0.0.1:5000") as c:
    c.execute("multiply", 5, 10)  # 50
"""

from client.api import Client
from client.errors import BrokerError, BrokerTimeout, ClientError, TaskFailed

__all__ = ["BrokerError", "BrokerTimeout", "Client", "ClientError", "TaskFailed"]
