"""fastmsfd.config: settings validated once, frozen, one default each, flat in checkpoints, unknown keys refused."""
import dataclasses
import inspect
import warnings

import pytest

from fastmsfd import Detector
from fastmsfd.config import (
    DetectorConfig,
    GeometrySettings,
    MapSettings,
    NetworkSettings,
    RuntimeSettings,
    ScoreSettings,
    resolve,
)


@pytest.mark.parametrize("flat,match", [
    (dict(image_size=16), "image_size"), (dict(image_size=True), "image_size"), (dict(precision="fp8"), "precision"),
    (dict(alpha=-1.0), "alpha"), (dict(beta=float("nan")), "beta"), (dict(sigma_factor=0.0), "sigma_factor"),
    (dict(blur_sigma=float("inf")), "blur_sigma"), (dict(aggregate="median"), "aggregate"),
    (dict(upsampling="nearest"), "upsampling"), (dict(map_norm="global"), "map_norm"),
    (dict(score_topk=0.0), "score_topk"), (dict(score_topk=1.5), "score_topk"),
    (dict(global_weight=1.5), "global_weight"), (dict(overlap=0.9), "overlap"),
])
def test_bad_settings_are_refused_before_any_network_is_built(flat, match, monkeypatch):
    with pytest.raises(ValueError, match=match):
        DetectorConfig.from_dict(flat)
    import fastmsfd.model as model_module

    def no_network(*args, **kwargs):
        raise AssertionError("a network was built for invalid settings")

    monkeypatch.setattr(model_module, "build_teacher", no_network)
    with pytest.raises(ValueError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        Detector(weights="random", **flat)


def test_flat_round_trip_and_replace():
    cfg = DetectorConfig(NetworkSettings(layers=["stage3", "stage4"]), GeometrySettings(image_size=64),
                         MapSettings(aggregate="max"), ScoreSettings(score_topk=None))
    flat = cfg.to_dict()
    assert flat["layers"] == ["stage3", "stage4"] and flat["aggregate"] == "max" and flat["score_topk"] is None
    assert DetectorConfig.from_dict(flat) == cfg
    changed = cfg.replace(precision="bfloat16", map_norm=None)
    assert changed.network.precision == "bfloat16" and changed.map.map_norm is None and cfg.map.map_norm == "border"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.map.alpha = 2.0


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(ValueError, match="colour"):
        DetectorConfig.from_dict({"colour": "blue", "alpha": 1.0})
    with pytest.raises(ValueError, match="colour"):
        DetectorConfig().replace(colour="blue")
    with pytest.raises(TypeError, match="colour"):
        Detector(weights="random", image_size=32, colour="blue")


def test_every_default_lives_in_config():
    """Detector's signature restates no method default: its settings default to None (the config's) or are
    deployment arguments; the settings objects' defaults are the library's."""
    sig = inspect.signature(Detector.__init__).parameters
    assert sig["image_size"].default is None and sig["layers"].default is None
    for name in ("geometry", "heatmap", "score"):
        assert sig[name].default is None
    cfg = DetectorConfig()
    assert cfg.geometry.image_size == "auto" and cfg.score.global_layer == "auto"
    assert cfg.score.global_backbone == "auto" and cfg.score.global_image_size == "auto"
    assert cfg.network.layers is None and not cfg.resolved


def test_resolve_turns_every_auto_into_a_value():
    cfg = resolve(DetectorConfig(), image_sizes=[(500, 1250), (510, 1260)], stride=32)
    assert cfg.resolved
    assert cfg.network.layers == ("stage4", "stage5", "stage6")
    assert cfg.score.global_backbone == "efficientnet_lite2" and cfg.score.global_layer == "stage5,stage6"
    h, w = cfg.geometry.image_size
    assert h % 32 == 0 and w % 32 == 0 and w > 2 * h  # the images' aspect
    assert resolve(DetectorConfig()).geometry.image_size == 256  # no images: the square default
    plain = resolve(DetectorConfig(score=ScoreSettings(global_layer=None)))
    assert plain.score.global_layer is None and plain.score.global_backbone is None


def test_score_layers_are_checked_and_the_heatmaps_own_when_equal():
    with pytest.raises(ValueError, match="score_layers") as info:
        Detector(weights="random", image_size=32, score=ScoreSettings(score_layers=["stage9"]))
    assert "stage2" in str(info.value)  # the valid layers, named
    with pytest.raises(ValueError, match="empty"):
        Detector(weights="random", image_size=32, score=ScoreSettings(score_layers=[]))
    same = resolve(DetectorConfig(NetworkSettings(layers=["stage3", "stage4"]),
                                  score=ScoreSettings(score_layers=["stage4", "stage3"])))
    assert same.score.score_layers is None  # the heatmap's own score
    split = resolve(DetectorConfig(NetworkSettings(layers=["stage2", "stage3", "stage4"]),
                                   score=ScoreSettings(score_layers=["stage4"])))
    assert split.score.score_layers == ("stage4",) and split.to_dict()["score_layers"] == ["stage4"]


@pytest.mark.parametrize("layers,match", [((), "empty"), (("stage4", "block9"), "block9")])
def test_bad_layer_sets_name_the_valid_layers(layers, match):
    with pytest.raises(ValueError, match=match) as info:
        Detector(weights="random", image_size=32, layers=layers)
    assert "stage2" in str(info.value) and "stage7" in str(info.value)  # the backbone's layers, named


def test_research_knobs_at_the_top_level_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match="aggregate"):
        old = Detector(image_size=32, weights="random", aggregate="mean", score_topk=None, global_layer=None)
    new = Detector(image_size=32, weights="random", heatmap=MapSettings(aggregate="mean"),
                   score=ScoreSettings(score_topk=None, global_layer=None))
    assert old.settings == new.settings
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # geometry and runtime keywords are plain shortcuts
        det = Detector(image_size=64, weights="random", tile=32, resize="keep_aspect", ops_backend="reference",
                       score=ScoreSettings(global_layer=None))
    assert det.settings.geometry.tile == 32 and det.runtime_settings.ops_backend == "reference"
    with pytest.raises(ValueError, match="runtime"):
        RuntimeSettings(runtime="tensorrt")


def test_detector_config_is_a_read_only_view():
    det = Detector(image_size=32, weights="random", heatmap=MapSettings(aggregate="mean"),
                   score=ScoreSettings(score_topk=None))
    assert det.config["aggregate"] == "mean" and det.config["score_topk"] is None
    assert det.config["random_teacher"] is True and det.config["layers"] == list(det.layers)
    with pytest.raises(TypeError):
        det.config["aggregate"] = "max"
    det.reset_runtime(precision="bfloat16")
    assert det.config["precision"] == "bfloat16" and det.settings.network.precision == "bfloat16"
