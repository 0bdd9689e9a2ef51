"""One inference graph from images to (heatmap, score), for ONNX export and the ONNX Runtime / OpenVINO runtimes.

Input "images": uint8 (B, 3, S, S), RGB, already resized to the detector's image_size S (bilinear, antialiased:
what Detector.predict does; the ONNX metadata says so). Normalisation happens inside the graph. Outputs
"heatmap" (B, S, S) float32 and "score" (B,) float32: the same math as fastmsfd.ops.reference, with
the Gaussian up-sampling as two MatMuls by fixed matrices, and the heatmap standardised by the detector's border
statistics (map_norm="border") before the score. With tiles, the graph cuts the image into the detector's tiles,
standardises each tile's heatmap and stitches them (fastmsfd/tiling.py). The global branch runs its teacher (its
own, or the map's) on the whole image at the detector's global_hw, resized inside the graph where that differs
from the input. The batch dimension is dynamic.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from . import calibration, global_score, tiling
from ._version import __version__
from .checkpoint import GLOBAL_BUFFERS, atomic_path
from .onnx_passes import fold_pads
from .ops import reference

OPSET = 17
INPUT_NAME, OUTPUT_NAMES = "images", ("heatmap", "score")


class InferenceGraph(nn.Module):
    """The detector's inference as plain tensor ops (exportable): uint8 images -> heatmap, score."""

    def __init__(self, detector):
        super().__init__()
        maps, hw = detector.settings.map, detector.network_hw
        self.teacher, self.student = detector.teacher, detector.student
        self.global_teacher = detector.global_teacher  # None: the global layer is one of the teacher's
        self.global_renormalize = detector._global_renormalize
        if self.global_renormalize:
            for name in ("global_in_scale", "global_in_shift"):
                self.register_buffer(name, getattr(detector, name).detach().clone())
        self.register_buffer("mean", detector.mean.detach().clone() * 255.0)
        self.register_buffer("std", detector.std.detach().clone() * 255.0)
        with torch.no_grad():
            probe = detector.teacher(torch.zeros(1, 3, *hw, device=detector.device))
        self.map_index, self.global_index = list(detector._map_index), detector._global_index
        shapes = [tuple(probe[i].shape[-2:]) for i in self.map_index]
        sigmas = reference.default_sigmas(shapes, hw, maps.sigma_factor)
        # the plan every backend shares: up-sampling matrices (blur folded in for sum/mean), post-blur, top-k
        plan = reference.plan(shapes, hw, detector.layer_weights.tolist(), sigmas, [None] * len(shapes),
                              maps.aggregate, detector.settings.score.score_topk, maps.blur_sigma,
                              detector.device, maps.upsampling)
        for i, (gr, gc) in enumerate(zip(plan.g_rows, plan.g_cols)):
            self.register_buffer(f"g_rows{i}", gr.clone())
            self.register_buffer(f"g_cols{i}", gc.clone())
        self.post_blur = plan.blur_rows is not None
        if self.post_blur:
            self.register_buffer("blur_rows", plan.blur_rows.clone())
            self.register_buffer("blur_cols", plan.blur_cols.clone())
        self.mode, self.weights, self.topk = plan.mode, list(plan.weights), plan.topk
        self.alpha, self.beta = maps.alpha, maps.beta
        self.map_norm = bool(maps.map_norm)
        if self.map_norm:
            self.register_buffer("map_mean", detector.map_mean.detach().clone())
            self.register_buffer("map_std", detector.map_std.detach().clone())
        self.grid = detector.grid  # tiles: cut and stitched by fixed slices and pads (tiling.py)
        if self.grid is not None:
            self.register_buffer("tile_weights", detector.tile_weights.detach().clone())
        self.global_view = detector._view_resized  # the branch's whole-image view is resized
        if self.global_view:
            for name in ("view_rows", "view_cols"):
                self.register_buffer(name, getattr(detector, name).detach().clone())
        if self.global_index is not None:
            self.global_weight = detector.settings.score.global_weight
            self.global_density = detector.settings.score.global_density
            for name in GLOBAL_BUFFERS[self.global_density]:  # only what this density reads
                self.register_buffer(name, getattr(detector, name).detach().clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the reference math itself (fastmsfd/ops/reference.py), traced: one definition for every backend
        x = (images.float() - self.mean) / self.std
        whole = x
        if self.grid is not None:
            x = tiling.cut(x, self.grid)
        t_all = self.teacher(x)
        maps = [reference.upsample(reference.combined_distance(t_all[j], s, self.alpha, self.beta),
                                   getattr(self, f"g_rows{i}"), getattr(self, f"g_cols{i}"))
                for i, (j, s) in enumerate(zip(self.map_index, self.student(x)))]
        heat = reference.aggregate(maps, self.weights, self.mode)
        if self.post_blur:
            heat = reference.upsample(heat, self.blur_rows, self.blur_cols)
        if self.map_norm:
            heat = calibration.standardize(heat, self.map_mean, self.map_std)
        if self.grid is not None:
            heat = tiling.stitch(heat, self.grid, self.tile_weights)
        score = reference.image_score(heat, self.topk)
        if self.global_index is not None:
            if self.grid is None and not self.global_view and self.global_teacher is None:
                g = global_score.pooled_layers(t_all, self.global_index)
            else:  # the whole image at global_hw (Detector.whole_image) through its teacher
                view = tiling.whole_view(whole, self.view_rows, self.view_cols) if self.global_view else whole
                if self.global_renormalize:  # only a global teacher of its own has another normalisation
                    view = view * self.global_in_scale + self.global_in_shift
                net = self.teacher if self.global_teacher is None else self.global_teacher
                g = global_score.pooled_layers(net(view), self.global_index)
            g = global_score.distance(g, self.global_density, getattr(self, "global_mean", None),
                                      getattr(self, "global_precision", None), getattr(self, "global_memory", None))
            score = global_score.fuse(score, g, self.score_stats, self.global_weight)
        return heat, score


def metadata(detector) -> dict[str, str]:
    """What a serving stack needs to feed the graph, stored in the ONNX file's metadata_props."""
    H, W = detector.input_hw
    net = detector.settings.network
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
        "tiles": "none" if detector.grid is None else
                 f"{len(detector.grid)} tiles of {detector.network_hw[0]}x{detector.network_hw[1]} inside the graph",
        "outputs": "heatmap: float32 (batch, H, W); score: float32 (batch,); anomalous when score > threshold",
        "threshold": repr(float(detector.threshold)),
        "config": json.dumps({k: v for k, v in detector.config.items()}, default=str),
    }


def onnx_bytes(detector, dynamic_batch: bool = True, opset: int = OPSET) -> bytes:
    """Export the detector's inference graph to ONNX in memory (float32, NCHW)."""
    import onnx

    graph = InferenceGraph(detector).eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(2, 3, *detector.input_hw, dtype=torch.uint8, device=detector.device)
    buf = io.BytesIO()
    was_cl = _is_channels_last(detector)
    for net in detector.networks():
        net.to(memory_format=torch.contiguous_format)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes about the fixed spatial size (it is fixed: S)
            torch.onnx.export(graph, (dummy,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, "heatmap": {0: "batch"},
                                            "score": {0: "batch"}} if dynamic_batch else None)
    finally:
        if was_cl:
            for net in detector.networks():
                net.to(memory_format=torch.channels_last)
    model = onnx.load_from_string(buf.getvalue())
    fold_pads(model)
    for key, value in metadata(detector).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "fastmsfd", __version__
    return model.SerializeToString()


def _is_channels_last(detector) -> bool:
    p = next(detector.teacher.parameters(), None)
    return p is not None and p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) \
        and not p.is_contiguous()


def export_onnx(detector, path: str | Path, dynamic_batch: bool = True, opset: int = OPSET) -> Path:
    """Write the ONNX graph atomically (a temp file renamed into place: never a partial file)."""
    data = onnx_bytes(detector, dynamic_batch, opset)
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        tmp.write_bytes(data)
    return path
