"""Batch inference on a local Ray cluster (ray.init(num_cpus=2)): 100+ images give the scores of the local
`predict` (1e-4 relative), a corrupt file is reported and the rest completes, a dying actor is restarted and its
batch retried, and a bad model file is a clear error before any work."""
import os

import numpy as np
import pytest

from .serve_fixtures import brick_crops, encode, make_model

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install fastmsfd[ray])")
pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install fastmsfd[ray])")

from fastmsfd import Detector  # noqa: E402
from fastmsfd import ray as fray  # noqa: E402
from fastmsfd.batch import score_files  # noqa: E402

N_IMAGES = 104


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    model = root / "model.fastmsfd"
    make_model(model)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i, arr in enumerate(brick_crops(N_IMAGES, seed=4, size=72)):
        (images / ("sub" if i % 5 == 0 else "") / f"img{i:03d}.png").write_bytes(encode(arr))
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return model, images


def test_scores_equal_local_predict_and_a_corrupt_file_is_reported(cluster, archive):
    model, images = archive
    rows = fray.predict(str(images), model, batch_size=16, actors=1).take_all()
    assert len(rows) == N_IMAGES + 1
    got = {os.path.basename(r.path): r for r in fray.rows_to_scores(rows)}
    bad = got.pop("corrupt.png")
    assert bad.score is None and "corrupt.png" in bad.error and "not an image file" in bad.error
    local = score_files(Detector.load(model), sorted(p for p in images.rglob("img*.png")))
    assert len(local) == len(got) == N_IMAGES
    for ref in local:
        r = got[os.path.basename(ref.path)]
        assert r.error == "" and r.score == pytest.approx(ref.score, rel=1e-4, abs=1e-6), ref.path
        assert r.anomalous == ref.anomalous


def test_cli_writes_the_same_scores_csv_as_local_predict(cluster, archive, tmp_path):
    import csv

    from fastmsfd.cli import main

    model, images = archive
    assert main(["-q", "predict", str(model), str(images), "-o", str(tmp_path / "local"), "--no-overlays"]) == 0
    assert main(["-q", "predict", str(model), str(images), "-o", str(tmp_path / "ray"), "--ray",
                 "--heatmaps", "npy"]) == 0

    def read(folder):
        with open(folder / "scores.csv") as fh:
            rows = list(csv.reader(fh))
        return rows[0], {os.path.basename(r[0]): r[1:] for r in rows[1:]}

    (head_l, local), (head_r, remote) = read(tmp_path / "local"), read(tmp_path / "ray")
    assert head_l == head_r == ["path", "score", "anomalous", "map_z", "global_z", "peak_x", "peak_y", "error"]
    assert local.keys() == remote.keys()
    for name, (score, label, map_z, global_z, peak_x, peak_y, error) in local.items():
        r_score, r_label, r_map_z, r_global_z, r_peak_x, r_peak_y, r_error = remote[name]
        assert (label, bool(error)) == (r_label, bool(r_error)), name
        if score:
            assert float(r_score) == pytest.approx(float(score), rel=1e-4, abs=1e-6)
            assert float(r_map_z) == pytest.approx(float(map_z), rel=1e-4, abs=1e-5)
            assert (r_global_z == "") == (global_z == "")
            assert (r_peak_x, r_peak_y) == (peak_x, peak_y)  # in the image's own pixels, both paths
    shards = list((tmp_path / "ray" / "heatmaps").glob("heatmaps-*.npy"))
    assert shards and sum(len(np.load(s)) for s in shards) == N_IMAGES
    import json  # both paths watch the scores for drift, over the same images

    drift = [json.loads((tmp_path / f / "drift.json").read_text()) for f in ("local", "ray")]
    assert drift[0]["images"] == drift[1]["images"] == sum(1 for v in local.values() if v[0])


def test_a_dying_actor_is_restarted_and_its_batch_retried(cluster, archive, tmp_path):
    model, images = archive
    flag = tmp_path / "died-once"

    class DiesOnce(fray.DetectorActor):
        def __call__(self, batch):
            if not flag.exists():
                flag.write_text("x")
                os._exit(1)  # the actor process dies mid-batch, once
            return super().__call__(batch)

    rows = fray.predict(str(images), model, batch_size=32, actors=1, actor_cls=DiesOnce).take_all()
    assert flag.exists() and len(rows) == N_IMAGES + 1
    assert sum(1 for r in rows if not r["error"]) == N_IMAGES


def test_bad_model_file_is_a_clear_error_before_any_work(cluster, archive, tmp_path):
    from fastmsfd.errors import CheckpointError

    _, images = archive
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        fray.predict(str(images), tmp_path / "missing.fastmsfd")
    broken = tmp_path / "broken.fastmsfd"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.fastmsfd"):
        fray.predict(str(images), broken)
