"""Who may talk to ``rerender serve``: the CURVE options of the command and the rule for non-loopback addresses.

The rule: a backend that only this machine can reach (loopback tcp, ipc) may run without keys; one bound to an
address other machines can reach must use CURVE (``--server-key`` + ``--client-keys``), or be told ``--insecure``
explicitly — an open port otherwise hands the GPU, the model and the gallery to anyone on the network. The choice
is stated in the startup log either way.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rerender.bridge.errors import KeyFileError
from rerender.bridge.security import ServerCurve, is_loopback

log = logging.getLogger("rerender.serve")


class RemoteAccessRefused(ValueError):
    """``rerender serve`` was asked for an unsafe set-up; the message says what to do instead."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security (remote backends; see docs/install.md)")
    group.add_argument("--server-key", type=Path, metavar="FILE",
                       help="this server's private key file (NAME.key_secret from `rerender keys create`): turns on "
                            "CURVE encryption and client authentication")
    group.add_argument("--client-keys", type=Path, metavar="DIR",
                       help="folder of the allowed clients' public key files (*.key); re-read when it changes")
    group.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback --address without CURVE (anyone who reaches the port can use it)")


def server_curve(args: argparse.Namespace) -> ServerCurve | None:
    """The CURVE set-up the arguments ask for (None: plain TCP); raises RemoteAccessRefused when the address is
    reachable from other machines without keys and without ``--insecure``, or when the keys are incomplete."""
    if (args.server_key is None) != (args.client_keys is None):
        raise RemoteAccessRefused("--server-key and --client-keys go together: the server's private key encrypts, "
                                  "the folder of client public keys says who may connect")
    if args.server_key is not None:
        if args.insecure:
            raise RemoteAccessRefused("--insecure contradicts --server-key/--client-keys; drop one of them")
        try:
            return ServerCurve.from_files(args.server_key, args.client_keys)
        except KeyFileError as exc:
            raise RemoteAccessRefused(str(exc)) from None
    if not is_loopback(args.address) and not args.insecure:
        raise RemoteAccessRefused(
            f"refusing to listen on {args.address} without CURVE keys: every machine that reaches it could use the "
            "GPU and read the model and its gallery. Make keys (`rerender keys create server --out KEYS`, one "
            "`rerender keys create NAME` per client, their .key files copied into KEYS/clients) and pass "
            "--server-key KEYS/server.key_secret --client-keys KEYS/clients; or bind tcp://127.0.0.1:PORT; or "
            "pass --insecure on a network you trust (docs/install.md, 'Remote backends with keys')")
    return None


def announce(args: argparse.Namespace, curve: ServerCurve | None) -> None:
    """The startup line that says how the backend is protected."""
    if curve is not None:
        log.info("rerender serve: %s", curve.describe())
    elif is_loopback(args.address):
        log.info("rerender serve: no CURVE keys; %s is reachable from this machine only", args.address)
    else:
        log.warning("rerender serve: INSECURE: %s is reachable from other machines WITHOUT encryption or "
                    "authentication (--insecure); anyone who reaches it can use the GPU and read the model",
                    args.address)


__all__ = ["add_arguments", "server_curve", "announce", "RemoteAccessRefused"]
