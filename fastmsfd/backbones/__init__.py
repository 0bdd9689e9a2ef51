"""Teacher/student feature extractors: one registry, torchvision/lukemelas-compatible weights."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from ..errors import WeightsNotFoundError
from .efficientnet_lite import LITE_LAYERS, EfficientNetLiteFeatures
from .resnet import RESNET_LAYERS, ResNetFeatures
from .weights import find_weights_file, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 in 0..255 units (TensorFlow's lite preprocessing).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

# name -> (constructor, valid layers, default layers, input mean, input std)
# Defaults: three scales. EfficientNet-Lite: strides 16/16/32 (stage4-6), chosen on the development parts of MTD,
# KolektorSDD and ELPV (docs/quality.md); ResNets: strides 4/8/16 (docs/defaults.md).
BACKBONES = {
    "resnet18": (ResNetFeatures, RESNET_LAYERS, ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "resnet34": (ResNetFeatures, RESNET_LAYERS, ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
    "wide_resnet50_2": (ResNetFeatures, RESNET_LAYERS, ("layer1", "layer2", "layer3"), IMAGENET_MEAN, IMAGENET_STD),
}
for _name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    BACKBONES[_name] = (EfficientNetLiteFeatures, LITE_LAYERS, ("stage4", "stage5", "stage6"),
                        LITE_MEAN, LITE_STD)


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def default_layers(name: str) -> tuple[str, ...]:
    _check_name(name)
    return BACKBONES[name][2]


def layer_order(name: str) -> tuple[str, ...]:
    """The backbone's layer names from shallow to deep."""
    _check_name(name)
    return tuple(BACKBONES[name][1])


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    _check_name(name)
    return BACKBONES[name][3], BACKBONES[name][4]


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(backbone_names())}")


def build_student(name: str, layers: Sequence[str] | None = None) -> nn.Module:
    """A randomly initialised student. Its BatchNorm momentum is reset to PyTorch's 0.1: with the lite
    models' TensorFlow momentum (0.01) the running statistics lag far behind a short training run and the
    student, evaluated in eval mode, looks untrained."""
    model = build_backbone(name, layers)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return model


def build_backbone(name: str, layers: Sequence[str] | None = None) -> nn.Module:
    """An untrained feature extractor that stops after the deepest requested layer."""
    _check_name(name)
    ctor, valid, defaults, _, _ = BACKBONES[name]
    layers = tuple(layers) if layers else defaults
    bad = [layer for layer in layers if layer not in valid]
    if bad or len(set(layers)) != len(layers):
        raise ValueError(f"layers {list(layers)} invalid for {name}: choose distinct ones of {list(valid)}")
    layers = tuple(sorted(layers, key=valid.index))
    return ctor(name, layers)


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `module`: every parameter/buffer the module has must be there with its shape.

    Keys for layers the truncated module does not build (deeper stages, the classifier) are ignored.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    # extra blocks inside a stage that is built whole (nn.Sequential): weights of a deeper variant,
    # e.g. resnet34 weights offered to resnet18
    modules = dict(module.named_modules())
    extra = [k for k in state if k not in own and isinstance(modules.get(k.split(".")[0]), nn.Sequential)
             and ".".join(k.split(".")[:2]) not in modules]
    if missing or wrong or extra:
        detail = (f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[:3]}" if wrong
                  else f"unexpected blocks {extra[:3]}")
        raise WeightsNotFoundError(f"{source}: weights do not fit this backbone ({detail})")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


class NormalizedTeacher(nn.Module):
    """The frozen teacher followed by a per-channel standardisation of each layer's output, with the mean and
    std measured on the training images (`fit_statistics`). Raw ImageNet features differ in scale by orders of
    magnitude between channels, layers and backbones, so that ||t - s||^2 / C would swamp the cosine term of the
    combined distance and flat dark regions (small features) would look normal; standardised targets keep
    both terms of the loss on one scale."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        for i, c in enumerate(backbone.channels):
            self.register_buffer(f"mean{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"std{i}", torch.ones(1, c, 1, 1))

    @property
    def layers(self):
        return self.backbone.layers

    @property
    def channels(self):
        return self.backbone.channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [(f - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
                for i, f in enumerate(self.backbone(x))]

    @torch.no_grad()
    def fit_statistics(self, batches) -> None:
        """Per-channel mean/std of the raw features over an iterable of normalised image batches."""
        sums = squares = cells = None
        for x in batches:
            feats = self.backbone(x)
            s1 = [f.double().sum((0, 2, 3)) for f in feats]
            s2 = [f.double().pow(2).sum((0, 2, 3)) for f in feats]
            n = [f.shape[0] * f.shape[2] * f.shape[3] for f in feats]
            if sums is None:
                sums, squares, cells = s1, s2, n
            else:
                sums = [a + b for a, b in zip(sums, s1)]
                squares = [a + b for a, b in zip(squares, s2)]
                cells = [a + b for a, b in zip(cells, n)]
        if sums is None:
            raise ValueError("fit_statistics needs at least one batch")
        for i, (a, b, n) in enumerate(zip(sums, squares, cells)):
            mean = a / n
            std = (b / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
            getattr(self, f"mean{i}").copy_(mean.view(1, -1, 1, 1))
            getattr(self, f"std{i}").copy_(std.view(1, -1, 1, 1))


def build_teacher(name: str, layers: Sequence[str] | None = None, weights=None, download: bool = False) -> nn.Module:
    """The frozen teacher. weights: None (resolve offline), a path, a state_dict, or "random" (speed tests)."""
    model = build_backbone(name, layers)
    if isinstance(weights, str) and weights == "random":
        warnings.warn(f"{name} teacher has random weights: fine for speed tests, useless for detection",
                      stacklevel=2)
    else:
        source = str(weights) if isinstance(weights, str) else str(find_weights_file(name) or name)
        load_matching(model, resolve_weights(name, weights, download), source)
    model = NormalizedTeacher(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


__all__ = ["build_backbone", "build_student", "build_teacher", "backbone_names", "default_layers", "layer_order",
           "normalization",
           "resolve_weights", "find_weights_file", "load_matching"]
