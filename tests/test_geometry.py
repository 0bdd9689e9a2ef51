"""Rectangular inputs: Detector(image_size=(H, W)) fits, predicts (H, W) heatmaps, exports, reloads and serves
with that geometry; the ONNX graph matches the torch path (1e-4 of the heatmap's magnitude)."""
import warnings

import numpy as np
import pytest
import torch

from fastmsfd import Detector
from fastmsfd.config import GeometrySettings

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
    assert rect.input_hw == HW and rect.settings.geometry.image_size == HW and rect.model.map_mean.shape == HW
    pred = rect.predict(brick_crops(3, seed=4, size=100))
    assert pred.heatmaps.shape == (3, *HW) and torch.isfinite(pred.scores).all()
    assert pred.heatmap_at_input_size(0).shape == (100, 100)
    # the border statistics are those of a rectangle: the corners differ from the middle of the long side
    assert not torch.allclose(rect.model.map_std[0, 0], rect.model.map_std[HW[0] // 2, HW[1] // 2])


def test_rectangular_checkpoint_onnx_and_triton(rect, tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "rect.fastmsfd"
    rect.save(path)
    again = Detector.load(path, runtime="torch")
    assert again.settings.geometry.image_size == HW
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
    assert GeometrySettings(image_size=[128, 128]).image_size == 128  # a square stays an int, as files have it
    assert GeometrySettings(image_size=[128, 64]).image_size == (128, 64)
    for bad in [(16, 64), (64,) * 3, 64.0, "64", True]:
        with pytest.raises(ValueError, match="image_size"):
            GeometrySettings(image_size=bad)


def test_cli_reads_height_x_width(tmp_path):
    import argparse

    from fastmsfd.cli import _image_size

    assert _image_size("256") == 256 and _image_size("512x192") == (512, 192) and _image_size("auto") == "auto"
    from fastmsfd.cli import build_parser
    from fastmsfd.commands import build_detector

    args = build_parser().parse_args(["fit", "data", "-o", "m.fastmsfd", "--image-size", "128x256", "--tile", "64",
                                      "--overlap", "0.5", "--resize", "keep_aspect", "--weights", "random",
                                      "--layers", "stage2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = build_detector(args)
    net = det.settings.geometry
    assert (net.image_size, net.tile, net.overlap, net.resize) == ((128, 256), 64, 0.5, "keep_aspect")
    assert len(det.model.grid) == 3 * 7
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


# ---- resize="keep_aspect", image_size="auto", sizes rounded to the stride (fastmsfd/geometry.py) -------------

def test_content_box_and_edge_padding():
    from fastmsfd.geometry import content_box, pad_edges

    assert content_box((50, 200), (96, 160), "squash") == (0, 0, 96, 160)
    assert content_box((50, 200), (96, 160), "keep_aspect") == (28, 0, 40, 160)    # 4:1 inside 96x160, centred
    assert content_box((300, 20), (64, 96), "keep_aspect") == (0, 46, 64, 4)
    assert content_box((12, 240), (64, 96), "keep_aspect")[2:] == (5, 96)         # 1:20 keeps at least a pixel row
    img = torch.arange(6, dtype=torch.uint8).view(1, 2, 3)
    out = pad_edges(img, (1, 2, 2, 3), (4, 7))
    assert torch.equal(out[:, 1:3, 2:5], img)                                     # the image, unchanged
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 3], out[0, 2])  # rows repeat the edge rows
    assert (out[0, :, 0] == out[0, :, 2]).all() and (out[0, :, 6] == out[0, :, 4]).all()


def test_keep_aspect_fit_predict_evaluate(tmp_path):
    import numpy as np
    from PIL import Image

    from fastmsfd.data import resize_u8
    from fastmsfd.datasets import folders_dataset
    from fastmsfd.evaluate import evaluate

    wide = [np.concatenate([c, c], axis=1) for c in brick_crops(12, size=64)]     # 64x128 parts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=96, resize="keep_aspect", layers=["stage2", "stage3"], global_layer=None,
                       runtime="torch").fit(wide, epochs=1, progress=False)
    canvas = resize_u8(torch.from_numpy(wide[0]).permute(2, 0, 1), 96, "keep_aspect")
    assert torch.equal(canvas[:, :24], canvas[:, 24:25].expand(-1, 24, -1))      # padding repeats the edge row
    pred = det.predict(wide[:2])
    assert pred.boxes == [(24, 0, 48, 96)] * 2 and pred.heatmap_of_image(0).shape == (48, 96)
    assert pred.heatmap_at_input_size(0).shape == (64, 128)
    from fastmsfd.export import metadata
    from fastmsfd.triton_repo import write_triton_repository

    assert metadata(det)["resize_policy"] == "keep_aspect"                      # serving stacks are told
    assert "aspect kept" in (write_triton_repository(det, tmp_path / "repo") / "config.pbtxt").read_text()
    # evaluation scores the image's part only: heatmaps and masks at 48x96
    good, bad, masks = (tmp_path / d for d in ("good", "bad", "masks"))
    for d in (good, bad, masks):
        d.mkdir()
    for i, im in enumerate(wide[:3]):
        Image.fromarray(im).save(good / f"g{i}.png")
        Image.fromarray(im).save(bad / f"b{i}.png")
        m = np.zeros((64, 128), np.uint8)
        m[20:30, 40:60] = 255
        Image.fromarray(m).save(masks / f"b{i}.png")
    result = evaluate(det, folders_dataset(good, bad, masks, train=good))
    assert result.heatmaps.shape == (6, 48, 96) and result.masks.shape == (6, 48, 96)
    from fastmsfd.batch import score_files

    score_files(det, [good / "g0.png"], overlay_dir=tmp_path / "overlays")       # fastmsfd predict's overlays
    assert Image.open(tmp_path / "overlays" / "g0.png").size == (2 * 96, 48)    # image | overlay, no padding
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks / "b0.png")           # a mask of another aspect
    with pytest.raises(Exception, match="b0.png: mask is 64x64 but its image"):
        evaluate(det, folders_dataset(good, bad, masks, train=good))


def test_auto_image_size_follows_the_training_images(capsys):
    from fastmsfd.geometry import auto_image_size

    assert auto_image_size([(60, 180)] * 3 + [(500, 500)], 32) == (160, 448)       # the median aspect: 1:3
    assert auto_image_size([(1260, 500)], 32) == (416, 160)                         # KolektorSDD's 2.5:1
    tall = [np.concatenate([c, c, c]) for c in brick_crops(6, size=40)]  # 120x40 parts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size="auto", layers=["stage2"], global_layer=None, runtime="torch",
                       weights="random").fit(tall, epochs=1, progress=True)
    assert det.model.stride == 4 and det.input_hw == (444, 148) and det.model.map_mean.shape == (444, 148)  # 3:1, x4
    assert det.info["geometry"]["n_images"] == 6
    assert "image_size auto -> 444x148" in capsys.readouterr().out
    assert det.predict(tall[:1]).heatmaps.shape == (1, 444, 148)
    from fastmsfd.datasets import normal_image_sizes

    with warnings.catch_warnings():       # a generator is read once for the sizes, once for the pixels
        warnings.simplefilter("ignore")
        again = Detector(image_size="auto", layers=["stage2"], global_layer=None, runtime="torch",
                         weights="random").fit((t for t in tall), epochs=1, progress=False)
    assert again.input_hw == (444, 148) and again.info["n_train"] + again.info["n_val"] == 6
    loader = torch.utils.data.DataLoader(torch.from_numpy(np.stack(tall)).permute(0, 3, 1, 2), batch_size=4)
    assert normal_image_sizes(loader) == [(120, 40)] * 4          # a DataLoader: its first batch's sizes


def test_sizes_round_to_the_stride_with_a_warning():
    imgs = brick_crops(6, size=72)
    det = Detector(image_size=(70, 100), layers=["stage2", "stage3"], global_layer=None, weights="random")
    assert det.model.stride == 8
    with pytest.warns(UserWarning, match=r"image_size 70x100 is not a multiple of the network's stride 8: "
                                         r"using 72x104"):
        det.fit(imgs, epochs=1, progress=False)
    assert det.input_hw == (72, 104) and det.model.map_mean.shape == (72, 104)
    tiled = Detector(image_size=(128, 128), tile=60, layers=["stage2", "stage3"], global_layer=None,
                     weights="random")
    with pytest.warns(UserWarning, match="tile 60x60 .* using 64x64"):
        tiled.fit(imgs, epochs=1, progress=False)
    assert tiled.model.network_hw == (64, 64) and tiled.model.map_mean.shape == (64, 64)


def test_geometry_settings_are_validated():
    for bad in [dict(resize="crop"), dict(tile=16), dict(overlap=0.9), dict(overlap=-0.1)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            GeometrySettings(**bad)
