"""Split and combine: a function that declares how to cut its work into parts.

    from node import splittable

    def halves(parts, start, end):  # the arguments of each part
        ...

    @splittable(split=halves, combine=sum)
    def sum_squares(start, end): ...

A node that offers such a function offers two more, named after it: `sum_squares:split`
takes the number of parts wanted and the function's arguments, and returns the argument
lists of the parts; `sum_squares:combine` takes the list of the parts' results, in order,
and returns the whole result. A client (`Client.split`, `zsubmit --split N`) runs the split
as a task, each part as a task of the function itself, and the combine as a task that takes
the parts' results as inputs (protocol.md 5.8), so that every step runs on whichever node
is free, with its own retries, and the broker never decodes a payload. A job of more parts
than one task may depend on (256) combines in rounds: `combine` must then accept its own
results as parts, as `sum` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

Function = Callable[..., Any]
F = TypeVar("F", bound=Function)

SPLIT_SUFFIX = ":split"
COMBINE_SUFFIX = ":combine"
_DECLARED = "__ztb_split__"  # the attribute `splittable` sets: (split, combine)
_TASKS = "__ztb_split_tasks__"  # the split and combine functions offered for it, by name

Splitter = Callable[..., Iterable[Sequence[Any]]]
Combiner = Callable[[list[Any]], Any]


def splittable(*, split: Splitter, combine: Combiner) -> Callable[[F], F]:
    """Declare how the decorated function's work is cut into parts: `split(parts, *args)`
    gives the arguments of each part (about `parts` of them; at least one), and
    `combine(results)` the whole result from the parts' results, in order. Returns the
    function itself, marked."""
    if not callable(split) or not callable(combine):
        raise TypeError("splittable() takes two functions: split=... and combine=...")

    def mark(function: F) -> F:
        setattr(function, _DECLARED, (split, combine))
        return function

    return mark


def declared(function: Function) -> tuple[Splitter, Combiner] | None:
    """The split and combine `function` declares, or None."""
    found: tuple[Splitter, Combiner] | None = getattr(function, _DECLARED, None)
    return found


def with_split_functions(functions: Mapping[str, Function]) -> dict[str, Function]:
    """`functions`, and for each one that declares a split, its NAME:split and
    NAME:combine."""
    offered = dict(functions)
    for name, function in functions.items():
        found = declared(function)
        if found is None:
            continue
        # Made once per function: the same set loaded twice offers the same callables.
        tasks: dict[str, Function] | None = getattr(function, _TASKS, None)
        if tasks is None or name + SPLIT_SUFFIX not in tasks:
            tasks = {
                name + SPLIT_SUFFIX: _split_task(name, found[0]),
                name + COMBINE_SUFFIX: _combine_task(found[1]),
            }
            setattr(function, _TASKS, tasks)
        offered.update(tasks)
    return offered


def _split_task(name: str, split: Splitter) -> Function:
    def split_task(parts: int, *args: Any) -> list[list[Any]]:
        if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
            raise ValueError(f"{name}{SPLIT_SUFFIX} takes a number of parts >= 1, got {parts!r}")
        cut = [list(part) for part in split(parts, *args)]
        if not cut:
            raise ValueError(f"{name}{SPLIT_SUFFIX} gave no parts for {list(args)!r}")
        return cut

    split_task.__name__ = split_task.__qualname__ = f"{name}{SPLIT_SUFFIX}"
    split_task.__doc__ = f"The argument lists of the parts of a {name} job."
    return split_task


def _combine_task(combine: Combiner) -> Function:
    def combine_task(results: list[Any]) -> Any:
        return combine(list(results))

    return combine_task


def ranges(parts: int, start: int, end: int) -> list[list[int]]:
    """[start, end] (inclusive) cut into at most `parts` consecutive ranges of nearly equal
    length, as [[start1, end1], ...]; one empty range when start > end."""
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"a range is split by integers: {name} is {value!r}")
    if start > end:
        return [[start, end]]
    size = end - start + 1
    parts = min(parts, size)
    bounds = [start + size * i // parts for i in range(parts + 1)]
    return [[bounds[i], bounds[i + 1] - 1] for i in range(parts)]
