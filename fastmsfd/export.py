"""The ONNX graph: the detector's model (model.py) traced, for export and the ONNX Runtime / OpenVINO runtimes.

Input "images": uint8 (B, 3, H, W), RGB, already resized to the detector's image_size (bilinear, antialiased:
what Detector.predict does; the ONNX metadata says so). Outputs: model.OUTPUT_NAMES ("heatmap", "score",
"map_z", "global_z", "peak"). The trace records the reference math (fastmsfd.ops.reference: the Gaussian
up-sampling as two MatMuls by fixed matrices), tiles, the global branch's whole-image view and the fusion, as the
model's forward computes them. The batch dimension is dynamic.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch

from ._version import __version__
from .checkpoint import atomic_path
from .model import OUTPUT_NAMES
from .onnx_passes import fold_pads

OPSET = 17
INPUT_NAME = "images"


def metadata(detector) -> dict[str, str]:
    """What a serving stack needs to feed the graph, stored in the ONNX file's metadata_props."""
    H, W = detector.input_hw
    net, grid = detector.settings.geometry, detector.model.grid
    resize = ("bilinear, antialias" if net.resize == "squash" else
              "keep_aspect: bilinear, antialias, to fit inside HxW with the aspect kept, centred, the rest filled "
              "by repeating the edge pixels")
    return {
        "fastmsfd_version": __version__,
        "input": f"{INPUT_NAME}: uint8 (batch, 3, {H}, {W}) RGB; resize each image to {H}x{W} (height x width) "
                 "first (bilinear, antialiased); normalisation is inside the graph",
        "image_size": str(H) if H == W else f"{H},{W}",
        "height": str(H),
        "width": str(W),
        "channel_order": "RGB",
        "resize": resize,
        "resize_policy": net.resize,
        "tiles": "none" if grid is None else f"{len(grid)} tiles of {grid.tile[0]}x{grid.tile[1]} inside the graph",
        "outputs": "heatmap: float32 (batch, H, W); score: float32 (batch,), anomalous when score > threshold; "
                   "map_z, global_z: float32 (batch,), the score's standardised parts (global_z NaN without a "
                   "global branch); peak: int64 (batch, 2), the heatmap maximum's (row, column)",
        "threshold": repr(float(detector.threshold)),
        "config": json.dumps({k: v for k, v in detector.config.items()}, default=str),
    }


def onnx_bytes(detector, dynamic_batch: bool = True, opset: int = OPSET) -> bytes:
    """Export the detector's model to ONNX in memory (float32, NCHW): its forward, traced."""
    import onnx

    model = detector.model
    dummy = torch.zeros(2, 3, *detector.input_hw, dtype=torch.uint8, device=detector.device)
    buf = io.BytesIO()
    was_cl, was_training, precision = _is_channels_last(model), model.training, model.precision
    model.eval()
    model.precision = "float32"
    for net in model.networks():
        net.to(memory_format=torch.contiguous_format)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes about the fixed spatial size (it is fixed: S)
            torch.onnx.export(model, (dummy,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME,) + OUTPUT_NAMES}
                              if dynamic_batch else None)
    finally:
        model.train(was_training)
        model.precision = precision
        if was_cl:
            for net in model.networks():
                net.to(memory_format=torch.channels_last)
    model = onnx.load_from_string(buf.getvalue())
    fold_pads(model)
    for key, value in metadata(detector).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "fastmsfd", __version__
    return model.SerializeToString()


def _is_channels_last(model) -> bool:
    p = next(model.teacher.parameters(), None)
    return p is not None and p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) \
        and not p.is_contiguous()


def export_onnx(detector, path: str | Path, dynamic_batch: bool = True, opset: int = OPSET) -> Path:
    """Write the ONNX graph atomically (a temp file renamed into place: never a partial file)."""
    data = onnx_bytes(detector, dynamic_batch, opset)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        tmp.write_bytes(data)
    return path
