"""The ``hello`` reply as a typed value, parsed once here instead of as a dict by every caller.

Why: the add-on's status line, the render engine's latent-size check, the demo and the tests all read the same
reply; each used to dig through the dict with its own fallbacks. :class:`ServerHello` checks the field types once
(a reply that breaks them is a :class:`~.errors.ProtocolError`: the peer is not a Rerender backend) and keeps
fields a newer server adds in ``extra``, so additive protocol changes never break an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import CODE_MALFORMED, ProtocolError

_KNOWN = ("protocol", "server", "ops", "model", "latent_size", "device", "precision", "max_batch", "limits",
          "model_info", "stats", "health")


@dataclass(frozen=True)
class ServerHello:
    """What a backend says about itself (docs/protocol.md, op ``hello``)."""

    protocol: int
    server: str = ""
    ops: tuple[str, ...] = ()
    model: str | None = None            # the bundle's name; None for a ``--transport-only`` server
    latent_size: int | None = None      # appearance latent length the model takes; None without a model
    device: str = "none"                # cpu, cuda, cuda:0, none
    precision: str = "fp32"
    max_batch: int = 1
    limits: dict[str, int] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)  # the server's own report on its workers, if it sends one
    extra: dict[str, Any] = field(default_factory=dict)   # fields this client does not know (a newer server)

    @property
    def has_model(self) -> bool:
        """Whether the backend can rerender (a model is loaded and the op is offered)."""
        return self.model is not None and "rerender" in self.ops

    @property
    def healthy(self) -> bool:
        """False only when the server says so (``health.ok`` false); a server that reports nothing is healthy."""
        return bool(self.health.get("ok", True))

    def summary(self) -> str:
        """One line: device, model and latent size (what the add-on's status shows)."""
        parts = [p for p in (self.device if self.device != "none" else "", self.model or "") if p]
        if self.latent_size:
            parts.append(f"latent {self.latent_size}")
        return " · ".join(parts) or "transport only"

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "ServerHello":
        """Parse a hello reply's params (the protocol version must already have been checked)."""
        if not isinstance(params, Mapping):
            raise ProtocolError(CODE_MALFORMED, f"hello reply params must be a map, got {type(params).__name__}")
        p = dict(params)
        return cls(
            protocol=_typed(p, "protocol", int),
            server=_typed(p, "server", str, ""),
            ops=tuple(_typed(p, "ops", list, [])),
            model=_typed(p, "model", str, None),
            latent_size=_typed(p, "latent_size", int, None),
            device=_typed(p, "device", str, "none"),
            precision=_typed(p, "precision", str, "fp32"),
            max_batch=_typed(p, "max_batch", int, 1),
            limits=_typed(p, "limits", dict, {}),
            model_info=_typed(p, "model_info", dict, {}),
            stats=_typed(p, "stats", dict, {}),
            health=_typed(p, "health", dict, {}),
            extra={k: v for k, v in p.items() if k not in _KNOWN},
        )


_MISSING = object()


def _typed(params: dict[str, Any], name: str, kind: type, default: Any = _MISSING) -> Any:
    value = params.get(name, _MISSING)
    if value is _MISSING or (value is None and default is None):
        if default is _MISSING:
            raise ProtocolError(CODE_MALFORMED, f"the hello reply has no {name!r} field")
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ProtocolError(CODE_MALFORMED, f"hello field {name!r} must be {kind.__name__}, got "
                                            f"{type(value).__name__}")
    if kind is list and not all(isinstance(v, str) for v in value):
        raise ProtocolError(CODE_MALFORMED, f"hello field {name!r} must be a list of strings")
    return value


__all__ = ["ServerHello"]
