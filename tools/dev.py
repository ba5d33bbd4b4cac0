#!/usr/bin/env python3
"""The project's two front-door commands; needs only Python 3.11+.

    python3 tools/dev.py demo           set up .venv, start a broker and two nodes, run real tasks
    python3 tools/dev.py test           set up .venv, run ruff, ruff format --check, mypy, pytest
    python3 tools/dev.py test --fast    the same checks, then only the unit tier (pytest -m unit)

Setting up means: create .venv next to pyproject.toml if missing and `pip install -e .[dev]`
into it whenever pyproject.toml changed. mypy checks the packages (as pyproject.toml says) and
then tools/. Other arguments after `test` go to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"


def ensure_venv() -> None:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".installed-{digest}"
    if stamp.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtualenv in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing the project and its dev tools into .venv (once)", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run([*pip, "-e", f"{ROOT}[dev]"])
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()


def run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    code = subprocess.call(command, cwd=ROOT)
    if code != 0:
        sys.exit(code)


def test(args: list[str]) -> None:
    fast = "--fast" in args
    pytest_args = [arg for arg in args if arg != "--fast"]
    tool = [str(PYTHON), "-m"]
    run([*tool, "ruff", "check", "."])
    run([*tool, "ruff", "format", "--check", "."])
    run([*tool, "mypy"])
    run([*tool, "mypy", "tools"])  # scripts, not a package: checked as a directory
    run([*tool, "pytest", *(["-m", "unit"] if fast else []), *pytest_args])


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs under any system Python
        sys.exit(f"error: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    ensure_venv()
    os.environ["PATH"] = f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    if sys.argv[1] == "test":
        test(sys.argv[2:])
    else:
        run([str(PYTHON), str(ROOT / "tools" / "demo.py"), *sys.argv[2:]])


if __name__ == "__main__":
    main()
