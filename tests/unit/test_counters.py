"""The counters STATUS_REPLY carries: every one the scheduler can count is documented, in the
code (broker.core.status.COUNTERS) and in protocol.md 3.11, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from broker import protocol as p
from broker.core.status import COUNTERS

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = (ROOT / "broker" / "core" / "scheduler.py").read_text(encoding="utf-8")
PROTOCOL_MD = (ROOT / "protocol.md").read_text(encoding="utf-8")


def counted_by_the_scheduler() -> set[str]:
    names = set(re.findall(r'self\._counters\["(\w+)"\]', SCHEDULER))
    names |= {f"nodes_{why}" for why in re.findall(r'_lose_node\(\s*\w+,\s*"(\w+)"', SCHEDULER)}
    refused = [p.ERR_MALFORMED, p.ERR_UNSUPPORTED_VERSION, p.ERR_UNKNOWN_COMMAND, p.ERR_TOO_LARGE]
    refused.append(p.ERR_FORBIDDEN)  # the shell's gate refuses these (broker/gate.py)
    return names | {f"refused_{code}" for code in refused}


def test_every_counter_the_scheduler_keeps_is_documented_in_the_code() -> None:
    assert counted_by_the_scheduler() == COUNTERS.keys()
    assert 'f"refused_{error.code}"' in SCHEDULER  # the one counter name built from data


def test_protocol_md_lists_exactly_the_counters() -> None:
    section = PROTOCOL_MD.split("### 3.11 STATUS_REPLY")[1].split("### 3.12")[0]
    listed = re.findall(r"^\| `(\w+)` \| ", section.split("| Counter | Counts |")[1], re.M)
    assert listed == list(COUNTERS)
