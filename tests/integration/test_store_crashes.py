"""The store against real crashes and real write failures, in child processes: a writer
SIGKILLed in the middle of its batches, and a COMMIT that fails under a file-size limit.
(The store's other tests, in-process, are in tests/unit/test_store_*.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from broker.core.events import Restored
from broker.core.journal import Change, SaveAnswer, SaveDeadLetter
from broker.store import Store
from tests.store_helpers import FAR, OFFSET, Model, answer, dead, load, save


def made_store(path: Path) -> Path:
    """A store holding one row in every table."""
    store = Store.open(path)
    changes: list[Change] = [
        save("a", 1),
        SaveAnswer(answer("b", 1), 2.0),
        SaveDeadLetter(dead("c")),
    ]
    store.apply(changes, OFFSET)
    store.close()
    return path


FAILED_COMMIT = """
import os, resource, signal, sys
from broker.core.journal import SaveTask
from broker.protocol import TaskSpec
from broker.store import Store, StoreError, schema

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
path = sys.argv[1]
store = Store.open(path)
sizes = [os.path.getsize(f) for f in (path, path + "-wal") if os.path.exists(f)]
resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 8192, resource.RLIM_INFINITY))
batch = [SaveTask(TaskSpec(f"t{i}", "f", b"[%d]" % i * 300), 10 + i, 1.0) for i in range(200)]
try:
    store.apply(batch, 0.0)
except StoreError as exc:
    print(exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
store.apply(batch[:1], 0.0)  # the store still works once the disk takes writes again
store.close()
"""


def test_a_failed_commit_reports_its_cause_not_the_rollback(tmp_path: Path) -> None:
    """The pages of a transaction reach the WAL file at COMMIT; when that write fails SQLite
    ends the transaction itself, and a ROLLBACK after it would fail with "no transaction is
    active" and hide the cause. A real failed write, reliably: a child process whose file
    size limit (RLIMIT_FSIZE, SIGXFSZ ignored) is just above the store's files. SQLite
    reports EFBIG as "disk I/O error" (ENOSPC would be SQLITE_FULL, shown by the test
    above); the child keeps the limit away from every other file of the test run."""
    path = made_store(tmp_path / "broker.db")
    child = subprocess.run(
        [sys.executable, "-c", FAILED_COMMIT, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    message = child.stdout.strip()
    assert message.startswith(f"cannot write store {path}: disk I/O error (recording changes)")
    assert message.endswith("check the disk (space, permissions) and restart the broker")
    assert "rollback" not in message
    store = Store.open(path)
    try:
        ids = [t.spec.task_id for t in load(store).pending]
    finally:
        store.close()
    assert ids == ["a", "t0"]  # the failed batch left nothing; the next one was kept


BATCHES = """
from broker.core.journal import SaveAnswer, SaveTask
from broker.protocol import TaskCompleted, TaskSpec

def changes(batch):
    # 60 tasks saved per batch; the first 30 of the batch before answered in this one.
    saved = [
        SaveTask(TaskSpec(f"{batch}-{i}", "f", b"[%d]" % i), batch * 100 + i, float(batch))
        for i in range(60)
    ]
    answered = [SaveAnswer(TaskCompleted(f"{batch - 1}-{i}", 0, b"%d" % i), float(batch))
                for i in range(30)]
    return saved + answered if batch else saved
"""

WRITER = """
import sys
from broker.store import Store

store = Store.open(sys.argv[1])
batch = int(sys.argv[2])
pending = changes(batch)
while True:
    store.apply(pending, 0.0)
    pending = changes(batch + 1)  # ready first, so that a kill after a print lands in apply
    print(batch, flush=True)  # only once apply returned
    batch += 1
"""


def expected_after(batches: int) -> Restored:
    namespace: dict[str, Any] = {}
    exec(BATCHES, namespace)
    model = Model()
    for batch in range(batches):
        for change in namespace["changes"](batch):
            model.apply(change)
    return model.restored()


def run_writer_and_kill(path: Path, start: int, batches_to_see: int) -> int:
    """Start a writer at batch `start` and SIGKILL it once it reported `batches_to_see`
    batches (it is then most likely inside `apply`); the last batch it reported applied."""
    command = [sys.executable, "-c", BATCHES + WRITER, str(path), str(start)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        reported = [proc.stdout.readline() for _ in range(batches_to_see)]
    finally:
        proc.kill()  # SIGKILL
        # Through the same buffered reader: readline may have read ahead.
        reported += proc.stdout.read().splitlines()
        error = proc.stderr.read().decode()
        proc.wait(timeout=10)
    assert proc.returncode == -9, f"the writer stopped by itself: {error}"
    assert len(reported) >= batches_to_see and all(reported), reported
    return max(int(n) for n in reported)


def test_every_batch_reported_applied_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    committed = 0
    for round_ in range(5):
        last = run_writer_and_kill(path, committed, batches_to_see=10 + 7 * round_)
        store = Store.open(path)
        try:
            restored = store.load(0.0, FAR)
        finally:
            store.close()
        committed = (restored.next_seq + 99) // 100  # the batches whose tasks are there
        # At most one batch more than reported: it committed, the kill came before the print.
        assert committed in (last + 1, last + 2)
        assert restored == expected_after(committed)  # whole batches, never part of one
