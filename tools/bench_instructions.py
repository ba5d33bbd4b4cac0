"""Instructions per round trip in each process's Python, counted by valgrind's callgrind.

    .venv/bin/python tools/bench_instructions.py [--steps 10000] [WORKLOAD ...]

Wall-clock timings on a shared 2-core VM move by 20 % from one minute to the next, so a
change worth 2 % cannot be seen in them. An instruction count is the same on every run.
Each workload is the per-task code of one process, with its sockets replaced by stubs:

  client   Client.execute("noop"): EXECUTE out, TASK_COMPLETED in, the result decoded
  node     NodeAgent taking one RUN for `noop` and sending its RESULT (inline slot)
  broker   BrokerServer handling one EXECUTE and its RESULT: decode, schedule, encode, settle
  floor    what a bare relay's Python does for the broker's two messages: one orjson.loads
           and one orjson.dumps each (the relay in tools/bench_breakdown.py does even less)

Each workload prepares 2,000 + --steps steps (their messages) and runs under callgrind
twice: 2,000 steps, then all of them; the difference over --steps is the count per step
(start-up, imports and preparing cancel out). Needs
valgrind (Debian: apt-get install valgrind). Counts are x86-64 instructions of the whole
process, CPython's interpreter included; they do not include libzmq or the kernel.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from broker import protocol as p

ROOT = Path(__file__).resolve().parent.parent
WARM_STEPS = 2000
Step = Callable[[int], None]


def stub(module: Any, name: str, value: Any) -> None:
    """Replace a module's socket call for a workload (this process only)."""
    setattr(module, name, value)


def client_steps(n: int) -> Step:
    import client.api as api

    class Receiver:
        reply: list[bytes] = []

        def recv(self, timeout_ms: int) -> list[bytes]:
            return self.reply

    stub(api, "send_frames", lambda sock, frames, flags=0: None)
    client = api.Client("tcp://127.0.0.1:9")
    receiver: Any = Receiver()
    sock: Any = object()
    client._socket, client._receiver = sock, receiver
    prefix = client._id_prefix
    replies = [p.encode(p.TaskCompleted(f"{prefix}-{i + 1}", 0, b"null")) for i in range(n)]

    def step(i: int) -> None:
        receiver.reply = replies[i]
        client.execute("noop")

    return step


def node_steps(n: int) -> Step:
    import node.agent as agent
    import node.link as link

    node = agent.NodeAgent(agent.NodeConfig(("util",), broker_url="tcp://127.0.0.1:9"))
    node._pool.start()
    sock: Any = object()
    node._link.socket, node._link.registered = sock, True
    waiting: list[list[bytes]] = []
    stub(agent, "recv_frames", lambda s, flags=0: waiting.pop())
    stub(agent, "readable", lambda s: False)
    stub(link, "send_frames", lambda s, frames, flags=0: None)
    runs = [[b"", *p.encode(p.Run(f"{i:016x}-{i}", "noop", b"[]", 1))] for i in range(n)]

    def step(i: int) -> None:
        waiting.append(runs[i])
        node._drain_broker(sock)

    return step


def broker_steps(n: int) -> Step:
    import broker.server as server
    from broker.persistence import PersistenceConfig

    stub(server, "send_routed", lambda *args: None)
    config = server.BrokerConfig(persistence=PersistenceConfig(store=None))
    broker = server.BrokerServer(config)
    broker.restore()
    sock: Any = None
    broker._send_all(
        sock, broker._dispatch([b"N", b"", *p.encode(p.Register("n", "h", 1, ("noop",), 1))])
    )
    executes = [[b"C", b"", *p.encode(p.Execute(f"{i:016x}-{i}", "noop", b"[]"))] for i in range(n)]
    results = [[b"N", b"", *p.encode(p.Result(f"{i:016x}-{i}", 0, b"null"))] for i in range(n)]

    def handle(frames: list[bytes]) -> None:
        broker._send_all(sock, broker._dispatch(frames))
        broker._send_all(sock, broker._settle())

    def step(i: int) -> None:
        handle(executes[i])
        handle(results[i])

    return step


def floor_steps(n: int) -> Step:
    executes = [[b"C", b"", *p.encode(p.Execute(f"{i:016x}-{i}", "noop", b"[]"))] for i in range(n)]
    results = [[b"N", b"", *p.encode(p.Result(f"{i:016x}-{i}", 0, b"null"))] for i in range(n)]
    loads, dumps = orjson.loads, orjson.dumps
    waiting: dict[str, bytes] = {}

    def step(i: int) -> None:
        frames = executes[i]
        header = loads(frames[4])
        waiting[header["task_id"]] = frames[0]
        run = {"task_id": header["task_id"], "function": header["function"], "attempt": 1}
        [p.TAG, p.RUN, dumps(run), frames[5]]
        frames = results[i]
        header = loads(frames[4])
        waiting.pop(header["task_id"])
        done = {"task_id": header["task_id"], "exit_code": 0, "error": None, "attempts": 1}
        [p.TAG, p.TASK_COMPLETED, dumps(done), frames[5]]

    return step


WORKLOADS = {
    "client": client_steps,
    "node": node_steps,
    "broker": broker_steps,
    "floor": floor_steps,
}


def child(workload: str, prepared: int, steps: int) -> None:
    step = WORKLOADS[workload](prepared)
    for i in range(steps):
        step(i)
    os._exit(0)  # skip interpreter shutdown: not part of any count


def instructions(workload: str, prepared: int, steps: int) -> int:
    """Instructions of a process that prepares `prepared` steps and runs `steps` of them."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        workload,
        str(prepared),
        str(steps),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts on every run
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        sys.exit(f"error: callgrind run of {workload} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workloads", nargs="*", default=list(WORKLOADS), metavar="WORKLOAD")
    parser.add_argument("--steps", type=int, default=10_000, help="steps counted per workload")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        sys.exit(
            f"error: unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    if shutil.which("valgrind") is None:
        sys.exit("error: valgrind is not installed; on Debian or Ubuntu: apt-get install valgrind")
    for workload in args.workloads:
        print(f"{workload}: counting ...", file=sys.stderr)
        prepared = WARM_STEPS + args.steps
        base = instructions(workload, prepared, WARM_STEPS)
        total = instructions(workload, prepared, prepared)
        print(f"{workload:7} {(total - base) / args.steps:9,.0f} instructions per round trip")


if __name__ == "__main__":
    main()
