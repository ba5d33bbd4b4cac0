"""Split and combine declarations (node.splitting): what a node offers for them."""

from __future__ import annotations

import itertools

import pytest

from node import ranges, splittable
from node.functions import mathset
from node.registry import resolve
from node.splitting import with_split_functions


@pytest.mark.parametrize(
    ("parts", "start", "end", "expected"),
    [
        (3, 1, 10, [[1, 3], [4, 6], [7, 10]]),
        (1, 5, 5, [[5, 5]]),
        (5, 1, 3, [[1, 1], [2, 2], [3, 3]]),  # no more parts than numbers
        (4, 10, 1, [[10, 1]]),  # an empty range stays one empty part
        (2, -3, 2, [[-3, -1], [0, 2]]),
    ],
)
def test_ranges_cut_a_range_into_consecutive_near_equal_parts(
    parts: int, start: int, end: int, expected: list[list[int]]
) -> None:
    assert ranges(parts, start, end) == expected


def test_every_cut_of_a_range_sums_to_the_whole() -> None:
    for parts in (1, 2, 7, 100, 1000):
        cut = ranges(parts, 1, 10_000_000)
        assert cut[0][0] == 1 and cut[-1][1] == 10_000_000
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(cut))
        assert sum(mathset.sum_squares(*part) for part in cut) == 333333383333335000000


def test_ranges_refuse_what_is_not_an_integer() -> None:
    with pytest.raises(TypeError, match="start is 'x'"):
        ranges(3, "x", 5)  # type: ignore[arg-type]


def test_a_declared_function_brings_its_split_and_combine() -> None:
    @splittable(split=lambda parts, word: [[word[i::parts]] for i in range(parts)], combine="".join)
    def shout(word: str) -> str:
        return word.upper()

    offered = with_split_functions({"shout": shout, "plain": str.lower})
    assert sorted(offered) == ["plain", "shout", "shout:combine", "shout:split"]
    assert offered["shout:split"](2, "abcd") == [["ac"], ["bd"]]
    assert offered["shout:combine"](["AC", "BD"]) == "ACBD"
    with pytest.raises(ValueError, match="number of parts >= 1"):
        offered["shout:split"](0, "abcd")


def test_the_math_set_offers_the_split_of_sum_squares() -> None:
    functions = resolve(["math"])
    assert functions["sum_squares:split"](2, 1, 4) == [[1, 2], [3, 4]]
    assert functions["sum_squares:combine"]([5, 25]) == 30
    assert not any(name.startswith("fib:") for name in functions)


def test_splittable_takes_two_functions() -> None:
    with pytest.raises(TypeError, match=r"split=\.\.\. and combine=\.\.\."):
        splittable(split=None, combine=sum)  # type: ignore[arg-type]
