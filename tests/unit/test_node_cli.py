"""`znode`'s command line refuses what it cannot do before it starts anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from node.cli import app


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--min", "1", "--concurrency", "2"], ["--concurrency", "--min/--max"]),
        (["--max", "3", "-c", "2"], ["--concurrency", "--min/--max"]),
        (["--scale-down-after", "5"], ["--scale-down-after", "--min N"]),
        (["--min", "5", "--max", "2"], ["--min", "--max of at least 5"]),
        (["--min", "0"], ["--min"]),
        (["--max", "0"], ["--max"]),
        (["--min", "1", "--scale-down-after", "0"], ["--scale-down-after"]),
    ],
)
def test_elastic_options_that_cannot_work_are_refused(argv: list[str], names: list[str]) -> None:
    done = CliRunner().invoke(
        app, ["--functions", "math", *argv], env={"COLUMNS": "200", "NO_COLOR": "1"}
    )
    assert done.exit_code == 2, done.output
    text = " ".join(done.output.split())
    for name in names:
        assert name in text, text


def test_help_names_the_elastic_options() -> None:
    done = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert done.exit_code == 0
    for option in ("--min", "--max", "--scale-down-after", "--concurrency"):
        assert option in done.output


def test_help_tells_how_to_offer_your_own_functions() -> None:
    done = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert done.exit_code == 0
    text = " ".join(done.output.split())
    for said in ("--functions mytasks", "mytasks.py in the current directory", "path/to/tasks.py"):
        assert said in text, text
    assert "@retryable(ConnectionError, ...)" in text


def test_version_needs_no_other_option() -> None:
    done = CliRunner().invoke(app, ["--version"])
    assert done.exit_code == 0
    assert done.output.startswith("znode ")
