"""A function set for the tests that declares retryable exceptions (node.registry.retryable)."""

from __future__ import annotations

from node.registry import retryable


@retryable(ConnectionError, TimeoutError)
def fetch(outcome: str) -> str:
    """Fail as `outcome` says, as a call to a remote service might: "refused" raises
    ConnectionRefusedError (a ConnectionError: retryable), "timeout" TimeoutError
    (retryable), "bad" ValueError (not retryable); anything else is returned."""
    if outcome == "refused":
        raise ConnectionRefusedError("connection refused")
    if outcome == "timeout":
        raise TimeoutError("no answer in 5 s")
    if outcome == "bad":
        raise ValueError("malformed reply")
    return outcome


def parse(text: str) -> int:
    """Declares nothing: no failure of it is retryable."""
    return int(text)
