"""What makes fit faster must not change what it learns: the frozen teacher's features cached once (no
augmentation, no random crops) train the same student as the teacher run every epoch, and fit says where its
time goes. Tolerance: 1e-4 relative on losses and weights after two epochs (float32; the cache computes the
teacher in batches of another size, which rounds differently)."""
import copy

import pytest
import torch

from fastmsfd import Detector
from fastmsfd.config import ScoreSettings
from fastmsfd.fit import teacher_cache
from fastmsfd.train import TrainConfig, distill

from .serve_fixtures import brick_crops
from .test_score_layers import _u8


@pytest.fixture(scope="module")
def model():
    det = Detector(layers=["stage2", "stage3"], image_size=64, runtime="torch",
                   score=ScoreSettings(global_layer=None))
    m = det.model
    m.teacher.fit_statistics([m.normalize(_u8(brick_crops(10)))])
    return m


def test_cached_teacher_features_train_the_same_student(model):
    u8 = _u8(brick_crops(10))
    train, val = u8[:8], u8[8:]
    cached = teacher_cache(model, train, val)
    for layer, feats in zip(cached[0], model.teacher_features(model.normalize(train))):
        torch.testing.assert_close(layer, feats, rtol=1e-5, atol=1e-5)
    init = copy.deepcopy(model.student.state_dict())
    cfg = TrainConfig(epochs=2, batch_size=4, seed=0, progress=False)
    runs = []
    for cache in (None, cached):
        model.student.load_state_dict(init)
        hist = distill(model.teacher, model.student, model.features, train, val, model.normalize, cfg, cache)
        runs.append((hist, copy.deepcopy(model.student.state_dict())))
    (plain, a), (fast, b) = runs
    torch.testing.assert_close(torch.tensor(fast.train_loss), torch.tensor(plain.train_loss), rtol=1e-4, atol=0)
    torch.testing.assert_close(torch.tensor(fast.val_loss), torch.tensor(plain.val_loss), rtol=1e-4, atol=0)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unchanged"):
        distill(model.teacher, model.student, model.features, train, val, model.normalize,
                TrainConfig(epochs=1, batch_size=4, augment="flip", progress=False), cached)


def test_fit_says_where_its_time_goes():
    det = Detector(layers=["stage2"], image_size=64, runtime="torch")
    det.fit(brick_crops(12), epochs=1, batch_size=4, progress=False)
    timing = det.info["fit_timing"]
    steps = ["load", "teacher_statistics", "teacher_cache", "distill", "layer_weights", "border_statistics",
             "global_statistics", "calibration"]
    assert list(timing) == steps + ["total"] and all(timing[s] >= 0 for s in steps)
    assert timing["total"] == pytest.approx(sum(timing[s] for s in steps), abs=0.05)  # each step rounded to 0.01
