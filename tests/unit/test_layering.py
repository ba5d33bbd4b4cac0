"""Which module may import what (architecture.md, "Which way the arrows run").

Every .py file under broker/, node/ and client/ is parsed with `ast` and its imports checked
against RULES. To place a new module, add or widen a rule: the table is the whole policy."""

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
STDLIB = "<stdlib>"  # stands for any module of the standard library in `only`

ZMQ_MODULES = (
    "broker/server.py",
    "broker/control.py",
    "broker/wire.py",  # frame I/O for the hot path, shared by every socket owner
    "node/agent.py",
    "node/link.py",
    "client/api.py",
    "client/pipeline.py",
)


@dataclass(frozen=True)
class Rule:
    """Files matching `files` (fnmatch on the repo-relative path, `*` spans folders) and none
    of `exempt` may not import a module matching `forbid` unless it matches `allow`; with
    `only` set, every import must match `only`. Module patterns match a dotted prefix; `*`
    stands for one component."""

    why: str
    files: tuple[str, ...]
    forbid: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()


ALL = tuple(f"{package}/*" for package in PACKAGES)

RULES = (
    Rule(
        "the codec is shared by every peer: standard library, orjson and msgspec only",
        files=(
            "broker/protocol.py",
            "broker/messages.py",
            "broker/decoding.py",
            "broker/payload.py",
        ),
        only=(STDLIB, "orjson", "msgspec", "broker.payload", "broker.messages", "broker.decoding"),
    ),
    Rule(
        "the broker core is sans-IO and reads no clock (time comes in as `now`)",
        files=(
            "broker/workers.py",
            "broker/queues.py",
            "broker/results.py",
            "broker/retries.py",
            "broker/views.py",
            "broker/scheduler.py",
            "broker/deadlines.py",
            "broker/deadletters.py",
            "broker/dlq_ops.py",
            "broker/journal.py",
            "broker/taskflow.py",
            "broker/recovery.py",
            "broker/invariants.py",
        ),
        forbid=("zmq", "time", "datetime"),
    ),
    Rule("zmq only in the socket-owning modules", files=ALL, forbid=("zmq",), exempt=ZMQ_MODULES),
    Rule("typer only in the CLIs", files=ALL, forbid=("typer",), exempt=("*/cli.py", "*/*_cli.py")),
    Rule(
        "node and client use the broker's codec and frame I/O and nothing else of it",
        files=("node/*", "client/*"),
        forbid=("broker",),
        allow=("broker.protocol", "broker.payload", "broker.wire"),
    ),
    Rule("the broker never imports node or client", files=("broker/*",), forbid=("node", "client")),
    Rule(
        "nothing imports a CLI, the tests or the tools",
        files=ALL,
        forbid=("*.cli", "cli", "tests", "tools"),
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


def applies(rule: Rule, path: str) -> bool:
    return any(fnmatch(path, f) for f in rule.files) and not any(
        fnmatch(path, e) for e in rule.exempt
    )


def breaks(rule: Rule, module: str) -> bool:
    if rule.only and not any(matches(module, m) for m in rule.only):
        return True
    forbidden = any(matches(module, m) for m in rule.forbid)
    return forbidden and not any(matches(module, m) for m in rule.allow)


def violations(rule: Rule, sources: dict[str, str]) -> list[str]:
    found = [
        (path, line, module)
        for path, source in sources.items()
        if applies(rule, path)
        for line, module in imported_modules(source, path)
        if breaks(rule, module)
    ]
    return [f"{path}:{line} imports {module}" for path, line, module in sorted(found)]


def project_sources() -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }


# --------------------------------------------------------------------------------- the tests

SOURCES = project_sources()


def test_the_codec_is_among_the_checked_files() -> None:
    assert "broker/protocol.py" in SOURCES
    assert any(imported_modules(SOURCES["broker/protocol.py"], "broker/protocol.py"))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.why)
def test_project_follows_rule(rule: Rule) -> None:
    assert violations(rule, SOURCES) == [], rule.why


# The checker itself, on made-up sources, so that a rule cannot pass by matching nothing.

FAKE = {
    "broker/__init__.py": "",
    "broker/protocol.py": "from __future__ import annotations\nimport json\nimport orjson\n",
    "broker/scheduler.py": "from . import queues\nfrom time import monotonic\n",
    "broker/server.py": "import zmq\nfrom .protocol import encode\nfrom ..node import agent\n",
    "broker/cli.py": "import typer\nimport zmq.asyncio\n",
    "node/agent.py": "import zmq\nfrom broker import protocol\nfrom broker import scheduler\n",
    "node/runner.py": "from broker.protocol import encode\nimport timeit\nfrom .cli import main\n",
    "client/pkg/__init__.py": "from . import helper\nfrom .. import api\nimport tests.support\n",
}

EXPECTED = {
    "the broker core is sans-IO and reads no clock (time comes in as `now`)": [
        "broker/scheduler.py:2 imports time.monotonic",
    ],
    "zmq only in the socket-owning modules": ["broker/cli.py:2 imports zmq.asyncio"],
    "node and client use the broker's codec and frame I/O and nothing else of it": [
        "node/agent.py:3 imports broker.scheduler",
    ],
    "the broker never imports node or client": ["broker/server.py:3 imports node.agent"],
    "nothing imports a CLI, the tests or the tools": [
        "client/pkg/__init__.py:3 imports tests.support",
        "node/runner.py:3 imports node.cli.main",
    ],
}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.why)
def test_checker_finds_exactly_the_planted_violations(rule: Rule) -> None:
    assert violations(rule, FAKE) == EXPECTED.get(rule.why, [])


def test_relative_imports_resolve_against_the_package() -> None:
    found = [
        m for _, m in imported_modules(FAKE["client/pkg/__init__.py"], "client/pkg/__init__.py")
    ]
    assert found == ["client.pkg.helper", "client.api", "tests.support"]
    assert [m for _, m in imported_modules("from . import x", "broker/server.py")] == ["broker.x"]
