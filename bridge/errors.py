"""Typed errors of the bridge, and the error codes that travel on the wire (docs/protocol.md, "Errors").

Why typed: the add-on must tell the artist *what* is wrong (backend not running, wrong address, model missing,
version mismatch) without parsing message strings, and scripts must be able to retry only what is retryable.
Every error reply from the backend carries one of the ``CODE_*`` string constants below; the client turns it
into the matching exception class through :func:`remote_error`.
"""

from __future__ import annotations

# --- error codes (strings on the wire; never renumber or rename, only add) -----------------------------------
CODE_MALFORMED = "malformed"                # not a multipart message with a msgpack map header of the right fields
CODE_VERSION_MISMATCH = "version_mismatch"  # header "v" is not a protocol version this server speaks
CODE_UNKNOWN_OP = "unknown_op"              # header "op" names no operation
CODE_BAD_ARRAY = "bad_array"                # an array's dtype/shape/byte size is not allowed or does not match its frame
CODE_TOO_LARGE = "too_large"                # a declared size is above the server's limits (checked before allocation)
CODE_BAD_PARAMS = "bad_params"              # missing/unknown/invalid parameters or arrays for the op (NaN latent, ...)
CODE_NO_MODEL = "no_model"                  # the op needs a model but the server runs without one (--transport-only)
CODE_OVERLOADED = "overloaded"              # the compute queue is full; retry later
CODE_INTERNAL = "internal"                  # the model failed on a valid request (e.g. out of GPU memory)
CODE_SHUTTING_DOWN = "shutting_down"        # the server is stopping; the request was not computed

ALL_CODES = (
    CODE_MALFORMED, CODE_VERSION_MISMATCH, CODE_UNKNOWN_OP, CODE_BAD_ARRAY, CODE_TOO_LARGE, CODE_BAD_PARAMS,
    CODE_NO_MODEL, CODE_OVERLOADED, CODE_INTERNAL, CODE_SHUTTING_DOWN,
)


class BridgeError(Exception):
    """Base class of everything the bridge raises."""


class BackendUnavailable(BridgeError):
    """No backend answered in time: not running, wrong address, or it died while requests were in flight."""

    def __init__(self, address: str, timeout: float, detail: str = "", pending: tuple[int, ...] = ()) -> None:
        self.address = address
        self.timeout = timeout
        self.pending = pending  # for pipelined calls: indices of the items that got no result
        msg = (f"no backend answered at {address} within {timeout:g} s — start one with "
               f"`rerender serve --bundle PATH --address {address}` or check the address")
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class ProtocolError(BridgeError, ValueError):
    """A message on the wire breaks the protocol. ``code`` is one of the CODE_* constants.

    Raised by :mod:`.protocol` while decoding; the server turns it into an error reply, the client raises it
    when a *reply* is malformed (which means the backend is not a Rerender backend or is broken).
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"[{code}] {message}")


class RemoteError(BridgeError):
    """The backend answered with an error reply; ``code`` says what kind (a CODE_* constant)."""

    def __init__(self, code: str, message: str, request_id: int | None = None, op: str | None = None, *,
                 retry_after: float | None = None) -> None:
        self.code = code
        self.message = message
        self.request_id = request_id
        self.op = op
        self.retry_after = retry_after  # seconds, for ``overloaded``: the backend's estimate of when to retry
        where = f" ({op})" if op else ""
        super().__init__(f"backend error{where} [{code}]: {message}")


class ProtocolMismatch(RemoteError):
    """Client and backend speak different protocol versions: update the add-on or the backend to match."""


class InvalidRequest(RemoteError):
    """The backend rejected the request as malformed or invalid (a bug in the caller, or hostile input)."""


class ModelUnavailable(RemoteError):
    """The backend runs without a model (``--transport-only``); start it with ``--bundle PATH``."""


class BackendBusy(RemoteError):
    """The backend's compute queue is full; the request can be retried a little later."""


class FrameTooLarge(InvalidRequest):
    """Refused by the client itself before anything was sent: the request is above a limit of the wire or of the
    backend (``code`` is ``too_large``; the message names the limit). Nothing reached the backend."""


class BackendFailure(RemoteError):
    """The model failed on a valid request (out of memory, a bug in the runtime); the backend is still up."""


class AuthenticationFailed(BackendUnavailable):
    """The backend refused this client's CURVE handshake (unknown key, wrong server key, or keys missing on one
    side). Nothing was delivered: with CURVE a peer learns nothing, not even ``hello``, before it is allowed."""

    def __init__(self, address: str, timeout: float, detail: str = "", pending: tuple[int, ...] = ()) -> None:
        super().__init__(address, timeout, detail, pending)
        self.args = (f"{detail}" if detail else f"the backend at {address} refused this client's keys",)


class TransportError(BridgeError):
    """ZeroMQ failed on this client's socket (the context was terminated, a socket option was refused, ...);
    wraps the ``zmq.ZMQError`` (``__cause__``) so callers never need to import zmq to catch it."""


class InvalidAddress(BridgeError, ValueError):
    """The backend address cannot be used: it must look like ``tcp://HOST:PORT`` or ``ipc:///path``."""


class KeyFileError(BridgeError, ValueError):
    """A CURVE key or key file is missing or unreadable; the message says which and how to make one."""


_BY_CODE: dict[str, type[RemoteError]] = {
    CODE_MALFORMED: InvalidRequest,
    CODE_VERSION_MISMATCH: ProtocolMismatch,
    CODE_UNKNOWN_OP: InvalidRequest,
    CODE_BAD_ARRAY: InvalidRequest,
    CODE_TOO_LARGE: InvalidRequest,
    CODE_BAD_PARAMS: InvalidRequest,
    CODE_NO_MODEL: ModelUnavailable,
    CODE_OVERLOADED: BackendBusy,
    CODE_INTERNAL: BackendFailure,
    CODE_SHUTTING_DOWN: BackendBusy,
}


def remote_error(code: str, message: str, request_id: int | None = None, op: str | None = None, *,
                 retry_after: float | None = None) -> RemoteError:
    """The exception for an error reply; unknown codes (a newer server) still give a RemoteError."""
    return _BY_CODE.get(code, RemoteError)(code, message, request_id, op, retry_after=retry_after)
