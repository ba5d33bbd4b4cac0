"""The project's benchmarks, as one command: `.venv/bin/python tools/bench.py SUBCOMMAND`.

  run           pipelined throughput (Client.map) and sequential latency (Client.execute)
  compare       ours against a bare pyzmq relay, alternating: bulk, in flight, sequential,
                the store's cost; medians, ratios and the targets
  breakdown     a sequential round trip against a bare pyzmq relay, and CPU per process
  instructions  instructions per round trip of client, node and broker (valgrind callgrind)
  store         the durable store alone: journal batches per second, and loading it
  frames        pyzmq's multipart calls against broker.protocol.frames
  concurrency   CPU-bound speedup of `znode --concurrency N` over 1
  expiry        a burst of queue deadlines: how soon all are answered, STATUS meanwhile
  core          the scheduler alone: cost per event with many tasks queued and nodes registered
  split         one job cut into parts on two nodes, against one task and multiprocessing.Pool
  observe       what the broker's metrics (and a monitor reading them) cost bulk throughput
  curve         what CurveZMQ costs bulk and sequential work, against no CURVE

`tools/bench.py SUBCOMMAND --help` says what each measures and how. Brokers and nodes are
started through client.cluster.LocalCluster, as a user starts them, on 127.0.0.1. Each prints
the median of its runs and every run; progress goes to stderr. Quote the medians.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import zmq

import compare
import curvebench
import obsbench
import splitbench
from broker import protocol as p
from broker.core.config import SchedulerConfig
from broker.core.events import Received, Send, Sent
from broker.core.journal import Change, SaveAnswer, SaveAttempts, SaveTask
from broker.core.scheduler import Scheduler
from broker.protocol.frames import (
    NOBLOCK,
    readable,
    recv_frames,
    send_frames,
    wait_readable,
)
from broker.store import Store
from client import Client, ControlClient, ReqLink
from client.cluster import LocalCluster
from client.pipeline import EXECUTE_BATCH_TASKS
from compare import Relay, children, progress
from node.config import DEFAULT_PREFETCH

Handler = Callable[[argparse.Namespace], None]
OFFSET = time.time() - time.monotonic()  # the wall_offset of the store and the scheduler
SENT = Sent()  # the event the server handles after carrying out a message's commands


def runs_text(values: Sequence[float], form: str = "{:,.0f}") -> str:
    return ", ".join(form.format(v) for v in values)


def print_json(result: object) -> None:
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


# ======================================================================================= run


def run(args: argparse.Namespace) -> None:
    """End-to-end on loopback: pipelined throughput and sequential REQ latency.

    Starts `zbroker start` and --nodes `znode --functions util` processes as a user would
    (the store in a temporary directory, unless --broker-arg says --store), then, --runs
    times:
      * throughput: `Client.map("noop", ...)` of --tasks no-op tasks;
      * futures: --tasks `Client.submit("noop")` futures at once, then every result;
      * latency: --calls sequential `Client.execute("noop")` round trips (p50 and p99).
    Reports the median over runs and every run, as text or --json."""
    node_args = ["--concurrency", str(args.concurrency), "--threads", str(args.threads)]
    cluster = LocalCluster(
        nodes=args.nodes,
        functions=["util"],
        node_args=[*node_args, *args.node_arg],
        broker_args=args.broker_arg,
    )
    with cluster:
        rates, future_rates, p50s, p99s = [], [], [], []
        for i in range(args.runs):
            rates.append(throughput(cluster.url, args.tasks))
            future_rates.append(futures_throughput(cluster.url, args.tasks))
            p50, p99 = latency(cluster.url, args.calls)
            p50s.append(p50)
            p99s.append(p99)
            progress(
                f"run {i + 1}/{args.runs}: {rates[-1]:,.0f} tasks/s pipelined, "
                f"{future_rates[-1]:,.0f} tasks/s as futures, p50 {p50:.0f} us, p99 {p99:.0f} us"
            )
    result = {
        "nodes": args.nodes,
        "concurrency": args.concurrency,
        "threads": args.threads,
        "tasks": args.tasks,
        "calls": args.calls,
        "runs": args.runs,
        "throughput_median": statistics.median(rates),
        "futures_median": statistics.median(future_rates),
        "latency_p50_us_median": statistics.median(p50s),
        "latency_p99_us_median": statistics.median(p99s),
        "throughput_runs": [round(r) for r in rates],
        "futures_runs": [round(r) for r in future_rates],
        "p50_runs": [round(v) for v in p50s],
        "p99_runs": [round(v) for v in p99s],
    }
    if args.json:
        print_json(result)
        return
    print(
        f"pipelined throughput: {result['throughput_median']:,.0f} tasks/s (median of "
        f"{args.runs} runs of {args.tasks} no-op tasks, {args.nodes} nodes; runs: "
        f"{runs_text(rates)})"
    )
    print(
        f"futures: {result['futures_median']:,.0f} tasks/s (median of {args.runs} runs of "
        f"{args.tasks} Client.submit futures at once; runs: {runs_text(future_rates)})"
    )
    print(
        f"sequential latency: p50 {result['latency_p50_us_median']:.0f} us, "
        f"p99 {result['latency_p99_us_median']:.0f} us (medians of {args.runs} runs of "
        f"{args.calls} calls; p50 runs: {runs_text(p50s)}; p99 runs: {runs_text(p99s)})"
    )


def throughput(url: str, tasks: int) -> float:
    with Client(url) as client:
        client.map("noop", [()] * 100)  # warm up connections and slots
        started = time.perf_counter()
        results = client.map("noop", [()] * tasks)
        elapsed = time.perf_counter() - started
    if len(results) != tasks:
        raise SystemExit(f"error: {len(results)} results for {tasks} tasks")
    return tasks / elapsed


def futures_throughput(url: str, tasks: int) -> float:
    with Client(url) as client:
        for future in [client.submit("noop") for _ in range(100)]:  # warm up
            future.result(60)
        started = time.perf_counter()
        futures = [client.submit("noop") for _ in range(tasks)]
        for future in futures:
            future.result(120)
        elapsed = time.perf_counter() - started
    return tasks / elapsed


def latency(url: str, calls: int) -> tuple[float, float]:
    samples = []
    with Client(url) as client:
        for _ in range(50):
            client.execute("noop")
        for _ in range(calls):
            started = time.perf_counter()
            client.execute("noop")
            samples.append(time.perf_counter() - started)
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


def add_run(sub: Any) -> None:
    parser = subcommand(sub, "run", run)
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per throughput run")
    parser.add_argument("--calls", type=int, default=2_000, help="round trips per latency run")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are reported")
    parser.add_argument("--nodes", type=int, default=2, help="znode processes")
    parser.add_argument("--concurrency", type=int, default=1, help="processes per znode")
    parser.add_argument("--threads", type=int, default=1, help="slot threads per process")
    parser.add_argument(
        "--node-arg", action="append", default=[], help="extra argument for znode (repeatable)"
    )
    parser.add_argument(
        "--broker-arg",
        action="append",
        default=[],
        help="extra argument for zbroker start (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


# ================================================================================= breakdown

RELAY_MESSAGE = p.execute_frames(p.TaskSpec("5664b89db55843a1817c9e10e9f6a667", "noop", b"[]"))
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def breakdown(args: argparse.Namespace) -> None:
    """Where a sequential round trip goes: our stack against a bare relay, and CPU per process.

    Alternates, --runs times, --calls sequential round trips through
      * relay: a ROUTER that only passes frames between a REQ client and one DEALER echo
        worker (all three using broker.protocol.frames), with an EXECUTE message of 4 frames;
      * ours: `Client.execute("noop")` through `zbroker start` and one `znode --concurrency 1`
        (`--store none` unless --store; each --broker-arg added to zbroker's command line);
    and reports the median p50 and every run's, then the CPU each process's threads spent per
    round trip and how often they were switched out (from /proc, over the last run), so that
    the cost above the relay can be placed. A voluntary switch is a thread that waits for a
    message; an involuntary one, a thread the kernel preempted for another on its CPU."""
    with Relay(workers=1) as relay:  # before this process has a ZeroMQ context
        context: zmq.Context[Any] = zmq.Context()
        req = context.socket(zmq.REQ)
        req.connect(relay.url)

        def relay_trip() -> None:
            send_frames(req, RELAY_MESSAGE)
            recv_frames(req)

        try:
            relay_pids = {"relay": relay.pids["relay"], "echo": relay.pids["echo-1"]}
            breakdown_runs(args, relay_trip, {**relay_pids, "client": os.getpid()})
        finally:
            context.destroy(linger=0)


ThreadFigures = tuple[float, float, float]  # CPU us (user + system), voluntary, involuntary


def thread_figures(pid: int) -> dict[str, ThreadFigures]:
    """Per thread of `pid`, by thread name and id: CPU microseconds (user + system) and
    context switches, voluntary and involuntary, since it started."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        switches = {
            key: int(value)
            for key, _, value in (
                line.partition(":\t")
                for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
            )
            if key.endswith("ctxt_switches")
        }
        out[f"{name}[{tid}]"] = (
            (int(fields[11]) + int(fields[12])) * TICK_US,
            float(switches.get("voluntary_ctxt_switches", 0)),
            float(switches.get("nonvoluntary_ctxt_switches", 0)),
        )
    return out


def timed(
    calls: int, round_trip: Callable[[], object], pids: dict[str, int]
) -> tuple[float, dict[str, dict[str, ThreadFigures]]]:
    """p50 in microseconds, and per process thread its CPU and switches per round trip."""
    before = {name: thread_figures(pid) for name, pid in pids.items()}
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - started)
    after = {name: thread_figures(pid) for name, pid in pids.items()}
    per_trip = {
        name: {
            thread: _per_call(figures, before[name].get(thread, (0.0, 0.0, 0.0)), calls)
            for thread, figures in after[name].items()
        }
        for name in pids
    }
    return statistics.quantiles(samples, n=100)[49] * 1e6, per_trip


def _per_call(after: ThreadFigures, before: ThreadFigures, calls: int) -> ThreadFigures:
    cpu, voluntary, involuntary = (a - b for a, b in zip(after, before, strict=True))
    return cpu / calls, voluntary / calls, involuntary / calls


def breakdown_runs(
    args: argparse.Namespace, relay_trip: Callable[[], None], relay_pids: dict[str, int]
) -> None:
    """Alternate the relay and our stack; print the medians and the last run's CPU."""
    broker_args = ([] if args.store else ["--store", "none"]) + args.broker_arg
    p50s: dict[str, list[float]] = {"relay": [], "ours": []}
    cpu: dict[str, dict[str, dict[str, ThreadFigures]]] = {}
    cluster = LocalCluster(nodes=1, functions=["util"], broker_args=broker_args)
    with cluster, Client(cluster.url) as client:
        assert cluster.broker is not None
        ours_pids = {"broker": cluster.broker.pid, "client": os.getpid()}
        for pid in children(cluster.broker.pid):  # the store's writer, with --store
            ours_pids["writer"] = pid
        for i, pid in enumerate(children(cluster.nodes[0].pid)):  # serving and spare
            ours_pids[f"node-{i + 1}"] = pid
        for _ in range(200):  # warm up both
            relay_trip()
            client.execute("noop")
        for i in range(args.runs):
            p50, cpu["relay"] = timed(args.calls, relay_trip, relay_pids)
            p50s["relay"].append(p50)
            p50, cpu["ours"] = timed(args.calls, lambda: client.execute("noop"), ours_pids)
            p50s["ours"].append(p50)
            relay_p50 = p50s["relay"][-1]
            progress(f"run {i + 1}/{args.runs}: relay {relay_p50:.0f} us, ours {p50:.0f} us")
    for name, values in p50s.items():
        print(
            f"{name}: p50 {statistics.median(values):.0f} us (median of {len(values)} runs: "
            f"{runs_text(values)})"
        )
    print(
        "Per round trip in the last run, threads above 1 us: CPU (us, user + system), "
        "context switches (voluntary, involuntary):"
    )
    for stack, processes in cpu.items():
        for process, threads in processes.items():
            for thread, (us, voluntary, involuntary) in threads.items():
                if us >= 1:
                    print(
                        f"  {stack:5} {process:7} {thread:28} {us:6.0f}   "
                        f"{voluntary:5.2f} {involuntary:5.2f}"
                    )


def add_breakdown(sub: Any) -> None:
    parser = subcommand(sub, "breakdown", breakdown)
    parser.add_argument("--calls", type=int, default=2000, help="round trips per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; medians are reported")
    parser.add_argument("--store", action="store_true", help="run the broker with its store")
    parser.add_argument(
        "--broker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for zbroker start, e.g. --broker-arg=--store-delay=0.1 "
        "(repeat it for several)",
    )


# =================================================================================== compare


def add_compare(sub: Any) -> None:
    compare.add_arguments(subcommand(sub, "compare", compare.compare))


# ============================================================================== instructions

WARM_STEPS = 2000
Step = Callable[[int], None]


def instructions(args: argparse.Namespace) -> None:
    """Instructions per round trip in each process's Python, counted by valgrind's callgrind.

    Wall-clock timings on a shared 2-core VM move by 20 % from one minute to the next, so a
    change worth 2 % cannot be seen in them. An instruction count is the same on every run.
    Each workload is the per-task code of one process, its sockets replaced by stubs:

      client  Client.execute("noop"): EXECUTE out, TASK_COMPLETED in, the result decoded
      node    NodeAgent taking one RUN for `noop` and sending its RESULT (inline slot)
      broker  BrokerServer handling one EXECUTE and its RESULT as its loop does for each
              message: decode to an event, handle it, carry out the commands, then `Sent`
      broker-no-metrics  the same with `zbroker start --no-metrics`
      broker-journal  the same with a journal, as with a store: the changes each message
              makes are noted for the next group commit (handed over, and STORED sent,
              every 10 steps; the writer's own work is not counted)
      broker-bulk  the broker's share of Client.map: a step is one packed EXECUTE of 64
              tasks in, and one packed RESULT from each of two packed nodes (capacity 1,
              --prefetch 64) answering their 32 oldest tasks, with the journal on and a
              group commit per step; counted per task. The nodes set the pace, so the
              broker keeps a queue, as in a bulk run; the stub nodes' reading of the RUN
              headers (one orjson.loads per RUN) is counted too
      floor   what a bare relay's Python does for the broker's two messages: one
              orjson.loads and one orjson.dumps each (the breakdown's relay does even less)

    Each workload prepares 2,000 + --steps steps (their messages) and runs under callgrind
    twice: 2,000 steps, then all of them; the difference over --steps is the count per step
    (start-up, imports and preparing cancel out). Needs valgrind (Debian: apt-get install
    valgrind). Counts are x86-64 instructions of the whole process, CPython's interpreter
    included; they do not include libzmq or the kernel."""
    if args.child:
        workload, prepared, steps = args.child
        step = WORKLOADS[workload](int(prepared))
        for i in range(int(steps)):
            step(i)
        os._exit(0)  # skip interpreter shutdown: not part of any count
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        raise SystemExit(
            f"error: unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    if shutil.which("valgrind") is None:
        raise SystemExit(
            "error: valgrind is not installed; on Debian or Ubuntu: apt-get install valgrind"
        )
    for workload in args.workloads:
        progress(f"{workload}: counting ...")
        prepared = WARM_STEPS + args.steps
        base = count_instructions(workload, prepared, WARM_STEPS)
        total = count_instructions(workload, prepared, prepared)
        tasks = TASKS_PER_STEP.get(workload, 1)
        unit = "task (in bulk)" if tasks > 1 else "round trip"
        print(f"{workload:7} {(total - base) / args.steps / tasks:9,.0f} instructions per {unit}")


def count_instructions(workload: str, prepared: int, steps: int) -> int:
    """Instructions of a process that prepares `prepared` steps and runs `steps` of them."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, str(Path(__file__).resolve()), "instructions", "--child", workload]
    command += [str(prepared), str(steps)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts on every run
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"error: callgrind run of {workload} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def stub(module: Any, name: str, value: Any) -> None:
    """Replace a module's socket call for a workload (this process only)."""
    setattr(module, name, value)


def client_steps(n: int) -> Step:
    import client.link as link

    class Receiver:
        """In place of the REQ socket's TimedReceiver: every wait gives the next reply."""

        sock: Any = None
        reply: list[bytes] = []

        def recv(self, timeout_ms: int) -> list[bytes]:
            return self.reply

    stub(link, "send_frames", lambda sock, frames, flags=0: None)
    client = Client("tcp://127.0.0.1:9")
    receiver: Any = Receiver()
    client._link._receiver = receiver
    prefix = client._id_prefix
    replies = [p.encode(p.TaskCompleted(f"{prefix}-{i + 1}", 0, b"null")) for i in range(n)]

    def step(i: int) -> None:
        receiver.reply = replies[i]
        client.execute("noop")

    return step


def node_steps(n: int) -> Step:
    import node.agent as agent
    import node.link as link
    from node.config import NodeConfig

    node = agent.NodeAgent(NodeConfig(("util",), broker_url="tcp://127.0.0.1:9"))
    node._slots.start()
    sock: Any = object()
    node._link.socket, node._link.registered = sock, True
    waiting: list[list[bytes]] = []
    stub(agent, "recv_frames", lambda s, flags=0: waiting.pop())
    stub(agent, "readable", lambda s: False)
    stub(link, "send_frames", lambda s, frames, flags=0: None)
    runs = [[b"", *p.run_frames(p.Run(f"{i:016x}-{i}", "noop", b"[]", 1))] for i in range(n)]

    def step(i: int) -> None:
        waiting.append(runs[i])
        node._drain_broker(sock)
        node._run_held()

    return step


def broker_steps(n: int, metrics: bool = True, journal: bool = False) -> Step:
    import broker.server as server
    from broker.store import PersistenceConfig

    stub(server, "send_routed", lambda *args: None)
    scheduler = SchedulerConfig(metrics=metrics)
    # A dead-letter log alone makes the scheduler keep its journal, without a writer process
    # (every task succeeds: nothing is written to it).
    log = os.devnull if journal else None
    persistence = PersistenceConfig(store=None, dead_letter_log=log)
    config = server.BrokerConfig(scheduler=scheduler, persistence=persistence)
    broker = server.BrokerServer(config)
    broker.restore()
    router: Any = object() if journal else None  # (its sends are stubbed)
    broker._router = router  # where STORED goes

    def handle(frames: list[bytes]) -> None:
        """What BrokerServer._drain does for each message it receives."""
        broker._process(router, frames)

    handle([b"N", b"", *p.encode(p.Register("n", "h", 1, ("noop",), 1))])
    ids = [f"{i:016x}-{i}" for i in range(n)]
    executes = [[b"C", b"", *p.execute_frames(p.TaskSpec(t, "noop", b"[]"))] for t in ids]
    results = [[b"N", b"", *p.result_frames(t, 0, b"null", None, 1)] for t in ids]

    def step(i: int) -> None:
        handle(executes[i])
        handle(results[i])
        if journal and i % 10 == 9:  # a group commit about every 10 round trips
            broker._save()

    return step


BULK_BATCH = EXECUTE_BATCH_TASKS  # tasks per EXECUTE, as Client.map sends them
BULK_WINDOW = -(-compare.MAP_WINDOW // BULK_BATCH)  # EXECUTE batches filling Client.map's window


class BrokerBulk:
    """The `broker-bulk` workload. Step i: one packed EXECUTE of BULK_BATCH tasks in; each
    of two packed nodes (capacity 1) answers the BULK_BATCH / 2 oldest tasks sent to it in
    one packed RESULT. The nodes set the pace, as in a bulk run: the broker keeps the rest of
    the window queued. `broker` and `answered` are there for a test to check."""

    def __init__(self, n: int) -> None:
        import broker.outbox as outbox
        import broker.server as server
        from broker.store import PersistenceConfig

        self.sent = {b"N1": deque[str](), b"N2": deque[str]()}  # the tasks each was sent
        self.answered = 0  # tasks answered to the client
        stub(server, "send_routed", self._capture)
        stub(outbox, "send_routed", self._capture)
        log = os.devnull  # a dead-letter log alone keeps the journal on, without a writer
        config = server.BrokerConfig(persistence=PersistenceConfig(store=None, dead_letter_log=log))
        self.broker = server.BrokerServer(config)
        self.broker.restore()
        router: Any = object()  # (its sends are stubbed)
        self.router = router
        self.broker._router = router
        for node in self.sent:
            register = p.Register(
                node.decode(), "h", 1, ("noop",), 1, prefetch=DEFAULT_PREFETCH, packed=True
            )
            self.broker._process(self.router, [node, b"", *p.encode(register)])
        ids = [f"{i:016x}-{i}" for i in range((n + BULK_WINDOW) * BULK_BATCH)]
        specs = [p.Execute(p.TaskSpec(task_id, "noop", b"[]")) for task_id in ids]
        self.executes = [
            [b"C", b"", *p.encode_tasks(specs[i : i + BULK_BATCH], True)]
            for i in range(0, len(specs), BULK_BATCH)
        ]
        self.results = {t: p.result_frames(t, 0, b"null", None, 1) for t in ids}
        for i in range(BULK_WINDOW):  # a window in flight before the first step
            self.broker._process(self.router, self.executes[n + i])

    def _capture(self, sock: Any, peer: bytes, frames: Sequence[bytes], flags: int = 0) -> None:
        """A send of the broker's: a node notes the tasks of a RUN, the client counts."""
        if peer == b"C":
            if frames[1] == p.TASK_COMPLETED:  # packed (5 frames: sizes 4th) or in pairs
                self.answered += (
                    len(orjson.loads(frames[3])) if len(frames) == 5 else (len(frames) - 2) // 2
                )
        elif frames[1] == p.RUN:
            headers = orjson.loads(frames[2]) if len(frames) == 5 else [orjson.loads(frames[2])]
            self.sent[peer].extend(header["task_id"] for header in headers)

    def __call__(self, i: int) -> None:
        broker, router, results = self.broker, self.router, self.results
        for node, sent in self.sent.items():
            ran = [results[sent.popleft()] for _ in range(min(len(sent), BULK_BATCH // 2))]
            if ran:
                packed = p.encode_packed_frames(ran) if len(ran) > 1 else ran[0]
                broker._process(router, [node, b"", *packed])
        broker._process(router, self.executes[i])
        broker._save()  # a group commit about every BULK_BATCH tasks


def floor_steps(n: int) -> Step:
    ids = [f"{i:016x}-{i}" for i in range(n)]
    executes = [[b"C", b"", *p.execute_frames(p.TaskSpec(t, "noop", b"[]"))] for t in ids]
    results = [[b"N", b"", *p.result_frames(t, 0, b"null", None, 1)] for t in ids]
    loads, dumps = orjson.loads, orjson.dumps
    waiting: dict[str, bytes] = {}

    def step(i: int) -> None:
        frames = executes[i]
        header = loads(frames[4])
        waiting[header["task_id"]] = frames[0]
        run_header = {"task_id": header["task_id"], "function": header["function"], "attempt": 1}
        [p.TAG, p.RUN, dumps(run_header), frames[5]]
        frames = results[i]
        header = loads(frames[4])
        waiting.pop(header["task_id"])
        done = {"task_id": header["task_id"], "exit_code": 0, "error": None, "attempts": 1}
        [p.TAG, p.TASK_COMPLETED, dumps(done), frames[5]]

    return step


WORKLOADS: dict[str, Callable[[int], Step]] = {
    "client": client_steps,
    "node": node_steps,
    "broker": broker_steps,
    "broker-no-metrics": lambda n: broker_steps(n, metrics=False),
    "broker-journal": lambda n: broker_steps(n, journal=True),
    "broker-bulk": BrokerBulk,
    "floor": floor_steps,
}
TASKS_PER_STEP = {"broker-bulk": BULK_BATCH}  # (other workloads: one round trip a step)


def add_instructions(sub: Any) -> None:
    parser = subcommand(sub, "instructions", instructions)
    parser.add_argument(
        "workloads",
        nargs="*",
        default=list(WORKLOADS),
        metavar="WORKLOAD",
        help=f"any of {', '.join(WORKLOADS)} (default: all)",
    )
    parser.add_argument("--steps", type=int, default=10_000, help="steps counted per workload")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)


# ===================================================================================== store

BROKER_RATE = 20_000.0  # tasks/s, pipelined, memory only (README)
Pattern = Callable[[int, int, bytes], Iterator[list[Change]]]


def store(args: argparse.Namespace) -> None:
    """The durable store alone: how many tasks per second `Store.apply` records.

    The broker's journal for each task: a SaveTask when it is accepted, a SaveAttempts when
    its RUN goes to a node, a SaveAnswer with a small result when it is answered.
      * pipelined: each apply() holds the SaveTask of `batch` new tasks, the SaveAttempts
        of the `batch` before them and the SaveAnswer of the `batch` before those (as in
        the broker under load, where a task is accepted, placed and answered in three
        group commits: four statements a task);
      * same batch: each apply() saves and answers the same `batch` tasks (they cancel out);
      * load: Store.load() of a store holding 10,000 pending tasks and the kept answers.
    Kept answers are pruned to the newest 100,000 every 10,000 tasks, as the broker does.
    It prints wall-clock rates (what the broker's thread pays, disk waits included) and the
    CPU time per task (steadier on a busy machine). Each run uses a fresh store file; medians
    over --runs. The broker's own pipelined figure is ~20,000 tasks/s; the store costs it
    1/rate seconds per task on the server's thread."""
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, pattern in (("pipelined", pipelined), ("same batch", same_batch)):
            for batch in args.batches:
                progress(f"{name}, {batch} tasks/apply: {args.runs} runs ...")
                runs = [
                    store_run(Path(tmp) / f"{name[0]}{batch}-{n}.db", pattern, args, batch)
                    for n in range(args.runs)
                ]
                store_report(name, batch, [rate for rate, _ in runs], [cpu for _, cpu in runs])
        seconds, tasks, answers = time_load(Path(tmp) / "load.db", args)
        print(f"load: {tasks:,} tasks and {answers:,} answers in {seconds * 1000:.0f} ms")


def save_task(n: int, payload: bytes) -> SaveTask:
    return SaveTask(p.TaskSpec(f"task-{n}", "noop", payload, 5, 3), n, float(n))


def save_answer(n: int, payload: bytes) -> SaveAnswer:
    return SaveAnswer(p.TaskCompleted(f"task-{n}", 0, payload, None, 1), float(n))


def pipelined(tasks: int, batch: int, payload: bytes) -> Iterator[list[Change]]:
    for start in range(0, tasks + 2 * batch, batch):
        new = [save_task(n, payload) for n in range(start, min(start + batch, tasks))]
        run = range(max(start - batch, 0), min(start, tasks))
        started = [SaveAttempts(f"task-{n}", 1) for n in run]
        done = [
            save_answer(n, payload)
            for n in range(max(start - 2 * batch, 0), min(start - batch, tasks))
        ]
        yield [*new, *started, *done]


def same_batch(tasks: int, batch: int, payload: bytes) -> Iterator[list[Change]]:
    for start in range(0, tasks, batch):
        numbers = range(start, min(start + batch, tasks))
        yield [
            *(save_task(n, payload) for n in numbers),
            *(save_answer(n, payload) for n in numbers),
        ]


def payload_of(size: int) -> bytes:
    return b"[%s]" % (b"1" * max(size - 2, 0))


def store_run(
    path: Path, pattern: Pattern, args: argparse.Namespace, batch: int
) -> tuple[float, float]:
    """(tasks/s, CPU seconds per task) of apply() and the pruning alone: the changes are built
    beforehand. CPU time leaves out waits for the disk and for other processes."""
    batches = list(pattern(args.tasks, batch, payload_of(args.payload)))
    opened = Store.open(path, durable_sync=args.durable_sync)
    try:
        elapsed = cpu = 0.0
        for n, changes in enumerate(batches):
            started, started_cpu = time.perf_counter(), time.thread_time()
            opened.apply(changes, OFFSET)
            if n % max(10_000 // batch, 1) == 0:
                opened.prune_results(0.0, OFFSET, keep=100_000)
            elapsed += time.perf_counter() - started
            cpu += time.thread_time() - started_cpu
    finally:
        opened.close()
    return args.tasks / elapsed, cpu / args.tasks


def time_load(path: Path, args: argparse.Namespace) -> tuple[float, int, int]:
    """Seconds to load a store with 10,000 pending tasks after `--tasks` answered ones."""
    payload = payload_of(args.payload)
    opened = Store.open(path)
    try:
        for changes in pipelined(args.tasks, 256, payload):
            opened.apply(changes, OFFSET)
        pending = range(args.tasks, args.tasks + 10_000)
        opened.apply([save_task(n, payload) for n in pending], OFFSET)
        started = time.perf_counter()
        restored = opened.load(OFFSET, time.monotonic())
        return time.perf_counter() - started, len(restored.pending), len(restored.answers)
    finally:
        opened.close()


def store_report(name: str, batch: int, rates: list[float], cpus: list[float]) -> None:
    rate, cpu = statistics.median(rates), statistics.median(cpus)
    broker = 1 / (1 / BROKER_RATE + 1 / rate)  # both on the server's one thread
    print(
        f"{name:>10}, {batch:>3} tasks/apply: {rate:>8,.0f} tasks/s median, "
        f"{1e6 / rate:.1f} us/task ({cpu * 1e6:.1f} us CPU); a {BROKER_RATE:,.0f}/s broker "
        f"would do ~{broker:,.0f}/s ({broker / BROKER_RATE - 1:+.0%}). Runs: {runs_text(rates)}"
    )


def add_store(sub: Any) -> None:
    parser = subcommand(sub, "store", store)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per run")
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[64, 256], help="tasks per apply()"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median shown)")
    parser.add_argument("--payload", type=int, default=16, help="bytes of arguments and result")
    parser.add_argument("--durable-sync", action="store_true", help="synchronous=FULL")
    parser.add_argument("--dir", type=Path, default=None, help="where the store files go")


# ==================================================================================== frames

FRAMES = p.execute_frames(p.TaskSpec("5664b89db55843a1817c9e10e9f6a667", "noop", b"[]"))


def frames(args: argparse.Namespace) -> None:
    """Cost of moving one ZTB message through pyzmq: its Python wrappers against
    broker.protocol.frames.

    Sends a 4-frame EXECUTE message over an inproc PAIR and receives it, --messages times,
    each way of doing it in turn, --runs times; prints the median microseconds per message
    and every run's. In process and hot in cache, so it shows the wrappers' cost, not what a
    message costs between processes (`run` measures that). Then the same for a look at a
    socket with nothing waiting (`readable`: a getsockopt(ZMQ_EVENTS), which polls libzmq's
    mailbox), as a node's loop makes between the tasks it runs."""
    context: zmq.Context[Any] = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://bench-frames")
    b.connect("inproc://bench-frames")
    timings: dict[str, list[float]] = {}
    try:
        for i in range(args.runs):
            for name, move in ways(a, b).items():
                started = time.perf_counter()
                for _ in range(args.messages):
                    move()
                elapsed = time.perf_counter() - started
                timings.setdefault(name, []).append(elapsed / args.messages * 1e6)
            started = time.perf_counter()
            for _ in range(args.messages):
                readable(b)
            elapsed = time.perf_counter() - started
            timings.setdefault(LOOK, []).append(elapsed / args.messages * 1e6)
            progress(f"run {i + 1}/{args.runs} done")
    finally:
        context.destroy(linger=0)
    for name, values in timings.items():
        unit = "look" if name == LOOK else "message"
        print(
            f"{name:49} {statistics.median(values):5.2f} us per {unit} (median of "
            f"{args.runs}: {runs_text(values, '{:.2f}')})"
        )


LOOK = "readable(), nothing waiting"


def ways(a: zmq.Socket[Any], b: zmq.Socket[Any]) -> dict[str, Callable[[], object]]:
    more = int(zmq.SNDMORE)

    def multipart() -> object:
        a.send_multipart(FRAMES, zmq.NOBLOCK)
        return b.recv_multipart(zmq.NOBLOCK)

    def frame_by_frame() -> object:
        for frame in FRAMES[:-1]:
            a.send(frame, more)
        a.send(FRAMES[-1])
        received = [b.recv()]
        while b.getsockopt(zmq.RCVMORE):
            received.append(b.recv())
        return received

    def ours() -> object:
        send_frames(a, FRAMES, NOBLOCK)
        return recv_frames(b, NOBLOCK)

    return {
        "send_multipart + recv_multipart": multipart,
        "send/recv + getsockopt(RCVMORE)": frame_by_frame,
        "broker.protocol.frames send_frames + recv_frames": ours,
    }


def add_frames(sub: Any) -> None:
    parser = subcommand(sub, "frames", frames)
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run")
    parser.add_argument("--runs", type=int, default=5, help="runs; the median is reported")


# =============================================================================== concurrency


def concurrency(args: argparse.Namespace) -> None:
    """CPU-bound speedup of `znode --concurrency N` over --concurrency 1.

    For each concurrency (1, then N), starts `zbroker start` and one `znode --functions util
    --concurrency C`, runs --tasks `burn(--work)` tasks with `Client.map`, and reports the
    median wall time over --runs, every run's, and the speedup."""
    one = concurrency_runs(args, 1)
    many = concurrency_runs(args, args.concurrency)
    one_median, many_median = statistics.median(one), statistics.median(many)
    print(
        f"{args.tasks} x burn({args.work}): concurrency 1 {one_median:.2f} s, "
        f"concurrency {args.concurrency} {many_median:.2f} s: speedup "
        f"{one_median / many_median:.2f}x (medians of {args.runs} runs; runs: "
        f"{runs_text(one, '{:.2f}')} s and {runs_text(many, '{:.2f}')} s)"
    )


def concurrency_runs(args: argparse.Namespace, processes: int) -> list[float]:
    times = []
    cluster = LocalCluster(nodes=1, functions=["util"], node_args=["--concurrency", str(processes)])
    with cluster, Client(cluster.url, timeout=600) as client:
        client.map("burn", [(1000,)] * processes * 2)  # warm up every process
        for i in range(args.runs):
            started = time.perf_counter()
            client.map("burn", [(args.work,)] * args.tasks)
            times.append(time.perf_counter() - started)
            progress(f"concurrency {processes} run {i + 1}: {times[-1]:.2f} s")
    return times


def add_concurrency(sub: Any) -> None:
    parser = subcommand(sub, "concurrency", concurrency)
    parser.add_argument("--tasks", type=int, default=8, help="burn tasks per run")
    parser.add_argument("--work", type=int, default=3_000_000, help="iterations per burn task")
    parser.add_argument("--runs", type=int, default=3, help="runs per concurrency")
    parser.add_argument("--concurrency", type=int, default=2, help="compared with 1")


# ==================================================================================== expiry

BUSY_SECONDS = 86_400  # the task that keeps the one slot busy: longer than any run
EXPIRY_BATCH = 256  # tasks per EXECUTE message (protocol.md 2.4)


def expiry(args: argparse.Namespace) -> None:
    """A burst of queue deadlines: N tasks that expire together, and STATUS meanwhile.

    Starts `zbroker start --store none` and one `znode --functions math --concurrency 1`
    (one slot), keeps its slot busy with `sleep(86400)`, then, --runs times: submits --tasks
    `multiply` tasks with a --queue-timeout from one DEALER peer (256 per EXECUTE message),
    waits until the broker holds them all queued, and from then on sends STATUS requests one
    after another (as `zbroker status` does) while it takes the answers. Every task must be
    answered Expired (exit 125). Reports the time from the deadlines until the last answer
    arrived (from the last task's deadline, and from the first's: the deadlines spread over
    the time the broker took to accept the tasks) and the median and longest STATUS round
    trip from the first deadline until the last answer. A scheduler whose cost per expiry
    grows with the queue takes minutes here (quadratic: ~100 s for 40,000 tasks)."""
    cluster = LocalCluster(
        nodes=1,
        functions=["math"],
        broker_args=["--store", "none"],
        node_args=["--concurrency", "1", "--threads", "1"],
    )
    with cluster, ReqLink(cluster.url, resend_interval=30.0) as link:
        control = ControlClient(link)
        context: zmq.Context[Any] = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # every EXECUTE is queued at once, never dropped
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.connect(cluster.url)
        try:
            busy = p.TaskSpec("busy", "sleep", b"[%d]" % BUSY_SECONDS, retries=0)
            send_frames(sock, [b"", *p.execute_frames(busy)])
            cluster.wait_for(lambda: control.status()["running"] == 1, "the busy task to start")
            bursts = []
            for i in range(args.runs):
                bursts.append(expiry_burst(sock, control, args, f"run{i}"))
                b = bursts[-1]
                progress(
                    f"run {i + 1}/{args.runs}: all answered {b['after_last_deadline_s']:.3f} s "
                    f"after the last deadline; STATUS median {b['status_median_ms']:.1f} ms, "
                    f"max {b['status_max_ms']:.1f} ms"
                )
        finally:
            context.destroy(linger=0)
            # Its busy task would hold a stopping node for a day: SIGKILL (its processes die
            # with it), then the broker stops as usual.
            cluster.nodes[0].signal(signal.SIGKILL)
    expiry_report(args, bursts)


def expiry_burst(
    sock: zmq.Socket[Any], control: ControlClient, args: argparse.Namespace, prefix: str
) -> dict[str, Any]:
    """One burst: submit, wait until all are queued, then STATUS and answers until all are
    answered; the figures of the burst."""
    total, queue_timeout = args.tasks, args.queue_timeout
    before = control.status()["counters"].get("expired", 0)
    first_sent, all_queued = submit_burst(sock, control, total, queue_timeout, prefix)
    first_deadline, last_deadline = first_sent + queue_timeout, all_queued + queue_timeout
    last_answer, round_trips = take_expiries(sock, control, total, first_deadline)
    counted = control.status()["counters"].get("expired", 0) - before
    return {
        "tasks": total,
        "expired_counted_by_broker": counted,
        "accepting_s": round(all_queued - first_sent, 3),
        "after_last_deadline_s": round(last_answer - last_deadline, 3),
        "after_first_deadline_s": round(last_answer - first_deadline, 3),
        "status_requests": len(round_trips),
        "status_median_ms": round(statistics.median(round_trips) * 1000, 2),
        "status_max_ms": round(max(round_trips) * 1000, 2),
    }


def submit_burst(
    sock: zmq.Socket[Any], control: ControlClient, total: int, queue_timeout: float, prefix: str
) -> tuple[float, float]:
    """Send `total` tasks (ids `prefix`-i); when the first was sent and when STATUS showed them
    all queued. Their deadlines lie between those two times plus the queue timeout."""
    specs = [
        p.TaskSpec(f"{prefix}-{i}", "multiply", b"[%d,2]" % i, queue_timeout=queue_timeout)
        for i in range(total)
    ]
    messages = [
        [b"", *p.encode_batch([p.Execute(spec) for spec in specs[start : start + EXPIRY_BATCH]])]
        for start in range(0, total, EXPIRY_BATCH)
    ]
    first_sent = time.monotonic()
    for message in messages:
        send_frames(sock, message)
    while control.status()["queued"] < total:
        if time.monotonic() >= first_sent + queue_timeout:
            raise SystemExit(
                f"error: the broker took longer than the queue timeout ({queue_timeout:g} s) "
                f"to accept {total:,} tasks; raise --queue-timeout"
            )
    return first_sent, time.monotonic()


def take_expiries(
    sock: zmq.Socket[Any], control: ControlClient, total: int, first_deadline: float
) -> tuple[float, list[float]]:
    """STATUS after STATUS, and between two of them every answer waiting, until `total`
    tasks are answered Expired; when the last answer came, and the round trips of the STATUS
    requests sent from `first_deadline` on."""
    expired = 0
    last_answer = 0.0
    round_trips: list[float] = []
    wait_readable(sock, max(0, int((first_deadline - time.monotonic()) * 1000)))
    give_up = first_deadline + 600
    while expired < total:
        asked = time.monotonic()
        control.status(timeout=30)
        if asked >= first_deadline:
            round_trips.append(time.monotonic() - asked)
        while readable(sock):
            for answer in answers(recv_frames(sock, NOBLOCK)):
                if answer.exit_code != p.EXIT_EXPIRED:
                    raise SystemExit(f"error: {answer.task_id} was answered {answer!r}")
                expired += 1
            last_answer = time.monotonic()
        if time.monotonic() > give_up:
            raise SystemExit(f"error: {total - expired:,} tasks unanswered 600 s after the burst")
    return last_answer, round_trips


def answers(frames: list[bytes]) -> list[p.TaskCompleted]:
    """The TASK_COMPLETEDs in one message from the broker (one, or a batch of them)."""
    message = p.decode(frames[1:])
    if isinstance(message, p.TaskCompleted):
        return [message]
    if isinstance(message, p.Batch):
        return [item for item in message.items if isinstance(item, p.TaskCompleted)]
    raise SystemExit(f"error: the broker answered a task with {message!r}")


def expiry_report(args: argparse.Namespace, bursts: list[dict[str, Any]]) -> None:
    def column(key: str) -> list[float]:
        return [float(b[key]) for b in bursts]

    result = {
        "tasks": args.tasks,
        "queue_timeout_s": args.queue_timeout,
        "runs": args.runs,
        "after_last_deadline_s_median": statistics.median(column("after_last_deadline_s")),
        "after_first_deadline_s_median": statistics.median(column("after_first_deadline_s")),
        "status_median_ms_median": statistics.median(column("status_median_ms")),
        "status_max_ms_median": statistics.median(column("status_max_ms")),
        "bursts": bursts,
    }
    if args.json:
        print_json(result)
        return
    print(
        f"{args.tasks:,} tasks expiring together (queue timeout {args.queue_timeout:g} s), "
        f"medians of {args.runs} runs:"
    )
    lines = [
        ("answered Expired after the last deadline", "after_last_deadline_s", "{:.3f} s"),
        ("answered Expired after the first deadline", "after_first_deadline_s", "{:.3f} s"),
        ("accepting them took (the deadlines' spread)", "accepting_s", "{:.3f} s"),
        ("STATUS round trip meanwhile, median", "status_median_ms", "{:.1f} ms"),
        ("STATUS round trip meanwhile, longest", "status_max_ms", "{:.1f} ms"),
    ]
    for text, key, form in lines:
        values = column(key)
        median = form.format(statistics.median(values))
        print(f"  {text:45} {median:>10} (runs: {runs_text(values, form)})")
    requests = runs_text(column("status_requests"))
    print(f"  STATUS requests during the bursts: {requests}")


def add_expiry(sub: Any) -> None:
    parser = subcommand(sub, "expiry", expiry)
    parser.add_argument("--tasks", type=int, default=50_000, help="tasks that expire together")
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=5.0,
        help="seconds each may wait; must outlast accepting them all",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


# ====================================================================================== core

CORE_CLIENT = b"client"


def core(args: argparse.Namespace) -> None:
    """The scheduler alone: what one event costs with many tasks queued and nodes registered.

    broker.core.scheduler.Scheduler driven with Received and Sent events as the server
    drives it, without sockets or store. For each --queued n and --nodes m: m one-slot nodes
    are registered and busy, n tasks wait queued behind them. Then
      * round: one EXECUTE (queued at the back), its Sent, one RESULT from a node (answered;
        the freed slot takes the next queued task) and its Sent: n and m stay the same;
      * expiry: min(n, 10,000) more tasks with a queue timeout join the queue, and `tick`
        answers them Expired when their deadline passes (512 per tick, as in the broker).
    Reports the median microseconds per round (over --samples samples of --rounds rounds)
    and per expiry (over the ticks), with the slowest sample's. The cost should grow like
    log n and log m at most: compare the rows."""
    rows = []
    for queued in args.queued:
        for nodes in args.nodes:
            started = time.perf_counter()
            row = core_case(queued, nodes, args)
            rows.append(row)
            progress(
                f"{queued:,} queued, {nodes:,} nodes: round {row['round_us']:.1f} us, "
                f"expiry {row['expiry_us']:.1f} us ({time.perf_counter() - started:.1f} s)"
            )
    if args.json:
        print_json({"rounds": args.rounds, "samples": args.samples, "cases": rows})
        return
    print(
        f"scheduler alone, median microseconds per event ({args.samples} samples of "
        f"{args.rounds} rounds; expiries over their ticks); the slowest sample in brackets"
    )
    print(f"{'queued':>9} {'nodes':>7} {'EXECUTE+RESULT round':>24} {'expiry':>18}")
    for row in rows:
        round_text = f"{row['round_us']:.1f} ({row['round_us_max']:.1f})"
        expiry_text = f"{row['expiry_us']:.1f} ({row['expiry_us_max']:.1f})"
        print(f"{row['queued']:>9,} {row['nodes']:>7,} {round_text:>24} {expiry_text:>18}")


def core_case(queued: int, nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    # No heartbeat falls due while it runs: time stands still, as it nearly does in a burst.
    scheduler = Scheduler(SchedulerConfig(heartbeat_interval=3600.0), wall_offset=OFFSET)
    now = 0.0
    identities = [b"n%d" % k for k in range(nodes)]
    running: dict[bytes, str] = {}  # node -> the task id it runs
    for k, identity in enumerate(identities):
        register = p.Register(f"n{k}", "bench", k, ("f",), 1)
        scheduler.handle(Received(identity, register), now)
    for i in range(nodes + queued):
        execute = p.Execute(p.TaskSpec(f"q{i}", "f", b"[]"))
        note_runs(scheduler.handle(Received(CORE_CLIENT, execute), now), running)
    scheduler.handle(SENT, now)
    status = scheduler.status(now)
    if status["queued"] != queued or len(running) != nodes:
        raise SystemExit(f"error: set-up left {status['queued']} queued, {len(running)} running")
    gc.collect()
    samples = []
    for s in range(args.samples):
        executes = [
            Received(CORE_CLIENT, p.Execute(p.TaskSpec(f"r{s}-{i}", "f", b"[]")))
            for i in range(args.rounds)
        ]
        started = time.perf_counter()
        for i, event in enumerate(executes):
            scheduler.handle(event, now)
            scheduler.handle(SENT, now)
            identity = identities[i % nodes]
            result = p.Result(running[identity], 0, b"null", None, 1)
            scheduler.handle(Received(identity, result), now)
            note_runs(scheduler.handle(SENT, now), running)
        samples.append((time.perf_counter() - started) / args.rounds * 1e6)
    expiries = core_expiries(scheduler, min(queued, 10_000), now)
    return {
        "queued": queued,
        "nodes": nodes,
        "round_us": round(statistics.median(samples), 2),
        "round_us_max": round(max(samples), 2),
        "round_samples_us": [round(v, 2) for v in samples],
        "expiry_us": round(statistics.median(expiries), 2),
        "expiry_us_max": round(max(expiries), 2),
        "expiries": min(queued, 10_000),
    }


def core_expiries(scheduler: Scheduler, count: int, now: float) -> list[float]:
    """Microseconds per expiry of each tick that answers `count` tasks whose queue deadline
    passed together."""
    for i in range(count):
        execute = p.Execute(p.TaskSpec(f"e{i}", "f", b"[]", queue_timeout=1.0))
        scheduler.handle(Received(CORE_CLIENT, execute), now)
    scheduler.handle(SENT, now)
    due = now + 2.0
    per_tick, answered = [], 0
    gc.collect()
    while answered < count:
        started = time.perf_counter()
        commands = scheduler.tick(due)
        elapsed = time.perf_counter() - started
        expired = sum(1 for c in commands if type(c) is Send)
        if not expired:
            raise SystemExit(f"error: a tick answered nothing with {count - answered} due")
        per_tick.append(elapsed / expired * 1e6)
        answered += expired
    return per_tick


def note_runs(commands: list[Any], running: dict[bytes, str]) -> None:
    for command in commands:
        if type(command) is Send and type(command.message) is p.Run:
            running[command.peer] = command.message.task_id


def add_core(sub: Any) -> None:
    parser = subcommand(sub, "core", core)
    parser.add_argument(
        "--queued",
        type=int,
        nargs="+",
        default=[1_000, 10_000, 100_000],
        help="tasks queued (default 1000 10000 100000)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        nargs="+",
        default=[10, 1_000, 10_000],
        help="one-slot nodes registered, all busy (default 10 1000 10000)",
    )
    parser.add_argument("--rounds", type=int, default=2_000, help="rounds per sample")
    parser.add_argument("--samples", type=int, default=7, help="samples; the median is shown")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


# ===================================================================================== main


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and every option's default in its help."""


def subcommand(sub: Any, name: str, handler: Handler) -> argparse.ArgumentParser:
    """A subcommand whose --help is its handler's docstring."""
    doc = inspect.cleandoc(handler.__doc__ or "")
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=" ".join(doc.split("\n\n")[0].split()),
        description=doc,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def main() -> None:
    paragraphs = (__doc__ or "").split("\n\n")
    parser = argparse.ArgumentParser(
        prog="tools/bench.py",
        description=f"{paragraphs[0]}\n\n{paragraphs[-1]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(metavar="SUBCOMMAND", required=True)
    for add in (
        add_run,
        add_compare,
        add_breakdown,
        add_instructions,
        add_store,
        add_frames,
        add_concurrency,
        add_expiry,
        add_core,
    ):
        add(sub)
    splitbench.add_split(sub, subcommand)
    obsbench.add_observe(sub, subcommand)
    curvebench.add_curve(sub, subcommand)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
