"""What can go wrong with a message, as exceptions (protocol.md 8.3).

Two kinds, as h11 has them: a peer sent something that breaks the protocol
(`RemoteProtocolError`, the only exception a decoder raises; the broker answers it with an
ERROR), or this process tried to send something the protocol does not allow
(`LocalProtocolError`, a bug or a misuse of the codec here). A peer that refused a valid
request ("no such task") is neither: the clients turn its ERROR reply into their own errors.
"""

from __future__ import annotations

# ERROR codes (protocol.md 8.3).
ERR_MALFORMED = "malformed"
ERR_UNSUPPORTED_VERSION = "unsupported_version"
ERR_UNKNOWN_COMMAND = "unknown_command"
ERR_TOO_LARGE = "too_large"
ERR_NOT_REGISTERED = "not_registered"
ERR_NOT_FOUND = "not_found"
ERR_NOT_HOLDER = "not_holder"
ERR_CONFLICT = "conflict"
ERR_UNKNOWN_DEPENDENCY = "unknown_dependency"
ERR_FORBIDDEN = "forbidden"  # with CURVE: the sender's key may not send this command
ERR_TOO_MANY_TASKS = "too_many_tasks"  # the sender has as many tasks pending as it may


class ProtocolError(Exception):
    """A message that does not follow protocol.md: `code` is an ERROR code, `message` says
    what is wrong for people, `task_id` names the task when it could be read."""

    def __init__(self, code: str, message: str, task_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.task_id = task_id

    def __reduce__(self) -> tuple[object, ...]:
        return type(self), (self.code, self.message, self.task_id)


class RemoteProtocolError(ProtocolError):
    """The peer sent a message that breaks protocol.md. The only exception decoders raise."""


class LocalProtocolError(ProtocolError):
    """This process tried to encode something protocol.md does not allow."""
