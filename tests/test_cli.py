"""The fastmsfd command: fit / predict / eval / info smoke tests, bad input as one clear line, exit codes."""
import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fastmsfd.cli import main


def _folder(path, n, seed=0, size=40):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = rng.random((5, 5, 3))
        img = np.asarray(Image.fromarray((low * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
        Image.fromarray(img).save(path / f"{i}.png")
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    train = _folder(root / "train", 8)
    out = root / "m.fastmsfd"
    assert main(["-q", "fit", str(train), "-o", str(out), "--image-size", "64", "--epochs", "1"]) == 0
    return out


def test_predict_folder_with_bad_files(model, tmp_path, capsys):
    imgs = _folder(tmp_path / "imgs", 3, seed=1)
    (imgs / "zero.png").write_bytes(b"")
    (imgs / "text.jpg").write_text("nope")
    out = tmp_path / "out"
    rc = main(["-q", "predict", str(model), str(imgs), "-o", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 5
    bad = {r["path"]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {str(imgs / "zero.png"), str(imgs / "text.jpg")}
    assert "empty file" in bad[str(imgs / "zero.png")]
    assert all(np.isfinite(float(r["score"])) for r in rows if not r["error"])  # standardised: may be < 0
    for r in (r for r in rows if not r["error"]):  # the score's parts; the peak inside the 40x40 image
        assert np.isfinite(float(r["map_z"])) and 0 <= int(r["peak_x"]) < 40 and 0 <= int(r["peak_y"]) < 40
    assert all(r["map_z"] == "" for r in rows if r["error"])
    assert len(list((out / "overlays").glob("*.png"))) == 3
    assert "2 unreadable" in capsys.readouterr().out
    assert main(["-q", "predict", str(model), str(imgs), "-o", str(out), "--strict"]) == 1


def test_eval_on_mvtec_layout(model, tmp_path, capsys):
    cat = tmp_path / "cat"
    _folder(cat / "test" / "good", 3, seed=2)
    _folder(cat / "test" / "spot", 3, seed=3)
    (cat / "ground_truth" / "spot").mkdir(parents=True)
    for i in range(3):
        m = np.zeros((40, 40), np.uint8)
        m[10:20, 10:20] = 255
        Image.fromarray(m).save(cat / "ground_truth" / "spot" / f"{i}_mask.png")
    assert main(["-q", "eval", str(cat), "-c", str(model), "-o", str(tmp_path / "rep")]) == 0
    assert "image_auroc" in capsys.readouterr().out
    assert (tmp_path / "rep" / "metrics.json").is_file()


def test_fit_map_norm_option(model, tmp_path):
    from fastmsfd import Detector

    assert Detector.load(model).config["map_norm"] == "border"  # the default
    assert Detector.load(model).config["global_density"] == "nearest"
    out = tmp_path / "raw.fastmsfd"
    train = _folder(tmp_path / "train", 6)
    assert main(["-q", "fit", str(train), "-o", str(out), "--image-size", "64", "--epochs", "1",
                 "--map-norm", "none", "--global-density", "gaussian"]) == 0
    assert Detector.load(out).config["map_norm"] is None
    assert Detector.load(out).config["global_density"] == "gaussian"


def test_fit_training_options_reach_the_checkpoint(model, tmp_path):
    from fastmsfd import Detector

    assert Detector.load(model).config["training"]["augment"] is None  # fit's defaults: whole images as they are
    assert "crop_scale" not in Detector.load(model).config["training"]
    out = tmp_path / "crops.fastmsfd"
    assert main(["-q", "fit", str(_folder(tmp_path / "train", 6)), "-o", str(out), "--image-size", "64",
                 "--epochs", "1", "--augment", "flip", "--crop-scale", "0.75"]) == 0
    training = Detector.load(out).config["training"]
    assert training["augment"] == "flip" and training["crop_scale"] == 0.75 and training["epochs"] == 1


def test_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    assert main(["-q", "fit", str(tmp_path / "missing"), "-o", str(tmp_path / "m.fastmsfd")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastmsfd: error:") and "missing" in err and "\n" not in err
    (tmp_path / "bad.fastmsfd").write_text("junk")
    assert main(["-q", "predict", str(tmp_path / "bad.fastmsfd"), str(tmp_path)]) == 2
    assert "bad.fastmsfd" in capsys.readouterr().err


def test_info_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastmsfd", "info"], capture_output=True, text=True, check=True)
    assert "reference" in out.stdout and "efficientnet_lite0" in out.stdout
    out = subprocess.run([sys.executable, "-m", "fastmsfd", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("demo", "fit", "predict", "eval"):
        assert cmd in out.stdout
