"""The monitor's HTTP server: the dashboard page, its live feed, /metrics, and the
dead-letter actions. Standard library only (http.server, a thread per connection).

    GET  /                      the dashboard (static/index.html and its files, no CDN)
    GET  /metrics               Prometheus text format (broker.monitor.prometheus)
    GET  /api/status            the latest snapshot: STATUS_REPLY body, dead letters, error
    GET  /api/history?seconds=N points of history, oldest first (at most an hour)
    GET  /events                server-sent events: a `snapshot` event at each poll
    POST /api/dlq/replay        {"task_id": ID} or {} for every dead letter
    POST /api/dlq/purge         the same

The POSTs change the broker, so they take only a JSON body (a cross-site form cannot send
one) and refuse an Origin other than the page's own.
"""

from __future__ import annotations

import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from broker.monitor.prometheus import CONTENT_TYPE, exposition
from broker.monitor.watch import HISTORY, Snapshot, Watch
from client.errors import ClientError

log = logging.getLogger(__name__)

STATIC = files("broker.monitor") / "static"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}
SSE_KEEPALIVE = 15.0  # seconds: a comment line keeps idle proxies from closing the stream
MAX_BODY = 4096  # bytes of a POST body


def snapshot_json(snapshot: Snapshot, broker: str) -> dict[str, Any]:
    return {
        "broker": broker,
        "seq": snapshot.seq,
        "at": snapshot.at,
        "error": snapshot.error,
        "status": snapshot.status,
        "point": snapshot.point,
        "dead_letters": snapshot.dead_letters,
        "dead_letters_total": snapshot.dead_letters_total,
    }


class MonitorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], watch: Watch) -> None:
        super().__init__(address, Handler)
        self.watch = watch
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


class Handler(BaseHTTPRequestHandler):
    server: MonitorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ GET

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/":
            self._static("index.html")
        elif path.startswith("/static/"):
            self._static(path.removeprefix("/static/"))
        elif path == "/metrics":
            self._send(HTTPStatus.OK, exposition(self.server.watch), CONTENT_TYPE)
        elif path == "/api/status":
            watch = self.server.watch
            self._json(snapshot_json(watch.latest(), watch.url))
        elif path == "/api/history":
            self._json(self.server.watch.history(_seconds(parse_qs(url.query))))
        elif path == "/events":
            self._events()
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no page {path}; try / or /metrics")

    def _static(self, name: str) -> None:
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            self._error(HTTPStatus.NOT_FOUND, f"no file {name}")
            return
        resource = STATIC / name
        if not resource.is_file():
            self._error(HTTPStatus.NOT_FOUND, f"no file {name}")
            return
        self._send(HTTPStatus.OK, resource.read_bytes(), STATIC_TYPES[suffix])

    def _events(self) -> None:
        """Server-sent events: the latest snapshot at once, then each new one, until the
        page goes away or the server stops."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        watch = self.server.watch
        snapshot: Snapshot | None = watch.latest()
        seq = -1
        try:
            while not self.server.stopping.is_set():
                if snapshot is None:
                    self.wfile.write(b": keep-alive\n\n")
                else:
                    data = orjson.dumps(snapshot_json(snapshot, watch.url))
                    self.wfile.write(b"event: snapshot\ndata: " + data + b"\n\n")
                    seq = snapshot.seq
                self.wfile.flush()
                snapshot = watch.wait_newer(seq, SSE_KEEPALIVE)
        except (BrokenPipeError, ConnectionResetError):
            return  # the page went away

    # ------------------------------------------------------------------ POST

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        actions = {"/api/dlq/replay": self._replay, "/api/dlq/purge": self._purge}
        action = actions.get(path)
        if action is None:
            self._error(HTTPStatus.NOT_FOUND, f"no action {path}")
            return
        refusal = self._refusal()
        if refusal is not None:
            self._error(HTTPStatus.FORBIDDEN, refusal)
            return
        given = self.headers.get("Content-Length") or "0"
        length = int(given) if given.isdigit() else -1
        if not 0 <= length <= MAX_BODY:
            self._error(
                HTTPStatus.BAD_REQUEST,
                f"Content-Length {given!r}: send a JSON body of at most {MAX_BODY} bytes",
            )
            self.close_connection = True  # what follows is not a body it can skip
            return
        try:
            body = orjson.loads(self.rfile.read(length) or b"{}")
            task_id = body.get("task_id") if isinstance(body, dict) else None
            if task_id is not None and not isinstance(task_id, str):
                raise ValueError("task_id must be a string")
        except (orjson.JSONDecodeError, ValueError) as exc:
            self._error(HTTPStatus.BAD_REQUEST, f'expected {{"task_id": ID}} or {{}}: {exc}')
            return
        try:
            self._json(action(task_id))
        except (ClientError, ValueError) as exc:
            self._error(HTTPStatus.BAD_GATEWAY, f"the broker did not do it: {exc}")

    def _refusal(self) -> str | None:
        if self.headers.get_content_type() != "application/json":
            return "send the action as application/json"
        origin = self.headers.get("Origin")
        host = self.headers.get("Host")
        if origin is not None and urlsplit(origin).netloc != host:
            return f"cross-origin request from {origin} refused"
        return None

    def _replay(self, task_id: str | None) -> dict[str, Any]:
        return dict(self.server.watch.replay(task_id))

    def _purge(self, task_id: str | None) -> dict[str, Any]:
        return {"purged": self.server.watch.purge(task_id)}

    # ------------------------------------------------------------------ replies

    def _json(self, value: Any) -> None:
        self._send(HTTPStatus.OK, orjson.dumps(value), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._send(status, orjson.dumps({"error": message}), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def _seconds(query: dict[str, list[str]]) -> float:
    try:
        seconds = float(query.get("seconds", ["600"])[0])
    except ValueError:
        seconds = 600.0
    return max(1.0, min(seconds, float(HISTORY)))


def serve(watch: Watch, host: str, port: int) -> MonitorServer:
    """A server bound to `host`:`port` (0: one the OS picks); run `serve_forever()`."""
    return MonitorServer((host, port), watch)
