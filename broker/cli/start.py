"""`zbroker start`: run a broker in the foreground.

The server and its store are imported when the command runs, so that `zbroker status` and
`zbroker dlq` do not load them.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import typer

from broker import logs, protocol as p, tracing
from broker.cli.monitor import listen_address, start_beside
from broker.core.config import (
    DEFAULT_HEARTBEAT_BUDGET,
    DEFAULT_MAX_PENDING_PER_CLIENT,
    DEFAULT_MAX_PREFETCH,
    LEAST_LOADED,
    STRATEGIES,
    ResultsConfig,
    RetryPolicy,
    SchedulerConfig,
    parse_retry_on,
)
from broker.outbox import DEFAULT_BUDGET

if TYPE_CHECKING:
    from broker.security import BrokerKeys
    from broker.store import PersistenceConfig

DEFAULT_STORE = "zbroker.sqlite3"


def start(
    bind: str = typer.Option(
        p.DEFAULT_BROKER_URL,
        help="ZeroMQ endpoint to listen on; tcp://0.0.0.0:5000 for nodes on other machines, "
        "tcp://127.0.0.1:0 for a free port (see --ready-file).",
    ),
    strategy: str = typer.Option(
        LEAST_LOADED, help=f"How a node is chosen for a task: {' or '.join(STRATEGIES)}."
    ),
    heartbeat_interval: float | None = typer.Option(
        None,
        min=0.01,
        metavar="S",
        help="Seconds between heartbeats, fixed. By default 1 s, growing with the node count "
        "so that the broker takes at most --heartbeat-budget node heartbeats a second (nodes "
        "are told the new interval).",
        show_default=False,
    ),
    heartbeat_budget: int = typer.Option(
        DEFAULT_HEARTBEAT_BUDGET,
        min=1,
        metavar="N",
        help="Node heartbeats a second the broker takes at most while --heartbeat-interval is "
        "not given: past 2,500 nodes the interval grows (4.8 s at 10,000 nodes), and so does the "
        "time to find a dead node (interval x liveness).",
    ),
    liveness: int = typer.Option(
        p.DEFAULT_LIVENESS, min=1, help="Heartbeat intervals of silence before a node is dead."
    ),
    max_message_size: int = typer.Option(
        p.DEFAULT_MAX_MESSAGE_SIZE, min=1024, help="Largest message accepted, in bytes."
    ),
    max_prefetch: int = typer.Option(
        DEFAULT_MAX_PREFETCH,
        min=0,
        max=p.MAX_PREFETCH,
        help="Most tasks a node may hold unstarted beyond its slots, so that a freed slot starts "
        "the next task at once (each node asks for its own number, znode --prefetch); held "
        "tasks are taken back when another node's slot is idle. 0 turns prefetching off.",
    ),
    retries: int = typer.Option(
        3,
        min=0,
        max=100,
        help="Extra attempts for a task whose node process crashes or whose node dies (and, "
        "with --retry-on, whose function raises or times out), unless the task asks for its "
        "own number.",
    ),
    retry_on: str = typer.Option(
        "none",
        metavar="exception,timeout|all|none",
        help="Failures retried besides crashes and lost nodes, for tasks that do not say "
        "(EXECUTE retry_on): 'exception' (the function raised), 'timeout' (it ran past its "
        "task timeout), both, 'all' or 'none' (as Ray's defaults). A function set can also "
        "declare exceptions retryable.",
    ),
    retry_backoff: float = typer.Option(
        0.5, min=0, help="Seconds before the second attempt; doubles for each next one (+-20%)."
    ),
    retry_backoff_max: float = typer.Option(60.0, min=0, help="Longest wait between attempts."),
    keep_results: float = typer.Option(
        300.0,
        min=0,
        help="Seconds a finished task's answer is kept, so a client's resend of it is answered, "
        "not run again (0 keeps none). At most 100,000 answers and 64 MiB are kept.",
    ),
    task_timeout: float = typer.Option(
        0.0,
        min=0,
        help="Seconds one attempt of a task may run before it is stopped and fails with exit "
        "124, for tasks that do not set their own (EXECUTE timeout_ms). 0: no limit.",
    ),
    store: str = typer.Option(
        DEFAULT_STORE,
        metavar="PATH|none",
        help="SQLite file that keeps accepted tasks, recent answers and dead letters across "
        "crashes and restarts; 'none' keeps everything in memory only.",
    ),
    dlq_log: str = typer.Option(
        "auto",
        metavar="PATH|auto|none",
        help="JSON-lines file every dead letter is appended to; 'auto' is the store's path + "
        "'.dlq.jsonl' (none without a store).",
    ),
    store_sync: str = typer.Option(
        "normal",
        metavar="normal|full",
        help="'normal' survives a killed broker; 'full' also an OS crash or power loss, at the "
        "cost of an fsync per transaction.",
    ),
    store_delay: float = typer.Option(
        0.005,
        min=0,
        max=10,
        metavar="SECONDS",
        help="How long changes may wait to be written together (group commit): what a killed "
        "broker had not written is that moment's work, which clients resend and nodes claim.",
    ),
    drain_timeout: float = typer.Option(
        10.0,
        min=0,
        help="On SIGINT/SIGTERM, seconds to wait for running tasks to finish (queued ones stay "
        "in the store for the next start). A second signal stops at once.",
    ),
    max_dead_letters: int = typer.Option(
        100_000,
        min=1,
        help="Dead letters kept, in memory and in the store: past it (or past 64 MiB of their "
        "arguments) the oldest go. The JSON-lines log (--dlq-log) keeps every one.",
    ),
    max_pending_per_client: int = typer.Option(
        DEFAULT_MAX_PENDING_PER_CLIENT,
        min=1,
        help="Most tasks one client (its CURVE key; without --curve, one connection) may have "
        "pending (accepted, not answered); "
        "past it an EXECUTE is refused with ERROR too_many_tasks, so one client cannot fill "
        "the broker's memory.",
    ),
    max_queued_bytes_per_peer: int = typer.Option(
        DEFAULT_BUDGET,
        min=0,
        metavar="BYTES",
        help="Most bytes held for one peer that does not read what the broker sends it (past "
        "a short pipe of 16 messages); past it, messages to it are dropped and counted "
        "(STATUS metrics.outbox_dropped). A client gets dropped answers again by resending.",
    ),
    backlog: int = typer.Option(
        0,
        min=0,
        metavar="N",
        help="Connections that may wait to be accepted (the listen backlog, ZMQ_BACKLOG); 0: "
        "the system's limit (net.core.somaxconn). Thousands of nodes starting at once need "
        "it: ZeroMQ's default of 100 makes their connections fail and retry.",
    ),
    metrics: bool = typer.Option(
        True,
        "--metrics/--no-metrics",
        help="Measure tasks by function and node (counts, queue wait, run and end-to-end time "
        "histograms, throughput, utilisation) for STATUS, `zbroker monitor` and `zbroker top`. "
        "--no-metrics only to measure what they cost.",
    ),
    curve: Path | None = typer.Option(
        None,
        metavar="KEY",
        help="Encrypt and authenticate every connection with CurveZMQ: this broker's secret "
        "key file (zbroker keys new broker). Needs --authorized.",
    ),
    authorized: Path | None = typer.Option(
        None,
        metavar="DIR",
        help="With --curve: the public keys let in, as DIR/nodes/*.pub, DIR/clients/*.pub "
        "and DIR/admins/*.pub; a file added or removed counts within 5 s.",
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Listen on an address other than loopback without --curve: anyone who reaches "
        "the port can run tasks and read results. Logged as a warning.",
    ),
    ready_file: Path | None = typer.Option(
        None, help="Write the bound endpoint to this file once listening (for scripts, tests)."
    ),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING or ERROR."),
    log_format: str = typer.Option(
        "text",
        metavar="text|json",
        help="'text' for people; 'json' for one JSON object per line (ts, level, logger, "
        "message, and task_id and node on the lines about a task).",
    ),
    log_file: Path | None = typer.Option(None, help="Also append logs to this file."),
    monitor: str | None = typer.Option(
        None,
        metavar="HOST:PORT",
        help="Also serve the live dashboard and Prometheus' /metrics there (zbroker monitor, "
        "run beside the broker as a child process, e.g. 127.0.0.1:8265).",
    ),
) -> None:
    """Run a broker in the foreground until SIGINT or SIGTERM.

    Exit codes: 0 after a clean stop; 1 when it cannot start (the store is not a valid
    store or is in use, the address is taken); 2 for a bad command line; 74 when its store
    failed while it ran (a full disk): nothing after the failure was accepted."""
    from broker.server import EXIT_STORE_FAILED, BrokerConfig, BrokerServer

    logs.configure(log_level, log_format, log_file)
    tracing.configure("zbroker")  # as the OTEL_* environment says: off unless it asks
    if monitor is not None:
        listen_address(monitor)  # a bad address fails before the broker starts
    if strategy not in STRATEGIES:
        raise typer.BadParameter(
            f"{strategy!r}; choose {' or '.join(STRATEGIES)}", param_hint="--strategy"
        )
    try:
        default_retry_on = parse_retry_on(retry_on)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--retry-on") from None
    results = ResultsConfig(ttl=keep_results)
    retry = RetryPolicy(retries, retry_backoff, retry_backoff_max)
    scheduler = SchedulerConfig(
        strategy,
        p.DEFAULT_HEARTBEAT_INTERVAL if heartbeat_interval is None else heartbeat_interval,
        liveness,
        results,
        retry,
        task_timeout or None,
        max_prefetch=max_prefetch,
        retry_on=default_retry_on,
        metrics=metrics,
        max_pending_per_client=max_pending_per_client,
        dead_letters_max=max_dead_letters,
        heartbeat_budget=heartbeat_budget if heartbeat_interval is None else None,
    )
    persistence = _persistence(
        store, dlq_log, (store_sync, store_delay), results, retries, max_dead_letters
    )
    keys = _keys(bind, curve, authorized, insecure)
    config = BrokerConfig(
        bind,
        scheduler,
        max_message_size,
        persistence,
        drain_timeout,
        keys=keys,
        max_queued_bytes_per_peer=max_queued_bytes_per_peer,
        backlog=backlog or None,
    )
    server = BrokerServer(config)
    try:
        server.restore()
    except OSError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        endpoint = server.bind()
    except OSError as exc:
        server.persistence.close()
        typer.echo(f"error: {exc}; is another broker running there? try --bind", err=True)
        raise typer.Exit(1) from None
    if ready_file is not None:
        ready_file.write_text(endpoint + "\n")

    def stop(signum: int, frame: FrameType | None) -> None:
        server.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    beside = None if monitor is None else start_beside(endpoint, monitor, log_level)
    try:
        server.serve()
    finally:
        if beside is not None:
            beside.terminate()
            beside.wait()
    if server.store_failure is not None:
        typer.echo(f"error: {server.store_failure}", err=True)
        raise typer.Exit(EXIT_STORE_FAILED)


def _keys(
    bind: str, curve: Path | None, authorized: Path | None, insecure: bool
) -> BrokerKeys | None:
    """The broker's CURVE keys; without them, only a loopback address unless --insecure."""
    from broker.security import BrokerKeys, KeyFileError

    if curve is None:
        if authorized is not None:
            raise typer.BadParameter("needs --curve too", param_hint="--authorized")
        if not loopback(bind):
            if not insecure:
                raise typer.BadParameter(
                    f"{bind} is reachable from other machines, and without CURVE anyone who "
                    "reaches it can run tasks and read results: make keys (zbroker keys new "
                    "broker) and start with --curve broker.key --authorized DIR, or accept "
                    "the risk with --insecure",
                    param_hint="--bind",
                )
            logging.getLogger("broker.cli").warning(
                "listening on %s without CURVE (--insecure): anyone who reaches it can run "
                "tasks and read results",
                bind,
            )
        return None
    if authorized is None:
        raise typer.BadParameter(
            "needs --authorized DIR: the public keys let in (DIR/nodes, DIR/clients, DIR/admins)",
            param_hint="--curve",
        )
    try:
        return BrokerKeys.load(curve, authorized)
    except KeyFileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--curve") from None


def loopback(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this machine only: ipc, inproc, or tcp on
    127.0.0.0/8, ::1 or localhost."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint.removeprefix("tcp://").rpartition(":")[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _persistence(
    store: str,
    dlq_log: str,
    writes: tuple[str, float],
    results: ResultsConfig,
    retries: int,
    dead: int,
) -> PersistenceConfig:
    """The store's settings; `writes`: --store-sync and --store-delay."""
    from broker.store import PersistenceConfig

    sync, delay = writes
    if sync not in ("normal", "full"):
        raise typer.BadParameter(f"{sync!r}; choose normal or full", param_hint="--store-sync")
    store_path = None if store.lower() == "none" else store
    if dlq_log.lower() == "auto":
        log_path = None if store_path is None else store_path + ".dlq.jsonl"
    else:
        log_path = None if dlq_log.lower() == "none" else dlq_log
    return PersistenceConfig(
        store_path,
        log_path,
        results.ttl,
        results.max_entries,
        dead,
        sync_full=sync == "full",
        save_delay=delay,
        default_retries=retries,
    )
