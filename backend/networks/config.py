"""What the networks read from a config: any object with these attributes (``BundleConfig`` is the real one).

Why a Protocol and not the BundleConfig class itself: the networks must not import the bundle module (the bundle
imports the networks), and tests and training can build networks from any object that carries these sizes.
"""

from __future__ import annotations

from typing import Protocol


class _Encoding(Protocol):
    def channels(self, with_labels: bool) -> int: ...


class NetworkConfig(Protocol):
    base_channels: int       # U-Net channels at full resolution (authors: 32)
    depth: int               # U-Net stages; input sides must be multiples of 2**depth (authors: 6)
    max_channels: int        # channel cap of the U-Net (authors: 512)
    latent_size: int | None  # appearance latent length (paper: 8); 0/None = no appearance (I2I baseline)
    use_semantics: bool      # rerenderer input includes label channels (+Sem variants)
    encoder_channels: int    # appearance encoder's first width (authors: 64)
    encoder_blocks: int      # residual down-sampling blocks in the encoder (authors: 3: 64->128->192->256)
    encoding: _Encoding      # the InputEncoding: how many channels a deep buffer becomes
    # appearance_conditioning: "concat" | "film" (unet.CONDITIONING_MODES); optional, read with conditioning_of

    @property
    def num_classes(self) -> int: ...


def input_channels(config: NetworkConfig, *, with_labels: bool) -> int:
    """Channels of an encoded deep buffer, with or without the label channels."""
    return int(config.encoding.channels(with_labels))


def conditioning_of(config: object) -> str:
    """How the latent enters R; configs made before FiLM existed have no such attribute and mean "concat"."""
    mode = getattr(config, "appearance_conditioning", None) or "concat"
    if mode not in ("concat", "film"):
        raise ValueError(f"appearance_conditioning must be 'concat' or 'film', got {mode!r}")
    return str(mode)
