"""Payload frames: task arguments and results as JSON, with integers of any size kept exact.

Only nodes and clients encode and decode payloads; the broker passes them through as bytes.
orjson alone refuses (or rounds) integers beyond 64 bits, so those fall back to the standard
library. Re-exported by `broker.protocol`. Imports only the standard library and orjson.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# A run of 19 digits may be an integer beyond 64 bits, which orjson would turn into a float.
_LONG_DIGITS = re.compile(rb"\d{19}")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _orjson_like(value: Any) -> Any:
    """A copy orjson would agree with: non-finite floats as None, only str keys."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_orjson_like(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dict keys must be str")
        return {k: _orjson_like(v) for k, v in value.items()}
    return value


def dumps_payload(value: Any) -> bytes:
    """JSON for a task argument list or result; integers of any size stay exact.

    Raises TypeError for values JSON cannot carry. NaN and infinities become null (orjson).
    """
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise TypeError(str(exc)) from None
    # orjson refuses integers beyond 64 bits; the standard library does not.
    try:
        text = json.dumps(_orjson_like(value), separators=(",", ":"), ensure_ascii=False)
        return text.encode()
    except (ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise TypeError(f"cannot encode as JSON: {exc}") from None


def loads_payload(data: bytes) -> Any:
    """The value in a payload frame. Raises ValueError if it is not JSON."""
    if len(data) < 19 or _LONG_DIGITS.search(data) is None:  # no run of 19 digits
        return orjson.loads(data)
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("payload nests too deeply") from None


# ------------------------------------------------------------------ inputs (protocol.md 5.8)

INPUT_KEY = "$result"  # {"$result": "<task id>"}: the result of that input goes here


def input_placeholder(task_id: str) -> dict[str, str]:
    """What a client puts in the arguments where the result of task `task_id` belongs."""
    return {INPUT_KEY: task_id}


def with_inputs(args: Any, results: dict[str, Any]) -> Any:
    """`args` with each placeholder of a task in `results` replaced by its result, inside
    lists and object values at any depth; everything else, other placeholders included,
    as it was."""
    if isinstance(args, list):
        return [with_inputs(value, results) for value in args]
    if isinstance(args, dict):
        if len(args) == 1:
            ref = args.get(INPUT_KEY)
            if isinstance(ref, str) and ref in results:
                return results[ref]
        return {key: with_inputs(value, results) for key, value in args.items()}
    return args
