"""What the server knows of its model: the runtime's info (plain types for msgpack), the precision it runs at,
and the appearance gallery as reply arrays (built once: ``appearances`` replies send the same arrays each time)."""

from __future__ import annotations

from typing import Any

import numpy as np


def model_info(runtime: Any | None) -> dict[str, Any]:
    """The runtime's info with a latent size; ``{"device": "none"}`` without a model."""
    if runtime is None:
        return {"device": "none"}
    info = _plain(dict(runtime.info()))
    info.setdefault("latent_size", int(getattr(runtime, "latent_size", 0) or 0))
    return info


def load_appearances(runtime: Any | None, info: dict[str, Any]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(names, arrays) of the gallery: ``latents`` N x latent_size and ``thumbnail.<i>`` per entry."""
    if runtime is None:
        return [], {}
    names, latents, arrays = [], [], {}
    size = int(info.get("latent_size") or 0)
    for i, entry in enumerate(runtime.appearances()):
        name, latent, thumbnail = (entry.name, entry.latent, entry.thumbnail) if hasattr(entry, "name") else entry
        names.append(str(name))
        latents.append(np.asarray(latent, dtype=np.float32).reshape(-1))
        arrays[f"thumbnail.{i}"] = np.ascontiguousarray(thumbnail, dtype=np.uint8)
    arrays = {"latents": np.stack(latents) if latents else np.zeros((0, size), np.float32), **arrays}
    return names, arrays


def resolve_precision(precision: str, device: str) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if not str(device).startswith("cuda"):
        return "fp32"  # autocast is a CUDA feature here; CPU stays in float32
    if precision != "auto":
        return precision
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def apply_precision(runtime: Any, precision: str) -> None:
    """The runtime runs its forward passes under ``torch.autocast`` with ``runtime.autocast_dtype`` (None = fp32);
    the server's --precision sets it, so the choice is made in one place and reported by hello."""
    if runtime is None or not hasattr(runtime, "autocast_dtype"):
        return
    import torch

    runtime.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _plain(x: Any) -> Any:
    """JSON/msgpack-safe copy of runtime info (tuples, numpy scalars, paths, torch devices become plain types)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


__all__ = ["model_info", "load_appearances", "resolve_precision", "apply_precision"]
