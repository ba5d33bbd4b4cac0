"""broker.trim: glibc's malloc_trim found (this project's machines run glibc) and callable."""

from __future__ import annotations

import platform

import pytest

from broker import trim


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_is_given_back_on_glibc() -> None:
    assert trim._TRIM is not None
    held = [bytes(1000) for _ in range(20_000)]  # 20 MB in the heap, then freed
    del held
    assert trim.trim() is True  # some memory was released
