"""Issue 17, with real processes: a broker killed with SIGKILL while its nodes run long tasks
runs none of them again once restarted on its store; the nodes claim the attempts they still
run (protocol.md 7.3). A node that dies meanwhile has its tasks run again, and `attempts`
says so. Each task notes every run it starts in a file (tests/restart_tasks.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from pathlib import Path

from broker import protocol as p
from client import Client
from tests.e2e.conftest import Cluster, free_port
from tests.support import wait_until

FUNCTIONS = "tests.restart_tasks"
TASKS = 50
SECONDS = 3.0  # each task's run: long enough to outlast the restart


class Waiting:
    """A client waiting on TASKS long tasks, in a thread; each answer as it came."""

    def __init__(self, url: str, runs: Path) -> None:
        self.url, self.runs = url, runs
        self.answers: list[p.TaskCompleted] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="client")
        self.thread.start()

    def _run(self) -> None:
        args = [(str(self.runs), f"k{i}", SECONDS) for i in range(TASKS)]
        try:
            with Client(self.url, timeout=60, resend_interval=0.5) as client:
                for answer in client.imap("noted_sleep", args, window=TASKS, answers=True):
                    self.answers.append(answer)
        except BaseException as exc:  # reported by the test thread
            self.error = exc

    def by_key(self) -> dict[str, tuple[int, int]]:
        """Once every answer came: (exit code, attempts) by task key."""
        self.thread.join(60)
        assert not self.thread.is_alive(), "the client never got every answer"
        assert self.error is None, self.error
        return {a.result.decode().strip('"'): (a.exit_code, a.attempts) for a in self.answers}


def started(runs: Path) -> Counter[str]:
    """How often each task started, as the tasks noted it."""
    return Counter(runs.read_text().split()) if runs.exists() else Counter()


def two_nodes_running_every_task(cluster: Cluster, runs: Path) -> tuple[str, Waiting]:
    """A broker and two nodes of 25 threads (no prefetch: every task starts at once) running
    the TASKS tasks of one client."""
    url = f"tcp://127.0.0.1:{free_port()}"
    cluster.start_broker(bind=url)
    for _ in range(2):
        cluster.start_node("--threads", "25", "--prefetch", "0", functions=FUNCTIONS)
    cluster.wait_nodes("node0", "node1")
    waiting = Waiting(url, runs)
    assert cluster.broker is not None
    wait_until(
        lambda: sum(started(runs).values()) >= TASKS,
        20,
        what="every task started",
        alive=[cluster.broker],
    )
    return url, waiting


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_a_broker_restart_runs_no_running_task_twice(cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    url, waiting = two_nodes_running_every_task(cluster, runs)
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGKILL)
    cluster.broker.wait(5)
    cluster.start_broker(bind=url)  # the same address and store
    answers = waiting.by_key()
    assert answers == {f"k{i}": (0, 1) for i in range(TASKS)}  # one attempt each
    assert started(runs) == Counter({f"k{i}": 1 for i in range(TASKS)})  # each ran once
    counters = cluster.status()["counters"]
    assert counters.get("adopted") == TASKS and not counters.get("restored_unclaimed")


def test_tasks_of_a_node_that_died_during_the_restart_run_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    runs = tmp_path / "runs.txt"
    url, waiting = two_nodes_running_every_task(cluster, runs)
    [lost] = [n for n in cluster.status()["nodes"] if n["name"] == "node1"]
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGKILL)
    cluster.nodes[1].signal(signal.SIGKILL)  # its supervisor, then its process
    kill(lost["pid"])
    cluster.broker.wait(5)
    cluster.nodes[1].wait(5)
    cluster.start_broker(bind=url)
    answers = waiting.by_key()
    assert sorted(answers) == sorted(f"k{i}" for i in range(TASKS))
    runs_of = started(runs)
    again = {key for key, count in runs_of.items() if count == 2}
    assert again and set(runs_of.values()) == {1, 2}  # node1's tasks, and only they, twice
    for key, (code, attempts) in answers.items():
        assert code == 0 and attempts == runs_of[key], (key, attempts, runs_of[key])
    counters = cluster.status()["counters"]
    assert counters.get("restored_unclaimed") == len(again)
    assert counters.get("adopted") == TASKS - len(again)


def test_a_timeout_while_the_broker_is_down_is_answered_as_a_timeout_and_runs_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The node stops a task at its timeout, answers 124 and restarts while the broker is
    down: the answer is lost with that broker, but the process hands it to its successor
    (protocol.md 7.4), which claims and sends it to the restarted broker. The task is not
    placed again: it ran once, and is answered Timeout with attempts 1."""
    runs = tmp_path / "runs.txt"
    url = f"tcp://127.0.0.1:{free_port()}"
    cluster.start_broker(bind=url)
    cluster.start_node("--prefetch", "0", functions=FUNCTIONS)
    cluster.wait_nodes("node0")
    [node] = cluster.status()["nodes"]
    answers: list[p.TaskCompleted] = []

    def wait_for_answer() -> None:
        with Client(url, timeout=60, resend_interval=0.5) as client:
            answers.append(
                client.execute_raw("noted_sleep", (str(runs), "k", 30), task_timeout=1.0, retries=2)
            )

    waiting = threading.Thread(target=wait_for_answer, daemon=True, name="client")
    waiting.start()
    assert cluster.broker is not None
    wait_until(lambda: started(runs)["k"] == 1, 10, what="the task started", alive=[cluster.broker])
    cluster.broker.signal(signal.SIGKILL)
    cluster.broker.wait(5)

    def ended() -> bool:  # the process stopped the task at its timeout and exited
        try:
            os.kill(node["pid"], 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(ended, 10, what="the node process restarted", alive=[cluster.nodes[0]])
    cluster.start_broker(bind=url)
    waiting.join(30)
    [answer] = answers
    assert (answer.exit_code, answer.attempts) == (p.EXIT_TIMEOUT, 1), answer
    assert answer.error is not None and answer.error.type == "Timeout"
    assert started(runs) == Counter({"k": 1})
    counters = cluster.status()["counters"]
    assert counters.get("adopted") == 1 and not counters.get("restored_unclaimed")


def test_tasks_placed_in_the_moment_before_the_kill_run_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The broker places tasks, then is killed before its store has them (a group commit
    held open for 10 s stands for the last 5 ms of a default one). The restarted broker
    does not know them: the node claims them and the client resends them, in either order,
    and each task is adopted by the node that runs it instead of run again (protocol.md
    7.3, early claims and the restart hold)."""
    runs = tmp_path / "runs.txt"
    url = f"tcp://127.0.0.1:{free_port()}"
    cluster.start_broker("--store-delay", "0", bind=url)
    cluster.start_node("--threads", "4", "--prefetch", "0", functions=FUNCTIONS)
    cluster.wait_nodes("node0")
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGTERM)  # the node is in the store now
    cluster.broker.wait(15)
    cluster.start_broker("--store-delay", "10", bind=url)
    cluster.wait_nodes("node0")
    answers: list[p.TaskCompleted] = []

    def wait_for_answers() -> None:
        args = [(str(runs), f"k{i}", SECONDS) for i in range(4)]
        with Client(url, timeout=60, resend_interval=0.5) as client:
            answers.extend(client.imap("noted_sleep", args, window=4, answers=True))

    waiting = threading.Thread(target=wait_for_answers, daemon=True, name="client")
    waiting.start()
    wait_until(
        lambda: sum(started(runs).values()) == 4,
        10,
        what="every task started",
        alive=[cluster.broker],
    )
    cluster.broker.signal(signal.SIGKILL)  # none of the four is in the store
    cluster.broker.wait(5)
    cluster.start_broker(bind=url)
    waiting.join(30)
    assert [(a.exit_code, a.attempts) for a in answers] == [(0, 1)] * 4, answers
    assert started(runs) == Counter({f"k{i}": 1 for i in range(4)})  # each ran once
    counters = cluster.status()["counters"]
    assert counters.get("adopted") == 4, counters


def test_a_detached_task_survives_a_broker_killed_right_after(cluster: Cluster) -> None:
    """`zsubmit --detach` exits once the broker's store has the task (STATUS `stored`,
    protocol.md 3.10), not only its memory: a broker killed at once, with a group commit
    that would have waited 10 s, still has the task when restarted on its store, and runs
    it once a node comes."""
    url = f"tcp://127.0.0.1:{free_port()}"
    cluster.start_broker("--store-delay", "10", bind=url)
    detached = cluster.zsubmit("--detach", "--task-id", "kept", "multiply", "6", "7")
    assert detached.returncode == 0 and detached.stdout.strip() == "kept", detached.stderr
    assert cluster.broker is not None
    cluster.broker.signal(signal.SIGKILL)
    cluster.broker.wait(5)
    cluster.start_broker(bind=url)
    cluster.start_node("--prefetch", "0")
    cluster.wait_nodes("node0")
    answer = cluster.zsubmit("result", "kept", "--wait", "20")
    assert (answer.returncode, answer.stdout) == (0, "42\n"), answer.stderr
