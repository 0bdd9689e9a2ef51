"""fastmsfd: fast Multi-Scale Feature Distillation for unsupervised visual anomaly detection."""
from ._version import __version__
from .detector import Detector, Prediction

__all__ = ["Detector", "Prediction", "__version__"]
