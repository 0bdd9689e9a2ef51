"""Detector: fit on every source kind, predict on every input kind, calibrate, save/load round trip,
checkpoint corruption and atomic writes."""
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastmsfd import Detector
from fastmsfd.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from fastmsfd.errors import CheckpointError, DataError

SIZE = 64


def _images(n, seed=0, size=48):
    """Smooth random textures (normal) as uint8 (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (x.clamp(0, 1) * 255).to(torch.uint8)


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    # the map path alone (tests/test_global_branch.py covers the fused score)
    return Detector(image_size=SIZE, global_layer=None).fit(_images(12), epochs=2, batch_size=4, progress=False)


def test_fit_sets_weights_threshold_and_history(fitted):
    assert fitted.fitted and len(fitted.history.val_loss) == 2
    assert torch.isfinite(fitted.model.layer_weights).all() and (fitted.model.layer_weights > 0).all()
    assert np.isfinite(float(fitted.threshold))
    assert "efficientnet_lite0" in repr(fitted) and "fitted" in repr(fitted)


def test_teacher_stays_frozen_after_fit(fitted):
    assert not any(p.requires_grad for p in fitted.model.teacher.parameters())
    assert not fitted.model.teacher.training


def test_predict_accepts_every_input_kind(fitted, tmp_path):
    u8 = _images(3, seed=5, size=40)
    arrays = [x.permute(1, 2, 0).numpy() for x in u8]
    paths = []
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    ref = fitted.predict(u8)
    # uint8 sources are resized in uint8 (identical whatever their container)
    for inp in (arrays, [Image.fromarray(a) for a in arrays], paths, [str(p) for p in paths], tmp_path):
        pred = fitted.predict(inp, batch_size=2)
        torch.testing.assert_close(pred.scores, ref.scores, rtol=1e-4, atol=1e-5)
    # float images are resized in float (within a grey level of the uint8 resize); at the network's size, no
    # resize: exactly the uint8 result
    at_size = _images(3, seed=5, size=SIZE)
    torch.testing.assert_close(fitted.predict(at_size.float() / 255).scores, fitted.predict(at_size).scores,
                               rtol=1e-4, atol=1e-5)
    assert ref.heatmaps.shape == (3, SIZE, SIZE) and ref.heatmaps.dtype == torch.float32
    assert ref.labels.dtype == torch.bool and ref.masks.shape == (3, SIZE, SIZE)
    assert fitted.predict(paths).names == [str(p) for p in paths]


def test_predict_any_size_and_heatmap_at_input_size(fitted, rng):
    imgs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((30, 90), (101, 37), (64, 64))]
    pred = fitted.predict(imgs)
    assert pred.sizes == [(30, 90), (101, 37), (64, 64)]
    assert pred.heatmap_at_input_size(1).shape == (101, 37)


def test_predict_bad_tensors_raise(fitted):
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        fitted.predict([])


def test_batch_size_does_not_change_results(fitted):
    x = _images(5, seed=3)
    a, b = fitted.predict(x, batch_size=1), fitted.predict(x, batch_size=5)
    torch.testing.assert_close(a.heatmaps, b.heatmaps, rtol=1e-4, atol=1e-5)


def test_calibrate_is_a_quantile_of_normal_scores(fitted):
    x = _images(20, seed=7)
    scores = fitted.predict(x).scores
    thr = fitted.calibrate(x, quantile=0.9)
    assert thr == pytest.approx(float(torch.quantile(scores.double(), 0.9)), rel=1e-6)
    flagged = fitted.predict(x).labels.float().mean().item()
    assert 0 < flagged <= 0.15  # an all-normal set is never flagged wholesale
    assert fitted.calibrate(x, quantile=1.0) == pytest.approx(scores.max().item(), rel=1e-6)
    assert not fitted.predict(x).labels.any()
    with pytest.raises(ValueError, match="quantile"):
        fitted.calibrate(x, quantile=0)


def _noise(seed=1, size=48):
    """Pixel noise: far from the smooth textures the fixture learnt, so it scores far above them."""
    return (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def test_calibrate_leaves_far_out_normal_images_out_and_names_them(fitted, tmp_path):
    """A foreign image among 21 "normal" ones is beyond Q3 + 3 IQR of their scores: the quantile is taken
    without it, a warning names its file, info keeps its position; leave_out_far=False keeps it."""
    before = float(fitted.threshold)
    x = torch.cat([_images(20, seed=7), _noise()])
    for i, img in enumerate(x):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / (f"{i:02d}.png" if i < 20 else "odd.png"))
    scores = fitted.predict(tmp_path).scores
    assert scores[20] > scores[:20].max()
    with pytest.warns(UserWarning, match=r"1 of 21 normal images score far above.*odd\.png") as said:
        thr = fitted.calibrate(tmp_path, quantile=0.9)
    assert said[0].filename == __file__  # the warning points at the caller's line
    assert thr == pytest.approx(float(torch.quantile(scores[:20].double(), 0.9)), rel=1e-6)
    assert fitted.info["calibration"]["left_out"] == [20]
    assert fitted.predict(tmp_path / "odd.png").labels.tolist() == [True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when it is kept
        kept = fitted.calibrate(tmp_path, quantile=0.9, leave_out_far=False)
    assert kept == pytest.approx(float(torch.quantile(scores.double(), 0.9)), rel=1e-6) and kept > thr
    assert fitted.info["calibration"]["left_out"] == []
    with pytest.warns(UserWarning, match=r"normal_images\[20\]"):  # tensors: their positions
        fitted.calibrate(x)
    with pytest.warns(UserWarning, match=r": part-20"):
        fitted.calibrate(x, names=[f"part-{i}" for i in range(21)])
    with pytest.raises(ValueError, match="3 names for 21 images"):
        fitted.calibrate(x, names=["a", "b", "c"])
    fitted.threshold.fill_(before)


def test_fit_names_a_far_out_held_out_file(tmp_path):
    """fit's threshold comes from its held-out images: a foreign one among them is named by its file."""
    from fastmsfd.fit import held_out_order

    order, n_val = held_out_order(40, 0.5, 0)  # 20 held out: enough for the fence
    odd = int(order[0])
    x = _images(40, seed=2)
    x[odd] = _noise(3)[0]
    for i, img in enumerate(x):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / f"{i:02d}.png")
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=rf"1 of {n_val} normal images score far above.*{odd:02d}\.png"):
        det = Detector(image_size=SIZE, global_layer=None).fit(tmp_path, epochs=2, batch_size=4, val_fraction=0.5,
                                                              progress=False)
    assert det.info["calibration"]["left_out"] == [0]
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=rf"far above.*: fit image {odd}\. "):  # a tensor: its position in it
        Detector(image_size=SIZE, global_layer=None).fit(x, epochs=2, batch_size=4, val_fraction=0.5, progress=False)


def test_save_load_round_trip_identical(fitted, tmp_path):
    path = tmp_path / "m.fastmsfd"
    fitted.save(path)
    loaded = Detector.load(path)
    x = _images(4, seed=11)
    a, b = fitted.predict(x), loaded.predict(x)
    assert torch.equal(a.heatmaps, b.heatmaps) and torch.equal(a.scores, b.scores)
    assert float(loaded.threshold) == float(fitted.threshold)
    assert loaded.config["backbone"] == "efficientnet_lite0" and loaded.fitted
    assert not any(p.requires_grad for p in loaded.model.teacher.parameters())


def test_corrupt_checkpoints_give_clear_errors(fitted, tmp_path):
    path = tmp_path / "m.fastmsfd"
    fitted.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.fastmsfd").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-100] ^= 0x01
    (tmp_path / "flip.fastmsfd").write_bytes(bytes(flipped))
    (tmp_path / "text.fastmsfd").write_text("not a model")
    for name, match in (("trunc", "truncated or corrupt"), ("flip", "checksum"), ("text", "corrupt"),
                        ("missing", "not found")):
        with pytest.raises(CheckpointError, match=match) as err:
            Detector.load(tmp_path / f"{name}.fastmsfd")
        assert name in str(err.value)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "new.fastmsfd"
    save_checkpoint(path, {"x": torch.zeros(1)}, {})
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = str(FORMAT_VERSION + 1)
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="upgrade"):
        load_checkpoint(path)


LATER_SETTINGS_IN_USE = {"map_norm": dict(map_norm="border"),
                         "global branch": dict(global_layer="stage7", global_backbone=None),
                         "rectangle": dict(image_size=(SIZE, 2 * SIZE)), "keep_aspect": dict(resize="keep_aspect"),
                         "tiles": dict(image_size=2 * SIZE, tile=SIZE), "bilinear": dict(upsampling="bilinear")}


@pytest.mark.parametrize("what", [None, *LATER_SETTINGS_IN_USE])
def test_older_readers_refuse_files_they_would_misread(what, tmp_path, monkeypatch):
    """A version-1 reader ignores settings added later, so it would score such a file differently without an
    error: those files are version 2, which it refuses; a file using none of them stays version 1 and loads."""
    from safetensors import safe_open

    from fastmsfd import checkpoint

    kw = dict(image_size=SIZE, layers=("stage2", "stage3"), weights="random", map_norm=None, global_layer=None)
    det = Detector(**{**kw, **LATER_SETTINGS_IN_USE.get(what, {})})
    path = tmp_path / "m.fastmsfd"
    det.save(path)
    with safe_open(str(path), "pt") as f:
        written = f.metadata()["format_version"]
    assert written == ("1" if what is None else "2")
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 1)  # the reader of a fastmsfd before version 2
    if what is None:
        assert Detector.load(path).config["image_size"] == SIZE
    else:
        with pytest.raises(CheckpointError, match="upgrade fastmsfd") as err:
            Detector.load(path)
        assert str(path) in str(err.value)


def test_files_without_later_settings_are_version_1():
    from fastmsfd.checkpoint import LATER_SETTINGS, format_version_of

    old = {"backbone": "efficientnet_lite0", "image_size": 256}  # a file from before every later setting
    assert format_version_of(old) == 1 and format_version_of({**old, **LATER_SETTINGS}) == 1
    assert format_version_of({**old, "global_layer": "stage6"}) == 2
    assert format_version_of({**old, "image_size": [256, 128]}) == 2


def test_checkpoint_for_another_backbone_is_refused(fitted, tmp_path):
    path = tmp_path / "m.fastmsfd"
    fitted.save(path)
    tensors, config = load_checkpoint(path)
    config["backbone"] = "efficientnet_lite1"
    save_checkpoint(path, tensors, config)
    with pytest.raises(CheckpointError, match="efficientnet_lite1"):
        Detector.load(path)


def test_pickle_checkpoint_never_executes(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.fastmsfd"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        Detector.load(path)
    assert not marker.exists()


def test_failed_save_leaves_old_file_and_no_partial(fitted, tmp_path, monkeypatch):
    path = tmp_path / "m.fastmsfd"
    fitted.save(path)
    before = path.read_bytes()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fastmsfd"]


def test_fit_sources(tmp_path):
    with pytest.raises(DataError, match="not found"):
        Detector(image_size=SIZE).fit(tmp_path / "nope", epochs=1, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        Detector(image_size=SIZE).fit(tmp_path / "empty", epochs=1, progress=False)
    cat = tmp_path / "cat" / "train" / "good"
    cat.mkdir(parents=True)
    for i, x in enumerate(_images(6)):
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(cat / f"{i}.png")
    (cat / "broken.png").write_text("oops")
    with pytest.raises(ValueError, match="broken.png"):
        Detector(image_size=SIZE).fit(tmp_path / "cat", epochs=1, progress=False)
    (cat / "broken.png").unlink()
    det = Detector(image_size=SIZE).fit(tmp_path / "cat", epochs=1, progress=False)
    assert det.config["n_train"] + det.config["n_val"] == 6
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(_images(6)), batch_size=3)
    assert Detector(image_size=SIZE).fit(loader, epochs=1, progress=False).fitted


def test_dihedral_augmentation_draws_each_symmetry():
    from fastmsfd.train import augment_batch

    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(64, 3, 4, 4).contiguous()
    out = augment_batch(x, "dihedral", torch.Generator().manual_seed(0))
    variants = {tuple(o[0].flatten().tolist()) for o in out}
    assert len(variants) == 8  # the 8 symmetries of the square
    assert torch.equal(augment_batch(x, None, torch.Generator()), x)


@pytest.mark.parametrize("shape,min_side", [((6, 3, 8, 12), 0.5), ((5, 1, 9, 7), 0.8), ((3, 3, 6, 6), 0.34)])
def test_random_resized_crops_are_resized_crops_of_each_image(shape, min_side):
    """Brute force: every output is one of the image's crops (sides the same share, in [min_side, 1], of its
    own, rounded) resized back with bilinear interpolation, to uint8 rounding."""
    from fastmsfd.train import random_resized_crops

    x = (torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) * 255).to(torch.uint8)
    out = random_resized_crops(x, min_side, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    H, W = shape[-2:]
    for img, got in zip(x, out):
        candidates = []
        sides = {(max(1, round(H * s)), max(1, round(W * s))) for s in np.linspace(min_side, 1, 2001).tolist()}
        for h, w in sides:
            for top in range(H - h + 1):
                for left in range(W - w + 1):
                    crop = img[None, :, top:top + h, left:left + w].float()
                    candidates.append(torch.nn.functional.interpolate(crop, size=(H, W), mode="bilinear",
                                                                      align_corners=False)[0])
        err = min(float((c - got.float()).abs().max()) for c in candidates)
        assert err <= 0.5 + 1e-4  # rounding to uint8 only
    assert not torch.equal(out, x)  # with shares below 1 some image moved
    assert torch.equal(random_resized_crops(x, None, torch.Generator()), x)
    assert torch.equal(random_resized_crops(x, 1.0, torch.Generator()), x)  # the whole image, as it was


def test_crop_scale_is_checked_before_any_image_is_read(tmp_path):
    with pytest.raises(ValueError, match="crop_scale must be in"):
        Detector(image_size=SIZE).fit(tmp_path / "not-there", crop_scale=1.5, progress=False)
    with pytest.raises(TypeError, match="crop_sclae"):
        Detector(image_size=SIZE).fit(tmp_path / "not-there", crop_sclae=0.8, progress=False)
    with pytest.raises(TypeError, match=r"sets \['alpha'\] itself"):
        Detector(image_size=SIZE).fit(tmp_path / "not-there", alpha=0.5, progress=False)


def test_fit_with_random_crops_trains_and_keeps_old_training_states_valid():
    from fastmsfd.train import TrainConfig, _fingerprint

    for tile in (None, 32):  # with tiles, each tile is cut from the cropped image
        det = Detector(image_size=SIZE, tile=tile, global_layer=None).fit(_images(8), epochs=2, batch_size=4,
                                                                         progress=False, crop_scale=0.7)
        assert det.fitted and len(det.history.train_loss) == 2 and all(np.isfinite(det.history.train_loss))
        assert det.config["training"]["crop_scale"] == 0.7
    # the setting joins a saved state's fingerprint only when it is on: states written before it still resume
    assert "crop_scale" not in _fingerprint(TrainConfig(), 8, 2)
    assert _fingerprint(TrainConfig(crop_scale=0.7), 8, 2) != _fingerprint(TrainConfig(), 8, 2)


def test_torch_compile_option_gives_the_same_maps(fitted):
    x = _images(2, seed=11)
    fitted.reset_runtime("torch")
    want = fitted.predict(x)
    fitted.model.compile_mode = True
    try:
        calls = []
        real_compile = torch.compile
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or real_compile(fn, **kw))
            got = fitted.predict(x)
        assert calls, "torch.compile was not used"
    finally:
        fitted.model.compile_mode = False
        fitted.reset_runtime("auto")
    torch.testing.assert_close(got.heatmaps, want.heatmaps, rtol=1e-4, atol=1e-4 * want.heatmaps.abs().max().item())


@pytest.mark.parametrize("precision", ["bfloat16"])
def test_low_precision_predicts_close_to_float32(fitted, precision):
    x = _images(3, seed=12)
    fitted.reset_runtime("torch")
    want = fitted.predict(x)
    fitted.reset_runtime(precision=precision)
    try:
        got = fitted.predict(x)
    finally:
        fitted.reset_runtime("auto", precision="float32")
    assert got.heatmaps.dtype == torch.float32 and torch.isfinite(got.heatmaps).all()
    # bfloat16 networks: a few percent of the heatmap's range (docs/performance.md has the AUROC effect)
    scale = want.heatmaps.abs().max().item()
    assert (got.heatmaps - want.heatmaps).abs().max().item() < 0.25 * scale


def test_bilinear_upsampling_detector_round_trip_and_export(fitted, tmp_path):
    """The ablation/baseline setting travels through save/load and ONNX export like every other option."""
    pytest.importorskip("onnxruntime")
    det = Detector(image_size=SIZE, upsampling="bilinear", aggregate="product", alpha=0.0, runtime="torch",
                   global_layer=None)
    det.model.student.load_state_dict(fitted.model.student.state_dict())
    det.model.teacher.load_state_dict(fitted.model.teacher.state_dict())
    det.fitted = True
    path = tmp_path / "b.fastmsfd"
    det.save(path)
    x = _images(3, seed=5)
    a = det.predict(x)
    b = Detector.load(path, runtime="torch").predict(x)
    assert torch.equal(a.heatmaps, b.heatmaps)
    c = Detector.load(path, runtime="onnxruntime").predict(x)
    torch.testing.assert_close(c.heatmaps, a.heatmaps, rtol=1e-4, atol=1e-4 * float(a.heatmaps.max()))
    g = Detector(image_size=SIZE, aggregate="product", alpha=0.0, runtime="torch", global_layer=None)
    g.load_state_dict(det.state_dict())
    assert not torch.allclose(g.predict(x).heatmaps, a.heatmaps)  # the option changes the maps


def test_default_training_length_is_an_image_budget(monkeypatch):
    import fastmsfd.fit
    from fastmsfd.train import MAX_AUTO_EPOCHS, TRAIN_IMAGES_BUDGET, auto_epochs

    assert auto_epochs(1) == MAX_AUTO_EPOCHS and auto_epochs(10**6) == 1
    assert auto_epochs(240) == round(TRAIN_IMAGES_BUDGET / 240)
    counts = [auto_epochs(n) for n in range(1, 5000, 37)]
    assert counts == sorted(counts, reverse=True)  # more images, never more epochs
    asked = []
    monkeypatch.setattr(fastmsfd.fit, "auto_epochs", lambda n: asked.append(n) or 2)  # fit asks, with n_train
    det = Detector(image_size=SIZE).fit(_images(12), batch_size=4, progress=False, patience=100)
    assert asked == [det.config["n_train"]] and det.config["epochs_run"] == 2


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "cosine"), ("adamw", "constant")])
def test_optimizer_and_schedule_options_train(optimizer, schedule):
    torch.manual_seed(0)
    det = Detector(image_size=SIZE).fit(_images(8), epochs=2, batch_size=4, progress=False, optimizer=optimizer,
                                        schedule=schedule, lr=0.05 if optimizer == "sgd" else 1e-3)
    h = det.history
    assert len(h.train_loss) == 2 and all(np.isfinite(h.train_loss)) and h.train_loss[1] < h.train_loss[0]


def test_unknown_optimizer_or_schedule_is_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Detector(image_size=SIZE).fit(_images(6), epochs=1, progress=False, optimizer="lion")
    with pytest.raises(ValueError, match="schedule must be one of"):
        Detector(image_size=SIZE).fit(_images(6), epochs=1, progress=False, schedule="step")


def test_fit_measures_border_statistics_and_predict_standardises(fitted):
    from fastmsfd import calibration
    from fastmsfd.fit import set_border_statistics
    from fastmsfd.ops import reference

    assert fitted.config["map_norm"] == "border" and "map_norm=border" in repr(fitted)
    assert not torch.equal(fitted.model.map_std, torch.ones_like(fitted.model.map_std))
    # the statistics are those of the raw heatmaps of the images they were measured on
    x = _images(6, seed=21, size=SIZE)
    with torch.no_grad():
        raw = fitted.model.raw_heatmaps(*fitted.model.features(fitted.model.normalize(x)))[0]
    saved = fitted.model.map_mean.clone(), fitted.model.map_std.clone()
    try:
        set_border_statistics(fitted.model, x)
        mean, std = calibration.border_statistics(raw)
        torch.testing.assert_close(fitted.model.map_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fitted.model.map_std, std, rtol=1e-5, atol=1e-6)
    finally:
        fitted.model.map_mean.copy_(saved[0])
        fitted.model.map_std.copy_(saved[1])
        fitted.reset_runtime()
    # predict: (raw - mean) / std per pixel, then the top-k score of that
    y = _images(3, seed=22, size=SIZE)
    with torch.no_grad():
        raw = fitted.model.raw_heatmaps(*fitted.model.features(fitted.model.normalize(y)))[0]
    pred = fitted.predict(y)
    want = (raw - fitted.model.map_mean) / fitted.model.map_std
    torch.testing.assert_close(pred.heatmaps, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    torch.testing.assert_close(pred.scores, reference.image_score(want, fitted.config["score_topk"]), rtol=1e-4,
                               atol=1e-4)


def test_map_norm_none_scores_the_raw_heatmap(fitted):
    det = Detector(image_size=SIZE, map_norm=None, runtime="torch", global_layer=None)
    det.load_state_dict(fitted.state_dict())  # fitted's border statistics are loaded too, and ignored
    det.fitted = True
    x = _images(3, seed=23, size=SIZE)
    with torch.no_grad():
        raw, raw_score = det.model.raw_heatmaps(*det.model.features(det.model.normalize(x)))
    pred = det.predict(x)
    assert torch.equal(pred.heatmaps, raw) and torch.equal(pred.scores, raw_score)
    with pytest.raises(ValueError, match="map_norm"):
        Detector(image_size=SIZE, map_norm="ring")


def test_checkpoint_from_before_map_norm_loads_as_raw_heatmap(fitted, tmp_path):
    path = tmp_path / "old.fastmsfd"
    fitted.save(path)
    tensors, config = load_checkpoint(path)
    del config["map_norm"], tensors["map_mean"], tensors["map_std"]
    save_checkpoint(path, tensors, config)
    old = Detector.load(path, runtime="torch")
    assert old.config["map_norm"] is None
    x = _images(2, seed=24, size=SIZE)
    with torch.no_grad():
        raw = fitted.model.raw_heatmaps(*fitted.model.features(fitted.model.normalize(x)))[0]
    torch.testing.assert_close(old.predict(x).heatmaps, raw, rtol=1e-5, atol=1e-6)
    # a file that says it standardises but lacks the statistics is refused by name
    fitted.save(path)
    tensors, config = load_checkpoint(path)
    del tensors["map_std"]
    save_checkpoint(path, tensors, config)
    with pytest.raises(CheckpointError, match="map_std"):
        Detector.load(path)
