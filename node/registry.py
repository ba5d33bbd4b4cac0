"""Function sets: which Python callables a node offers, and under which names.

A set is named one of three ways (`znode --functions SET`):

- a built-in short name: "math", "util";
- a module name: `mytasks` is `mytasks.py` (or the package `mytasks/`) in the current
  directory, which is searched first, as `celery -A` and `rq worker` do; `mypkg.tasks` is a
  module of a package there or among those installed;
- a file path, ending in ".py" or holding a "/": `path/to/tasks.py` is loaded as the module
  `tasks`, with its directory searched for the modules it imports (as `python
  path/to/tasks.py` would).

Its functions are the module's `__all__`, or else the public callables the module itself
defines. Functions are offered by their bare names, so two sets may not define the same name.
A module that fails to import is reported with its own traceback (file and line), not as a
missing set.

A function declares the exceptions worth another attempt with `@retryable`:

    from node.registry import retryable

    @retryable(ConnectionError, TimeoutError)
    def fetch(url): ...

When it raises one of them (or a subclass), its RESULT says `retry: true` (protocol.md 3.8)
and the broker retries the task, within its `retries`, whatever its `retry_on` says.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from node.splitting import with_split_functions

BUILTIN_SETS: dict[str, str] = {
    "math": "node.functions.mathset",
    "util": "node.functions.util",
}

Function = Callable[..., Any]
F = TypeVar("F", bound=Function)

_RETRYABLE = "__ztb_retryable__"  # the attribute `retryable` sets on a function


class NodeSetupError(Exception):
    """The node cannot start as configured; the message says what to change."""


class FunctionSetError(NodeSetupError):
    """A function set cannot be loaded or clashes with another one."""


# ---------------------------------------------------------------------- declarations


def retryable(*exceptions: type[BaseException]) -> Callable[[F], F]:
    """Declare that the decorated function's `exceptions` (and their subclasses) are worth
    another attempt: its RESULT then carries error `retry` true. Returns the function
    itself, marked."""
    if not exceptions:
        raise TypeError("retryable() needs at least one exception class, e.g. ConnectionError")
    for kind in exceptions:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise TypeError(f"retryable() takes exception classes, got {kind!r}")

    def mark(function: F) -> F:
        setattr(function, _RETRYABLE, retryable_exceptions(function) + exceptions)
        return function

    return mark


def retryable_exceptions(function: Function) -> tuple[type[BaseException], ...]:
    """The exceptions `function` declares retryable (none unless `@retryable` says)."""
    declared: tuple[type[BaseException], ...] = getattr(function, _RETRYABLE, ())
    return declared


# ---------------------------------------------------------------------- loading


def module_path(set_name: str) -> str:
    """The module behind a set name (a file path is its own)."""
    return BUILTIN_SETS.get(set_name, set_name)


def is_file_path(set_name: str) -> bool:
    """Whether a set is named by a file path rather than a module name."""
    return set_name.endswith(".py") or "/" in set_name or os.sep in set_name


def _unknown(set_name: str) -> FunctionSetError:
    builtins = ", ".join(sorted(BUILTIN_SETS))
    relative = set_name.replace(".", "/")
    return FunctionSetError(
        f"no function set {set_name!r}: not a built-in set ({builtins}), and no module "
        f"{set_name} in the current directory {os.getcwd()} ({relative}.py or {relative}/) "
        "nor among the installed packages; give a built-in set, a module name like mytasks "
        "or mypkg.tasks, or a file path like path/to/tasks.py"
    )


def _search_current_directory() -> None:
    """Put the current directory first on the module search path, as `python -m` does."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _import(set_name: str) -> ModuleType:
    if is_file_path(set_name):
        return _import_file(set_name)
    path = module_path(set_name)
    _search_current_directory()
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        # Only a missing set module itself means "unknown set"; a module it imports is a bug in it.
        if exc.name is not None and (path == exc.name or path.startswith(exc.name + ".")):
            raise _unknown(set_name) from None
        raise _broken(set_name, exc) from exc
    except Exception as exc:
        raise _broken(set_name, exc) from exc


def _import_file(set_name: str) -> ModuleType:
    """Load the file `set_name` as a module named after it."""
    path = Path(set_name).expanduser().resolve()
    if not path.is_file():
        raise FunctionSetError(
            f"no function set file {set_name}: {path} is not a file; give the path of a "
            "Python file, like path/to/tasks.py"
        )
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if getattr(loaded, "__file__", None) == str(path):
            return loaded  # loaded before, by this process
        where = getattr(loaded, "__file__", None) or "built in"
        raise FunctionSetError(
            f"function set file {set_name}: a module named {name!r} is loaded already "
            f"({where}); rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FunctionSetError(f"function set file {set_name}: Python cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # for the modules beside it that it imports
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _broken(set_name, exc) from exc
    return module


def _broken(set_name: str, exc: BaseException) -> FunctionSetError:
    """The import error of a set as Python would show it, without the frames of the import
    machinery, and what to do about it."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        advice = f"install the module {exc.name!r} it needs, or fix the import"
    else:
        advice = "fix the module"
    return FunctionSetError(
        f"function set {set_name!r} failed to import:\n{_traceback(exc)}\n{advice}"
    )


def _traceback(exc: BaseException) -> str:
    """`exc` formatted as Python prints it, showing only the frames of the set's own code."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename != __file__
        and not frame.filename.startswith("<frozen importlib")
        and Path(frame.filename).parent != Path(importlib.__file__).parent
    ]
    lines = (
        ["Traceback (most recent call last):\n", *traceback.format_list(frames)] if frames else []
    )
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n")


def _exported(set_name: str, module: ModuleType) -> dict[str, Function]:
    names = getattr(module, "__all__", None)
    if names is None:
        return {
            name: obj
            for name, obj in vars(module).items()
            if not name.startswith("_")
            and callable(obj)
            and getattr(obj, "__module__", None) == module.__name__
        }
    functions: dict[str, Function] = {}
    for name in names:
        obj = getattr(module, name, None)
        if not callable(obj):
            raise FunctionSetError(
                f"function set {set_name!r} lists {name!r} in __all__ but it is not a "
                "callable in that module; fix __all__"
            )
        functions[name] = obj
    return functions


def load_set(set_name: str) -> dict[str, Function]:
    """The functions of one set, by name, with the split and combine functions of those
    that declare them (node.splitting)."""
    module = _import(set_name)
    functions = with_split_functions(_exported(set_name, module))
    if not functions:
        where = getattr(module, "__file__", None) or module.__name__
        raise FunctionSetError(
            f"function set {set_name!r} offers no functions: define public functions in "
            f"{where} or list them in its __all__"
        )
    return functions


def resolve(set_names: Iterable[str]) -> dict[str, Function]:
    """All functions of the given sets, by name; raises FunctionSetError on any problem."""
    functions: dict[str, Function] = {}
    origin: dict[str, str] = {}
    for set_name in dict.fromkeys(set_names):
        for name, function in load_set(set_name).items():
            if name in functions and functions[name] is not function:
                raise FunctionSetError(
                    f"function {name!r} is in both function sets {origin[name]!r} and "
                    f"{set_name!r}: load only one of them, or rename one of the functions"
                )
            functions[name] = function
            origin.setdefault(name, set_name)
    if not functions:
        raise FunctionSetError("no function sets given: name at least one, e.g. --functions math")
    return functions
