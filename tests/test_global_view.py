"""global_image_size: the global branch sees the whole image at a size of its own, resized inside every runtime
(antialiased bilinear as two matrix products, tiling.view_matrices). Checked against torch's antialiased
interpolate (1e-4 of the score), the exported graph (float32: 1e-4 of the heatmap's and the score's size),
ONNX Runtime and checkpoints; bad sizes are refused by name."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from fastmsfd import Detector
from fastmsfd.cli import build_parser

from .serve_fixtures import brick_crops, defective_crop

HW = (192, 128)


def _detector(**kwargs) -> Detector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Detector(image_size=HW, runtime="torch", weights="random", **kwargs).eval()


def _u8(n: int, seed: int) -> torch.Tensor:
    return (torch.rand(n, 3, *HW, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


@pytest.mark.parametrize("size,tile,want", [
    (None, None, HW),            # the networks' input
    (None, 64, (64, 64)),        # with tiles: the tile's size, as before the setting existed
    (96, None, (128, 64)),       # about 96 x 96 pixels at the input's 3:2 aspect, sides a multiple of 32
    (96, 64, (128, 64)),
    ((64, 64), None, (64, 64)),  # (height, width): exactly, a square too
])
def test_the_view_size(size, tile, want):
    det = _detector(global_image_size=size, tile=tile)
    assert det.model.global_hw == want
    assert det.settings.score.global_image_size == (tuple(size) if isinstance(size, tuple) else size)


def test_auto_is_the_lite2_branch_default_and_never_exceeds_the_input():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mtd_like = Detector(image_size=(288, 224), weights="random")
        unmeasured = Detector(image_size=(288, 224), weights="random", global_backbone=None)
    assert mtd_like.settings.score.global_image_size == 192
    assert mtd_like.model.global_hw == (224, 160)   # about 192 x 192 pixels at 9:7, sides a multiple of 32
    assert unmeasured.model.global_hw == (288, 224)  # the map's teacher serves the branch: at its input
    assert _detector().model.global_hw == HW  # 192 x 192 pixels is more than the 192 x 128 input: no upsampling


def test_a_size_off_the_stride_is_rounded_with_a_warning_and_bad_sizes_are_refused():
    with pytest.warns(UserWarning, match=r"global_image_size 100x64 .* using 96x64"):
        det = Detector(image_size=HW, weights="random", global_image_size=(100, 64))
    assert det.model.global_hw == (96, 64) and det.settings.score.global_image_size == (96, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the size used is kept: no second warning when fit sets the geometry
        det.model.set_geometry((224, 160))
    assert det.model.global_hw == (96, 64)
    for bad in (16, 0, "big", (64, 64, 64), (64, 8), True):
        with pytest.raises(ValueError, match="global_image_size"):
            Detector(image_size=HW, weights="random", global_image_size=bad)
    parse = build_parser().parse_args
    assert parse(["fit", "data", "-o", "m.fastmsfd", "--global-image-size", "160"]).global_image_size == 160
    assert parse(["fit", "data", "-o", "m.fastmsfd", "--global-image-size", "192x128"]).global_image_size == (192, 128)
    assert parse(["fit", "data", "-o", "m.fastmsfd", "--global-image-size", "none"]).global_image_size is None


@pytest.mark.parametrize("global_backbone", ["efficientnet_lite2", None])
@pytest.mark.parametrize("tile", [None, 64])
def test_the_branch_sees_the_resized_image_in_torch_and_in_the_graph(global_backbone, tile):
    """The map teacher's features are not reused when the branch sees another size (global_backbone=None)."""
    from tests.onnx_checks import run_exported

    det = _detector(global_image_size=96, tile=tile, global_backbone=global_backbone)
    u8 = _u8(2, seed=7 if tile else 8)
    x = det.model.normalize(u8)
    with torch.no_grad():
        heat, map_score, glob = det.model.map_and_global(x)
        view = F.interpolate(x, size=(128, 64), mode="bilinear", antialias=True, align_corners=False)
        want = det.model.global_distance(det.model.pooled_global(view.contiguous(memory_format=torch.channels_last)))
        whole = det.model.global_distance(det.model.pooled_global(x))
        torch.testing.assert_close(glob, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        if tile is None:  # the pooled features all_features gives beside the map's are the view's too
            g = det.model.all_features(x)[2]
            torch.testing.assert_close(det.model.global_distance(g), want, rtol=1e-4,
                                       atol=1e-4 * want.abs().max().item())
        assert (glob - whole).abs().max() > 1e-2 * want.abs().max()  # the size matters: not the unresized image
        ref_heat, ref_score = det(u8.float() / 255)
    g_heat, g_score = run_exported(det, u8)[:2]
    torch.testing.assert_close(g_heat, ref_heat, rtol=1e-4, atol=1e-4 * ref_heat.abs().max().item())
    torch.testing.assert_close(g_score, ref_score, rtol=1e-4, atol=1e-4 * ref_score.abs().max().item())


def test_fit_checkpoint_and_onnx_runtime_use_the_view(tmp_path):
    """Fit measures the branch's statistics on what it sees at inference: the whole image at global_hw."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=(96, 64), runtime="torch", layers=("stage2", "stage3"), global_image_size=(64, 32))
        seen = []
        hook = det.model.global_teacher.backbone.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
        det.fit(brick_crops(16), epochs=1, batch_size=8, progress=False)
        hook.remove()
    assert seen and {tuple(s[-2:]) for s in seen} == {(64, 32)}
    path = tmp_path / "view.fastmsfd"
    det.save(path)
    x = brick_crops(3, seed=9) + [defective_crop()]
    ref = det.predict(x)
    again = Detector.load(path, runtime="torch")
    assert again.model.global_hw == (64, 32) and again.settings.score.global_image_size == (64, 32)
    assert torch.equal(again.predict(x).scores, ref.scores)
    ort = Detector.load(path, runtime="onnxruntime").predict(x)
    assert (ort.heatmaps - ref.heatmaps).abs().max().item() <= 1e-4 * ref.heatmaps.abs().max().item()
    torch.testing.assert_close(ort.scores, ref.scores, rtol=1e-4, atol=1e-4)


def test_files_without_the_setting_keep_the_map_input(tmp_path):
    """Files written before global_image_size existed: the branch sees the networks' input, as it did."""
    from fastmsfd.checkpoint import load_checkpoint, save_checkpoint

    det = _detector(global_image_size=None)
    det.calibrate(brick_crops(4))
    path = tmp_path / "before.fastmsfd"
    det.save(path)
    tensors, config = load_checkpoint(path)
    assert "global_image_size" in config
    config.pop("global_image_size")
    save_checkpoint(path, tensors, config)
    old = Detector.load(path, runtime="torch")
    assert old.settings.score.global_image_size is None and old.model.global_hw == HW
    x = brick_crops(2, seed=3)
    assert torch.equal(old.predict(x).scores, det.predict(x).scores)
