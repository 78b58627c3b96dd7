"""The peers connected to the server's ROUTER socket: dead ones dropped by heartbeats, idle ones reaped, a budget.

Why: every connection holds a file descriptor, and ZeroMQ never closes a connection by itself while the peer's
TCP stack is alive; ~1,000 idle connections would lock every new client out under the usual 1,024-descriptor
limit. Three mechanisms, from cheapest:
  * ZeroMQ heartbeats (ZMQ_HEARTBEAT_IVL/TIMEOUT/TTL) drop a peer whose ZeroMQ stops answering PINGs (a frozen or
    vanished machine, a half-open TCP connection), and ZMQ_HANDSHAKE_IVL drops a socket that never completes the
    ZMTP handshake (a port scanner, a stray telnet);
  * a connection that sent no request for ``idle_timeout_s`` is closed;
  * beyond the connection budget (the configured maximum, never more than the descriptors left), the connections
    idle the longest are closed first, so a new client always gets in. Connections with requests in flight are
    never closed.

ROUTER has no "close this peer" call, so the tracker learns each connection's descriptor from the socket monitor
(ACCEPTED carries it) and each message's from ZMQ_SRCFD, and closes a connection with ``shutdown(2)`` on it:
libzmq sees the end of the stream and cleans up as for any peer that left. A reconnecting ZeroMQ client simply
connects again when it next has something to send.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("rerender.backend.server")

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
_SRCFD = getattr(zmq, "SRCFD", 2)


def configure_heartbeats(router: zmq.Socket, heartbeat_s: float) -> None:
    """PING every ``heartbeat_s``; drop a peer silent for 3 intervals; ask peers to drop us after 6; and drop
    sockets that have not completed the handshake after max(3 intervals, 2 s). 0 turns heartbeats off."""
    if heartbeat_s <= 0:
        return
    ivl = max(1, int(heartbeat_s * 1000))
    router.setsockopt(zmq.HEARTBEAT_IVL, ivl)
    router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
    router.setsockopt(zmq.HEARTBEAT_TTL, min(6 * ivl, 6_553_500))
    router.setsockopt(zmq.HANDSHAKE_IVL, max(2000, 3 * ivl))


@dataclass
class _Connection:
    fd: int
    inode: int
    accepted: float
    last_seen: float
    busy: int = 0  # requests in flight


class ConnectionTracker:
    """Follows the ROUTER's connections through its monitor socket (register :attr:`monitor` in the poller)."""

    def __init__(self, router: zmq.Socket, *, budget: int, idle_timeout_s: float) -> None:
        self.monitor = router.get_monitor_socket(_EVENTS)
        self._router = router
        self.budget = budget
        self.idle_timeout_s = idle_timeout_s
        self._connections: dict[int, _Connection] = {}
        self.reaped = 0
        self.accepted = 0

    def __len__(self) -> int:
        return len(self._connections)

    def on_events(self) -> None:
        """Read the monitor's pending events (ACCEPTED adds a connection, DISCONNECTED/CLOSED remove it)."""
        now = time.monotonic()
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.accepted += 1
                self._connections[fd] = _Connection(fd, _inode(fd), now, now)
            else:
                self._connections.pop(fd, None)

    def message_fd(self, frame: Any) -> int | None:
        """The descriptor a received frame came through, marking that connection active."""
        try:
            fd = int(frame.get(_SRCFD))
        except (zmq.ZMQError, AttributeError, TypeError, ValueError):
            return None
        connection = self._connections.get(fd)
        if connection is None:
            return None
        connection.last_seen = time.monotonic()
        return fd

    def begin(self, fd: int | None) -> None:
        if fd is not None and fd in self._connections:
            self._connections[fd].busy += 1

    def end(self, fd: int | None) -> None:
        connection = self._connections.get(fd) if fd is not None else None
        if connection is not None:
            connection.busy = max(0, connection.busy - 1)
            connection.last_seen = time.monotonic()

    def reap(self) -> int:
        """Close connections idle beyond the timeout, then the idlest beyond the budget; returns how many."""
        self.on_events()
        now = time.monotonic()
        idle = sorted((c for c in self._connections.values() if c.busy == 0), key=lambda c: c.last_seen)
        victims = [c for c in idle if now - c.last_seen > self.idle_timeout_s]
        over = len(self._connections) - len(victims) - self.budget
        if over > 0:
            rest = [c for c in idle if c not in victims and now - c.accepted > 0.5]  # let newcomers speak first
            victims += rest[:over]
        closed = 0
        for connection in victims:
            if self._close(connection):
                closed += 1
            self._connections.pop(connection.fd, None)
        if closed:
            self.reaped += closed
            log.info("closed %d idle connection(s) (%d open, budget %d)", closed, len(self._connections),
                     self.budget)
        return closed

    def _close(self, connection: _Connection) -> bool:
        if _inode(connection.fd) != connection.inode:  # the descriptor was reused for something else: leave it
            return False
        try:
            dup = socket.socket(fileno=os.dup(connection.fd))
        except OSError:
            return False
        try:
            dup.shutdown(socket.SHUT_RDWR)
            return True
        except OSError:
            return False
        finally:
            dup.close()

    def close(self) -> None:
        # Stop the router's monitor before closing its PAIR: a monitor left running wedges the ZeroMQ context,
        # and later sockets of the process (Context.instance() is shared) never connect.
        try:
            self._router.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)

    def describe(self) -> dict[str, int]:
        return {"open": len(self._connections), "budget": self.budget, "accepted": self.accepted,
                "reaped": self.reaped}


def _inode(fd: int) -> int:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return -1


__all__ = ["ConnectionTracker", "configure_heartbeats"]
