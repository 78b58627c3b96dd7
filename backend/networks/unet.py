"""The authors' U-Net (official-code-facts.md, "Rerenderer"), shared by the rerenderer R and the semantic predictor S.

Layout for depth D and channel schedule c(i) = min(base * 2**i, max_channels):
  1x1 conv in -> c(0) at full resolution;
  D encoder stages: [2x average pool, ConvBlock, ConvBlock] -> c(1) ... c(D) (bottleneck at 1/2**D);
  optional latent tiled over the bottleneck and concatenated;
  D decoder stages: [2x nearest upsample, concat the encoder feature of that resolution, ConvBlock, ConvBlock],
  each optionally followed by FiLM from the latent (``film=True``, see :class:`FiLM`);
  1x1 conv c(0) -> out, linear (gain 1, as ProGAN's toRGB).
Defaults base 32, max 512, D 6 give 32 -> 64 -> 128 -> 256 -> 512 -> 512 -> 512 like the authors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LEAKY_SLOPE, ConvBlock, EqualizedConv2d, EqualizedLinear, PixelNorm

CONDITIONING_MODES = ("concat", "film")
"""How the appearance latent enters the rerenderer.

concat: the paper's (and the authors' code's) tiling of the latent over the bottleneck, concatenated.
film:   the same concatenation plus FiLM after every decoder stage. Modulating every stage (as per-block AdaIN
        in Li et al. 2020, or WildGaussians' identity-initialised colour modulation) gives the latent a direct path
        to the output colour at every scale, where the bottleneck's information has to survive the decoder's pixel
        norms and the skip concatenations that carry the geometry. Measured at CPU scale (docs/evaluation.md):
        with raw latents the bottleneck alone ignored the latent (+0.03 dB transfer gain against FiLM's +1.03);
        with the latent standardised (``latent_standardised``) both carry the look (+3.4 / +3.2 dB), and FiLM's
        night is the one that lights the lamps and keeps the sky black.
"""


class FiLM(nn.Module):
    """h <- h * (1 + gamma(z)) + beta(z), per channel, from a linear map of the latent initialised to zero.

    Zero initialisation makes the layer the identity, so a FiLM network starts as exactly the plain rerenderer
    (concatenation only) and training moves away from it only as far as the loss asks.
    """

    def __init__(self, latent_size: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.affine = EqualizedLinear(latent_size, 2 * channels, gain=1.0)
        with torch.no_grad():
            self.affine.weight.zero_()

    def forward(self, h: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(latent.to(h.dtype)).split(self.channels, dim=1)
        return h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


def channel_schedule(base_channels: int, depth: int, max_channels: int) -> list[int]:
    """Channels at each resolution level 0..depth."""
    return [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]


class UNet(nn.Module):
    """Encoder-decoder with skips, pixel norm and equalized lr; optional latent injected at the bottleneck."""

    def __init__(self, in_channels: int, out_channels: int, *, base_channels: int, depth: int,
                 max_channels: int, latent_size: int = 0, film: bool = False,
                 latent_standardised: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"U-Net needs at least one input and output channel, got {in_channels}, {out_channels}")
        if base_channels < 1 or depth < 1 or max_channels < base_channels:
            raise ValueError(f"bad U-Net sizes: base_channels={base_channels}, depth={depth}, "
                             f"max_channels={max_channels} (need base >= 1, depth >= 1, max >= base)")
        if latent_size < 0:
            raise ValueError(f"latent_size must be >= 0, got {latent_size}")
        if film and latent_size < 1:
            raise ValueError("FiLM conditioning needs an appearance latent (latent_size >= 1)")
        self.in_channels = in_channels
        self.depth = depth
        self.latent_size = latent_size
        ch = channel_schedule(base_channels, depth, max_channels)
        self.from_input = nn.Sequential(EqualizedConv2d(in_channels, ch[0], 1), nn.LeakyReLU(LEAKY_SLOPE), PixelNorm())
        self.down = nn.ModuleList(
            nn.Sequential(nn.AvgPool2d(2), ConvBlock(ch[i], ch[i + 1]), ConvBlock(ch[i + 1], ch[i + 1]))
            for i in range(depth)
        )
        up = []
        for i in reversed(range(depth)):  # from level i+1 up to level i
            below = ch[i + 1] + (latent_size if i == depth - 1 else 0)
            up.append(nn.Sequential(ConvBlock(below + ch[i], ch[i]), ConvBlock(ch[i], ch[i])))
        self.up = nn.ModuleList(up)
        # one FiLM per decoder stage, in the order of self.up; absent (not just identity) without film, so the
        # weights of bundles made before FiLM existed load unchanged
        self.film = nn.ModuleList(FiLM(latent_size, ch[i]) for i in reversed(range(depth))) if film else None
        self.to_output = EqualizedConv2d(ch[0], out_channels, 1, gain=1.0)
        # (z - latent_mean) / latent_scale is what the bottleneck and FiLM see. Why: an encoder trained by a triplet
        # loss puts its latents anywhere (measured: per-dimension means up to 2.3 around spreads of 0.1-0.4), and a
        # zero-initialised FiLM layer then sees nearly the same input for every photo, so the looks it can learn
        # in a given number of steps are nearly the same too. Identity until training sets them.
        self.latent_standardised = bool(latent_standardised and latent_size)
        if self.latent_standardised:
            self.register_buffer("latent_mean", torch.zeros(latent_size))
            self.register_buffer("latent_scale", torch.ones(latent_size))

    @property
    def multiple(self) -> int:
        """Height and width of the input must be multiples of this (the bottleneck is 1/multiple of the input)."""
        return 2**self.depth

    def check_input(self, x: torch.Tensor, latent: torch.Tensor | None, who: str) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{who} expects N x {self.in_channels} x H x W input, got {tuple(x.shape)}; encode deep "
                             f"buffers with the bundle's InputEncoding")
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise ValueError(f"{who}: height and width must be multiples of 2**depth = {self.multiple}, got {h}x{w}; "
                             f"pad the input (ModelRuntime pads and crops automatically)")
        if self.latent_size:
            if latent is None:
                raise ValueError(f"{who} was built with latent_size={self.latent_size}: pass an N x "
                                 f"{self.latent_size} appearance latent")
            if latent.ndim != 2 or latent.shape != (x.shape[0], self.latent_size):
                raise ValueError(f"{who}: latent must be {x.shape[0]} x {self.latent_size}, got {tuple(latent.shape)}")
        elif latent is not None and latent.numel() != 0:
            raise ValueError(f"{who} was built without an appearance latent (latent_size 0) but got one of shape "
                             f"{tuple(latent.shape)}")

    @torch.no_grad()
    def set_latent_statistics(self, latents: torch.Tensor) -> None:
        """Standardise future latents by these (N x latent_size) latents' mean and standard deviation."""
        if not self.latent_standardised:
            raise ValueError("this network was built without latent standardisation (latent_standardised=False)")
        latents = latents.detach().float().to(self.latent_mean.device)
        self.latent_mean.copy_(latents.mean(0))
        spread = latents.std(0) if latents.shape[0] > 1 else torch.ones_like(self.latent_scale)
        self.latent_scale.copy_(spread.clamp_min(1e-3))

    def standardised(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent`` (N x latent_size) in the coordinates the network reads it in: standardised by the stored
        statistics when the network standardises latents, else unchanged."""
        if not self.latent_standardised:
            return latent
        return (latent - self.latent_mean.to(latent.dtype)) / self.latent_scale.to(latent.dtype)

    def run(self, x: torch.Tensor, latent: torch.Tensor | None) -> torch.Tensor:
        if latent is not None:
            latent = self.standardised(latent)
        h = self.from_input(x)
        skips = [h]
        for stage in self.down:
            h = stage(h)
            skips.append(h)
        skips.pop()  # the bottleneck itself is not a skip
        if self.latent_size:
            tiled = latent.to(h.dtype)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
            h = torch.cat([h, tiled], dim=1)
        for i, stage in enumerate(self.up):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = stage(torch.cat([h, skips.pop()], dim=1))
            if self.film is not None:
                h = self.film[i](h, latent)
        return self.to_output(h)
