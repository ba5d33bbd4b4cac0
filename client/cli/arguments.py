"""How zsubmit reads a task's arguments from its command line: each ARG as JSON when it
parses as JSON, else as a string; `-` reads one from stdin and `@FILE` one from a file (by
the same rule); an ARG that looks like JSON but does not parse is sent as a string with a
warning that names the parse error."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer

from broker.protocol import loads_payload
from client.cli.common import EXIT_USAGE, fail, warn

# Starts like an option and cannot be a number: most likely a mistyped option.
_OPTION_LIKE = re.compile(r"-[^\d.]")
# What a JSON array, object, string or number starts with.
_JSON_LIKE = re.compile(r"\s*([\[{\"]|[+-]?\.?\d)")
_SHOWN = 40  # characters of a value quoted in a warning

STDIN = "-"
FROM_FILE = "@"


def parse_argument(text: str) -> Any:
    """JSON when `text` parses as JSON, else the string itself."""
    try:
        return loads_payload(text.encode())
    except ValueError:
        return text


def read_arguments(function: str, args: list[str], raw: list[str]) -> list[Any]:
    """The values of the ARGs `args` of FUNCTION. `raw`: the command line as typed, to tell
    which words came after `--` (those may start with "-"); an option-like word before it
    is refused as a mistyped option."""
    literal = len(raw) - raw.index("--") - 1 if "--" in raw else 0
    words = [function, *args]
    # Negative numbers must pass as ARGs, so unknown options reach us as ARGs too.
    for word in words[: max(0, len(words) - literal)]:
        if _OPTION_LIKE.match(word):
            raise fail(
                f"no such option: {word} (see zsubmit --help; to send it as a string "
                f"argument, put it after --: zsubmit FUNCTION -- {word})",
                EXIT_USAGE,
            )
    if args.count(STDIN) > 1:
        raise fail(
            'stdin can give one ARG ("-"), not several: put the others in files (@FILE)',
            EXIT_USAGE,
        )
    return [_value(word, position) for position, word in enumerate(args, 1)]


def _value(word: str, position: int) -> Any:
    if word == STDIN:
        return decode(_read_stdin(position), f"argument {position} (stdin)")
    if word.startswith(FROM_FILE) and len(word) > 1:
        return decode(_read_file(word[1:], position), f"argument {position} ({word})")
    return decode(word, f"argument {position}")


def decode(text: str, where: str) -> Any:
    """`text` as JSON if it parses, else as a string (without one trailing newline); a text
    that looks like JSON but does not parse is a string too, with a warning naming `where`
    and the parse error."""
    try:
        return loads_payload(text.encode())
    except ValueError as exc:
        value = text.removesuffix("\n").removesuffix("\r")
        if _JSON_LIKE.match(value):
            shown = value if len(value) <= _SHOWN else value[: _SHOWN - 3] + "..."
            warn(
                f"{where} {shown!r} looks like JSON but is not ({exc}); it is sent as a "
                "string. Quote it as a JSON string to send a string without this warning, "
                "or correct the JSON"
            )
        return value


def _read_stdin(position: int) -> str:
    if sys.stdin is None:
        raise fail(f"argument {position} is - (read stdin), but there is no stdin", EXIT_USAGE)
    if sys.stdin.isatty():
        typer.echo(f"zsubmit: reading argument {position} from stdin (Ctrl-D ends it)", err=True)
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        raise fail(f"argument {position} (stdin) is not UTF-8 text: {exc}", EXIT_USAGE) from None


def _read_file(path: str, position: int) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"argument {position} (@{path}) is not UTF-8 text: {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise fail(
            f"cannot read argument {position} from @{path}: {exc.strerror or exc} (to send a "
            f"string that starts with @, quote it as JSON: '\"@{path}\"')",
            EXIT_USAGE,
        ) from None
