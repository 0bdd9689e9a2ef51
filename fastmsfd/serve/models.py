"""The model a server runs: a loaded, warmed-up detector with its file's hash, load time and drift monitor.
A reload builds a new one beside the old; requests keep the one they started with, so a swap never mixes them."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..monitor import DriftMonitor, DriftSettings

log = logging.getLogger("fastmsfd.serve")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(eq=False)  # compared by identity: a batch is split where its images' models differ
class ServedModel:
    det: object
    path: str | None
    sha256: str | None
    loaded_at: float           # unix time
    load_seconds: float        # reading, building the runtime and warming up
    monitor: DriftMonitor | None = None
    monitor_error: str | None = None  # why there is no drift monitor (an old checkpoint's missing reference)
    threshold: float = field(init=False)

    def __post_init__(self):
        self.threshold = float(self.det.threshold)

    def describe(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "loaded_at": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)), "load_seconds": round(self.load_seconds, 3)}

    def drift(self) -> dict:
        """What /health says about drift."""
        if self.monitor is None:
            return {"available": False, "drift": False, "reason": self.monitor_error}
        return {"available": True, **self.monitor.state.as_dict()}


def load_model(model, runtime: str, precision: str | None, max_batch: int, drift: DriftSettings,
               path: str | Path | None = None) -> ServedModel:
    """model: a .fastmsfd path, or a Detector (path: the file it was loaded from, which a reload reads again).
    Run once at every batch size the batcher can form, so the runtime's per-shape memory exists before the model
    takes requests."""
    from ..detector import Detector

    t0 = time.perf_counter()
    loading = isinstance(model, (str, Path))
    path = str(model) if loading else (None if path is None else str(path))
    digest = file_sha256(path) if path else None  # before loading: the hash is of the file that was read
    det = Detector.load(path, runtime=runtime, precision=precision) if loading else model
    if loading and file_sha256(path) != digest:
        raise ValueError(f"{path}: the file changed while it was being read; reload again once it is written")
    det.eval()
    H, W = det.input_hw
    for n in range(1, max_batch + 1):
        det.predict(torch.zeros(n, 3, H, W, dtype=torch.uint8), batch_size=n)
    served = ServedModel(det, path, digest, time.time(), time.perf_counter() - t0)
    try:
        served.monitor = det.monitor(drift)
    except ValueError as exc:
        served.monitor_error = str(exc)
        log.warning("drift alarm off: %s", exc)
    return served
