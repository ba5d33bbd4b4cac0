"""Ours side by side with a bare pyzmq relay: `tools/bench.py compare` and the relay itself.

The relay is the floor of a broker on ZeroMQ in Python: a ROUTER that passes frames between
clients and DEALER echo workers without reading them, each in its own process, with the same
frame I/O as ours (broker.protocol.frames). Whatever our stack costs above it is the cost of
what the relay does not do: decoding, scheduling, the store, running a function. `breakdown`
(in bench.py) uses the same relay with one worker.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import zmq

from broker import protocol as p
from broker.protocol.frames import (
    NOBLOCK,
    readable,
    recv_frames,
    send_frames,
    send_routed,
    wait_readable,
)
from client import Client
from client.cluster import LocalCluster
from node.supervisor import die_with_parent

HELPER_START_TIMEOUT = 10.0  # seconds the relay and its workers may take to be ready
READY = b"ready"  # a worker's first message: the relay learns its identity from it


class RelayError(RuntimeError):
    """A process of the relay did not start or died."""


class Relay:
    """A bare relay on 127.0.0.1, on a port the OS picks: one process whose ROUTER passes
    frames, and `workers` DEALER echo worker processes that it hands requests to in turn.

    Entering starts them and returns once every worker is ready (`url` is where clients
    connect; REQ and DEALER clients both work, with the envelope of protocol.md 2.1);
    leaving, also on an error or Ctrl-C, kills and reaps them all. Enter it before this
    process makes a ZeroMQ context: the helpers are forked, and a fork must not inherit one.
    """

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"a relay needs at least one worker, got {workers}")
        self.workers = workers
        self.url = ""
        self.pids: dict[str, int] = {}  # "relay", "echo-1", "echo-2", ...
        self._processes: list[BaseProcess] = []

    def __enter__(self) -> Relay:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self) -> None:
        fork = multiprocessing.get_context("fork")
        ours, theirs = fork.Pipe()
        try:
            router = fork.Process(
                target=relay_main, args=(theirs, self.workers, os.getpid()), name="relay"
            )
            self._begin(router, "relay")
            self.url = self._receive(ours, "the relay to bind")
            for k in range(1, self.workers + 1):
                echo = fork.Process(target=echo_main, args=(self.url, os.getpid()), name="echo")
                self._begin(echo, f"echo-{k}")
            self._receive(ours, f"{self.workers} echo workers to be ready")
        finally:
            ours.close()
            theirs.close()

    def _begin(self, process: BaseProcess, name: str) -> None:
        process.daemon = True
        process.start()
        self._processes.append(process)
        self.pids[name] = process.pid or 0

    def _receive(self, conn: Connection, what: str) -> str:
        """The relay's next note, polled with a deadline; RelayError if a helper died."""
        deadline = time.monotonic() + HELPER_START_TIMEOUT
        while not conn.poll(0.02):
            for process in self._processes:
                if not process.is_alive():
                    raise RelayError(
                        f"the {process.name} process exited with {process.exitcode} while "
                        f"waiting for {what}"
                    )
            if time.monotonic() > deadline:
                raise RelayError(f"timed out after {HELPER_START_TIMEOUT:g} s waiting for {what}")
        return str(conn.recv())

    def close(self) -> None:
        """Kill and reap every helper process."""
        for process in self._processes:
            process.kill()
        for process in self._processes:
            process.join()
        self._processes = []


def become_helper(parent: int) -> None:
    """A helper leaves Ctrl-C to its parent, which reaps it, and dies with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def unbounded(sock: zmq.Socket[Any]) -> None:
    """No high-water marks: a window of any size is queued, never dropped by the ROUTER."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)


def relay_main(conn: Connection, workers: int, parent: int) -> None:
    """The relay process: bind, tell the parent where, wait for the workers, relay."""
    become_helper(parent)
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    unbounded(router)
    router.bind("tcp://127.0.0.1:*")
    conn.send(router.getsockopt_string(zmq.LAST_ENDPOINT))
    identities: list[bytes] = []
    while len(identities) < workers:
        frames = recv_frames(router)
        if frames[1:] == [READY]:
            identities.append(frames[0])
    conn.send("serving")
    conn.close()
    relay(router, identities)


def relay(router: zmq.Socket[Any], workers: list[bytes]) -> None:
    """Pass frames for ever: a request goes to the next worker in turn with its envelope
    (the client's identity and delimiter) in front; a worker's reply goes to the client that
    envelope names."""
    is_worker = frozenset(workers).__contains__
    turns = itertools.cycle(workers)
    while True:
        frames = recv_frames(router)
        if is_worker(frames[0]):  # [worker, "", client, "", tag, ...]
            send_routed(router, frames[2], frames[4:], NOBLOCK)
        else:  # [client, "", tag, ...]
            send_routed(router, next(turns), frames, NOBLOCK)


def echo_main(url: str, parent: int) -> None:
    """An echo worker process: each message goes back as it came."""
    become_helper(parent)
    context: zmq.Context[Any] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    unbounded(dealer)
    dealer.connect(url)
    send_frames(dealer, [READY])
    while True:
        send_frames(dealer, recv_frames(dealer))


# ================================================================================ compare

FUNCTION, ARGUMENTS = "add", (0, 0)  # the math set has no noop; this is its cheapest call
MAP_WINDOW = 1000  # Client.map's default window: the relay's bulk client keeps as many in flight
WARM_UP = 200  # round trips and tasks before the rounds, on every path
REPLY_TIMEOUT_MS = 60_000  # silence that ends a pipelined measurement with an error
NODE_COMMAND = "znode --functions math --concurrency 1"
RELAY_SHAPE = "DEALER client -> ROUTER relay (round robin) -> 2 DEALER echo workers"

Reply = Callable[[list[bytes]], int]  # takes a reply message; the tasks it answers
Cpu = dict[str, float]  # "user" and "system": CPU time


def compare(args: argparse.Namespace) -> None:
    """Ours side by side with a bare pyzmq relay, alternating: medians, ratios, targets.

    Starts a bare relay (a ROUTER process that passes frames, without reading them, to two
    DEALER echo worker processes in turn) and, as a user would, `zbroker start` (its store
    on) with two `znode --functions math --concurrency 1`, and `zbroker start --store none`
    with two more (each --broker-arg added to both brokers' command lines). A task is
    `add(0, 0)`: the math set has no noop, and this is its cheapest call. Then --runs
    rounds, each measuring the relay, then ours:
      bulk        --tasks tasks. Relay: a DEALER client keeping 1,000 messages (one task
                  each) in flight. Ours: Client.map (its window is 1,000 too).
                  Target: ours >= 2x the relay (below 1.5x: not done).
      in flight   --in-flight single-task EXECUTE messages sent at once from one DEALER,
                  answers matched by task id; the relay gets the same messages, all in
                  flight. Target: ours >= 0.6x the relay.
      sequential  --calls round trips one at a time. Relay: a REQ client. Ours:
                  Client.execute. Targets: p50 <= 1.3x the relay's; ours' p99 <= 1 ms.
      store cost  ours' bulk figure with the store on against --store none.
                  Target: the store costs <= 15 %.
    Prints a line per round on stderr, then the medians over the rounds, the ratios of the
    medians (ours/relay), the targets and whether each is met, and the CPU each process spent
    per task in the last round's bulk (where the time goes); or all of it with --json."""
    with contextlib.ExitStack() as stack:
        relay = stack.enter_context(Relay(workers=2))  # before this process has a context
        extra = args.broker_arg
        store_on = stack.enter_context(LocalCluster(nodes=2, functions=["math"], broker_args=extra))
        store_none = stack.enter_context(
            LocalCluster(nodes=2, functions=["math"], broker_args=[*extra, "--store", "none"])
        )
        context: zmq.Context[Any] = zmq.Context()
        stack.callback(context.destroy, linger=0)
        sides = Sides(
            relay=relay,
            relay_dealer=connected(context, zmq.DEALER, relay.url),
            relay_req=connected(context, zmq.REQ, relay.url),
            store_on=store_on,
            store_none=store_none,
            client=stack.enter_context(Client(store_on.url)),
            client_store_none=stack.enter_context(Client(store_none.url)),
            dealer=connected(context, zmq.DEALER, store_on.url),
        )
        warm_up(sides)
        rounds = []
        for i in range(args.runs):
            rounds.append(one_round(sides, args))
            progress(round_text(i, args.runs, rounds[-1]))
    report(args, rounds)


@dataclass
class Sides:
    """Both sides' connections, open for the whole run."""

    relay: Relay
    relay_dealer: zmq.Socket[Any]
    relay_req: zmq.Socket[Any]
    store_on: LocalCluster
    store_none: LocalCluster
    client: Client  # to the broker with its store
    client_store_none: Client
    dealer: zmq.Socket[Any]  # to the broker with its store, for the in-flight EXECUTEs


@dataclass
class Round:
    """One round's figures: tasks/s, microseconds, and CPU per task in the bulk."""

    bulk_relay: float = 0.0
    bulk_ours: float = 0.0
    bulk_ours_store_none: float = 0.0
    in_flight_relay: float = 0.0
    in_flight_ours: float = 0.0
    p50_relay: float = 0.0
    p99_relay: float = 0.0
    p50_ours: float = 0.0
    p99_ours: float = 0.0
    cpu_us_per_task: dict[str, dict[str, Cpu]] = field(default_factory=dict)


def connected(context: zmq.Context[Any], kind: int, url: str) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = context.socket(kind)
    unbounded(sock)
    sock.connect(url)
    return sock


def warm_up(sides: Sides) -> None:
    """Connections made, code paths and slots used once, on every path measured."""
    pipelined(sides.relay_dealer, executes("warm-relay", WARM_UP), WARM_UP, one_reply)
    pipelined(sides.dealer, executes("warm-ours", WARM_UP), WARM_UP, answers("warm-ours", WARM_UP))
    for client in (sides.client, sides.client_store_none):
        client.map(FUNCTION, [ARGUMENTS] * WARM_UP)
    sequential(lambda: relay_trip(sides.relay_req), WARM_UP)
    sequential(lambda: sides.client.execute(FUNCTION, *ARGUMENTS), WARM_UP)


def one_round(sides: Sides, args: argparse.Namespace) -> Round:
    """Each figure of one round: the relay's, then ours."""
    r = Round()
    relay_pids = {"client": os.getpid(), **sides.relay.pids}
    ours_pids = ours_processes(sides.store_on)
    relay_bulk = executes(f"bulk-{uuid.uuid4().hex}", args.tasks)
    r.bulk_relay, r.cpu_us_per_task["relay"] = cpu_per_task(
        relay_pids,
        args.tasks,
        lambda: pipelined(sides.relay_dealer, relay_bulk, MAP_WINDOW, one_reply),
    )
    r.bulk_ours, r.cpu_us_per_task["ours"] = cpu_per_task(
        ours_pids, args.tasks, lambda: mapped(sides.client, args.tasks)
    )
    r.bulk_ours_store_none, r.cpu_us_per_task["ours, --store none"] = cpu_per_task(
        ours_processes(sides.store_none),
        args.tasks,
        lambda: mapped(sides.client_store_none, args.tasks),
    )
    count = args.in_flight
    r.in_flight_relay = pipelined(
        sides.relay_dealer, executes(f"flight-{uuid.uuid4().hex}", count), count, one_reply
    )
    # A fresh prefix: the broker answers a task id it answered lately from memory.
    prefix = uuid.uuid4().hex
    r.in_flight_ours = pipelined(
        sides.dealer, executes(prefix, count), count, answers(prefix, count)
    )
    r.p50_relay, r.p99_relay = sequential(lambda: relay_trip(sides.relay_req), args.calls)
    r.p50_ours, r.p99_ours = sequential(
        lambda: sides.client.execute(FUNCTION, *ARGUMENTS), args.calls
    )
    return r


# ------------------------------------------------------------------------- the drivers


def executes(prefix: str, count: int) -> list[list[bytes]]:
    """`count` EXECUTE messages of one task each, as a DEALER sends them (protocol.md 3.6)."""
    arguments = orjson.dumps(ARGUMENTS)
    return [
        [b"", *p.execute_frames(p.TaskSpec(f"{prefix}.{i}", FUNCTION, arguments))]
        for i in range(count)
    ]


def one_reply(frames: list[bytes]) -> int:
    """An echo answers one task per message."""
    return 1


def answers(prefix: str, count: int) -> Reply:
    """The reader of the broker's answers to `executes(prefix, count)`: it matches them by
    task id and refuses any but a success."""
    outstanding = {f"{prefix}.{i}" for i in range(count)}

    def answered(frames: list[bytes]) -> int:
        message = p.decode(frames[1:])
        items = message.items if type(message) is p.Batch else (message,)
        done = 0
        for item in items:
            if type(item) is not p.TaskCompleted or item.exit_code != 0:
                raise SystemExit(f"error: the broker answered an EXECUTE with {item!r}")
            if item.task_id in outstanding:
                outstanding.remove(item.task_id)
                done += 1
        return done

    return answered


def pipelined(
    sock: zmq.Socket[Any], messages: list[list[bytes]], window: int, reply: Reply
) -> float:
    """Send `messages` (one task each) keeping up to `window` tasks unanswered; tasks/s
    from the first send to the last answer."""
    total, sent, done = len(messages), 0, 0
    started = time.perf_counter()
    while done < total:
        while sent < total and sent - done < window:
            send_frames(sock, messages[sent])
            sent += 1
        if not wait_readable(sock, REPLY_TIMEOUT_MS):
            raise SystemExit(
                f"error: no answer for {REPLY_TIMEOUT_MS // 1000} s with {total - done:,} "
                "tasks unanswered"
            )
        while readable(sock):
            done += reply(recv_frames(sock, NOBLOCK))
    return total / (time.perf_counter() - started)


def mapped(client: Client, tasks: int) -> float:
    """Client.map of `tasks` tasks; tasks/s."""
    started = time.perf_counter()
    results = client.map(FUNCTION, [ARGUMENTS] * tasks)
    elapsed = time.perf_counter() - started
    if len(results) != tasks or any(result != 0 for result in results):
        raise SystemExit(f"error: Client.map gave wrong results for {tasks} tasks")
    return tasks / elapsed


RELAY_REQUEST = p.execute_frames(p.TaskSpec("sequential", FUNCTION, orjson.dumps(ARGUMENTS)))


def relay_trip(req: zmq.Socket[Any]) -> None:
    send_frames(req, RELAY_REQUEST)
    recv_frames(req)


def sequential(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """p50 and p99 of `calls` round trips one after another, in microseconds."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1e6, cuts[98] * 1e6


# ------------------------------------------------------------------------------ CPU


def ours_processes(cluster: LocalCluster) -> dict[str, int]:
    """This process (the client), the broker, its store's writer (its child, when it has a
    store) and each znode (counted with its children)."""
    assert cluster.broker is not None
    pids = {"client": os.getpid(), "broker": cluster.broker.pid}
    for i, child in enumerate(children(cluster.broker.pid)):
        pids["writer" if i == 0 else f"writer-{i + 1}"] = child
    for node in cluster.nodes:
        pids[node.name] = node.pid
    return pids


def cpu_per_task(
    pids: dict[str, int], tasks: int, measure: Callable[[], float]
) -> tuple[float, dict[str, Cpu]]:
    """`measure()`, and the CPU microseconds each process (with its children other than
    this one and those in `pids`) spent per task meanwhile, in user space and in the
    kernel."""
    listed = set(pids.values())
    before = {name: cpu_seconds(pid, listed) for name, pid in pids.items()}
    figure = measure()
    after = {name: cpu_seconds(pid, listed) for name, pid in pids.items()}
    return figure, {
        name: {
            kind: (after[name][kind] - before[name][kind]) / tasks * 1e6
            for kind in ("user", "system")
        }
        for name in pids
    }


def cpu_seconds(pid: int, listed: Collection[int] = ()) -> Cpu:
    """User and system CPU seconds of `pid` and, but for this process, its live children
    other than those `listed` (measured on their own)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = {"user": int(fields[11]) / TICKS, "system": int(fields[12]) / TICKS}
    if pid != os.getpid():
        for child in children(pid):
            if child not in listed:
                for kind, seconds in cpu_seconds(child, listed).items():
                    cpu[kind] += seconds
    return cpu


TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# ------------------------------------------------------------------------------ report

Verdict = Callable[[float, float], str]  # (ratio of the medians, ours' median) -> verdict


@dataclass(frozen=True)
class Target:
    """One figure of the table: which Round fields hold the relay's and ours, and the goal."""

    name: str
    unit: str
    relay_field: str
    ours_field: str
    text: str
    verdict: Verdict


def bulk_verdict(ratio: float, ours: float) -> str:
    if ratio >= 2.0:
        return "met"
    return "not met (done: >= 1.5x)" if ratio >= 1.5 else "not met"


TARGETS = (
    Target("bulk", "tasks/s", "bulk_relay", "bulk_ours", "ours/relay >= 2x", bulk_verdict),
    Target(
        "in flight",
        "tasks/s",
        "in_flight_relay",
        "in_flight_ours",
        "ours/relay >= 0.6x",
        lambda ratio, ours: "met" if ratio >= 0.6 else "not met",
    ),
    Target(
        "sequential p50",
        "us",
        "p50_relay",
        "p50_ours",
        "ours/relay <= 1.3x",
        lambda ratio, ours: "met" if ratio <= 1.3 else "not met",
    ),
    Target(
        "sequential p99",
        "us",
        "p99_relay",
        "p99_ours",
        "ours <= 1,000 us",
        lambda ratio, ours: "met" if ours <= 1000 else "not met",
    ),
)
# The store's cost compares ours with ours: --store none in the relay's column.
STORE_COST = Target(
    "store cost",
    "tasks/s",
    "bulk_ours_store_none",
    "bulk_ours",
    "costs <= 15 %",
    lambda ratio, ours: "met" if ratio >= 0.85 else "not met",
)


def row(target: Target, rounds: list[Round]) -> dict[str, Any]:
    """A target's medians over the rounds, their ratio (ours/relay), the verdict, the runs."""
    relay_runs = [float(getattr(r, target.relay_field)) for r in rounds]
    ours_runs = [float(getattr(r, target.ours_field)) for r in rounds]
    relay, ours = statistics.median(relay_runs), statistics.median(ours_runs)
    verdict = target.verdict(ours / relay, ours)
    return {
        "figure": target.name,
        "unit": target.unit,
        "relay": relay,
        "ours": ours,
        "ratio": ours / relay,
        "target": target.text,
        "verdict": verdict,
        "met": verdict == "met",
        "relay_runs": relay_runs,
        "ours_runs": ours_runs,
    }


def report(args: argparse.Namespace, rounds: list[Round]) -> None:
    rows = [row(target, rounds) for target in TARGETS]
    store = row(STORE_COST, rounds)
    store["cost_percent"] = (1 - store["ratio"]) * 100
    store["store_none"], store["store_on"] = store.pop("relay"), store.pop("ours")
    store["store_none_runs"], store["store_on_runs"] = (
        store.pop("relay_runs"),
        store.pop("ours_runs"),
    )
    cpu = rounds[-1].cpu_us_per_task
    result = {
        "parameters": parameters(args),
        "figures": [*rows, store],
        "cpu_us_per_task_in_last_bulk": cpu,
    }
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    for line in parameter_lines(args):
        print(line)
    print()
    print(f"{'figure':22} {'relay':>11} {'ours':>11} {'ratio':>7}  {'target':19} verdict")
    for r in rows:
        form = "{:,.0f}"
        print(
            f"{r['figure'] + ' (' + r['unit'] + ')':22} {form.format(r['relay']):>11} "
            f"{form.format(r['ours']):>11} {r['ratio']:>6.2f}x  {r['target']:19} {r['verdict']}"
        )
    print(f"{'':22} {'store none':>11} {'store on':>11} {'cost':>7}")
    print(
        f"{'store cost (tasks/s)':22} {store['store_none']:>11,.0f} {store['store_on']:>11,.0f} "
        f"{store['cost_percent']:>5.0f} %  {store['target']:19} {store['verdict']}"
    )
    print()
    print("every round, relay / ours (store cost: store none / store on):")
    for r in rows:
        pairs = zip(r["relay_runs"], r["ours_runs"], strict=True)
        print(f"  {r['figure']:20} " + "; ".join(f"{a:,.0f} / {b:,.0f}" for a, b in pairs))
    pairs = zip(store["store_none_runs"], store["store_on_runs"], strict=True)
    print(f"  {'store cost':20} " + "; ".join(f"{a:,.0f} / {b:,.0f}" for a, b in pairs))
    print()
    print(
        "CPU per task in the last round's bulk, us: user + system (system) [share of one "
        "core]; a znode with its processes:"
    )
    last = rounds[-1]
    rates = {"relay": last.bulk_relay, "ours": last.bulk_ours}
    rates["ours, --store none"] = last.bulk_ours_store_none
    for side, processes in cpu.items():
        total = sum(c["user"] + c["system"] for c in processes.values())
        each = ", ".join(
            f"{name} {c['user'] + c['system']:.0f} ({c['system']:.0f}) "
            f"[{(c['user'] + c['system']) * rates[side] / 1e4:.0f} %]"
            for name, c in processes.items()
        )
        print(f"  {side}: {each}; total {total:.0f} [{total * rates[side] / 1e4:.0f} %]")


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tasks": args.tasks,
        "in_flight": args.in_flight,
        "calls": args.calls,
        "runs": args.runs,
        "bulk_window": MAP_WINDOW,
        "task": f"{FUNCTION}{ARGUMENTS}",
        "relay": RELAY_SHAPE,
        "ours": ours_shape(args),
    }


def ours_shape(args: argparse.Namespace) -> str:
    extra = "".join(f" {arg}" for arg in args.broker_arg)
    return f"zbroker start{extra} (store on; --store none for its cost), 2 x {NODE_COMMAND}"


def parameter_lines(args: argparse.Namespace) -> list[str]:
    return [
        f"ours against a bare pyzmq relay, medians of {args.runs} rounds alternating them",
        f"  relay: {RELAY_SHAPE}; a REQ client for sequential",
        f"  ours:  {ours_shape(args)}",
        f"  tasks: {FUNCTION}{ARGUMENTS}; bulk {args.tasks:,} (window {MAP_WINDOW:,}), "
        f"in flight {args.in_flight:,}, sequential {args.calls:,} calls",
    ]


def round_text(i: int, runs: int, r: Round) -> str:
    return (
        f"round {i + 1}/{runs}: bulk relay {r.bulk_relay:,.0f}, ours {r.bulk_ours:,.0f} "
        f"(--store none {r.bulk_ours_store_none:,.0f}) tasks/s; in flight relay "
        f"{r.in_flight_relay:,.0f}, ours {r.in_flight_ours:,.0f} tasks/s; sequential p50 "
        f"relay {r.p50_relay:.0f}, ours {r.p50_ours:.0f} us, p99 relay {r.p99_relay:.0f}, "
        f"ours {r.p99_ours:.0f} us"
    )


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks per bulk run")
    parser.add_argument(
        "--in-flight", type=int, default=20_000, help="EXECUTE messages in flight at once"
    )
    parser.add_argument("--calls", type=int, default=2_000, help="sequential round trips")
    parser.add_argument("--runs", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--broker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for both brokers' zbroker start, e.g. "
        "--broker-arg=--store-delay=0.1 (repeat it for several)",
    )
