"""``rerender keys``: CURVE key pairs for a backend reached over a network (docs/install.md, "Remote backends").

``create NAME`` writes ``NAME.key`` (the public key: give it away) and ``NAME.key_secret`` (the private key:
mode 0600, never copied off its machine). The server gets one pair, every client (workstation, farm worker)
its own, and the server's ``--client-keys`` folder holds the clients' public ``.key`` files. ``show FILE`` prints
a file's public key, the 40 characters the add-on's "Server Public Key" field takes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rerender.bridge.errors import KeyFileError
from rerender.bridge.security import create_key_pair, curve_available, load_public_key


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="make a key pair NAME.key + NAME.key_secret",
                            description="Make a CURVE key pair: NAME.key (public) and NAME.key_secret (private).")
    create.add_argument("name", help="file name of the pair, e.g. server or worker-07")
    create.add_argument("--out", type=Path, default=Path("."), help="folder to write into (default: here)")
    create.add_argument("--force", action="store_true", help="replace an existing pair of that name")
    show = sub.add_parser("show", help="print the public key of a .key or .key_secret file")
    show.add_argument("file", type=Path)


def run(args: argparse.Namespace) -> int:
    if not curve_available():
        print("rerender keys: this ZeroMQ build has no CURVE support; install pyzmq from its PyPI wheels",
              file=sys.stderr)
        return 2
    try:
        if args.keys_action == "show":
            print(load_public_key(args.file).decode("ascii"))
            return 0
        public, secret = create_key_pair(args.out, args.name, overwrite=args.force)
    except KeyFileError as exc:
        print(f"rerender keys: {exc}", file=sys.stderr)
        return 2
    print(f"public key  {public}  (share it: a server's goes to its clients, a client's into the server's "
          f"--client-keys folder)")
    print(f"private key {secret}  (keep it on this machine, readable by you only)")
    print(f"public key text: {load_public_key(public).decode('ascii')}")
    return 0
