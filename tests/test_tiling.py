"""Tiles (fastmsfd/tiling.py): the grid covers the image, stitching adds no seams, and a tiled detector fits,
predicts, exports and reloads with its tiles.

The seam test fits the ImageNet Lite0 teacher on gravel (normal texture only) and compares the heatmap's steps
between neighbouring pixels across the lines where tiles begin or end with the steps across lines far from any
seam: a one-sample t-test on the per-image log ratio must not reject "no difference" (p > 0.01), while the same
tiles stitched naively (raw tile heatmaps side by side, no overlap) must be rejected (p < 0.01): the test can see
seams when there are some.
"""
import warnings

import numpy as np
import pytest
import torch

from fastmsfd import Detector, tiling
from fastmsfd.demo_data import load_texture

CANVAS, TILE = (128, 192), 64


@pytest.mark.parametrize("canvas,tile,overlap", [((200, 300), (64, 64), 0.25), ((64, 64), (64, 64), 0.5),
                                                 ((96, 500), (96, 128), 0.0), ((130, 70), (64, 32), 0.5)])
def test_grid_covers_the_image_and_weights_sum_to_one(canvas, tile, overlap):
    grid = tiling.TileGrid(canvas, tile, overlap)
    for starts, length, t in ((grid.rows, canvas[0], tile[0]), (grid.cols, canvas[1], tile[1])):
        assert starts[0] == 0 and starts[-1] + t == length
        assert all(t - (b - a) >= overlap * t - 1 for a, b in zip(starts, starts[1:]))  # at least the overlap
    x = torch.rand(2, 1, *canvas)
    w = grid.weights()
    assert w.shape == (len(grid), *tile) and (w >= 0).all()
    ones = tiling.stitch(torch.ones(len(grid) * 2, *tile), grid, w)
    torch.testing.assert_close(ones, torch.ones(2, *canvas), rtol=0, atol=1e-6)
    # cutting then stitching an image gives it back (every pixel is a weighted mean of copies of itself)
    back = tiling.stitch(tiling.cut(x, grid)[:, 0], grid, w)
    torch.testing.assert_close(back, x[:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("canvas,size", [((1280, 512), (256, 256)), ((96, 96), (64, 64)), ((130, 70), (64, 32))])
def test_whole_view_is_antialiased_bilinear_and_random_crops(canvas, size):
    x = torch.rand(2, 3, *canvas)
    view = tiling.whole_view(x, *tiling.view_matrices(canvas, size))
    ref = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(view, ref, rtol=0, atol=1e-5)
    u8 = (torch.rand(40, 3, 80, 120) * 255).to(torch.uint8)
    a = tiling.random_crops(u8, (64, 64), torch.Generator().manual_seed(1))
    b = tiling.random_crops(u8, (64, 64), torch.Generator().manual_seed(1))
    assert a.shape == (40, 3, 64, 64) and torch.equal(a, b)                       # seeded: reproducible
    assert not torch.equal(a, u8[:, :, :64, :64])                                 # not always the same corner
    assert tiling.random_crops(a, (64, 64), torch.Generator()) is a               # tiles pass unchanged


def _gravel(n: int, seed: int, right_half: bool) -> torch.Tensor:
    src = load_texture("gravel")
    rng, half = np.random.default_rng(seed), src.shape[1] // 2
    x0, x1 = (half, src.shape[1]) if right_half else (0, half)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, src.shape[0] - CANVAS[0] + 1), rng.integers(x0, x1 - CANVAS[1] + 1)
        out.append(src[y:y + CANVAS[0], x:x + CANVAS[1]])
    return torch.from_numpy((np.stack(out) * 255).round().astype(np.uint8))[:, None].repeat(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiled():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Detector(image_size=CANVAS, tile=TILE, overlap=0.25, layers=["stage2", "stage3"],
                        global_layer="stage4", runtime="torch").fit(_gravel(48, 0, False), epochs=4, progress=False)


def _seam_log_ratios(heat: torch.Tensor, grid: tiling.TileGrid, margin: int = 8, clear: int = 6) -> np.ndarray:
    """Per image: log(mean |step| across seam lines / mean |step| across lines > clear px from any seam),
    away from the image border."""
    H, W = heat.shape[-2:]
    rows, cols = grid.seams()
    lines_r = sorted({r for r in rows} | {r + 1 for r in rows})   # the step into and out of each seam line
    lines_c = sorted({c for c in cols} | {c + 1 for c in cols})

    def far(lines, n):
        return [i for i in range(margin, n - margin) if all(abs(i - k) > clear for k in lines)]

    dv = (heat[:, 1:, margin:-margin] - heat[:, :-1, margin:-margin]).abs()   # step from row i-1 to row i
    dh = (heat[:, margin:-margin, 1:] - heat[:, margin:-margin, :-1]).abs()

    def steps(rs, cs):
        return torch.cat([dv[:, [i - 1 for i in rs]].flatten(1), dh[:, :, [i - 1 for i in cs]].flatten(1)], 1)

    return torch.log(steps(lines_r, lines_c).mean(1) / steps(far(lines_r, H), far(lines_c, W)).mean(1)).numpy()


def test_no_seams_on_normal_texture(tiled):
    from scipy import stats

    test = tiled.model.normalize(_gravel(24, 1, True))    # normal gravel the detector was not fitted on
    with torch.no_grad():
        heat = tiled.model.map_and_global(test)[0]
        blended = _seam_log_ratios(heat, tiled.model.grid)
        # the same tiles side by side without overlap, raw: what stitching without care gives
        naive_grid = tiling.TileGrid(CANVAS, (TILE, TILE), 0.0)
        raw = tiled.model.raw_heatmaps(*tiled.model.features(tiling.cut(test, naive_grid)))[0]
        naive = _seam_log_ratios(tiling.stitch(raw, naive_grid, torch.ones(len(naive_grid), TILE, TILE)),
                                 naive_grid)
    print(f"\nseam log ratio: stitched {blended.mean():.3f} (p {stats.ttest_1samp(blended, 0).pvalue:.2g}), "
          f"naive {naive.mean():.3f} (p {stats.ttest_1samp(naive, 0).pvalue:.2g})")
    assert len(tiled.model.grid.seams()[0]) > 0 and len(tiled.model.grid.seams()[1]) > 0
    assert stats.ttest_1samp(blended, 0).pvalue > 0.01 and abs(blended.mean()) < 0.1
    assert stats.ttest_1samp(naive, 0).pvalue < 0.01 and naive.mean() > 0.5


def test_tiled_detector_buffers_global_branch_and_small_images(tiled):
    assert tiled.model.network_hw == (TILE, TILE) and tiled.input_hw == CANVAS and len(tiled.model.grid) == 12
    assert tiled.model.map_mean.shape == (TILE, TILE)                # border statistics of tiles
    assert tiled.model.global_hw == CANVAS   # the default branch's view (192 side) never exceeds the input
    x = tiled.model.normalize(_gravel(2, 3, True))
    with torch.no_grad():
        heat, map_score, glob = tiled.model.map_and_global(x)
        view = torch.nn.functional.interpolate(x, size=tiled.model.global_hw, mode="bilinear", antialias=True)
        view = view.contiguous(memory_format=torch.channels_last)
        whole = tiled.model.global_distance(tiled.model.pooled_global(view))
    assert heat.shape == (2, *CANVAS)
    torch.testing.assert_close(glob, whole, rtol=1e-4, atol=1e-4)  # the global branch sees the whole image
    small = np.full((40, 50, 3), 120, np.uint8)
    with pytest.warns(UserWarning, match="smaller than one tile"):
        pred = tiled.predict([small, np.full((300, 20, 3), 90, np.uint8)])   # mixed sizes, 15:1
    assert pred.heatmaps.shape == (2, *CANVAS) and torch.isfinite(pred.scores).all()
    assert [tuple(h.shape) for h in pred.heatmaps_at_input_size()] == [(40, 50), (300, 20)]


def test_tiled_checkpoint_and_onnx_match_torch(tiled, tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "tiled.fastmsfd"
    tiled.save(path)
    x = _gravel(3, 5, True)
    ref = tiled.predict(x)
    again = Detector.load(path, runtime="torch")
    assert again.settings.geometry.tile == TILE and again.settings.geometry.overlap == 0.25
    assert torch.equal(again.predict(x).scores, ref.scores)
    ort = Detector.load(path, runtime="onnxruntime").predict(x)
    scale = ref.heatmaps.abs().max().item()
    assert (ort.heatmaps - ref.heatmaps).abs().max().item() <= 1e-4 * scale
    torch.testing.assert_close(ort.scores, ref.scores, rtol=1e-4, atol=1e-4)
    from fastmsfd.triton_repo import write_triton_repository

    config = (write_triton_repository(tiled, tmp_path / "repo") / "config.pbtxt").read_text()
    assert "dims: [ 3, 128, 192 ]" in config and "12 tiles of 64x64 inside the graph" in config


def test_tile_larger_than_image_size_runs_whole():
    with pytest.warns(UserWarning, match="larger than image_size"):
        det = Detector(image_size=64, tile=96, weights="random", layers=["stage2"], global_layer=None)
    assert det.model.grid is None and det.model.network_hw == (64, 64) and det.model.map_mean.shape == (64, 64)


def test_tiled_detector_without_global_branch_builds_no_whole_image_view():
    det = Detector(image_size=CANVAS, tile=TILE, weights="random", layers=["stage2"], global_layer=None).eval()
    assert det.model.grid is not None and det.model.global_hw == CANVAS and not det.model.view_resized
    # no resize matrices for a branch it lacks
    assert det.model.view_rows.numel() == 1 and det.model.view_cols.numel() == 1
    from tests.onnx_checks import run_exported

    images = _gravel(2, 7, True)
    heat, score = run_exported(det, images)[:2]
    want = det.predict(images)
    assert heat.shape == (2, *CANVAS)
    torch.testing.assert_close(score, want.scores, rtol=1e-4, atol=1e-4)


def test_every_op_backend_stitches_the_same_heatmap(tiled):
    """Tiles through each op backend available here (reference, cpp; triton under the interpreter) against the
    reference: heatmaps within 1e-4 of their scale, scores within 1e-4."""
    from fastmsfd import ops

    x = tiled.model.normalize(_gravel(2, 7, True))
    available = [b for b, why in ops.backend_status("cpu").items() if why is None]
    assert "reference" in available and len(available) >= 2
    before = tiled.model.ops_backend
    try:
        out = {}
        for backend in available:
            tiled.model.ops_backend = backend
            with torch.no_grad():
                out[backend] = tiled.model.map_and_global(x)[:2]
    finally:
        tiled.model.ops_backend = before
    ref_heat, ref_score = out["reference"]
    for backend, (heat, score) in out.items():
        assert (heat - ref_heat).abs().max().item() <= 1e-4 * ref_heat.abs().max().item(), backend
        torch.testing.assert_close(score, ref_score, rtol=1e-4, atol=1e-4)


def test_held_out_tiles_are_capped_and_seeded():
    from fastmsfd.fit import MAX_HELD_OUT_TILES, held_out_tiles

    u8 = (torch.rand(30, 3, 96, 96) * 255).to(torch.uint8)
    grid = tiling.TileGrid((96, 96), (32, 32), 0.0)                     # 9 tiles an image: 270 in all
    a, b = held_out_tiles(u8, grid, 0), held_out_tiles(u8, grid, 0)
    assert a.shape == (MAX_HELD_OUT_TILES, 3, 32, 32) and torch.equal(a, b)
    assert held_out_tiles(u8[:5], grid, 0).shape[0] == 45              # under the cap: every tile
