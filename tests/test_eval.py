"""Dataset readers (MVTec AD category/root, plain folders, ShanghaiTech Campus), evaluate() and the report that
`fastmsfd eval` writes, on small layouts the tests build; bad input gives a clear error naming the path."""
import json

import numpy as np
import pytest
from PIL import Image

from fastmsfd import Detector
from fastmsfd.cli import main
from fastmsfd.datasets import discover, folders_dataset, stc_dataset
from fastmsfd.errors import DataError, ImageDecodeError
from fastmsfd.evaluate import evaluate

SIZE = 64


def _texture(rng, h, w):
    low = rng.random((6, 6))
    return np.asarray(Image.fromarray((low * 200 + 20).astype(np.uint8)).resize((w, h), Image.BICUBIC))


def _save(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def _defect(img, rng):
    out = img.copy()
    h, w = img.shape[:2]
    y, x = rng.integers(4, h - 12), rng.integers(4, w - 12)
    out[y:y + 8, x:x + 8] = 255
    mask = np.zeros((h, w), np.uint8)
    mask[y:y + 8, x:x + 8] = 255
    return out, mask


def make_category(root, n_train=10, n_good=3, defects=("spot",), n_def=3, seed=0, gray_jpg=False):
    """An MVTec-layout category with images of varying sizes; grayscale JPG or RGB PNG."""
    rng = np.random.default_rng(seed)
    ext = ".jpg" if gray_jpg else ".png"

    def img(i):
        a = _texture(rng, 40 + i % 3 * 4, 48 - i % 2 * 6)
        return a if gray_jpg else np.repeat(a[..., None], 3, axis=2)

    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}{ext}", img(i))
    for i in range(n_good):
        _save(root / "test" / "good" / f"{i:03d}{ext}", img(i))
    for d in defects:
        for i in range(n_def):
            a, m = _defect(img(i), rng)
            _save(root / "test" / d / f"{i:03d}{ext}", a)
            _save(root / "ground_truth" / d / f"{i:03d}_mask.png", m)
    return root


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    cat = make_category(tmp_path_factory.mktemp("fit") / "cat")
    return Detector(image_size=SIZE).fit(cat, epochs=1, batch_size=4, progress=False)


def test_mvtec_root_finds_categories_and_skips_hidden_and_underscore(tmp_path):
    make_category(tmp_path / "a", n_train=3)
    make_category(tmp_path / "b", n_train=3, gray_jpg=True)
    make_category(tmp_path / "_old", n_train=3)
    make_category(tmp_path / ".cache", n_train=3)
    cats = discover(tmp_path)
    assert [c.name for c in cats] == ["a", "b"]
    assert [c.name for c in discover(tmp_path, category="b")] == ["b"]
    assert len(cats[0].train) == 3 and sum(s.label for s in cats[0].test) == 3
    assert all(s.mask_path is None for s in cats[0].test if s.defect == "good")
    with pytest.raises(DataError, match="no category named 'zzz'"):
        discover(tmp_path, category="zzz")


def test_evaluate_mvtec_any_format_and_sizes(det, tmp_path):
    cat = discover(make_category(tmp_path / "gray", n_train=2, gray_jpg=True, defects=("spot", "cut")))[0]
    res = evaluate(det, cat)
    assert res.resolution == f"{SIZE}x{SIZE}" and res.heatmaps.shape == (9, SIZE, SIZE)
    for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0 <= res.metrics[k] <= 1
    assert set(res.per_defect) == {"spot", "cut"}
    full = evaluate(det, cat, full_res=True)
    assert full.resolution == "original size"
    assert [h.shape for h in full.heatmaps] == [m.shape for m in full.masks]
    assert {h.shape for h in full.heatmaps} != {(SIZE, SIZE)}  # the images' own sizes
    assert full.metrics["image_auroc"] == pytest.approx(res.metrics["image_auroc"])  # same scores


def test_bad_layouts_name_the_path(det, tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="nothing"):
        discover(tmp_path / "nothing")
    cat = make_category(tmp_path / "c", n_train=2)
    mask = cat / "ground_truth" / "spot" / "001_mask.png"
    _save(mask, np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="001_mask.png.*10x10"):
        evaluate(det, discover(cat)[0])
    empty = tmp_path / "empty"
    (empty / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        discover(empty)
    broken = make_category(tmp_path / "broken", n_train=2)
    (broken / "test" / "good" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageDecodeError, match="bad.png"):
        evaluate(det, discover(broken)[0])


def test_category_without_train_good_fails_only_when_fitting(det, tmp_path, capsys):
    cat = make_category(tmp_path / "c", n_train=2)
    for p in (cat / "train" / "good").iterdir():
        p.unlink()
    (cat / "train" / "good").rmdir()
    assert main(["-q", "eval", str(cat), "--image-size", str(SIZE), "--epochs", "1", "-o", str(tmp_path / "r")]) == 2
    assert "train/good" in capsys.readouterr().err
    det.save(tmp_path / "m.fastmsfd")
    assert main(["-q", "eval", str(cat), "-c", str(tmp_path / "m.fastmsfd"), "-o", str(tmp_path / "r")]) == 0


def test_no_defective_images_says_undefined_without_crashing(det, tmp_path):
    cat = make_category(tmp_path / "c", n_train=2, defects=())
    res = evaluate(det, discover(cat)[0])
    assert res.metrics["image_auroc"] is None and res.metrics["aupro"] is None and res.metrics["f1_max"] is None
    assert any("no defective images" in n for n in res.notes)


def test_plain_folders_split_and_masks_by_stem(det, tmp_path):
    rng = np.random.default_rng(3)
    for i in range(10):
        _save(tmp_path / "good" / f"g{i}.png", _texture(rng, 40, 40))
    for i in range(3):
        a, m = _defect(_texture(rng, 40, 40), rng)
        _save(tmp_path / "bad" / f"d{i}.png", a)
        _save(tmp_path / "masks" / f"d{i}.png", m)
    cat = folders_dataset(tmp_path / "good", tmp_path / "bad", tmp_path / "masks", seed=1)
    assert len(cat.train) == 8 and sum(1 for s in cat.test if s.label == 0) == 2
    assert all(s.mask_path is not None for s in cat.test if s.label)
    assert "no training folder" in cat.notes[0]
    assert folders_dataset(tmp_path / "good", tmp_path / "bad", seed=1).train == cat.train  # seeded
    res = evaluate(det, cat)
    assert res.metrics["pixel_auroc"] is not None


def make_stc(root, rng, n_frames=4):
    for split, videos in (("training", ("01_001", "01_002")), ("testing", ("01_0014", "02_0015"))):
        for v in videos:
            for f in range(n_frames):
                _save(root / split / "frames" / v / f"{f:03d}.jpg", np.repeat(_texture(rng, 36, 44)[..., None], 3, 2))
    for v in ("01_0014", "02_0015"):
        labels = np.array([0, 0, 1, 1], np.uint8)[:n_frames]
        (root / "test_frame_mask").mkdir(parents=True, exist_ok=True)
        np.save(root / "test_frame_mask" / f"{v}.npy", labels)
        masks = np.zeros((n_frames, 36, 44), np.uint8)
        masks[labels == 1, 10:20, 10:20] = 1
        (root / "test_pixel_mask").mkdir(parents=True, exist_ok=True)
        np.save(root / "test_pixel_mask" / f"{v}.npy", masks)
    return root


def test_shanghaitech_layout(det, tmp_path):
    root = make_stc(tmp_path / "stc", np.random.default_rng(0))
    cats = discover(root)
    assert len(cats) == 1 and cats[0].kind == "stc"
    cat = cats[0]
    assert len(cat.train) == 8 and len(cat.test) == 8 and sum(s.label for s in cat.test) == 4
    res = evaluate(det, cat)
    assert res.metrics["image_auroc"] is not None and res.metrics["pixel_auroc"] is not None
    np.save(root / "test_frame_mask" / "01_0014.npy", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="01_0014.npy.*3 frame labels"):
        stc_dataset(root)
    (root / "test_frame_mask" / "01_0014.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="01_0014.npy"):
        stc_dataset(root)


def test_cli_eval_root_writes_report_and_is_reproducible(tmp_path, capsys):
    make_category(tmp_path / "data" / "a", n_train=8)
    make_category(tmp_path / "data" / "b", n_train=8, gray_jpg=True, seed=1)
    args = ["-q", "eval", str(tmp_path / "data"), "--image-size", str(SIZE), "--epochs", "1", "--batch-size", "4"]
    assert main(args + ["-o", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr().out
    assert "| **mean** |" in out
    rep = json.loads((tmp_path / "r1" / "metrics.json").read_text())
    assert [c["category"] for c in rep["categories"]] == ["a", "b"]
    assert rep["categories"][0]["resolution"] == f"{SIZE}x{SIZE}" and "eval" in rep["command"]
    assert rep["mean"]["image_auroc"] == pytest.approx(np.mean([c["image_auroc"] for c in rep["categories"]]))
    for f in ("results.md", "plots/a_roc.png", "plots/a_pro.png", "overlays/b_grid.png", "models/b.fastmsfd"):
        assert (tmp_path / "r1" / f).is_file(), f
    assert "Evaluation resolution" in (tmp_path / "r1" / "results.md").read_text()
    assert main(args + ["-o", str(tmp_path / "r2"), "--no-plots"]) == 0
    rep2 = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    for c1, c2 in zip(rep["categories"], rep2["categories"]):
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            assert c1[k] == c2[k]
    # evaluate the saved models again from the folder of checkpoints
    assert main(["-q", "eval", str(tmp_path / "data"), "-c", str(tmp_path / "r1" / "models"), "--no-plots",
                 "-o", str(tmp_path / "r3")]) == 0
    rep3 = json.loads((tmp_path / "r3" / "metrics.json").read_text())
    assert rep3["categories"][1]["image_auroc"] == pytest.approx(rep["categories"][1]["image_auroc"], abs=1e-6)


def test_dev_final_split_is_stratified_disjoint_and_seeded(tmp_path):
    from pathlib import Path

    from fastmsfd.datasets import Category, TestSample, dev_final_split

    samples = [TestSample(Path(f"/x/{d}/{i}.png"), int(d != "good"), d, None)
               for d, n in (("good", 20), ("crack", 10), ("hole", 3)) for i in range(n)]
    cat = Category("c", "mvtec", Path("/x"), [], samples)
    dev, final = dev_final_split(cat, 0.3, seed=0)
    assert {s.path for s in dev.test}.isdisjoint({s.path for s in final.test})
    assert len(dev.test) + len(final.test) == len(samples)
    counts = {d: sum(s.defect == d for s in dev.test) for d in ("good", "crack", "hole")}
    assert counts == {"good": 6, "crack": 3, "hole": 1}
    again, _ = dev_final_split(cat, 0.3, seed=0)
    other, _ = dev_final_split(cat, 0.3, seed=1)
    assert [s.path for s in again.test] == [s.path for s in dev.test] != [s.path for s in other.test]


@pytest.mark.data
def test_recorded_splits_match_the_split_function():
    import json
    from pathlib import Path

    from fastmsfd.datasets import dev_final_split, mvtec_category

    from .conftest import SHARED_DATA

    docs = Path(__file__).resolve().parents[1] / "docs" / "splits"
    for record in sorted(docs.glob("*.json")):
        data = json.loads(record.read_text())
        folder = SHARED_DATA / data["category"]
        if not folder.is_dir():
            pytest.skip(f"{folder} absent (../shared/data)")
        dev, final = dev_final_split(mvtec_category(folder), data["fraction"], data["seed"])
        assert [str(s.path.relative_to(folder)) for s in dev.test] == data["development"]
        assert [str(s.path.relative_to(folder)) for s in final.test] == data["final"]
