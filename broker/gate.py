"""The gate: with CURVE, who sent each message, and whether that key's role may send it.

libzmq tags every message of a CURVE connection with the peer's key (the ZAP handler's
User-Id, the Z85 public key); `receive` reads it from the last frame. `refusal` looks the
key up in the authorized directory at each message, so a key removed from it is refused
from its next message on, on a connection it already has too; and it holds each role to
the commands of protocol.md "Transport security":

    nodes    REGISTER, DEREGISTER, HEARTBEAT, RESULT, RETRACTED, WAITING; and, for the
             tasks their tasks submit, EXECUTE with `parent`, CANCEL and FETCH
    clients  EXECUTE, CANCEL, FETCH, STATUS
    admins   what clients may, and DLQ (list, show, replay, purge)

and ERROR from anyone. A REGISTER that `replaces` a node process (protocol.md 7.4) must
come with the key that registered that process. What is refused becomes ERROR `forbidden`
naming the role needed (the core answers it and counts it as it does any refused message).
What passes reaches the core with its key (the scope of the tasks it names, protocol.md
5.11) and whether that key is an admin's. Part of the broker's shell: it sees frames, never
the core.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import zmq

from broker import protocol as p
from broker.security import AuthorizedKeys, fingerprint

NODE_COMMANDS = {p.REGISTER, p.DEREGISTER, p.HEARTBEAT, p.RESULT, p.RETRACTED, p.WAITING}
CLIENT_COMMANDS = {p.EXECUTE, p.CANCEL, p.FETCH, p.STATUS}
ALLOWED: dict[str, frozenset[bytes]] = {
    "nodes": frozenset({*NODE_COMMANDS, p.EXECUTE, p.CANCEL, p.FETCH, p.ERROR}),
    "clients": frozenset({*CLIENT_COMMANDS, p.ERROR}),
    "admins": frozenset({*CLIENT_COMMANDS, p.DLQ, p.ERROR}),
}
USER_ID = "User-Id"
MAX_REGISTERED = 65_536  # node processes whose key the gate remembers for `replaces`


class Gate:
    def __init__(self, authorized: AuthorizedKeys, max_registered: int = MAX_REGISTERED) -> None:
        self.authorized = authorized
        self.user: bytes | None = None  # the key of the last message received
        self.key: str | None = None  # the same, as the string libzmq gives (the task scope)
        self.role: str | None = None  # its role, once `refusal` let the message pass
        # The key each node process (name, host, pid) registered with, for `replaces`: the
        # newest `max_registered`, so that processes that came and went do not add up.
        self._registered: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self.max_registered = max_registered

    def receive(self, sock: zmq.Socket[Any], flags: int = 0) -> list[bytes]:
        """`recv_frames`, also reading the sender's key (`user`) from the last frame."""
        frame = sock.recv(flags, copy=False)
        frames = [frame.bytes]
        while frame.more:
            frame = sock.recv(flags, copy=False)
            frames.append(frame.bytes)
        user = frame.get(USER_ID)
        self.key = user if isinstance(user, str) else None
        self.user = None if self.key is None else self.key.encode()
        return frames

    def refusal(self, command: bytes, message: p.Message) -> p.RemoteProtocolError | None:
        """Why the last message received may not pass (ERROR forbidden), or None."""
        key = self.user
        self.role = None
        if key is None:
            text = "this connection has no CURVE key: the broker lets in authorized keys only"
            return p.RemoteProtocolError(p.ERR_FORBIDDEN, text, _task_id(message))
        role = self.authorized.role(key)
        if role is None:
            text = (
                f"this connection's key {fingerprint(key)} is not authorized (any more): the "
                "broker's --authorized directory no longer holds it"
            )
            return p.RemoteProtocolError(p.ERR_FORBIDDEN, text, _task_id(message))
        if command not in ALLOWED[role]:
            return p.RemoteProtocolError(p.ERR_FORBIDDEN, _needed(command, role), _task_id(message))
        if role == "nodes" and command == p.EXECUTE and not _from_a_task(message):
            text = (
                "a node's key may submit only the tasks its tasks submit (EXECUTE parent, "
                "get_client()); submit others with a client's key (DIR/clients)"
            )
            return p.RemoteProtocolError(p.ERR_FORBIDDEN, text, _task_id(message))
        if isinstance(message, p.Register):
            refused = self._register(message, key)
            if refused is not None:
                return refused
        self.role = role
        return None

    def _register(self, register: p.Register, key: bytes) -> p.RemoteProtocolError | None:
        """A node process registers with `key`: it may replace only a process of that key."""
        if register.replaces is not None:
            replaced = (register.name, register.host, register.replaces.pid)
            if self._registered.get(replaced, key) != key:
                text = (
                    f"REGISTER replaces process {register.replaces.pid} of node "
                    f"{register.name}, which registered with another key"
                )
                return p.RemoteProtocolError(p.ERR_FORBIDDEN, text)
            self._registered.pop(replaced, None)
        registered = self._registered
        process = (register.name, register.host, register.pid)
        registered[process] = key
        registered.move_to_end(process)
        if len(registered) > self.max_registered:
            registered.popitem(last=False)  # its `replaces`, much later, is let in
        return None


def _needed(command: bytes, role: str) -> str:
    name = command.decode(errors="replace")
    if command in NODE_COMMANDS:
        needed = "a node's key (DIR/nodes)"
    elif command == p.DLQ:
        needed = "an admin's key (DIR/admins)"
    else:
        needed = "a client's or an admin's key (DIR/clients, DIR/admins)"
    return f"{name} needs {needed}; this connection's key is one of {role}"


def _from_a_task(message: p.Message) -> bool:
    if isinstance(message, p.Execute):
        return message.spec.parent is not None
    if isinstance(message, p.Batch):
        return all(isinstance(i, p.Execute) and i.spec.parent is not None for i in message.items)
    return False


def _task_id(message: p.Message) -> str | None:
    if isinstance(message, p.Execute):
        return message.spec.task_id
    task_id = getattr(message, "task_id", None)
    return task_id if isinstance(task_id, str) else None
