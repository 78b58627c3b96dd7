"""ESPNet (Mehta et al., ECCV 2018) in torch, re-typed from the paper's description of its building blocks.

Why re-implement it: the authors' pretrained Cityscapes weights are small (≈ 1.5 MB), MIT-licensed and good enough
to tell sky from building from people, which is all the rerenderer needs. Module and attribute names follow the
published checkpoints exactly, so ``load_state_dict(..., strict=True)`` of the real files is the proof that the
architecture is the right one.

Building blocks (the paper's "efficient spatial pyramid", ESP):
  reduce the input with one convolution to n = nOut / 5 channels, run five 3x3 dilated convolutions (d = 1, 2, 4,
  8, 16) in parallel, add the dilated outputs hierarchically (d2, d2+d4, d2+d4+d8, ...) to remove gridding
  artifacts, concatenate, batch-norm + PReLU. The strided variant downsamples by 2.
"""

from __future__ import annotations

import torch
from torch import nn

BN_EPS = 1e-3


class CBR(nn.Module):
    """Convolution, batch norm, PReLU."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, k, stride=stride, padding=(k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BR(nn.Module):
    """Batch norm and PReLU (used after concatenations)."""

    def __init__(self, n: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(n, eps=BN_EPS)
        self.act = nn.PReLU(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class C(nn.Module):
    """A bias-free convolution with 'same' padding."""

    def __init__(self, n_in: int, n_out: int, k: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        pad = (k - 1) // 2 * dilation
        self.conv = nn.Conv2d(n_in, n_out, k, stride=stride, padding=pad, dilation=dilation, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _esp_branches(n: int, n1: int) -> dict[str, C]:
    return {"d1": C(n, n1, 3, dilation=1), "d2": C(n, n, 3, dilation=2), "d4": C(n, n, 3, dilation=4),
            "d8": C(n, n, 3, dilation=8), "d16": C(n, n, 3, dilation=16)}


def _hierarchical_fusion(block: nn.Module, reduced: torch.Tensor) -> torch.Tensor:
    d1 = block.d1(reduced)
    add1 = block.d2(reduced)
    add2 = add1 + block.d4(reduced)
    add3 = add2 + block.d8(reduced)
    add4 = add3 + block.d16(reduced)
    return torch.cat([d1, add1, add2, add3, add4], 1)


class DownSamplerESP(nn.Module):
    """Strided ESP block: halves the resolution (checkpoint name: DownSamplerB)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        n = n_out // 5
        n1 = n_out - 4 * n
        self.c1 = C(n_in, n, 3, stride=2)
        for name, mod in _esp_branches(n, n1).items():
            setattr(self, name, mod)
        self.bn = nn.BatchNorm2d(n_out, eps=BN_EPS)
        self.act = nn.PReLU(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(_hierarchical_fusion(self, self.c1(x))))


class ResidualESP(nn.Module):
    """ESP block with an optional residual connection (checkpoint name: DilatedParllelResidualBlockB)."""

    def __init__(self, n_in: int, n_out: int, add: bool = True):
        super().__init__()
        n = n_out // 5
        n1 = n_out - 4 * n
        self.c1 = C(n_in, n, 1)
        for name, mod in _esp_branches(n, n1).items():
            setattr(self, name, mod)
        self.bn = BR(n_out)
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _hierarchical_fusion(self, self.c1(x))
        if self.add:
            out = x + out
        return self.bn(out)


def _downsample_input(x: torch.Tensor, times: int) -> torch.Tensor:
    """The paper's input reinforcement: the image, average-pooled 2^times, is concatenated to deeper features."""
    for _ in range(times):
        x = nn.functional.avg_pool2d(x, 3, stride=2, padding=1)
    return x


class ESPNetC(nn.Module):
    """ESPNet-C, the encoder: logits at 1/8 of the input resolution. ``p``/``q``: ESP blocks at levels 2 and 3."""

    def __init__(self, classes: int = 20, p: int = 2, q: int = 8):
        super().__init__()
        self.level1 = CBR(3, 16, 3, 2)
        self.b1 = BR(16 + 3)
        self.level2_0 = DownSamplerESP(16 + 3, 64)
        self.level2 = nn.ModuleList([ResidualESP(64, 64) for _ in range(p)])
        self.b2 = BR(128 + 3)
        self.level3_0 = DownSamplerESP(128 + 3, 128)
        self.level3 = nn.ModuleList([ResidualESP(128, 128) for _ in range(q)])
        self.b3 = BR(256)
        self.classifier = C(256, classes, 1)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(level-1 conv output at 1/2, level-2 features at 1/4, level-3 features at 1/8): what the decoder uses."""
        out0 = self.level1(x)
        out0_cat = self.b1(torch.cat([out0, _downsample_input(x, 1)], 1))
        out1_0 = self.level2_0(out0_cat)
        out1 = out1_0
        for layer in self.level2:
            out1 = layer(out1)
        out1_cat = self.b2(torch.cat([out1, out1_0, _downsample_input(x, 2)], 1))
        out2_0 = self.level3_0(out1_cat)
        out2 = out2_0
        for layer in self.level3:
            out2 = layer(out2)
        out2_cat = self.b3(torch.cat([out2_0, out2], 1))
        return out0, out1_cat, out2_cat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)[2])


class ESPNet(nn.Module):
    """Full ESPNet: ESPNet-C plus a light decoder that brings the logits back to the input resolution."""

    def __init__(self, classes: int = 20, p: int = 2, q: int = 8):
        super().__init__()
        self.encoder = ESPNetC(classes, p, q)
        self.level3_C = C(128 + 3, classes, 1)
        self.br = nn.BatchNorm2d(classes, eps=BN_EPS)
        self.conv = CBR(16 + classes, classes, 3)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BR(2 * classes), ResidualESP(2 * classes, classes, add=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False), BR(classes))
        self.classifier = nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out0, out1_cat, out2_cat = self.encoder.features(x)
        l3 = self.up_l3(self.br(self.encoder.classifier(out2_cat)))
        l2 = self.combine_l2_l3(torch.cat([self.level3_C(out1_cat), l3], 1))
        merged = self.conv(torch.cat([self.up_l2(l2), out0], 1))
        return self.classifier(merged)
