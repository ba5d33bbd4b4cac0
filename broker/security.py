"""CurveZMQ keys: encrypted, authenticated connections between the broker and its peers.

A key pair is two files: `NAME.key`, the secret (mode 0600), and `NAME.pub`, the public key,
both in ZeroMQ's certificate format (ZPL, as pyzmq's `zmq.auth` reads them). The broker holds
a secret key and a directory of the public keys it lets in, by role: `DIR/nodes/*.pub`,
`DIR/clients/*.pub`, `DIR/admins/*.pub`. Its ZAP handler (pyzmq's authenticator, in a
thread) asks `AuthorizedKeys` at each handshake; a file added or removed counts within
RELOAD_EVERY seconds, without a restart. A peer holds its own secret key and the broker's
public key. What CURVE protects and what it does not: protocol.md, "Security".
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

ROLES = ("nodes", "clients", "admins")  # the directories of the authorized keys, by role
RELOAD_EVERY = 1.0  # seconds between looks at the authorized directory
SECRET_SUFFIX, PUBLIC_SUFFIX = ".key", ".pub"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not a CURVE key; the message says which."""


def fingerprint(public_z85: bytes) -> str:
    """A short name of a public key for logs: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(public_z85).hexdigest()[:12]


def new_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (secret, 0600) and NAME.pub in `directory`; refuses (FileExistsError)
    to overwrite a secret key."""
    public, secret = zmq.curve_keypair()
    secret_path = directory / f"{name}{SECRET_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(_zpl(name, public, secret))
    public_path.write_text(_zpl(name, public, None))
    return secret_path, public_path


def _zpl(name: str, public: bytes, secret: bytes | None) -> str:
    kind = "secret key pair" if secret is not None else "public key"
    lines = [
        f"#   ZeroMQ CURVE {kind} of {name!r}, made by `zbroker keys new`.",
        "#   Keep the secret key (.key) to its owner; hand out the public key (.pub).",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return "\n".join(lines) + "\n"


def load_public(path: str | os.PathLike[str]) -> bytes:
    """The public key (Z85) in a .pub or .key file."""
    public, _ = _load(path)
    return public


def load_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) of a secret key file (.key)."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(
            f"{path} holds no secret key (a .pub file?): give the .key file "
            "`zbroker keys new` wrote"
        )
    return public, secret


def _load(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"cannot read key file {path}: {exc}; make one with `zbroker keys new`"
        ) from None
    if public is None or len(public) != 40:
        raise KeyFileError(f"{path} holds no CURVE public key; make one with `zbroker keys new`")
    return public, secret


@dataclass(frozen=True)
class PeerKeys:
    """A node's or client's CURVE settings: its own key pair and the broker's public key."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(
        cls, secret_file: str | os.PathLike[str], broker_key_file: str | os.PathLike[str]
    ) -> PeerKeys:
        public, secret = load_pair(secret_file)
        return cls(public, secret, load_public(broker_key_file))

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make `sock` a CURVE client of the broker (before it connects)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server


def peer_keys(
    curve: str | os.PathLike[str] | None, broker_key: str | os.PathLike[str] | None
) -> PeerKeys | None:
    """A peer's keys from its options (--curve, --broker-key): both or neither."""
    if curve is None and broker_key is None:
        return None
    if curve is None or broker_key is None:
        given, missing = ("--curve", "--broker-key") if curve else ("--broker-key", "--curve")
        raise KeyFileError(
            f"{given} needs {missing} too: CURVE needs this peer's secret key file "
            "and the broker's public key file"
        )
    return PeerKeys.load(curve, broker_key)


class AuthorizedKeys:
    """The public keys the broker lets in, read from DIR/{nodes,clients,admins}/*.pub (and
    *.key) again when the directory changes, at most once per RELOAD_EVERY seconds.
    Thread-safe: the ZAP thread asks, STATUS reads the counts."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise KeyFileError(
                f"--authorized {directory} is not a directory; make it, with subdirectories "
                f"{', '.join(ROLES)} holding the .pub files of the keys let in"
            )
        self._lock = threading.Lock()
        self._roles: dict[bytes, str] = {}
        self._stamp: tuple[tuple[str, float], ...] = ()
        self._checked = -RELOAD_EVERY
        self.refused = 0  # handshakes refused: unknown keys
        self.reload(force=True)

    def role(self, public_z85: bytes) -> str | None:
        """The role of a key (`nodes`, `clients`, `admins`), None if it is not let in."""
        self.reload()
        with self._lock:
            return self._roles.get(public_z85)

    def reload(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RELOAD_EVERY:
            return
        self._checked = now
        files = sorted(
            (path, path.stat().st_mtime)
            for role in ROLES
            for path in (self.directory / role).glob("*")
            if path.suffix in (PUBLIC_SUFFIX, SECRET_SUFFIX) and path.is_file()
        )
        stamp = tuple((str(path), mtime) for path, mtime in files)
        if stamp == self._stamp and not force:
            return
        roles: dict[bytes, str] = {}
        for path, _ in files:
            try:
                roles[load_public(path)] = path.parent.name
            except KeyFileError as exc:
                log.warning("authorized keys: %s; it lets nobody in", exc)
        with self._lock:
            changed = roles != self._roles
            self._roles, self._stamp = roles, stamp
        if changed:
            counts = {role: sum(1 for r in roles.values() if r == role) for role in ROLES}
            log.info("authorized keys from %s: %s", self.directory, counts)

    def allowed(self, public_z85: bytes) -> bool:
        role = self.role(public_z85)
        if role is None:
            self.refused += 1
            log.warning(
                "refused a connection with an unknown CURVE key %s (fingerprint %s; %d so far)",
                public_z85.decode(errors="replace"),
                fingerprint(public_z85),
                self.refused,
            )
            return False
        return True


class _Provider:
    """The credentials provider pyzmq's authenticator calls for each CURVE handshake."""

    def __init__(self, keys: AuthorizedKeys) -> None:
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return self._keys.allowed(key)


@dataclass(frozen=True)
class BrokerKeys:
    """The broker's CURVE settings: its key pair and the keys it lets in."""

    public: bytes
    secret: bytes
    authorized: AuthorizedKeys

    @classmethod
    def load(cls, secret_file: str | Path, authorized: str | Path) -> BrokerKeys:
        public, secret = load_pair(secret_file)
        return cls(public, secret, AuthorizedKeys(authorized))

    def serve(self, context: zmq.Context[Any], sock: zmq.Socket[Any]) -> ThreadAuthenticator:
        """Make `sock` a CURVE server (before it binds) and start the ZAP handler that
        checks each peer's key; stop it when the socket closes."""
        authenticator = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
        authenticator.start()
        authenticator.configure_curve_callback("*", _Provider(self.authorized))
        sock.curve_server = True
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        return authenticator
