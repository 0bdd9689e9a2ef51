"""Heatmap layers and score layers apart (ScoreSettings.score_layers): fine layers draw the heatmap, deep layers
give the map score. Fit measures each map's border statistics; save, load, the ONNX graph and the CLI keep both
(format version 3). Tolerances: float32, 1e-5 between two runs of the same torch model, tests/test_export.py's
compare_outputs for the graph."""
import numpy as np
import torch

from fastmsfd import Detector
from fastmsfd.checkpoint import load_checkpoint
from fastmsfd.cli import main
from fastmsfd.config import ScoreSettings

from .onnx_checks import run_exported
from .serve_fixtures import brick_crops, defective_crop
from .test_export import compare_outputs

SIZE = 64


def _u8(images):
    u8 = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in images])
    return torch.nn.functional.interpolate(u8.float(), size=(SIZE, SIZE), mode="bilinear",
                                           antialias=True).round().clamp(0, 255).to(torch.uint8)


def test_fit_save_load_and_export_keep_both_layer_sets(tmp_path):
    det = Detector(layers=["stage2", "stage3", "stage4"], image_size=SIZE, runtime="torch",
                   score=ScoreSettings(score_layers=["stage4"], global_layer=None))
    det.fit(brick_crops(12), epochs=1, batch_size=4, progress=False)
    model = det.model
    assert model.map_layers == ("stage2", "stage3", "stage4") and len(model.layer_weights) == 3
    assert not torch.equal(model.score_map_std, torch.ones_like(model.score_map_std))  # measured by fit
    x = _u8(brick_crops(3, seed=9) + [defective_crop()])
    with torch.no_grad():
        out = model(x)
        heat, score, score_map = model.heatmaps(*model.features(model.normalize(x)))
    from fastmsfd.ops.reference import image_score

    torch.testing.assert_close(out.heatmap, heat)
    torch.testing.assert_close(out.score, score)  # no global branch: the map score is the image score
    torch.testing.assert_close(score, image_score(score_map, det.settings.score.score_topk))
    assert not torch.allclose(image_score(heat, det.settings.score.score_topk), score)  # stage4's, not the heatmap's
    path = tmp_path / "split.fastmsfd"
    det.save(path)
    assert load_checkpoint(path, with_version=True)[2] == 3
    again = Detector.load(path, runtime="torch")
    assert again.settings.score.score_layers == ("stage4",) and "score_layers=['stage4']" in repr(again)
    with torch.no_grad():
        got = again.model(x)
    torch.testing.assert_close(got.score, out.score, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.heatmap, out.heatmap, rtol=1e-5, atol=1e-5)
    compare_outputs(run_exported(again, x), out)


def test_cli_fits_score_layers(tmp_path):
    from PIL import Image

    folder = tmp_path / "good"
    folder.mkdir()
    for i, a in enumerate(brick_crops(8)):
        Image.fromarray(a).save(folder / f"{i}.png")
    out = tmp_path / "m.fastmsfd"
    assert main(["-q", "fit", str(folder), "-o", str(out), "--image-size", str(SIZE), "--epochs", "1",
                 "--layers", "stage2,stage3", "--score-layers", "stage3", "--global-layer", "none"]) == 0
    det = Detector.load(out, runtime="torch")
    assert det.layers == ("stage2", "stage3") and det.settings.score.score_layers == ("stage3",)
    assert np.isfinite(det.predict(brick_crops(2, seed=4)).scores.numpy()).all()


def test_fit_on_fewer_than_ten_images_says_how_many_would_do():
    import pytest

    det = Detector(layers=["stage2"], image_size=SIZE, runtime="torch", score=ScoreSettings(global_layer=None))
    with pytest.warns(UserWarning, match=r"8 normal images.*fewer than 10\. 10 or more would do") as record:
        det.fit(brick_crops(8), epochs=1, batch_size=4, progress=False)
    assert any(w.filename == __file__ for w in record if "normal images" in str(w.message))  # the caller's line
