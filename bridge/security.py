"""CURVE security for a backend reached over a network, the ZeroMQ way (CurveZMQ + ZAP).

Why CURVE and not TLS or passwords: ZeroMQ carries it natively (pyzmq's wheels bundle libsodium), it encrypts
every frame, and both ends prove who they are with key pairs, so nothing secret travels. The server holds a key
pair; each client (a workstation, a farm worker) holds its own; the server accepts only clients whose *public*
keys are in an allow-list folder. The check runs in a ZAP authenticator thread (``zmq.auth.thread``) inside the
ZeroMQ handshake: a peer without an allowed key never gets a single message through — not even ``hello``, so it
learns nothing about the model, the gallery or other users' traffic.

Key files are the format of ``zmq.auth.create_certificates`` (``NAME.key`` holds the public key and may be
shared; ``NAME.key_secret`` holds both and must stay private). ``rerender keys`` writes them.

Imports only pyzmq and the standard library, with relative imports: this module is vendored into the extension.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85

from .errors import KeyFileError

log = logging.getLogger(__name__)

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_Z85_KEY_CHARS = 40  # a 32-byte CURVE key in Z85 text

# Connection events of a client socket that mean the server refused the handshake (libzmq >= 4.3).
_HANDSHAKE_FAILED_AUTH = getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", 0)
_HANDSHAKE_FAILED_PROTOCOL = getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0)
_HANDSHAKE_SUCCEEDED = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0)
HANDSHAKE_FAILURE_EVENTS = _HANDSHAKE_FAILED_AUTH | _HANDSHAKE_FAILED_PROTOCOL
HANDSHAKE_EVENTS = HANDSHAKE_FAILURE_EVENTS | _HANDSHAKE_SUCCEEDED  # what a client's monitor must subscribe to
_MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)


def curve_available() -> bool:
    """Whether this pyzmq/libzmq build can do CURVE (the PyPI wheels can: they bundle libsodium)."""
    return bool(zmq.has("curve"))


def _require_curve() -> None:
    if not curve_available():
        raise KeyFileError(f"this ZeroMQ build (libzmq {zmq.zmq_version()}) has no CURVE support: install pyzmq "
                           "from its PyPI wheels, which bundle libsodium")


# --- key files ---------------------------------------------------------------------------------------------------

def create_key_pair(folder: str | os.PathLike, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``folder/NAME.key`` (public, share it) and ``folder/NAME.key_secret`` (private, mode 0600); returns
    (public file, secret file). Refuses to replace existing files unless ``overwrite``: replacing a key pair
    locks out everybody who trusted the old one."""
    _require_curve()
    if not name or Path(name).name != name or name.startswith("."):
        raise KeyFileError(f"a key name must be a plain file name like 'server' or 'worker-07', got {name!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    if not overwrite and (public.exists() or secret.exists()):
        raise KeyFileError(f"{public} or {secret} exists already; choose another name, or pass --force to replace "
                           "the pair (clients or servers that trusted the old public key must get the new one)")
    # Written into a private (0700) folder first, so the secret key is never readable by others, not even briefly.
    staging = Path(tempfile.mkdtemp(prefix=".rerender-keys-", dir=folder))
    try:
        staged_public, staged_secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
        os.chmod(staged_secret, stat.S_IRUSR | stat.S_IWUSR)
        os.chmod(staged_public, 0o644)
        os.replace(staged_secret, secret)
        os.replace(staged_public, public)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return public, secret


def _load(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise KeyFileError(f"no key file at {path} (make key pairs with `rerender keys create NAME`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path} is not a ZeroMQ key file ({exc}); key files come from `rerender keys`") from None
    if not public or not _is_z85_key(public) or (secret is not None and not _is_z85_key(secret)):
        raise KeyFileError(f"{path} holds no valid CURVE key; key files come from `rerender keys`")
    return public, secret


def load_secret_key_file(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public key, secret key), Z85, from a ``NAME.key_secret`` file (a warning when others may read it)."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path} is a public key file; this needs the private one ({Path(path).stem}"
                           f"{SECRET_SUFFIX}), which stays on the machine it belongs to")
    mode = Path(path).expanduser().stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("the private key %s is readable by other users of this machine: `chmod 600 %s`", path, path)
    return public, secret


def load_public_key(key: str | bytes | os.PathLike) -> bytes:
    """A Z85 public key given as its 40-character text, or as the path of a ``.key`` / ``.key_secret`` file."""
    if isinstance(key, (str, bytes)):
        text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        text = text.strip()
        if len(text) == _Z85_KEY_CHARS and _is_z85_key(text.encode("ascii", "replace")):
            return text.encode("ascii")
        if not text:
            raise KeyFileError("no public key given")
        if not Path(text).expanduser().is_file():
            raise KeyFileError(f"{text!r} is neither a 40-character public key nor a key file; print a public key "
                               "with `rerender keys show FILE`")
        key = text
    return _load(key)[0]


def _is_z85_key(key: bytes) -> bool:
    try:
        return len(key) == _Z85_KEY_CHARS and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def allowed_keys(folder: str | os.PathLike) -> set[bytes]:
    """The public keys (Z85) of every ``*.key`` file in an allow-list folder; unreadable files are skipped with a
    warning (one bad file must not lock everybody out)."""
    keys = set()
    for path in sorted(Path(folder).glob(f"*{PUBLIC_SUFFIX}")):
        try:
            keys.add(_load(path)[0])
        except KeyFileError as exc:
            log.warning("allowed clients: skipping %s", exc)
    return keys


# --- server side -------------------------------------------------------------------------------------------------

class _FolderAllowList:
    """The ZAP credentials provider: a client key is allowed when a ``*.key`` file in the folder holds it.

    The folder is re-read whenever a file in it changed, so adding (or removing) a worker's key takes effect on
    its next connection without restarting the backend. Connections already authenticated stay open.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._signature: tuple = ()
        self._keys: set[bytes] = set()
        self._refused: set[bytes] = set()
        self.refusals = 0

    def _current(self) -> set[bytes]:
        try:
            signature = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                     for p in self.folder.glob(f"*{PUBLIC_SUFFIX}")))
        except OSError:
            signature = ()
        if signature != self._signature:
            self._keys, self._signature = allowed_keys(self.folder), signature
        return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            allowed = key in self._current()
            if not allowed:
                self.refusals += 1
                if key not in self._refused and len(self._refused) < 1000:  # one warning per key, bounded
                    self._refused.add(key)
                    log.warning("refused a client with public key %s: it is not in %s", key.decode("ascii"),
                                self.folder)
            return allowed


@dataclass(frozen=True)
class ServerCurve:
    """The server's key pair and the folder of allowed clients' public keys."""

    public_key: bytes
    secret_key: bytes
    clients_folder: Path

    @classmethod
    def from_files(cls, secret_key_file: str | os.PathLike, clients_folder: str | os.PathLike) -> "ServerCurve":
        _require_curve()
        public, secret = load_secret_key_file(secret_key_file)
        folder = Path(clients_folder).expanduser()
        if not folder.is_dir():
            raise KeyFileError(f"the allowed-clients folder {folder} does not exist: create it and copy each "
                               f"client's public key file (NAME{PUBLIC_SUFFIX}) into it")
        return cls(public, secret, folder)

    def secure(self, socket_: zmq.Socket, context: zmq.Context) -> "ServerAuthenticator":
        """Make ``socket_`` (not yet bound) a CURVE server and start the ZAP authenticator on ``context``.

        The authenticator runs before the socket binds: a CURVE socket with no ZAP handler would accept any key."""
        domain = f"rerender-{id(socket_):x}"  # each server its own ZAP domain, so several can share a context
        authenticator = ServerAuthenticator(context, _FolderAllowList(self.clients_folder), domain)
        socket_.zap_domain = domain.encode()
        socket_.curve_secretkey = self.secret_key
        socket_.curve_publickey = self.public_key
        socket_.curve_server = True
        return authenticator

    def describe(self) -> str:
        return (f"CURVE on: encrypted, only clients whose public keys are in {self.clients_folder} "
                f"({len(allowed_keys(self.clients_folder))} now); server public key {self.public_key.decode()}")


class ServerAuthenticator:
    """One server's allow-list registered with its context's ZAP handler; :meth:`stop` when the socket closes.

    ZeroMQ has one ZAP endpoint per context, so servers sharing a context (tests, benchmarks, in-process use)
    share one ``zmq.auth.thread.ThreadAuthenticator``, each under its own ZAP domain; it stops with the last."""

    _shared: dict[int, list] = {}  # id(context) -> [ThreadAuthenticator, users]
    _lock = threading.Lock()

    def __init__(self, context: zmq.Context, allow_list: _FolderAllowList, domain: str) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self.allow_list = allow_list
        self.domain = domain
        self._context_id: int | None = id(context)
        with self._lock:
            entry = self._shared.get(self._context_id)
            if entry is None:
                auth = ThreadAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
                auth.start()
                entry = self._shared[self._context_id] = [auth, 0]
            entry[1] += 1
            entry[0].configure_curve_callback(domain, allow_list)

    @property
    def refusals(self) -> int:
        return self.allow_list.refusals

    def stop(self) -> None:
        with self._lock:
            key, self._context_id = self._context_id, None
            entry = self._shared.get(key) if key is not None else None
            if entry is None:
                return
            entry[0].credentials_providers.pop(self.domain, None)
            entry[1] -= 1
            if entry[1] == 0:
                entry[0].stop()
                del self._shared[key]


# --- client side -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientCurve:
    """What a client needs to reach a CURVE backend: the server's public key and the client's own key pair."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes
    key_file: str = ""

    @classmethod
    def from_files(cls, server_key: str | os.PathLike, client_key_file: str | os.PathLike) -> "ClientCurve":
        """``server_key``: the server's public key (40 characters) or its ``.key`` file; ``client_key_file``: this
        client's ``NAME.key_secret``."""
        _require_curve()
        public, secret = load_secret_key_file(client_key_file)
        return cls(load_public_key(server_key), public, secret, str(client_key_file))

    def apply(self, socket_: zmq.Socket) -> None:
        """Set the CURVE options on a socket before it connects."""
        socket_.curve_serverkey = self.server_key
        socket_.curve_publickey = self.public_key
        socket_.curve_secretkey = self.secret_key


class HandshakeWatch:
    """Tells a refused handshake from an ordinary dropped connection, from a client socket's monitor events.

    Usually the refusal is an explicit event (HANDSHAKE_FAILED_AUTH / _PROTOCOL). But when the server closes the
    TCP connection first (a CURVE server meeting a client without keys may), the client sees only CONNECTED then
    DISCONNECTED. Two connections in a row that closed before any handshake completed count as a refusal too: a
    backend that dies or restarts drops a connection *after* its handshake, and a stopped one refuses the TCP
    connection itself (no CONNECTED event at all)."""

    UNFINISHED_LIMIT = 2

    def __init__(self, address: str, curve: ClientCurve | None) -> None:
        self.address = address
        self.curve = curve
        self._handshaken = True
        self._unfinished = 0

    def see(self, event: dict[str, Any]) -> str | None:
        """Feed one monitor event; returns the artist-facing reason when the server refused us, else None."""
        refusal = handshake_refusal(event, self.address, self.curve)
        if refusal is not None:
            return refusal
        kind = event.get("event")
        if kind == zmq.EVENT_CONNECTED:
            self._handshaken = False
        elif kind == _HANDSHAKE_SUCCEEDED and _HANDSHAKE_SUCCEEDED:
            self._handshaken, self._unfinished = True, 0
        elif kind == zmq.EVENT_DISCONNECTED and not self._handshaken and _HANDSHAKE_SUCCEEDED:
            self._unfinished += 1
            self._handshaken = True  # counted once per connection
            if self._unfinished >= self.UNFINISHED_LIMIT:
                self._unfinished = 0
                why = ("it requires CURVE keys this client does not have" if self.curve is None else
                       f"it refuses this client's keys ({self.curve.key_file}), the server public key is wrong, or "
                       "it does not use CURVE")
                return (f"the peer at {self.address} closed the connection during the handshake "
                        f"{self.UNFINISHED_LIMIT} times in a row: {why} (or it is not a Rerender backend: check "
                        "the address)")
        return None


def handshake_refusal(event: dict[str, Any], address: str, curve: ClientCurve | None) -> str | None:
    """The artist-facing reason when a monitor event says the server refused our handshake, else None."""
    kind = event.get("event")
    if kind == _HANDSHAKE_FAILED_AUTH and _HANDSHAKE_FAILED_AUTH:
        who = f"public key {curve.public_key.decode()} ({curve.key_file})" if curve else "key"
        return (f"the backend at {address} refused this client's {who}: ask its operator to copy this client's "
                f"public key file into the backend's allowed-clients folder")
    if kind == _HANDSHAKE_FAILED_PROTOCOL and _HANDSHAKE_FAILED_PROTOCOL:
        if event.get("value") != _MECHANISM_MISMATCH:
            return None  # another protocol error: not a question of keys (HandshakeWatch may still count it)
        if curve is None:
            return (f"the backend at {address} requires CURVE keys: set the server's public key and this client's "
                    "key file (add-on preferences, or Client(security=ClientCurve.from_files(...)))")
        return (f"the handshake with the backend at {address} failed: the server public key is wrong, or the "
                "backend does not use CURVE (then clear the keys)")
    return None


# --- who may listen where ----------------------------------------------------------------------------------------

def is_loopback(address: str) -> bool:
    """Whether a bind address only admits this machine: ``ipc://``/``inproc://``, or tcp on a loopback host.

    Wildcards (``*``, ``0.0.0.0``, ``[::]``), interface names and hosts that do not resolve to loopback only are
    not loopback."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.split(";")[-1]  # tcp://source;host:port
    host = host.strip("[]")
    if host in ("", "*"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError, OSError):
        return False  # an interface name (eth0) or an unknown host: assume reachable from outside
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


__all__ = ["ClientCurve", "ServerCurve", "ServerAuthenticator", "create_key_pair", "load_public_key",
           "load_secret_key_file", "allowed_keys", "curve_available", "handshake_refusal", "is_loopback",
           "HANDSHAKE_FAILURE_EVENTS", "HANDSHAKE_EVENTS", "HandshakeWatch",
           "PUBLIC_SUFFIX", "SECRET_SUFFIX"]
