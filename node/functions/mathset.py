"""The "math" function set: arithmetic, number theory and hashing with exact big integers.

Every function checks its argument types itself and says what it expects, so a client gets
an error message it can act on instead of a stray Python TypeError from deep inside.
"""

from __future__ import annotations

import hashlib
import time

from node.splitting import ranges, splittable

__all__ = [
    "add",
    "divide",
    "fib",
    "hash_text",
    "is_prime",
    "multiply",
    "power",
    "sleep",
    "subtract",
    "sum_squares",
]

Number = int | float

# Results are sent as JSON text; Python refuses to print integers beyond 4300 digits.
MAX_RESULT_DIGITS = 4300
MAX_POWER_BITS = 14_000  # about 4200 decimal digits
MAX_FIB_N = 20_000  # fib(20000) has 4180 digits
MAX_SLEEP = 86_400.0

# These bases make Miller-Rabin exact for every n < 3.3 * 10**24 (far beyond 64 bits).
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def _number(function: str, name: str, value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{function}() expects a number for {name!r}, got {type(value).__name__}")
    return value


def _integer(function: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{function}() expects an integer for {name!r}, got {type(value).__name__}")
    return value


def add(a: Number, b: Number) -> Number:
    """The sum a + b."""
    return _number("add", "a", a) + _number("add", "b", b)


def subtract(a: Number, b: Number) -> Number:
    """The difference a - b."""
    return _number("subtract", "a", a) - _number("subtract", "b", b)


def multiply(a: Number, b: Number) -> Number:
    """The product a * b."""
    return _number("multiply", "a", a) * _number("multiply", "b", b)


def divide(a: Number, b: Number) -> float:
    """The quotient a / b (true division; b == 0 raises ZeroDivisionError)."""
    return _number("divide", "a", a) / _number("divide", "b", b)


def _result_bits(base: Number, exponent: Number) -> int:
    """About how many bits an exact integer power has (0 when it is not exact)."""
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1:
        return exponent * base.bit_length()
    return 0


def power(base: Number, exponent: Number) -> Number:
    """base ** exponent; exact for integers, refused when the result would be too long."""
    base, exponent = _number("power", "base", base), _number("power", "exponent", exponent)
    if _result_bits(base, exponent) > MAX_POWER_BITS:
        raise ValueError(
            f"power() result would exceed {MAX_RESULT_DIGITS} digits; use a smaller exponent"
        )
    result: Number = base**exponent
    if isinstance(result, complex):
        raise ValueError("power() of a negative base to a fractional exponent is not real")
    return result


def _sum_squares_to(n: int) -> int:
    # 0^2 + 1^2 + ... + n^2; the polynomial also gives the right differences for n < 0.
    return n * (n + 1) * (2 * n + 1) // 6


@splittable(split=ranges, combine=sum)
def sum_squares(start: int, end: int) -> int:
    """The sum of k**2 for every integer k from start to end inclusive (0 if start > end)."""
    start, end = _integer("sum_squares", "start", start), _integer("sum_squares", "end", end)
    if start > end:
        return 0
    return _sum_squares_to(end) - _sum_squares_to(start - 1)


def _is_witness(a: int, d: int, s: int, n: int) -> bool:
    x = pow(a, d, n)
    if x in (1, n - 1):
        return False
    for _ in range(s - 1):
        x = x * x % n
        if x == n - 1:
            return False
    return True


def is_prime(n: int) -> bool:
    """Whether n is prime (deterministic Miller-Rabin, exact below 3.3 * 10**24)."""
    n = _integer("is_prime", "n", n)
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    return not any(_is_witness(a, d, s, n) for a in _MR_BASES)


def hash_text(text: str) -> str:
    """The SHA-256 of the UTF-8 encoded text, as 64 hex digits."""
    if not isinstance(text, str):
        raise TypeError(f"hash_text() expects a string for 'text', got {type(text).__name__}")
    return hashlib.sha256(text.encode()).hexdigest()


def fib(n: int) -> int:
    """The n-th Fibonacci number (fib(0) == 0, fib(1) == 1), exact, by fast doubling."""
    n = _integer("fib", "n", n)
    if not 0 <= n <= MAX_FIB_N:
        raise ValueError(f"fib() expects 0 <= n <= {MAX_FIB_N}, got {n}")
    a, b = 0, 1  # fib(k), fib(k + 1) for k = the bits of n read so far
    for bit in bin(n)[2:]:
        a, b = a * (2 * b - a), a * a + b * b
        if bit == "1":
            a, b = b, a + b
    return a


def sleep(seconds: Number) -> Number:
    """Sleep for the given seconds (0 to 86400) and return them."""
    seconds = _number("sleep", "seconds", seconds)
    if not 0 <= seconds <= MAX_SLEEP:
        raise ValueError(f"sleep() expects 0 to {MAX_SLEEP:g} seconds, got {seconds}")
    time.sleep(seconds)
    return seconds
