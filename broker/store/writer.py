"""StoreWriter: the store's writes done by a child process, so that the broker's loop hands a
batch of changes over and goes on instead of waiting for SQLite.

SQLite releases the GIL while it works, but a writer thread would still take the GIL back for
every row it binds, and a busy loop makes each of those waits long: a thread writes slower
than the loop alone would. A process has its own interpreter. The broker's loop pays for
encoding the batch (msgspec MessagePack of the tagged journal records, in C, without pickle's
call per object) and one write to a socket; the child decodes it, applies it in one
transaction (`Store.apply`) and acknowledges it.

The conversation, over a Unix socket pair, each message length-prefixed MessagePack:

- broker to writer: `Apply`, a batch of the journal (broker.core.journal), now and then
  with a `Prune`; at the end the broker shuts its side down.
- writer to broker: one byte per batch written, in order (`b"."`), or, when one fails,
  `b"!"` followed by the reason (a StoreError's text) and the writer exits 74.

Requests are carried out in the order sent, so an acknowledgement covers everything sent
before it, except the new tasks the writer holds back for a moment (broker.store.young:
most are answered meanwhile and never cost SQLite a row; a request marked `flush` writes
them too). When the broker dies, the writer reads what was sent before, writes it, held
tasks included, and exits once the socket is closed: a killed broker loses only what it had
not handed over. The writer
ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process group): the broker ends it by
closing its side, after its last batch.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import msgspec
from msgspec import Struct

from broker.core.journal import Change
from broker.store.errors import StoreError
from broker.store.young import HOLD, YoungTasks


class Prune(Struct, frozen=True, array_like=True):
    """Forget expired kept answers but those `pinned`, and trim the dead letters."""

    older_than: float
    wall_offset: float
    keep: int
    pinned: list[str]
    dead_letters_max: int


class Apply(Struct, frozen=True, array_like=True):
    """Write `changes` (the journal, in order) in one transaction; then, with `prune`, forget
    what it says in another. One request, one acknowledgement. New tasks may be held back
    for a moment (broker.store.young), unless `flush`: then every task held is written too."""

    changes: list[Change]
    wall_offset: float
    prune: Prune | None = None
    flush: bool = False


_ENCODE = msgspec.msgpack.Encoder().encode
_LENGTH = struct.Struct("<I")
ACK = b"."
FAILED = b"!"
EXIT_FAILED = 74  # EX_IOERR, as the broker's own exit on a store failure
# The writer yields the CPU to the broker and its peers when they want it: a commit can wait
# a little, a round trip should not.
WRITER_NICENESS = 5
READ_SIZE = 1 << 20  # bytes the writer reads from the broker's socket at once
CLOSE_TIMEOUT = 120.0  # seconds the writer may take to write what it holds at the end
# The child's program: this module imported (not run as __main__, which the package's own
# import of it would make a second copy of).
_CHILD = "import os, sys; from broker.store.writer import main; os._exit(main(sys.argv[1:]))"


class StoreWriter:
    """The broker's side: hands requests to the writer process and counts its
    acknowledgements. Not thread-safe: the server's loop alone uses it."""

    def __init__(self, path: str, *, durable_sync: bool, lock_fd: int | None = None) -> None:
        """Start the writer for the store at `path`. `lock_fd`: the broker's lock on the
        store, which the writer holds too, so that no broker opens the store before the
        writer of one that died has written what it was given."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sync = "full" if durable_sync else "normal"
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(theirs.fileno()), path, sync],
                pass_fds=(theirs.fileno(),) if lock_fd is None else (theirs.fileno(), lock_fd),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise StoreError(
                f"cannot start the store's writer process for {path}: {exc.strerror}; "
                "check that the machine can start processes"
            ) from None
        finally:
            theirs.close()
        self.path = path
        self.pid = self._process.pid
        self._sock = ours  # blocking for sends; receives never wait (MSG_DONTWAIT)
        self.outstanding = 0  # requests sent and not acknowledged yet

    def send(self, request: Apply) -> None:
        """Hand `request` over (blocking while the writer is behind by a socket buffer's
        worth: back-pressure, as a synchronous write would be). Raises StoreError if the
        writer has failed or is gone."""
        blob = _ENCODE(request)
        try:
            self._sock.sendall(_LENGTH.pack(len(blob)) + blob)
        except OSError:
            self.acknowledged()  # the reason the writer gave, if it gave one
            raise self._gone() from None
        self.outstanding += 1

    def acknowledged(self, timeout: float = 0.0) -> int:
        """How many requests were carried out since the last call, waiting up to `timeout`
        seconds for the first. Raises StoreError with the writer's reason if one failed, or
        if the writer is gone."""
        sock = self._sock
        if timeout > 0 and not select.select([sock], [], [], timeout)[0]:
            return 0
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError:
            raise self._gone() from None
        if not data:
            raise self._gone()
        if FAILED in data:
            raise self._failed(data)
        self.outstanding -= len(data)
        return len(data)

    def flush(self, timeout: float = CLOSE_TIMEOUT) -> int:
        """Wait until every request sent is carried out; how many were acknowledged."""
        deadline = time.monotonic() + timeout
        done = 0
        while self.outstanding > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreError(
                    f"the store's writer process (pid {self.pid}) did not write {self.path} "
                    f"within {timeout:.0f} s; check the disk"
                )
            done += self.acknowledged(min(left, 1.0))
        return done

    def close(self) -> None:
        """Shut the broker's side: the writer writes what it holds and exits; wait for it
        (killed past CLOSE_TIMEOUT). `flush` first to learn whether all of it was written."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        self._sock.close()
        try:
            self._process.wait(timeout=CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def _failed(self, data: bytes) -> StoreError:
        """The writer's reason, read to its end (it exits once it has written it)."""
        with contextlib.suppress(OSError):
            while select.select([self._sock], [], [], 5.0)[0]:
                chunk = self._sock.recv(65536, socket.MSG_DONTWAIT)
                if not chunk:
                    break
                data += chunk
        reason = data.partition(FAILED)[2].decode("utf-8", "replace").strip()
        return StoreError(reason or f"the store's writer process (pid {self.pid}) failed")

    def _gone(self) -> StoreError:
        try:
            status = self._process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            status = None
        how = (
            "is not answering"
            if status is None
            else f"was killed by signal {-status}"
            if status < 0
            else f"exited with status {status}"
        )
        return StoreError(
            f"the store's writer process (pid {self.pid}) {how} before writing everything "
            f"to {self.path}; restart the broker: what it had not written is lost with this "
            "broker's last changes, and clients resend their unanswered tasks"
        )


# ------------------------------------------------------------------------------ the child


def _serve(sock: socket.socket, path: str, durable_sync: bool) -> None:
    from broker.store.sqlite import Store

    decode = msgspec.msgpack.Decoder(Apply).decode
    store = Store.open(path, durable_sync=durable_sync)
    # With an fsync per transaction (--store-sync full) a task is on disk when acknowledged.
    young = YoungTasks(0.0 if durable_sync else HOLD)
    requests = _Requests(sock)
    wall_offset = time.time() - time.monotonic()  # (the broker's is in each request)
    try:
        while True:
            due = young.next_due()
            try:
                body = requests.next(None if due is None else max(0.0, due - time.monotonic()))
            except TimeoutError:  # held tasks whose moment is over
                store.apply(young.due(time.monotonic()), wall_offset)
                continue
            if body is None:  # the broker is done (or gone): everything sent is written
                store.apply(young.all(), wall_offset)
                return
            try:
                request = decode(body)
            except msgspec.DecodeError as exc:  # ValidationError included
                raise StoreError(
                    f"the store's writer could not read a batch for {path}: {exc}; this is a "
                    "zbroker bug: please report it, then restart the broker"
                ) from None
            wall_offset = request.wall_offset
            changes = young.take(request.changes, time.monotonic())
            if request.flush:
                changes += young.all()
            store.apply(changes, wall_offset)
            if (prune := request.prune) is not None:
                keep, pinned = prune.keep, prune.pinned
                store.prune_results(prune.older_than, prune.wall_offset, keep=keep, pinned=pinned)
                store.trim_dead_letters(prune.dead_letters_max)
            with contextlib.suppress(OSError):  # a gone broker reads no acknowledgement
                sock.sendall(ACK)
    finally:
        store.close()


class _Requests:
    """The broker's requests, read whole from the socket (each length-prefixed); a wait for
    the next may end at a timeout."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def next(self, timeout: float | None) -> bytes | None:
        """The next request; None at the end of the stream (a request cut short there was
        not given over: the broker died while handing it). Raises TimeoutError if none came
        whole within `timeout` seconds (None: no limit)."""
        buffer, sock = self._buffer, self._sock
        while True:
            if len(buffer) >= _LENGTH.size:
                end = _LENGTH.size + _LENGTH.unpack_from(buffer)[0]
                if len(buffer) >= end:
                    body = bytes(buffer[_LENGTH.size : end])
                    del buffer[:end]
                    return body
            if timeout is not None and not select.select([sock], [], [], timeout)[0]:
                raise TimeoutError
            try:
                chunk = sock.recv(READ_SIZE)
            except ConnectionResetError:  # closed with our acknowledgements unread: the
                return None  # end, said so only once all it sent has been read
            if not chunk:
                return None
            buffer += chunk


def main(argv: list[str]) -> int:
    os.nice(WRITER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd, path, sync = int(argv[0]), argv[1], argv[2]
    sock = socket.socket(fileno=fd)
    try:
        _serve(sock, path, sync == "full")
    except StoreError as exc:
        with contextlib.suppress(OSError):
            sock.sendall(FAILED + str(exc).encode())
        return EXIT_FAILED
    except Exception as exc:  # a bug: said to the broker, which stops
        with contextlib.suppress(OSError):
            sock.sendall(FAILED + f"the store's writer failed: {exc!r}".encode())
        return EXIT_FAILED
    return 0
