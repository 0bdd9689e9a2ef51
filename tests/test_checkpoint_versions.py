"""Checkpoints written by earlier code load and score as they did: one file per format version, written by
fastmsfd 0.2.0 (the release before the one-forward model) with small random networks and fitted-looking
statistics, beside the heatmaps and scores that code gave on fixed images (tests/fixtures/, made by the script in
tests/fixtures/README.md). Tolerance: 1e-5 of the heatmap's magnitude (float32; the same reference math)."""
from pathlib import Path

import numpy as np
import pytest

from fastmsfd import Detector
from fastmsfd.checkpoint import load_checkpoint, migrate

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("version", [1, 2])
def test_a_file_of_each_format_version_scores_as_the_code_that_wrote_it(version):
    path = FIXTURES / f"v{version}.fastmsfd"
    _, config, found = load_checkpoint(path, with_version=True)
    assert found == version and config["fastmsfd_version"] == "0.2.0"
    expected = np.load(FIXTURES / "expected.npz")
    det = Detector.load(path, runtime="torch", ops_backend="reference")
    pred = det.predict(list(expected["images"].transpose(0, 2, 3, 1)))
    heat, score = expected[f"v{version}_heatmaps"], expected[f"v{version}_scores"]
    scale = float(np.abs(heat).max())
    np.testing.assert_allclose(pred.heatmaps.numpy(), heat, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(pred.scores.numpy(), score, rtol=1e-5, atol=1e-5 * scale)
    assert float(det.threshold) == 1.5 and det.fitted
    again = det.predict(list(expected["images"].transpose(0, 2, 3, 1)))  # parts too, from the same forward
    assert again.map_z is not None and again.peaks.shape == (len(score), 2)


def test_migration_fills_what_version_1_computed_and_separates_what_fit_measured():
    config = {"backbone": "efficientnet_lite0", "layers": ["stage2"], "image_size": 64, "precision": "float32",
              "alpha": 1.0, "beta": 1.0, "sigma_factor": 1.0, "aggregate": "sum", "score_topk": None,
              "blur_sigma": None, "n_train": 9, "fitted": True, "fastmsfd_version": "0.1.0"}
    settings, info = migrate(config, 1)
    assert settings["map_norm"] is None and settings["global_layer"] is None and settings["resize"] == "squash"
    assert info == {"n_train": 9}
    with pytest.raises(ValueError, match="colour"):  # a settings key this release does not know: refused by name
        from fastmsfd.config import DetectorConfig

        DetectorConfig.from_dict({**settings, "colour": "blue"})
