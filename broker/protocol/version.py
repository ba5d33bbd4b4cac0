"""The version of this installation, which `zbroker`, `znode` and `zsubmit --version` print.
Here because the three share it, as they share the codec."""

from __future__ import annotations

from importlib import metadata

DISTRIBUTION = "zmq-taskbroker"


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return f"(version unknown: the {DISTRIBUTION} package is not installed)"
