"""Rectangular inputs: Detector(image_size=(H, W)) fits, predicts (H, W) heatmaps, exports, reloads and serves
with that geometry; the ONNX graph matches the torch path (1e-4 of the heatmap's magnitude)."""
import warnings

import pytest
import torch

from fastmsfd import Detector
from fastmsfd.config import NetworkConfig

from .serve_fixtures import brick_crops

HW = (64, 96)


@pytest.fixture(scope="module")
def rect():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Detector(image_size=HW, runtime="torch", global_layer="auto").fit(
            brick_crops(16, size=120), epochs=1, batch_size=8, progress=False)


def test_rectangular_fit_predict_and_buffers(rect):
    assert rect.input_hw == HW and rect.image_size == HW and rect.map_mean.shape == HW
    pred = rect.predict(brick_crops(3, seed=4, size=100))
    assert pred.heatmaps.shape == (3, *HW) and torch.isfinite(pred.scores).all()
    assert pred.heatmap_at_input_size(0).shape == (100, 100)
    # the border statistics are those of a rectangle: the corners differ from the middle of the long side
    assert not torch.allclose(rect.map_std[0, 0], rect.map_std[HW[0] // 2, HW[1] // 2])


def test_rectangular_checkpoint_onnx_and_triton(rect, tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "rect.fastmsfd"
    rect.save(path)
    again = Detector.load(path, runtime="torch")
    assert again.image_size == HW
    x = brick_crops(4, seed=6, size=110)
    ref = rect.predict(x)
    assert torch.equal(again.predict(x).scores, ref.scores)
    ort = Detector.load(path, runtime="onnxruntime").predict(x)
    scale = ref.heatmaps.abs().max().item()
    assert (ort.heatmaps - ref.heatmaps).abs().max().item() <= 1e-4 * scale
    torch.testing.assert_close(ort.scores, ref.scores, rtol=1e-4, atol=1e-4)
    from fastmsfd.triton_repo import config_pbtxt

    assert "dims: [ 3, 64, 96 ]" in config_pbtxt("m", rect.input_hw, 1.0)


def test_image_size_forms_and_errors():
    assert NetworkConfig(image_size=[128, 128]).image_size == 128  # a square stays an int, as files have it
    assert NetworkConfig(image_size=[128, 64]).image_size == (128, 64)
    for bad in [(16, 64), (64,) * 3, 64.0, "64", True]:
        with pytest.raises(ValueError, match="image_size"):
            NetworkConfig(image_size=bad)


def test_cli_reads_height_x_width(tmp_path):
    import argparse

    from fastmsfd.cli import _image_size

    assert _image_size("256") == 256 and _image_size("512x192") == (512, 192)
    with pytest.raises(argparse.ArgumentTypeError, match="HEIGHTxWIDTH"):
        _image_size("big")


def test_extreme_aspect_and_mixed_sizes_in_one_batch(rect):
    import numpy as np

    thin = np.full((12, 240, 3), 128, np.uint8)      # 1:20
    tall = np.full((400, 20, 3), 90, np.uint8)       # 20:1
    square = brick_crops(1, seed=1, size=80)[0]
    pred = rect.predict([thin, tall, square])
    assert pred.sizes == [(12, 240), (400, 20), (80, 80)] and pred.heatmaps.shape == (3, *HW)
    assert torch.isfinite(pred.heatmaps).all() and torch.isfinite(pred.scores).all()
    assert [tuple(h.shape) for h in pred.heatmaps_at_input_size()] == pred.sizes
    alone = rect.predict([tall]).scores
    torch.testing.assert_close(alone, pred.scores[1:2], rtol=1e-5, atol=1e-5)  # batch-mates change nothing
