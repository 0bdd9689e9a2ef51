"""fastmsfd.config: settings validated once, frozen, flat in checkpoints (the keys files have always had)."""
import dataclasses

import pytest

from fastmsfd import Detector
from fastmsfd.config import DetectorConfig, MapConfig, NetworkConfig, ScoreConfig


@pytest.mark.parametrize("flat,match", [
    (dict(image_size=16), "image_size"), (dict(image_size=True), "image_size"), (dict(precision="fp8"), "precision"),
    (dict(alpha=-1.0), "alpha"), (dict(beta=float("nan")), "beta"), (dict(sigma_factor=0.0), "sigma_factor"),
    (dict(blur_sigma=float("inf")), "blur_sigma"), (dict(aggregate="median"), "aggregate"),
    (dict(upsampling="nearest"), "upsampling"), (dict(map_norm="global"), "map_norm"),
    (dict(score_topk=0.0), "score_topk"), (dict(score_topk=1.5), "score_topk"),
])
def test_bad_settings_are_refused_before_any_network_is_built(flat, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        DetectorConfig.from_dict(flat)
    import fastmsfd.detector as detector_module

    def no_network(*args, **kwargs):
        raise AssertionError("a network was built for invalid settings")

    monkeypatch.setattr(detector_module, "build_teacher", no_network)
    with pytest.raises(ValueError, match=match):
        Detector(weights="random", **flat)


def test_flat_round_trip_and_replace():
    cfg = DetectorConfig(NetworkConfig(layers=["stage3", "stage4"], image_size=64), MapConfig(aggregate="max"),
                         ScoreConfig(score_topk=None))
    flat = cfg.to_dict()
    assert flat["layers"] == ["stage3", "stage4"] and flat["aggregate"] == "max" and flat["score_topk"] is None
    assert DetectorConfig.from_dict(flat) == cfg
    changed = cfg.replace(precision="bfloat16", map_norm=None)
    assert changed.network.precision == "bfloat16" and changed.map.map_norm is None and cfg.map.map_norm == "border"
    with pytest.raises(ValueError, match="unknown"):
        cfg.replace(colour="blue")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.map.alpha = 2.0


def test_detector_config_is_a_read_only_view():
    det = Detector(image_size=32, weights="random", aggregate="mean", score_topk=None)
    assert det.config["aggregate"] == "mean" and det.config["score_topk"] is None
    assert det.config["random_teacher"] is True and det.config["layers"] == list(det.layers)
    with pytest.raises(TypeError):
        det.config["aggregate"] = "max"
    det.reset_runtime(precision="bfloat16")
    assert det.config["precision"] == "bfloat16" and det.settings.network.precision == "bfloat16"
