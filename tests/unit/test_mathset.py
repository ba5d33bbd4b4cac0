"""The "math" and "util" function sets: exact values and clear argument errors."""

from __future__ import annotations

import hashlib
import os
from typing import Any, cast

import pytest

from node.functions import mathset, util


def test_arithmetic() -> None:
    assert mathset.add(2, 3) == 5
    assert mathset.subtract(2, 3) == -1
    assert mathset.multiply(5, 10) == 50
    assert mathset.divide(7, 2) == 3.5
    assert mathset.power(2, 100) == 2**100
    assert mathset.power(2, -1) == 0.5
    assert mathset.add(2**70, 1) == 2**70 + 1


def test_divide_by_zero_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        mathset.divide(1, 0)


@pytest.mark.parametrize("bad", ["1", None, [1], True])
def test_arithmetic_rejects_non_numbers(bad: Any) -> None:
    with pytest.raises(TypeError, match="add\\(\\) expects a number for 'b'"):
        mathset.add(1, bad)


def test_power_refuses_results_too_long_for_json() -> None:
    with pytest.raises(ValueError, match="smaller exponent"):
        mathset.power(3, 100_000)
    with pytest.raises(ValueError, match="not real"):
        mathset.power(-8, 0.5)


def test_sum_squares() -> None:
    assert mathset.sum_squares(1, 10_000_000) == 333333383333335000000
    assert mathset.sum_squares(1, 3) == 14
    assert mathset.sum_squares(-2, 2) == 10
    assert mathset.sum_squares(5, 5) == 25
    assert mathset.sum_squares(5, 4) == 0
    assert mathset.sum_squares(-5, -3) == 50
    for start, end in [(0, 30), (-7, 11), (13, 40)]:
        assert mathset.sum_squares(start, end) == sum(k * k for k in range(start, end + 1))


def test_sum_squares_wants_integers() -> None:
    with pytest.raises(TypeError, match="expects an integer for 'end'"):
        mathset.sum_squares(1, cast(int, 2.5))  # as a task's JSON arguments may have it


def test_fib() -> None:
    assert [mathset.fib(n) for n in range(10)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
    assert mathset.fib(100) == 354224848179261915075
    a, b = 0, 1
    for _ in range(1000):
        a, b = b, a + b
    assert mathset.fib(1000) == a
    with pytest.raises(ValueError, match="0 <= n"):
        mathset.fib(-1)
    with pytest.raises(ValueError, match="0 <= n"):
        mathset.fib(mathset.MAX_FIB_N + 1)


PRIMES = [2, 3, 5, 97, 7919, 2_147_483_647, 2**61 - 1, 18_446_744_073_709_551_557]
COMPOSITES = [
    -7,
    0,
    1,
    4,
    91,
    561,  # Carmichael
    3_215_031_751,  # strong pseudoprime to bases 2, 3, 5, 7
    3_825_123_056_546_413_051,  # strong pseudoprime to bases 2..23
    (2**31 - 1) * (2**61 - 1),
    2**64 - 1,
]


@pytest.mark.parametrize("n", PRIMES)
def test_is_prime_on_primes(n: int) -> None:
    assert mathset.is_prime(n) is True


@pytest.mark.parametrize("n", COMPOSITES)
def test_is_prime_on_composites(n: int) -> None:
    assert mathset.is_prime(n) is False


def test_is_prime_matches_trial_division() -> None:
    def slow(n: int) -> bool:
        return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))

    assert [n for n in range(2000) if mathset.is_prime(n)] == [n for n in range(2000) if slow(n)]


def test_hash_text() -> None:
    for text in ["", "hello", "zürich ✓"]:
        assert mathset.hash_text(text) == hashlib.sha256(text.encode()).hexdigest()
    with pytest.raises(TypeError, match="expects a string"):
        mathset.hash_text(b"bytes")  # type: ignore[arg-type]


def test_sleep_returns_its_argument() -> None:
    assert mathset.sleep(0) == 0
    assert mathset.sleep(0.01) == 0.01
    with pytest.raises(ValueError, match="seconds"):
        mathset.sleep(-1)


def test_util_functions() -> None:
    assert util.echo({"a": [1]}) == {"a": [1]}
    assert util.pid() == os.getpid()
    assert util.spin(0.01) > 0
    with pytest.raises(RuntimeError, match="requested failure"):
        util.fail()
    with pytest.raises(RuntimeError, match="custom"):
        util.fail("custom")
    with pytest.raises(ValueError, match="exit status"):
        util.crash(999)


def test_every_math_function_has_a_one_line_docstring() -> None:
    assert mathset.__doc__ and util.__doc__
    for name in mathset.__all__:
        doc = getattr(mathset, name).__doc__
        assert doc and "\n" not in doc.strip(), name
    for name in util.__all__:
        assert getattr(util, name).__doc__, name
