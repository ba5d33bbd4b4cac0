"""A function set for the tests whose tasks submit tasks and wait for them (node.get_client)."""

from __future__ import annotations

import os
import time

from node import get_client


def square(n: int) -> int:
    return n * n


def slow_square(n: int, delay: float) -> int:
    time.sleep(delay)
    return n * n


def sum_of_squares(n: int, delay: float = 0.0) -> int:
    """Submits n tasks and waits for them all: a parent of n children."""
    client = get_client()
    futures = [client.submit("slow_square", i, delay) for i in range(n)]
    return sum(future.result() for future in futures)


def nested(depth: int) -> int:
    """A chain of parents `depth` deep, each waiting for the next: 1 at the bottom."""
    if depth <= 1:
        return 1
    below: int = get_client().execute("nested", depth - 1)
    return 1 + below


def pid_of_children(n: int) -> list[int]:
    client = get_client()
    return sorted(set(client.map("child_pid", [()] * n)))


def child_pid() -> int:
    return os.getpid()


def mark(directory: str, name: str) -> str:
    """Append a line to DIRECTORY/NAME: how many times a task ran is how many lines."""
    with open(os.path.join(directory, name), "a") as file:
        file.write(f"{os.getpid()}\n")
    return name


def parent_of_marks(directory: str, children: int, pause: float) -> int:
    """Write its pid to DIRECTORY/parent.pid, run `children` mark tasks and wait for them,
    then pause: a parent caught by a kill after its children finished."""
    with open(os.path.join(directory, "parent.pid"), "a") as file:
        file.write(f"{os.getpid()}\n")
    client = get_client()
    names = [client.submit("mark", directory, f"child-{i}") for i in range(children)]
    done = [future.result() for future in names]
    time.sleep(pause)
    return len(done)


def parent_of_slow_child(delay: float, timeout: float) -> int:
    """Waits for a child that runs `delay` seconds with a task timeout of `timeout`."""
    child: int = get_client().submit("slow_square", 2, delay, task_timeout=timeout).result()
    return child


def job_inside(parts: int, delay: float) -> int:
    """Runs a split job (tests.split_tasks' slow_sum_squares over 1..100) and waits for it."""
    total: int = get_client().split("slow_sum_squares", 1, 100, delay, parts=parts).result()
    return total
