"""An elastic znode (`--min/--max`, issue 11) with a real broker: it grows while the broker
holds a backlog for its functions and shrinks back when its processes are idle."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from client import Client
from tests.e2e.conftest import Cluster
from tests.support import wait_until

TASKS = 20
MIN, MAX = 1, 4
SCALE_DOWN_AFTER = 2.0


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _sleep_tasks(url: str, out: dict[str, Any]) -> None:
    try:
        with Client(url, timeout=60) as client:
            out["results"] = client.map("sleep", [(1,)] * TASKS)  # pipelined
    except BaseException as exc:  # reported by the test thread
        out["error"] = exc


def test_an_elastic_node_grows_with_the_backlog_and_shrinks_when_idle(cluster: Cluster) -> None:
    broker = cluster.start_broker()
    elastic = ["--min", str(MIN), "--max", str(MAX), "--scale-down-after", str(SCALE_DOWN_AFTER)]
    znode = cluster.start_node(*elastic, functions="math", concurrency=None, name="el")
    cluster.wait_nodes("el.0")
    watched = [broker, znode]

    def processes() -> dict[str, int]:
        """The znode's registered processes that take work, name -> pid."""
        nodes = cluster.status()["nodes"]
        return {n["name"]: n["pid"] for n in nodes if n["state"] == "ready"}

    out: dict[str, Any] = {}
    client = threading.Thread(target=_sleep_tasks, args=(cluster.url, out), name="client")
    started = time.monotonic()
    client.start()
    try:
        grown = wait_until(
            lambda: found if len(found := processes()) >= 3 else None,
            5.0,
            what="at least 3 processes registered within 5 s of the submission",
            alive=watched,
        )
        assert set(grown) <= {f"el.{i}" for i in range(MAX)}, grown
        for pid in grown.values():  # alive, and the znode's own
            os.kill(pid, 0)
            assert _parent(pid) == znode.pid
    finally:
        client.join(60)
    assert not client.is_alive(), "the client did not get its answers within 60 s"
    assert "error" not in out, out.get("error")
    assert out["results"] == [1] * TASKS
    answered = time.monotonic() - started
    # 20 one-second tasks on at most 4 processes: at least 5 s; the growth made it well under
    # the 20 s one process would take.
    assert answered < 15, f"20 tasks answered after {answered:.1f} s"

    # Idle: back to the minimum after the idle period, each process stopped cleanly.
    wait_until(
        lambda: len(processes()) == MIN and cluster.node_names() == sorted(processes()),
        SCALE_DOWN_AFTER + 10,
        what=f"back to {MIN} process",
        alive=watched,
    )
    log = znode.log()
    assert "scaling up to 2 processes: broker backlog" in log, log  # the broker's hint
    assert "scaling up to 3 processes: " in log, log
    assert f"scaling down to {MIN}: process el." in log, log
    assert "restarting it" not in log, log  # a process stopped on purpose is not restarted
    counters = cluster.status()["counters"]
    assert counters.get("nodes_deregistered", 0) >= 2  # they said goodbye: nothing lost
    assert not counters.get("nodes_expired") and not counters.get("requeued"), counters
