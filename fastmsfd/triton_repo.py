"""A model repository for NVIDIA Triton Inference Server: REPO/<name>/config.pbtxt + REPO/<name>/1/model.onnx.

The ONNX graph is fastmsfd's own export (uint8 RGB images resized to H x W -> heatmap, score and
the score's parts; normalisation
inside), served by Triton's ONNX Runtime backend with dynamic batching. The threshold and the preprocessing a
client must do travel in the config's parameters (and in the ONNX metadata).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ._version import __version__
from .checkpoint import atomic_path
from .export import INPUT_NAME, onnx_bytes
from .model import OUTPUT_NAMES

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def config_pbtxt(name: str, image_hw: tuple[int, int], threshold: float, max_batch_size: int = 8,
                 max_queue_delay_us: int = 5000, extra: dict | None = None) -> str:
    """The model configuration in protobuf text format (Triton's ModelConfig)."""
    H, W = image_hw
    params = {"threshold": repr(float(threshold)), "input_format": "RGB uint8 NCHW",
              "resize": f"each image to {H}x{W} (height x width), bilinear with antialiasing, before sending",
              "normalization": "inside the graph", "label": "anomalous when score > threshold",
              "fastmsfd_version": __version__, **(extra or {})}
    param_text = "\n".join(f'parameters {{ key: "{k}" value {{ string_value: {json.dumps(str(v))} }} }}'
                           for k, v in params.items())
    preferred = sorted({b for b in (1, 2, 4, max_batch_size) if b <= max_batch_size})
    heatmap, score, map_z, global_z, peak = OUTPUT_NAMES
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [
  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: [ 3, {H}, {W} ] }}
]
output [
  {{ name: "{heatmap}" data_type: TYPE_FP32 dims: [ {H}, {W} ] }},
  {{ name: "{score}" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }},
  {{ name: "{map_z}" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }},
  {{ name: "{global_z}" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }},
  {{ name: "{peak}" data_type: TYPE_INT64 dims: [ 2 ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(map(str, preferred))} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
{param_text}
"""


def _geometry_params(detector) -> dict[str, str]:
    """keep_aspect changes what the client sends; tiles run inside the graph (said for the record)."""
    out = {}
    if detector.settings.geometry.resize == "keep_aspect":
        out["resize"] = (f"each image to fit inside {detector.input_hw[0]}x{detector.input_hw[1]} with its aspect "
                         "kept (bilinear with antialiasing), centred, the rest filled by repeating its edge pixels")
    grid = detector.model.grid
    if grid is not None:
        out["tiles"] = f"{len(grid)} tiles of {grid.tile[0]}x{grid.tile[1]} inside the graph"
    return out


def write_triton_repository(detector, repo: str | Path, name: str = "fastmsfd", max_batch_size: int = 8,
                            max_queue_delay_us: int = 5000) -> Path:
    """Write REPO/<name>/ (config.pbtxt, 1/model.onnx); replaces an existing model of that name as a whole
    (built beside it, then renamed into place). Returns the model folder."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r}: use letters, digits, '_', '-' or '.' only")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    repo = Path(repo)
    repo.mkdir(parents=True, exist_ok=True)
    final = repo / name
    staging = repo / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "1").mkdir(parents=True)
        with atomic_path(staging / "1" / "model.onnx", suffix=".onnx") as tmp:
            tmp.write_bytes(onnx_bytes(detector, dynamic_batch=True))
        cfg = config_pbtxt(name, detector.input_hw, float(detector.threshold), max_batch_size,
                           max_queue_delay_us, {"backbone": detector.settings.network.backbone,
                                                **_geometry_params(detector)})
        (staging / "config.pbtxt").write_text(cfg)
        if final.exists():
            old = repo / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            staging.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
