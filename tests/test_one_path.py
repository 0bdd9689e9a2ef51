"""There is one inference path: the model's forward (model.py). Its ONNX export, run in ONNX Runtime, gives every
output the model gives (tests/test_export.py's compare_outputs: heatmaps within 1e-4 of their magnitude, scores
and the score's parts within 1e-4, each peak on a maximum) on fresh random images, for every configuration the
other tests cover: the global branch on its own teacher, on the map's, or none; each density; tiles; rectangles
and letterboxing; other aggregations, up-samplings, blurs and top-k; raw heatmaps. Random networks with
fitted-looking statistics: the graph is checked, not the training."""
import warnings

import pytest
import torch

from fastmsfd import Detector
from fastmsfd.config import GeometrySettings, MapSettings, ScoreSettings

from .onnx_checks import run_exported
from .test_export import compare_outputs

pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

LITE2_BRANCH = ScoreSettings(global_image_size=64)
CONFIGS = {
    "defaults (Lite2 branch, nearest)": dict(score=LITE2_BRANCH),
    "branch on the map's teacher": dict(score=ScoreSettings(global_backbone=None)),
    "gaussian density": dict(score=ScoreSettings(global_backbone=None, global_density="gaussian")),
    "no global branch, raw map, maximum": dict(score=ScoreSettings(global_layer=None, score_topk=None),
                                               heatmap=MapSettings(map_norm=None)),
    "fine layers, max + blur": dict(layers=["stage2", "stage3", "stage4"], score=ScoreSettings(global_layer=None),
                                    heatmap=MapSettings(aggregate="max", blur_sigma=2.0)),
    "bilinear product": dict(layers=["stage3", "stage4"], score=ScoreSettings(global_layer=None),
                             heatmap=MapSettings(upsampling="bilinear", aggregate="product", alpha=0.0)),
    "rectangle, letterboxed": dict(image_size=(64, 96), geometry=GeometrySettings(resize="keep_aspect"),
                                   score=ScoreSettings(global_backbone=None)),
    "tiles with the Lite2 branch": dict(image_size=(96, 128), geometry=GeometrySettings(tile=64), score=LITE2_BRANCH),
    "heatmap stage2-6, score stage4-6": dict(layers=["stage2", "stage3", "stage4", "stage5", "stage6"],
                                             score=ScoreSettings(score_layers=["stage4", "stage5", "stage6"],
                                                                 global_backbone=None)),
    "tiles, score layers of their own": dict(image_size=(96, 128), geometry=GeometrySettings(tile=64),
                                             layers=["stage2", "stage3"],
                                             score=ScoreSettings(score_layers=["stage3"], global_layer=None)),
    "tiles, no branch": dict(image_size=(96, 128), geometry=GeometrySettings(tile=64, overlap=0.5),
                             score=ScoreSettings(global_layer=None)),
}


def _fitted_looking(det, g):
    """Statistics other than the identity, so that a graph that dropped one would differ."""
    model = det.model
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.layer_weights.copy_(torch.rand(len(model.layer_weights), generator=g) + 0.5)
        for name in ("map", "score_map") if model.score_index is not None else ("map",):
            getattr(model, f"{name}_mean").copy_(0.1 * torch.randn(model.map_mean.shape, generator=g))
            getattr(model, f"{name}_std").copy_(1 + 0.2 * torch.rand(model.map_std.shape, generator=g))
        if model.has_global:
            c = model.global_memory.shape[1]
            model.global_memory = torch.randn(7, c, generator=g)
            a = torch.randn(c, c, generator=g) / c ** 0.5
            model.global_mean.copy_(torch.randn(c, generator=g))
            model.global_precision.copy_(a @ a.T + torch.eye(c))
            model.score_stats.copy_(torch.tensor([0.3, 1.7, 2.0, 0.8]))
    det.reset_runtime()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_exported_graph_is_the_models_forward(name):
    kw = {"image_size": 64, **CONFIGS[name]}
    g = torch.Generator().manual_seed(abs(hash(name)) % 2 ** 31)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teachers
        det = Detector(weights="random", runtime="torch", **kw).eval()
    _fitted_looking(det, g)
    images = (torch.rand(3, 3, *det.input_hw, generator=g) * 255).to(torch.uint8)
    with torch.no_grad():
        want = det.model(images)
    got = run_exported(det, images)
    compare_outputs(got, want)
    assert torch.isnan(want.global_z).all() == (not det.model.has_global)
