"""Function sets: built-in names, module paths, __all__, clashes and clear errors."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import registry
from node.functions import mathset, util
from node.registry import FunctionSetError, NodeSetupError, load_set, resolve


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for throwaway function-set modules."""
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in set(sys.modules) - before:
            del sys.modules[name]


@pytest.fixture
def isolated(tmp_path: Path) -> Iterator[Path]:
    """A directory for function-set files; sys.path and the modules loaded are restored."""
    path, before = list(sys.path), set(sys.modules)
    try:
        yield tmp_path
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - before:
            del sys.modules[name]


def write(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def test_builtin_sets() -> None:
    assert load_set("math")["multiply"] is mathset.multiply
    # sum_squares declares a split: its split and combine come with it (node.splitting).
    splits = {"sum_squares:split", "sum_squares:combine"}
    assert set(load_set("math")) == set(mathset.__all__) | splits
    assert set(load_set("util")) == set(util.__all__)
    assert {"noop", "echo", "fail", "pid", "crash", "segfault", "spin"} <= set(util.__all__)
    assert registry.module_path("util") == "node.functions.util"


def test_resolve_merges_sets() -> None:
    functions = resolve(["math", "util"])
    assert functions["echo"] is util.echo
    assert functions["fib"] is mathset.fib
    assert (
        len(functions) == len(mathset.__all__) + len(util.__all__) + 2
    )  # sum_squares:split, :combine


def test_module_path_without_all_offers_public_functions_defined_there(modules: Path) -> None:
    write(
        modules,
        "zt_tasks_plain",
        """
        from os.path import join  # imported: not offered
        LIMIT = 3  # not callable: not offered

        def double(x):
            return 2 * x

        def _helper():
            return None

        class Shape:
            pass
        """,
    )
    assert sorted(load_set("zt_tasks_plain")) == ["Shape", "double"]


def test_module_all_decides(modules: Path) -> None:
    write(
        modules,
        "zt_tasks_all",
        """
        from os.path import join
        __all__ = ["double", "join"]

        def double(x):
            return 2 * x

        def triple(x):
            return 3 * x
        """,
    )
    assert sorted(load_set("zt_tasks_all")) == ["double", "join"]


def test_all_naming_something_missing_is_an_error(modules: Path) -> None:
    write(modules, "zt_tasks_bad_all", "__all__ = ['ghost']\n")
    with pytest.raises(FunctionSetError, match="'ghost' in __all__"):
        load_set("zt_tasks_bad_all")


def test_clash_names_both_sets(modules: Path) -> None:
    write(modules, "zt_tasks_clash", "def add(a, b):\n    return a + b\n")
    with pytest.raises(FunctionSetError) as info:
        resolve(["math", "zt_tasks_clash"])
    message = str(info.value)
    assert "'add'" in message and "'math'" in message and "'zt_tasks_clash'" in message
    assert "load only one" in message


def test_same_set_twice_is_not_a_clash() -> None:
    assert resolve(["math", "math"]) == resolve(["math"])


def test_unknown_set_says_where_it_looked_and_what_to_do(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(isolated)
    with pytest.raises(FunctionSetError) as info:
        resolve(["maht"])
    assert str(info.value) == (
        "no function set 'maht': not a built-in set (math, util), and no module maht in the "
        f"current directory {isolated} (maht.py or maht/) nor among the installed packages; "
        "give a built-in set, a module name like mytasks or mypkg.tasks, or a file path like "
        "path/to/tasks.py"
    )
    assert isinstance(info.value, NodeSetupError)


def test_unknown_submodule_is_unknown_set() -> None:
    with pytest.raises(FunctionSetError, match=r"no function set 'node\.nothing_here'"):
        resolve(["node.nothing_here"])


def test_module_failing_to_import_names_the_cause(modules: Path) -> None:
    write(modules, "zt_tasks_broken", "import zt_no_such_dependency\n")
    with pytest.raises(FunctionSetError) as info:
        resolve(["zt_tasks_broken"])
    message = str(info.value)
    assert "'zt_tasks_broken' failed to import" in message
    assert "zt_no_such_dependency" in message


def test_module_raising_on_import(modules: Path) -> None:
    write(modules, "zt_tasks_raises", "raise RuntimeError('misconfigured')\n")
    with pytest.raises(FunctionSetError, match="RuntimeError: misconfigured"):
        resolve(["zt_tasks_raises"])


def test_set_without_functions_is_an_error(modules: Path) -> None:
    write(modules, "zt_tasks_empty", "VALUE = 1\n")
    with pytest.raises(FunctionSetError, match="offers no functions"):
        resolve(["zt_tasks_empty"])


def test_no_sets_is_an_error() -> None:
    with pytest.raises(FunctionSetError, match="--functions math"):
        resolve([])


def test_a_module_name_is_looked_up_in_the_current_directory_first(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated, "zt_mytasks", "def triple(x):\n    return 3 * x\n")
    monkeypatch.chdir(isolated)
    assert load_set("zt_mytasks")["triple"](2) == 6
    assert sys.path[0] == str(isolated)


def test_a_file_path_is_loaded_with_its_directory_searched_for_its_imports(
    isolated: Path,
) -> None:
    (isolated / "lib").mkdir()
    write(isolated / "lib", "zt_helper", "FACTOR = 4\n")
    write(
        isolated / "lib",
        "zt_file_tasks",
        """
        import zt_helper

        def scale(x):
            return zt_helper.FACTOR * x
        """,
    )
    path = str(isolated / "lib" / "zt_file_tasks.py")
    functions = resolve([path])
    assert list(functions) == ["scale"] and functions["scale"](2) == 8
    assert resolve([path]) == functions  # loaded once: the same functions again


def test_a_missing_file_says_so(isolated: Path) -> None:
    with pytest.raises(
        FunctionSetError, match=r"no function set file .*nope\.py: .* is not a file"
    ):
        resolve([str(isolated / "nope.py")])


def test_a_syntax_error_shows_the_file_and_line(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(isolated, "zt_syntax", "X = 1\ndef broken(:\n    pass\n")
    monkeypatch.chdir(isolated)
    for name in ("zt_syntax", "zt_syntax.py"):  # a module name, and a file path
        with pytest.raises(FunctionSetError) as info:
            resolve([name])
        message = str(info.value)
        assert f"function set {name!r} failed to import" in message
        assert f'File "{isolated / "zt_syntax.py"}", line 2' in message
        assert "SyntaxError" in message


def test_a_missing_import_names_the_module_and_the_line(isolated: Path) -> None:
    write(isolated, "zt_needs", "import os\nimport zt_not_installed\n")
    with pytest.raises(FunctionSetError) as info:
        resolve([str(isolated / "zt_needs.py")])
    message = str(info.value)
    assert f'File "{isolated / "zt_needs.py"}", line 2, in <module>' in message
    assert "ModuleNotFoundError: No module named 'zt_not_installed'" in message
    assert "install the module 'zt_not_installed'" in message
    assert "registry.py" not in message and "importlib" not in message
