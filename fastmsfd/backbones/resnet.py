"""ResNet-18/34 and Wide-ResNet-50-2 with torchvision's module names, so torchvision weight files load as is.

Only the stages up to the deepest requested layer are built: the rest would cost time and memory for nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")
RESNET_STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 64):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_SPECS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 64),
    "wide_resnet50_2": (Bottleneck, (3, 4, 6, 3), 128),
}


class ResNetFeatures(nn.Module):
    """ResNet trunk returning the requested layers' outputs, in order."""

    def __init__(self, name: str, layers: Sequence[str]):
        super().__init__()
        block, repeats, base_width = _SPECS[name]
        self.layers = tuple(layers)
        depth = max(RESNET_LAYERS.index(layer) for layer in self.layers) + 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i in range(depth):
            planes = 64 * 2**i
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(cin, planes * block.expansion, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            blocks = [block(cin, planes, stride, downsample, base_width)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, None, base_width) for _ in range(1, repeats[i])]
            setattr(self, RESNET_LAYERS[i], nn.Sequential(*blocks))
        self._stages = RESNET_LAYERS[:depth]
        self.channels = [self._channels(block, layer) for layer in self.layers]
        self.strides = [RESNET_STRIDES[layer] for layer in self.layers]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _channels(block, layer: str) -> int:
        return 64 * 2 ** RESNET_LAYERS.index(layer) * block.expansion

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for name in self._stages:
            x = getattr(self, name)(x)
            if name in self.layers:
                feats.append(x)
        return feats
