"""MIT CSAIL's ADE20K scene parser "mobilenetv2dilated-c1_deepsup" in torch, with the checkpoints' module names.

Why this model: the paper labelled its tourist photos with an ADE20K model, because ADE20K's 150 classes include what
landmark photos show (building, tower, sculpture, fountain, fence, stairs...), while a street-scene model calls a
statue "car". Of the CSAIL models (github.com/CSAILVision/semantic-segmentation-pytorch, BSD-3-Clause) this is the
one that runs on a laptop CPU: MobileNetV2 (ImageNet-pretrained, then trained on ADE20K) with its last two stages
dilated instead of strided, so the features stay at 1/8 of the input, and a one-convolution head ("C1").

The published files are two state dicts, ``encoder_epoch_20.pth`` and ``decoder_epoch_20.pth``. Attribute names here
(``features.<i>.conv.<j>``, ``cbr``, ``conv_last``, ``cbr_deepsup``, ``conv_last_deepsup``) follow them, so a strict
``load_state_dict`` is the proof that the architecture is the right one. The deep-supervision branch only helped
training; it is kept so the decoder's keys match, and inference ignores it.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

#: MobileNetV2's inverted-residual stages: (expansion t, output channels c, repeats n, first stride s)
_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: the encoder's feature indices after which the resolution halves in plain MobileNetV2
_DOWN_IDX = (2, 4, 7, 14)
FC_DIM = 320  # channels of the encoder's last feature map (the decoder's input)
NUM_CLASSES = 150


def _bn_relu6(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU6(inplace=True)]


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (skipped when t = 1), 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, n_in: int, n_out: int, stride: int, expand: int):
        super().__init__()
        hidden = round(n_in * expand)
        self.use_res_connect = stride == 1 and n_in == n_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(n_in, hidden, 1, 1, 0, bias=False), *_bn_relu6(hidden)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), *_bn_relu6(hidden),
                   nn.Conv2d(hidden, n_out, 1, 1, 0, bias=False), nn.BatchNorm2d(n_out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _dilate(module: nn.Module, dilation: int) -> None:
    """Trade a stage's stride for dilation (output stride 8): the strided 3x3 keeps dilation/2, later ones get it."""
    for m in module.modules():
        if not isinstance(m, nn.Conv2d) or m.kernel_size != (3, 3):
            if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                m.stride = (1, 1)
            continue
        if m.stride == (2, 2):
            m.stride = (1, 1)
            d = dilation // 2
        else:
            d = dilation
        m.dilation, m.padding = (d, d), (d, d)


class MobileNetV2Dilated(nn.Module):
    """MobileNetV2's feature layers without the final 1x1 (1280 channels), dilated to output stride 8."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), *_bn_relu6(32))]
        n_in = 32
        for t, c, n, s in _STAGES:
            for i in range(n):
                layers.append(InvertedResidual(n_in, c, s if i == 0 else 1, t))
                n_in = c
        self.features = nn.Sequential(*layers)
        for i in range(_DOWN_IDX[2], _DOWN_IDX[3]):
            _dilate(self.features[i], 2)
        for i in range(_DOWN_IDX[3], len(self.features)):
            _dilate(self.features[i], 4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps after each former downsampling point, then the last one (what the decoder reads)."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _DOWN_IDX:
                out.append(x)
        out.append(x)
        return out


def _conv3x3_bn_relu(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(n_in, n_out, 3, 1, 1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU(inplace=True))


class C1DeepSup(nn.Module):
    """One 3x3 conv + BN + ReLU and a 1x1 classifier on the last feature map (plus the training-only deep head)."""

    def __init__(self, num_class: int = NUM_CLASSES, fc_dim: int = FC_DIM):
        super().__init__()
        self.cbr = _conv3x3_bn_relu(fc_dim, fc_dim // 4)
        self.cbr_deepsup = _conv3x3_bn_relu(fc_dim // 2, fc_dim // 4)
        self.conv_last = nn.Conv2d(fc_dim // 4, num_class, 1, 1, 0)
        self.conv_last_deepsup = nn.Conv2d(fc_dim // 4, num_class, 1, 1, 0)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_last(self.cbr(features[-1]))


class SceneParser(nn.Module):
    """Encoder + decoder: class logits (1 x 150 x H x W) at the input's resolution."""

    def __init__(self):
        super().__init__()
        self.encoder = MobileNetV2Dilated()
        self.decoder = C1DeepSup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.encoder(x))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
