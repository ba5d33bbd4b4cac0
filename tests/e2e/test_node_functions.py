"""Your own functions with the real `znode`: a module name is looked up in the current
directory first (as `celery -A` and `rq worker` do), a file path is loaded as it is, and a
module that cannot be imported stops znode with its own error, not "no function set"."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from client import Client
from client.cluster import Process, command
from tests.e2e.conftest import Cluster

MYTASKS = """
def triple(x):
    return 3 * x
"""

FILETASKS = """
import helpers

def greet(name):
    return helpers.greeting(name)
"""


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def znode(cluster: Cluster, cwd: Path, *argv: str) -> Process:
    """`znode ARGV` run in `cwd` (one process), reaped with the cluster."""
    log_path = cluster.tmp / f"znode-{len(cluster.processes)}.log"
    broker = ["--broker", cluster.url] if cluster.url else []
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [*command("znode"), *broker, "--concurrency", "1", "--name", "own", *argv],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    process = Process("znode", popen, log_path)
    cluster.processes.append(process)
    return process


def test_a_module_in_the_current_directory_and_a_file_path_run_their_functions(
    cluster: Cluster,
) -> None:
    project = cluster.tmp / "project"
    write(project / "mytasks.py", MYTASKS)
    write(project / "lib" / "filetasks.py", FILETASKS)
    write(project / "lib" / "helpers.py", "def greeting(name):\n    return f'hello {name}'\n")
    cluster.start_broker()
    znode(cluster, project, "--functions", "mytasks", "--functions", "lib/filetasks.py")
    cluster.wait_nodes("own")
    done = cluster.zsubmit("triple", "14")
    assert (done.returncode, done.stdout.strip()) == (0, "42"), done.stderr
    with Client(cluster.url) as client:
        assert client.execute("triple", 10**30) == 3 * 10**30
        assert client.execute("greet", "node") == "hello node"


def test_a_module_with_a_syntax_error_stops_znode_with_its_file_and_line(
    cluster: Cluster,
) -> None:
    project = cluster.tmp / "project"
    path = write(project / "mytasks.py", "def triple(x):\n    return 3 *\n")
    proc = znode(cluster, project, "--functions", "mytasks")
    assert proc.wait(timeout=30) != 0
    log = proc.log()
    assert "function set 'mytasks' failed to import" in log
    assert f'File "{path}", line 2' in log and "SyntaxError" in log
    assert "no function set" not in log


def test_a_module_importing_a_missing_package_names_that_package(cluster: Cluster) -> None:
    project = cluster.tmp / "project"
    write(project / "tasks" / "jobs.py", "import os\nimport zt_not_installed_anywhere\n")
    proc = znode(cluster, project, "--functions", "tasks/jobs.py")
    assert proc.wait(timeout=30) != 0
    log = proc.log()
    assert "No module named 'zt_not_installed_anywhere'" in log
    assert f'File "{project / "tasks" / "jobs.py"}", line 2' in log
    assert "no function set" not in log


def test_a_name_that_matches_nothing_says_where_it_looked(cluster: Cluster) -> None:
    project = cluster.tmp / "project"
    project.mkdir()
    proc = znode(cluster, project, "--functions", "mytaks")
    assert proc.wait(timeout=30) != 0
    log = " ".join(proc.log().split())
    assert f"no module mytaks in the current directory {project} (mytaks.py or mytaks/)" in log
