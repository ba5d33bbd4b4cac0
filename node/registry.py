"""Function sets: which Python callables a node offers, and under which names.

A set is a built-in short name ("math", "util") or an importable module path. Its functions
are the module's `__all__`, or else the public callables the module itself defines. Functions
are offered by their bare names, so two sets may not define the same name.

A function declares the exceptions worth another attempt with `@retryable`:

    from node.registry import retryable

    @retryable(ConnectionError, TimeoutError)
    def fetch(url): ...

When it raises one of them (or a subclass), its RESULT says `retry: true` (protocol.md 3.8)
and the broker retries the task, within its `retries`, whatever its `retry_on` says.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any, TypeVar

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
    """The module behind a set name."""
    return BUILTIN_SETS.get(set_name, set_name)


def _unknown(set_name: str) -> FunctionSetError:
    builtins = ", ".join(sorted(BUILTIN_SETS))
    return FunctionSetError(
        f"no function set {set_name!r}: use a built-in set ({builtins}) "
        "or an importable module path like mypkg.tasks"
    )


def _import(set_name: str) -> ModuleType:
    path = module_path(set_name)
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        # Only a missing set module itself means "unknown set"; a module it imports is a bug in it.
        if exc.name is not None and (path == exc.name or path.startswith(exc.name + ".")):
            raise _unknown(set_name) from None
        raise _broken(set_name, exc) from exc
    except Exception as exc:
        raise _broken(set_name, exc) from exc


def _broken(set_name: str, exc: BaseException) -> FunctionSetError:
    return FunctionSetError(
        f"function set {set_name!r} failed to import: {type(exc).__name__}: {exc}; "
        "fix the module or install what it needs"
    )


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
    """The functions of one set, by name."""
    functions = _exported(set_name, _import(set_name))
    if not functions:
        raise FunctionSetError(
            f"function set {set_name!r} offers no functions: define public functions in "
            f"{module_path(set_name)} or list them in its __all__"
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
