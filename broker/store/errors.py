"""StoreError: what the broker keeps on disk cannot be used, said in one line for its operator.

Every message names the file and says what to do, so that the broker can stop with it and the
operator needs no traceback. A failed write says what the operating system or SQLite said,
never the error of a clean-up that ran after it.
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path


class StoreError(OSError):
    """The store, its lock file or the dead-letter log cannot be used; the message names the
    file and says what to do."""


def store_write_failed(path: Path, exc: sqlite3.Error, what: str) -> StoreError:
    """The error for a store transaction that failed: `what` it was doing and SQLite's
    reason. A full disk says so first; a row SQLite refuses is the broker's own fault."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StoreError(
            f"disk full writing {path}: {exc} ({what}); free space and restart the broker"
        )
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.InterfaceError | sqlite3.ProgrammingError):
        return StoreError(
            f"cannot write store {path}: {exc} ({what}); this is a zbroker bug: please report "
            "it, then restart the broker"
        )
    return StoreError(
        f"cannot write store {path}: {exc} ({what}); check the disk (space, permissions) "
        "and restart the broker"
    )


def log_write_failed(path: Path, exc: OSError) -> StoreError:
    """The error for a write to the dead-letter log that failed."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(
            f"disk full writing {path}: {exc.strerror}; free space and restart the broker"
        )
    return StoreError(
        f"cannot write dead-letter log {path}: {exc.strerror}; check the disk (space, "
        "permissions) and restart the broker"
    )
