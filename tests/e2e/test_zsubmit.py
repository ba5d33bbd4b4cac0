"""`zsubmit` and its commands against a real broker and a real `math` node, as the README's
Quickstart starts them: results by task id, cancelling, --detach, Ctrl-C, map, and the
examples of `zsubmit --help`."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from client.cluster import command
from tests.e2e.conftest import Cluster
from tests.support import interruptible, wait_until


@pytest.fixture
def math_node(cluster: Cluster) -> Cluster:
    """A broker and one one-slot math node that holds no task beyond the one it runs."""
    cluster.start_broker("--store", "none")
    cluster.start_node("--prefetch", "0")
    cluster.wait_nodes("node0")
    return cluster


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def zsubmit(
    cluster: Cluster, *argv: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command("zsubmit"), "--broker", cluster.url, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def running(cluster: Cluster) -> int:
    return int(cluster.status()["running"])


def test_the_help_examples_work(math_node: Cluster, tmp_path: Path) -> None:
    def out(*argv: str, stdin: str = "") -> str:
        done = zsubmit(math_node, *argv, stdin=stdin, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert out("multiply", "5", "10") == "50\n"
    assert out("multiply", "-3", "2.5") == "-7.5\n"
    assert out("hash_text", "hello") == f'"{sha256("hello")}"\n'
    assert out("hash_text", '"42"') == f'"{sha256("42")}"\n'
    assert out("hash_text", "-", stdin="hello\n") == f'"{sha256("hello")}"\n'
    (tmp_path / "notes.txt").write_text("some notes\n")
    assert out("hash_text", "@notes.txt") == f'"{sha256("some notes")}"\n'
    assert json.loads(out("--json", "multiply", "5", "10"))["result"] == 50
    (tmp_path / "args.jsonl").write_text("[2, 10]\n[3, 3]\n")
    assert out("map", "power", "args.jsonl") == "1024\n27\n"


def test_detach_prints_an_id_that_result_answers(math_node: Cluster) -> None:
    detached = zsubmit(math_node, "--detach", "sleep", "5")
    assert detached.returncode == 0, detached.stderr
    task_id = detached.stdout.strip()
    assert len(task_id) == 32
    wait_until(lambda: running(math_node) == 1, 10, what="the task running")
    pending = zsubmit(math_node, "result", task_id)
    assert pending.returncode == 3, pending.stderr
    assert f"task {task_id} is not done after 0 s" in pending.stderr
    done = zsubmit(math_node, "result", task_id, "--wait", "20")
    assert (done.returncode, done.stdout) == (0, "5\n"), done.stderr
    again = zsubmit(math_node, "result", task_id, "--json")  # done: answered at once
    assert json.loads(again.stdout)["task_id"] == task_id


def test_unknown_task_ids_exit_4(math_node: Cluster) -> None:
    for verb in ("result", "cancel"):
        done = zsubmit(math_node, verb, "no-such-task")
        assert done.returncode == 4, done.stderr
        assert "the broker knows no task 'no-such-task'" in done.stderr


def test_cancel_a_queued_task_and_a_finished_one(math_node: Cluster) -> None:
    busy = zsubmit(math_node, "--detach", "--task-id", "busy", "sleep", "30")
    queued = zsubmit(math_node, "--detach", "--task-id", "waiting", "multiply", "2", "3")
    assert (busy.returncode, queued.returncode) == (0, 0), busy.stderr + queued.stderr
    wait_until(lambda: math_node.status()["queued"] == 1, 10, what="one task queued")

    done = zsubmit(math_node, "cancel", "waiting")
    said = "cancelled task waiting (it was queued, and never runs)\n"
    assert (done.returncode, done.stdout) == (0, said)
    fetched = zsubmit(math_node, "result", "waiting")
    assert fetched.returncode == 1
    assert "task waiting was cancelled (exit 130, Cancelled)" in fetched.stderr

    done = zsubmit(math_node, "cancel", "busy")
    said = "cancelled task busy (it was running; its node stops it)\n"
    assert (done.returncode, done.stdout) == (0, said)

    finished = zsubmit(math_node, "--task-id", "quick", "add", "1", "2")
    assert finished.stdout == "3\n", finished.stderr
    done = zsubmit(math_node, "cancel", "quick")
    assert done.returncode == 5
    assert done.stdout.startswith("task quick had finished already: nothing to cancel")


def test_ctrl_c_cancels_the_task_and_exits_130(math_node: Cluster) -> None:
    proc = subprocess.Popen(
        [*command("zsubmit"), "--broker", math_node.url, "--task-id", "nap", "sleep", "30"],
        preexec_fn=interruptible,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: running(math_node) == 1, 15, what="the task running")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out) == (130, "")
    assert err.endswith("zsubmit: cancelled task nap (it was running)\n")
    fetched = zsubmit(math_node, "result", "nap")
    assert fetched.returncode == 1 and "(exit 130, Cancelled)" in fetched.stderr


def test_map_from_a_file_and_from_stdin(math_node: Cluster, tmp_path: Path) -> None:
    lines = [f"[{n}, {n % 4}]" for n in range(200)]  # every fourth divides by zero
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    expected = [json.dumps(n / (n % 4)) if n % 4 else "null" for n in range(200)]
    for argv, stdin in ([str(source)], ""), ([], source.read_text()):
        done = zsubmit(math_node, "map", "divide", *argv, stdin=stdin)
        assert done.returncode == 1
        assert done.stdout.splitlines() == expected
        failed = [line for line in done.stderr.splitlines() if line.startswith("line ")]
        assert len(failed) == 50
        assert failed[0] == "line 1: divide failed (exit 1, ZeroDivisionError): division by zero"
        assert done.stderr.endswith("error: 50 of 200 lines failed\n")


def test_an_argument_that_looks_like_json_is_warned_of(math_node: Cluster) -> None:
    done = zsubmit(math_node, "hash_text", "1.2.3")
    assert (done.returncode, done.stdout) == (0, f'"{sha256("1.2.3")}"\n')
    assert done.stderr.startswith("warning: argument 1 '1.2.3' looks like JSON but is not (")
