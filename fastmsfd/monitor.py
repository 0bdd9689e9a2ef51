"""A drift alarm without labels: are the recent image scores still those of normal parts?

When the camera moves, the lighting changes or a new batch of material arrives, every part is flagged, or none
is. The fit stores the held-out normal images' scores (the reference: Detector.calibrate keeps them). A monitor
keeps the last `window` scores and asks two questions of them:

- the share above the threshold against the calibrated one: the number of window scores above it is compared
  with a beta-binomial law. The threshold is itself an order statistic of the reference, so for exchangeable
  normal scores that law is exact and its spread includes the threshold's own uncertainty (a threshold set on
  20 images lets through more than 1 - quantile);
- the whole distribution: a two-sample Kolmogorov-Smirnov test of the window against the reference, which sees
  scores that fell as well as scores that rose.

The alarm rises when either p-value falls under `alpha` (each test at alpha / 2) and clears, with hysteresis,
when both are above `clear_alpha` again. docs/serving.md explains what to do about it.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

REFERENCE_POINTS = 1001  # at most this many quantiles of the held-out scores are stored (all of them when fewer)


def reference_from_scores(scores: Sequence[float], threshold: float) -> dict:
    """What a checkpoint stores for the monitor: the held-out normal scores' quantiles, their number and the
    threshold they were calibrated with (JSON-ready)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0 or not np.isfinite(s).all():
        raise ValueError("a drift reference needs finite scores of normal images")
    q = np.quantile(s, np.linspace(0, 1, min(len(s), REFERENCE_POINTS)))
    return {"quantiles": [float(v) for v in q], "n": int(len(s)), "threshold": float(threshold)}


@dataclass(frozen=True)
class DriftSettings:
    window: int = 200        # the recent scores tested
    min_images: int = 50     # no verdict before the window holds this many
    alpha: float = 1e-3      # the alarm rises when a test's p-value is under alpha / 2
    clear_alpha: float = 0.01  # and clears when both are above clear_alpha

    def __post_init__(self):
        if not (isinstance(self.window, int) and self.window >= 10):
            raise ValueError(f"drift window must be an int >= 10 images, got {self.window!r}")
        if not (isinstance(self.min_images, int) and 1 <= self.min_images <= self.window):
            raise ValueError(f"drift min_images must be in [1, window={self.window}], got {self.min_images!r}")
        if not 0 < self.alpha < self.clear_alpha < 1:
            raise ValueError(f"drift needs 0 < alpha < clear_alpha < 1, got {self.alpha} and {self.clear_alpha}")


@dataclass(frozen=True)
class DriftState:
    drift: bool
    images: int              # in the window
    seen: int                # since the monitor started
    rate: float | None       # the window's share above the threshold
    expected_rate: float     # what normal parts give, on average, with this threshold
    p_rate: float | None     # one-sided: as many above the threshold, or more, from normal parts
    p_shift: float | None    # Kolmogorov-Smirnov: the window's distribution against the reference
    ks: float | None         # the largest gap between the two distribution functions

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic two-sample Kolmogorov-Smirnov p-value, with Stephens' small-sample correction."""
    from scipy.special import kolmogorov

    en = n * m / (n + m)
    return float(kolmogorov((math.sqrt(en) + 0.12 + 0.11 / math.sqrt(en)) * d))


def beta_binomial_tail(k: int, m: int, a: float, b: float) -> float:
    """P(X >= k) for X ~ BetaBinomial(m, a, b)."""
    from scipy.stats import betabinom

    return float(betabinom.sf(k - 1, m, a, b))


class DriftMonitor:
    """update(scores) after each batch; state says whether the recent scores still look normal."""

    def __init__(self, reference: dict, threshold: float | None = None, settings: DriftSettings = DriftSettings()):
        self.settings = settings
        self.reference = np.asarray(reference["quantiles"], dtype=np.float64)
        self.n_reference = int(reference["n"])
        if self.reference.ndim != 1 or len(self.reference) < 1 or self.n_reference < 1:
            raise ValueError("a drift reference needs the quantiles of at least one normal score")
        self.threshold = float(reference["threshold"] if threshold is None else threshold)
        # the threshold sits above k of the n reference scores: the next normal score exceeds it with
        # probability Beta(n - k + 1, k), whatever the scores' law
        below = float(np.mean(self.reference <= self.threshold)) * self.n_reference
        k = min(max(int(round(below)), 1), self.n_reference)
        self._a, self._b = self.n_reference - k + 1.0, float(k)
        self._window: deque[float] = deque(maxlen=settings.window)
        self.seen = 0
        self.state = self._verdict(False)

    def update(self, scores: Iterable[float]) -> DriftState:
        for s in scores:
            s = float(s)
            if math.isfinite(s):
                self._window.append(s)
                self.seen += 1
        self.state = self._verdict(self.state.drift)
        return self.state

    def reset(self) -> None:
        self._window.clear()
        self.seen = 0
        self.state = self._verdict(False)

    def _verdict(self, was_drifting: bool) -> DriftState:
        w = np.fromiter(self._window, dtype=np.float64)
        expected = self._a / (self._a + self._b)
        if len(w) < self.settings.min_images:
            return DriftState(False, len(w), self.seen, None, expected, None, None, None)
        above = int((w > self.threshold).sum())
        p_rate = beta_binomial_tail(above, len(w), self._a, self._b)
        d = self._ks_statistic(np.sort(w))
        p_shift = ks_pvalue(d, self.n_reference, len(w))
        if was_drifting:
            drift = min(p_rate, p_shift) <= self.settings.clear_alpha
        else:
            drift = min(p_rate, p_shift) < self.settings.alpha / 2
        return DriftState(bool(drift), len(w), self.seen, above / len(w), expected, p_rate, p_shift, d)

    def _ks_statistic(self, w: np.ndarray) -> float:
        """sup |F_window - F_reference| over every score of either sample (the reference as its quantiles)."""
        points = np.concatenate([w, self.reference])
        f_w = np.searchsorted(w, points, side="right") / len(w)
        f_r = np.searchsorted(self.reference, points, side="right") / len(self.reference)
        f_w_left = np.searchsorted(w, points, side="left") / len(w)
        f_r_left = np.searchsorted(self.reference, points, side="left") / len(self.reference)
        return float(max(np.abs(f_w - f_r).max(), np.abs(f_w_left - f_r_left).max()))

    @classmethod
    def for_detector(cls, det, settings: DriftSettings = DriftSettings()) -> "DriftMonitor":
        """The monitor of a calibrated detector: its reference from calibrate(), its current threshold."""
        reference = det.info.get("calibration", {}).get("reference")
        if reference is None:
            raise ValueError("this detector has no drift reference (it was calibrated by an earlier release, or "
                             "not at all): calibrate it on normal images (Detector.calibrate or `fastmsfd "
                             "calibrate`) and save it again")
        return cls(reference, float(det.threshold), settings)


def drift_report(monitor: DriftMonitor, scores: Sequence[float], names: Sequence[str], batch: int = 16) -> dict:
    """The alarm over scores in their order (a batch `fastmsfd predict`, a Ray run): where it rose and cleared
    (the image it happened at, by position and name), and the final state. JSON-ready."""
    events = []
    for i in range(0, len(scores), batch):
        was = monitor.state.drift
        state = monitor.update(scores[i:i + batch])
        if state.drift != was:
            last = min(i + batch, len(scores)) - 1
            events.append({"event": "raised" if state.drift else "cleared", "at_image": last, "name": names[last],
                           "rate": state.rate, "p_rate": state.p_rate, "p_shift": state.p_shift})
    return {"images": len(scores), "window": monitor.settings.window, "events": events,
            "final": monitor.state.as_dict()}
