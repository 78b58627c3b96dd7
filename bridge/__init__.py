"""rerender.bridge: the shared types and the wire protocol between Blender and the backend (docs/design.md §3, §5).

Imports only numpy, pyzmq and msgpack, with relative imports inside: it is vendored into the Blender extension and
imported by the backend. The protocol spec is docs/protocol.md.
"""

from .buffers import BufferError, DeepBuffer
from .classes import CITYSCAPES, DEFAULT_CLASSES, UNKNOWN, ClassTable, SemanticClass
from .client import Appearance, Client
from .colors import linear_to_srgb, linear_to_srgb8, srgb8_to_linear, srgb_to_linear
from .errors import (
    AuthenticationFailed, BackendBusy, BackendFailure, BackendUnavailable, BridgeError, InvalidAddress,
    InvalidRequest, KeyFileError, ModelUnavailable, ProtocolError, ProtocolMismatch, RemoteError, TransportError,
)
from .hello import ServerHello
from .launcher import BackendLauncher, BackendStartError, serve_command
from .protocol import DEFAULT_ADDRESS, PROTOCOL_VERSION, Limits
from .security import ClientCurve, ServerCurve

__all__ = [
    "DeepBuffer", "BufferError", "ClassTable", "SemanticClass", "CITYSCAPES", "DEFAULT_CLASSES", "UNKNOWN",
    "srgb_to_linear", "linear_to_srgb", "linear_to_srgb8", "srgb8_to_linear",
    "Client", "Appearance", "DEFAULT_ADDRESS", "PROTOCOL_VERSION", "Limits",
    "BridgeError", "BackendUnavailable", "ProtocolError", "RemoteError", "ProtocolMismatch", "InvalidRequest",
    "ModelUnavailable", "BackendBusy", "BackendFailure", "AuthenticationFailed", "TransportError", "InvalidAddress",
    "KeyFileError", "ServerHello", "BackendLauncher", "BackendStartError", "serve_command", "ClientCurve",
    "ServerCurve",
]
