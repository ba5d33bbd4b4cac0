"""`zbroker monitor`: the live dashboard and Prometheus' /metrics for a running broker.

It reads the broker through the control protocol (one STATUS a second), so the broker's own
loop stays lean, and keeps the last hour of history itself. `zbroker start --monitor ADDR`
runs it as a child process beside the broker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from broker import logs
from broker.cli.control import EXIT_USAGE, Broker, BrokerKey, Curve, Timeout, fail
from broker.cli_keys import keys_of
from broker.protocol import DEFAULT_BROKER_URL

DEFAULT_LISTEN = "127.0.0.1:8265"

Listen = Annotated[
    str,
    typer.Option(
        "--listen",
        metavar="HOST:PORT",
        help="Where the dashboard and /metrics are served; port 0 picks a free one. Bind "
        "to 127.0.0.1 unless a firewall keeps strangers out: the page can replay and purge "
        "dead letters.",
    ),
]


def monitor(
    broker: Broker = DEFAULT_BROKER_URL,
    listen: Listen = DEFAULT_LISTEN,
    interval: Annotated[
        float, typer.Option(min=0.05, max=60, metavar="S", help="Seconds between reads.")
    ] = 1.0,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write the dashboard's URL to this file once serving (for scripts)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    log_format: Annotated[
        str,
        typer.Option(metavar="text|json", help="'text', or 'json' for one object per line."),
    ] = "text",
    log_file: Annotated[Path | None, typer.Option(help="Also append logs to this file.")] = None,
    timeout: Timeout = 2.0,
    curve: Curve = None,
    broker_key: BrokerKey = None,
) -> None:
    """Serve a live web dashboard of a broker (nodes, throughput, latency, queues, failures,
    dead letters with replay and purge) and its metrics for Prometheus at /metrics.

    Runs until SIGINT or SIGTERM. Open the printed URL in a browser; point Prometheus at
    URL/metrics. A broker that does not answer is shown as down until it answers again."""
    from broker.monitor.watch import Watch
    from broker.monitor.web import serve

    logs.configure(log_level, log_format, log_file)
    host, port = listen_address(listen)
    keys = keys_of(curve, broker_key)
    watch = Watch(broker, interval, timeout=timeout, keys=keys).start()
    try:
        server = serve(watch, host, port)
    except OSError as exc:
        watch.stop()
        raise fail(f"cannot listen on {listen}: {exc.strerror}; pick another --listen", 1) from None
    url = server.url
    if ready_file is not None:
        ready_file.write_text(url + "\n")
    typer.echo(f"dashboard on {url}/ (Prometheus: {url}/metrics), reading broker {broker}")

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        watch.stop()


def listen_address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 <= number <= 65535:
        raise fail(f"--listen {listen!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN})", EXIT_USAGE)
    return host.strip("[]"), number


def start_beside(broker_url: str, listen: str, log_level: str) -> subprocess.Popen[bytes]:
    """`zbroker monitor` as a child process of a broker (zbroker start --monitor): it
    inherits the broker's stdout and stderr, and the broker stops it on its way out."""
    argv = [sys.executable, "-m", "broker.cli", "monitor", "--broker", broker_url]
    argv += ["--listen", listen, "--log-level", log_level]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)
