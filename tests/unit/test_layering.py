"""Which room may import what (docs/architecture.md, "Which way the arrows run").

Every .py file under broker/, node/ and client/ belongs to one room (the first whose file
patterns match it), and every import in it must match one of the room's `may` patterns and
none of its `never` ones: an allow-list, so that a new dependency is a decision written
here, not an accident. The checker is tested on planted violations below."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("broker", "node", "client")
STDLIB = "<stdlib>"  # any module of the standard library
# The standard library's pure modules: no I/O, no clock, no threads, no processes.
PURE = (
    "__future__",
    "abc",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "logging",
    "math",
    "operator",
    "random",
    "re",
    "types",
    "typing",
)
PROTOCOL = ("broker.protocol",)  # the codec; its frame I/O is `broker.protocol.frames`
TRACING = ("broker.tracing",)  # spans of tasks, in every process (OpenTelemetry, optional)
SECURITY = ("broker.security",)  # CurveZMQ keys, in every process
CLIENT = tuple(f"client.{m}" for m in ("api", "cluster", "control", "errors", "link", "options"))
ZBROKER = (
    "broker.core.config",
    "broker.server",
    "broker.outbox",
    "broker.trim",
    "broker.store",
    "broker.cli",
    "broker.monitor",
    "broker.security",
)
CLI_SHARED = (
    "broker.logs",
    "broker.config_file",
    "broker.cli_keys",
)  # what zbroker, znode and zsubmit share


@dataclass(frozen=True)
class Room:
    name: str
    files: tuple[str, ...]  # fnmatch patterns on the repo-relative path
    may: tuple[str, ...]  # module patterns: a dotted prefix; `*` stands for one component
    never: tuple[str, ...] = ()


ROOMS = (
    Room("the package markers", ("broker/__init__.py",), may=()),
    Room(
        "what a function set imports from the node: its declarations",
        ("node/__init__.py",),
        may=("__future__", "node.context", "node.registry", "node.splitting"),
    ),
    Room(
        "what a task knows of itself, and its client of the broker (get_client)",
        ("node/context.py",),
        may=(STDLIB, *PROTOCOL, "client.api", "client.within"),
    ),
    Room("frame I/O on pyzmq", ("broker/protocol/frames.py",), may=(STDLIB, "zmq")),
    Room(
        "the codec every peer shares",
        ("broker/protocol/*",),
        may=(STDLIB, "orjson", "msgspec", *PROTOCOL),
        never=("broker.protocol.frames",),
    ),
    Room(
        "the sans-IO core: no sockets, no clock, no threads, no files",
        ("broker/core/*",),
        may=(*PURE, "msgspec", *PROTOCOL, "broker.core"),
        never=("broker.protocol.frames",),
    ),
    Room(
        "the store: SQLite and files, fed by the core's journal",
        ("broker/store/*",),
        may=(STDLIB, "orjson", "msgspec", *PROTOCOL, "broker.core", "broker.store"),
        never=("broker.protocol.frames",),
    ),
    Room(
        "the broker's shell: sockets, clock and store around the core",
        ("broker/server.py",),
        may=(
            STDLIB,
            "zmq",
            *PROTOCOL,
            "broker.core",
            "broker.store",
            "broker.gate",
            "broker.outbox",
            "broker.trim",
            *TRACING,
            *SECURITY,
        ),
    ),
    Room(
        "giving freed memory back to the system (glibc, through ctypes)",
        ("broker/trim.py",),
        may=(STDLIB,),
    ),
    Room(
        "the gate: with CURVE, each message's key and what its role may send",
        ("broker/gate.py",),
        may=(STDLIB, "zmq", *PROTOCOL, *SECURITY),
    ),
    Room(
        "the outbox: what peers cannot take yet, bounded in bytes per peer",
        ("broker/outbox.py",),
        may=(STDLIB, "zmq", *PROTOCOL),
    ),
    Room(
        "CurveZMQ keys: files, the authorized keys, the ZAP handler",
        ("broker/security.py",),
        may=(STDLIB, "zmq"),
    ),
    Room(
        "tracing: OpenTelemetry, imported only when configured",
        ("broker/tracing.py",),
        may=(STDLIB, *PROTOCOL, "opentelemetry"),
    ),
    Room(
        "zbroker: a CLI, and a client program of the broker it asks",
        ("broker/cli/*",),
        may=(
            STDLIB,
            "typer",
            "rich",
            "orjson",
            *PROTOCOL,
            *ZBROKER,
            *CLIENT,
            *CLI_SHARED,
            *TRACING,
        ),
        never=("broker.protocol.frames",),
    ),
    Room(
        "the monitor: a client program of the broker that serves HTTP and Prometheus",
        ("broker/monitor/*",),
        may=(
            STDLIB,
            "orjson",
            "prometheus_client",
            *PROTOCOL,
            "broker.core.metrics",
            "broker.monitor",
            *CLIENT,
            *SECURITY,
        ),
        never=("broker.protocol.frames",),
    ),
    Room(
        "the commands' logging, their options from the environment and a file, their keys",
        ("broker/logs.py", "broker/config_file.py", "broker/cli_keys.py"),
        may=(STDLIB, "typer", "orjson", *SECURITY),
    ),
    Room(
        "znode's CLI",
        ("node/cli.py",),
        may=(STDLIB, "typer", *PROTOCOL, "node", *CLI_SHARED, *TRACING, *SECURITY),
    ),
    Room(
        "the node's socket owners",
        ("node/agent.py", "node/link.py"),
        may=(STDLIB, "zmq", *PROTOCOL, "node", *TRACING, *SECURITY),
        never=("node.cli",),
    ),
    Room(
        "the node",
        ("node/*",),
        may=(STDLIB, "msgspec", *PROTOCOL, "node", *TRACING, *SECURITY),
        never=("broker.protocol.frames", "node.cli"),
    ),
    Room(
        "zsubmit",
        ("client/cli/*",),
        may=(STDLIB, "typer", *PROTOCOL, "client", *CLI_SHARED, *TRACING, *SECURITY),
    ),
    Room(
        "the progress bar of many tasks (Client.map and zsubmit map)",
        ("client/progress.py",),
        may=(STDLIB, "rich", "client"),
        never=("client.cli",),
    ),
    Room(
        "the client's socket owners",
        ("client/api.py", "client/engine.py", "client/link.py", "client/pipeline.py"),
        may=(STDLIB, "zmq", *PROTOCOL, "client", *TRACING, *SECURITY),
        never=("client.cli",),
    ),
    Room(
        "the client",
        ("client/*",),
        may=(STDLIB, *PROTOCOL, "client", *TRACING, *SECURITY),
        never=("broker.protocol.frames", "client.cli"),
    ),
)


# ------------------------------------------------------------------------------- the checker


def module_name(path: str) -> str:
    """`broker/server.py` -> `broker.server`; `broker/__init__.py` -> `broker`."""
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, path: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import; `from a import b` yields `a.b`, since b may be a
    module. Relative imports are resolved against `path`."""
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"


def matches(module: str, pattern: str) -> bool:
    if pattern == STDLIB:
        return module.split(".")[0] in sys.stdlib_module_names
    want, have = pattern.split("."), module.split(".")
    return len(have) >= len(want) and all(w in ("*", h) for w, h in zip(want, have, strict=False))


def room_of(path: str) -> Room | None:
    return next((room for room in ROOMS if any(fnmatch(path, f) for f in room.files)), None)


def allowed(room: Room, module: str) -> bool:
    if any(matches(module, pattern) for pattern in room.never):
        return False
    return any(matches(module, pattern) for pattern in room.may)


def violations(sources: dict[str, str]) -> list[str]:
    found = []
    for path, source in sorted(sources.items()):
        room = room_of(path)
        if room is None:
            found.append(f"{path} is in no room: add it to ROOMS")
            continue
        found += [
            f"{path}:{line} imports {module} ({room.name})"
            for line, module in imported_modules(source, path)
            if not allowed(room, module)
        ]
    return found


def project_sources() -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }


# --------------------------------------------------------------------------------- the tests

SOURCES = project_sources()


def test_every_room_holds_files() -> None:
    for room in ROOMS:
        assert any(room_of(path) is room for path in SOURCES), f"room {room.name!r} is empty"


def test_every_import_of_the_project_is_allowed() -> None:
    assert violations(SOURCES) == []


# The checker itself, on made-up sources, so that a rule cannot pass by matching nothing.

FAKE = {
    "broker/__init__.py": "",
    "broker/protocol/encoding.py": "import orjson\nimport zmq\n",
    "broker/core/scheduler.py": "from . import queues\nfrom time import monotonic\n",
    "broker/core/queues.py": "from broker.protocol.frames import send_frames\n",
    "broker/server.py": "import zmq\nfrom .protocol import encode\nfrom ..node import agent\n",
    "broker/cli/status.py": "import typer\nfrom client.control import Control\nimport tests\n",
    "node/agent.py": "import zmq\nfrom broker import protocol\nfrom broker.core import tasks\n",
    "node/runner.py": "from broker.protocol import encode\nimport zmq\nfrom .cli import main\n",
    "client/pkg/__init__.py": "from . import helper\nfrom .. import api\nimport tests.support\n",
    "tools/x.py": "",
}

EXPECTED = [
    "broker/cli/status.py:3 imports tests (zbroker: a CLI, and a client program of the broker "
    "it asks)",
    "broker/core/queues.py:1 imports broker.protocol.frames.send_frames (the sans-IO core: no "
    "sockets, no clock, no threads, no files)",
    "broker/core/scheduler.py:2 imports time.monotonic (the sans-IO core: no sockets, no clock, "
    "no threads, no files)",
    "broker/protocol/encoding.py:2 imports zmq (the codec every peer shares)",
    "broker/server.py:3 imports node.agent (the broker's shell: sockets, clock and store around "
    "the core)",
    "client/pkg/__init__.py:3 imports tests.support (the client)",
    "node/agent.py:3 imports broker.core.tasks (the node's socket owners)",
    "node/runner.py:2 imports zmq (the node)",
    "node/runner.py:3 imports node.cli.main (the node)",
    "tools/x.py is in no room: add it to ROOMS",
]


def test_checker_finds_exactly_the_planted_violations() -> None:
    assert violations(FAKE) == EXPECTED


def test_relative_imports_resolve_against_the_package() -> None:
    found = [
        m for _, m in imported_modules(FAKE["client/pkg/__init__.py"], "client/pkg/__init__.py")
    ]
    assert found == ["client.pkg.helper", "client.api", "tests.support"]
    assert [m for _, m in imported_modules("from . import x", "broker/server.py")] == ["broker.x"]


@pytest.mark.parametrize("room", ROOMS, ids=lambda r: r.name)
def test_rooms_never_allow_what_they_exclude(room: Room) -> None:
    for pattern in room.never:
        assert not allowed(room, pattern), pattern
