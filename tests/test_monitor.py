"""The drift alarm (fastmsfd/monitor.py): silent on normal scores, raised by shifted ones, cleared after."""
import numpy as np
import pytest

from fastmsfd.monitor import DriftMonitor, DriftSettings, beta_binomial_tail, ks_pvalue, reference_from_scores


def _monitor(n_ref=40, seed=0, **kw):
    ref = np.random.default_rng(seed).normal(size=n_ref)
    thr = float(np.quantile(ref, 0.99))
    return DriftMonitor(reference_from_scores(ref, thr), settings=DriftSettings(**kw))


def _feed(mon, scores, batch=8):
    """The state after each batch, as the server updates it."""
    return [mon.update(scores[i:i + batch]) for i in range(0, len(scores), batch)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_ref", [12, 40, 400])
def test_no_alarm_on_2000_normal_scores(seed, n_ref):
    """The target: at most one false alarm per 2,000 normal images. Fifteen streams of 2,000, none may alarm."""
    mon = _monitor(n_ref, seed)
    states = _feed(mon, np.random.default_rng(100 + seed).normal(size=2000))
    assert not any(s.drift for s in states)
    assert states[-1].images == 200 and states[-1].seen == 2000
    assert 0 <= states[-1].rate <= 1 and states[-1].p_shift > 0


@pytest.mark.parametrize("shift", [2.0, -2.0, "spread"])
def test_a_shift_raises_the_alarm_within_one_window_and_normal_scores_clear_it(shift):
    """Scores that rise (every part flagged), fall (none flagged) or spread out: the alarm rises before the
    window has turned over, and clears once normal scores have filled it again."""
    rng = np.random.default_rng(7)
    mon = _monitor(100, 1)
    assert not any(s.drift for s in _feed(mon, rng.normal(size=400)))
    drifted = rng.normal(size=200) * 3 if shift == "spread" else rng.normal(size=200) + shift
    states = _feed(mon, drifted)
    first = next(i for i, s in enumerate(states) if s.drift)
    assert (first + 1) * 8 <= 200
    assert all(s.drift for s in states[first:])  # hysteresis: no flicker while it lasts
    states = _feed(mon, rng.normal(size=600))
    assert states[-1].drift is False
    assert any(s.drift for s in states[:5])  # normal scores clear it only once they dominate the window


def test_rate_test_counts_the_threshold_uncertainty():
    """A threshold set on few normal scores lets through more than 1 - quantile: the expected rate says so."""
    small, large = _monitor(12).state, _monitor(4000).state
    assert small.expected_rate > 0.05 > large.expected_rate > 0.005
    assert beta_binomial_tail(0, 200, 1, 12) == pytest.approx(1.0)
    # the binomial tail averaged over the rate's Beta law, integrated numerically
    from scipy import integrate, stats

    for k, a, b in [(100, 1, 12), (5, 2, 39), (12, 3.0, 400)]:
        direct, _ = integrate.quad(lambda p: stats.beta.pdf(p, a, b) * stats.binom.sf(k - 1, 200, p), 0, 1,
                                   epsabs=1e-14)
        assert beta_binomial_tail(k, 200, a, b) == pytest.approx(direct, rel=1e-5)


def test_ks_pvalue_matches_scipy_two_sample():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=300), rng.normal(0.3, 1, size=200)
    mon = DriftMonitor(reference_from_scores(a, 1.0), settings=DriftSettings(window=200, min_images=200))
    state = mon.update(b)
    ref = ks_2samp(a, b, method="asymp")
    assert state.ks == pytest.approx(ref.statistic, abs=1e-12)
    assert state.p_shift == pytest.approx(ref.pvalue, rel=0.5)  # Stephens' correction: slightly conservative
    assert ks_pvalue(0.0, 10, 10) == pytest.approx(1.0)


def test_no_verdict_before_min_images_and_reset():
    mon = _monitor(40, min_images=30)
    state = mon.update(np.full(29, 50.0))
    assert state.drift is False and state.p_rate is None and state.images == 29
    assert mon.update([50.0]).drift is True
    mon.reset()
    assert mon.state.drift is False and mon.state.images == 0 and mon.seen == 0


def test_non_finite_scores_are_not_counted():
    mon = _monitor(40, min_images=10)
    state = mon.update([np.nan, np.inf] + [0.0] * 10)
    assert state.images == 10 and state.seen == 10


@pytest.mark.parametrize("kw, match", [(dict(window=5), "window"), (dict(min_images=0), "min_images"),
                                       (dict(min_images=500), "min_images"),
                                       (dict(alpha=0.1, clear_alpha=0.01), "alpha")])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        DriftSettings(**kw)


def test_bad_reference_is_refused():
    with pytest.raises(ValueError, match="finite"):
        reference_from_scores([0.0, np.nan], 1.0)
    with pytest.raises(ValueError, match="finite"):
        reference_from_scores([], 1.0)


def test_reference_keeps_every_score_up_to_its_size_limit():
    scores = np.random.default_rng(0).normal(size=50)
    ref = reference_from_scores(scores, 1.5)
    np.testing.assert_allclose(ref["quantiles"], np.sort(scores))
    assert ref["n"] == 50 and ref["threshold"] == 1.5
    big = reference_from_scores(np.random.default_rng(0).normal(size=5000), 1.5)
    assert len(big["quantiles"]) == 1001 and big["n"] == 5000


def test_predict_reports_drift_over_a_folder_in_order(tmp_path, capsys):
    """`fastmsfd predict` runs the alarm over the scores in file order: normal parts, then a changed scene."""
    import json

    from PIL import Image

    from fastmsfd import Detector
    from fastmsfd.cli import main

    from .serve_fixtures import brick_crops

    det = Detector(image_size=64, runtime="torch")
    det.calibrate(brick_crops(40, seed=1), quantile=0.99)
    det.save(tmp_path / "model.fastmsfd")
    folder = tmp_path / "line"
    folder.mkdir()
    for i, img in enumerate(brick_crops(30, seed=6)):
        Image.fromarray(img).save(folder / f"a_{i:03d}.png")
    for i in range(30):
        Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(folder / f"b_{i:03d}.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "model.fastmsfd"), str(folder), "-o", str(out), "--no-overlays",
                 "--drift-window", "20", "--batch-size", "8"]) == 0
    report = json.loads((out / "drift.json").read_text())
    assert report["images"] == 60 and report["window"] == 20
    raised = [e for e in report["events"] if e["event"] == "raised"]
    assert raised and 30 <= raised[0]["at_image"] < 50 and raised[0]["name"].endswith(".png")
    assert report["final"]["drift"] is True
    assert "drift: raised at image" in capsys.readouterr().out

    from fastmsfd.checkpoint import save_detector

    del det.info["calibration"]["reference"]  # a checkpoint from before the drift alarm
    save_detector(det, tmp_path / "old.fastmsfd")
    assert main(["predict", str(tmp_path / "old.fastmsfd"), str(folder), "-o", str(tmp_path / "old"),
                 "--no-overlays"]) == 0
    assert "drift: not checked" in capsys.readouterr().out and not (tmp_path / "old" / "drift.json").exists()
    assert main(["predict", str(tmp_path / "model.fastmsfd"), str(folder), "-o", str(out), "--drift-window",
                 "5"]) == 2
