"""Detector: the public facade. It holds the model (model.py), the runtime it runs on, and fit / predict /
calibrate / save / load / export; the math lives in the model, the settings in config.py."""
from __future__ import annotations

import math
import os
import threading
import warnings
from pathlib import Path
from types import MappingProxyType
from typing import Any, Sequence

import torch
from torch import nn

from . import calibration, tiling
from .checkpoint import load_detector, save_detector
from .config import DetectorConfig, GeometrySettings, MapSettings, RuntimeSettings, ScoreSettings, from_keywords
from .config import resolve as resolve_config
from .data import iter_batches
from .geometry import content_box, to_canvas
from .model import ModelOutput, MSFDModel
from .monitor import DriftMonitor, DriftSettings, reference_from_scores
from .prediction import Prediction


class Detector(nn.Module):
    """Multi-Scale Feature Distillation anomaly detector: fit on defect-free images, then predict heatmaps and
    scores. A frozen ImageNet teacher and a same-architecture student; where their features disagree, the input
    is anomalous.

    Detector(backbone, layers, image_size) takes what most users set; the method's settings are typed objects,
    each documented field by field in fastmsfd/config.py: geometry=GeometrySettings(resize, tile, overlap),
    heatmap=MapSettings(alpha, beta, sigma_factor, aggregate, ...), score=ScoreSettings(score_topk, global_layer,
    global_backbone, global_image_size, global_density, global_weight); runtime ("auto", "torch", "onnxruntime",
    "openvino", or a RuntimeSettings with ops_backend and compile) and precision say where inference runs.
    image_size "auto" (the default) takes the training images' median aspect at about 256x256 pixels at fit.
    Earlier releases' keywords (alpha=..., global_layer=..., tile=...) still work; the method's research knobs
    among them warn that they moved into the settings objects.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", layers: Sequence[str] | None = None,
                 image_size: int | tuple[int, int] | str | None = None, *, geometry: GeometrySettings | None = None,
                 heatmap: MapSettings | None = None, score: ScoreSettings | None = None,
                 runtime: str | RuntimeSettings = "auto", precision: str = "float32",
                 device: str | torch.device = "cpu", weights: Any = None, download: bool = False, **keywords):
        super().__init__()
        random = isinstance(weights, str) and weights == "random"
        requested, self.runtime_settings, research = from_keywords(backbone, layers, image_size, precision,
                                                                   geometry, heatmap, score, runtime, keywords)
        if research:
            warnings.warn(f"Detector({', '.join(f'{k}=...' for k in research)}): the method's settings moved into "
                          "heatmap=MapSettings(...) and score=ScoreSettings(...) (fastmsfd.config)",
                          DeprecationWarning, stacklevel=2)
        self.requested = requested.replace(random_teacher=random)  # with its "auto" requests, resolved at fit
        self.model = MSFDModel(resolve_config(self.requested), weights=weights, download=download)
        self.model.ops_backend = self.runtime_settings.ops_backend
        self.model.compile_mode = self.runtime_settings.compile
        self.info: dict[str, Any] = {}  # what fit and calibrate measured (n_train, epochs_run, calibration, ...)
        self.history = None             # fit's train.TrainHistory
        self.fitted = False
        self._lock = threading.RLock()  # guards lazy runner creation and the train/eval switch in predict
        self.reset_runtime()
        self.to(device)

    # ---- settings and state ------------------------------------------------------------------------------
    settings = property(lambda self: self.model.config, doc="The resolved settings (DetectorConfig) the model runs.")

    @property
    def config(self) -> MappingProxyType:
        """Every setting and what fit/calibrate measured, flat and read-only (the checkpoint's configuration)."""
        return MappingProxyType({**self.settings.to_dict(), **self.info})

    layers = property(lambda self: self.settings.network.layers, doc="The heatmap's layers.")

    input_hw = property(lambda self: self.model.input_hw,
                        doc="The network's input size as (height, width); every image is resized to it.")
    threshold = property(lambda self: self.model.threshold,
                         doc="The decision threshold on scores (NaN until fit or calibrate sets it).")

    device = property(lambda self: self.model.device)

    def __repr__(self) -> str:  # a one-line summary, not the whole network
        s, thr = self.settings, float(self.threshold)
        glob = f", global={s.score.global_layer} ({s.score.global_density}, weight {s.score.global_weight:g})" \
            if s.score.global_layer else ""
        tiles = "" if self.model.grid is None else f", tile={self.model.network_hw} x{len(self.model.grid)}"
        glob = (f", score_layers={list(s.score.score_layers)}" if s.score.score_layers else "") + glob
        return (f"Detector(backbone={s.network.backbone}, layers={list(self.layers)}{glob}, "
                f"image_size={s.geometry.image_size}, resize={s.geometry.resize}{tiles}, "
                f"map_norm={s.map.map_norm}, precision={s.network.precision}, "
                f"{'fitted' if self.fitted else 'not fitted'}, "
                f"threshold={'unset' if math.isnan(thr) else f'{thr:.4g}'})")

    # ---- runtimes ----------------------------------------------------------------------------------------
    @property
    def runtime_choice(self):
        """runtimes.Choice: the runtime and precision predict() uses on this machine, and why."""
        if self._runtime is None:
            from .runtimes import choose

            self._runtime = choose(self.runtime_settings.runtime, self.device, self.settings.network.precision)
            self.set_compute_precision()
        return self._runtime

    @property
    def runtime(self) -> str:
        """The runtime predict() uses: "torch", "onnxruntime" or "openvino" (resolved from the request)."""
        return self.runtime_choice.runtime

    @property
    def precision(self) -> str:
        """The precision inference runs in ("auto" resolved for this machine)."""
        return self.runtime_choice.precision

    def set_compute_precision(self, training: bool = False) -> None:
        """The precision the torch model computes in: the setting, or for "auto" the runtime's choice, resolved
        here (float32 while training)."""
        wanted = self.settings.network.precision
        self.model.precision = wanted if wanted != "auto" else \
            ("float32" if training else self.runtime_choice.precision)

    def reset_runtime(self, runtime: str | None = None, precision: str | None = None) -> None:
        """Drop the exported graph (rebuilt from the current weights on next use); optionally switch runtime and/or
        inference precision. fit() and load() do this themselves; call it after changing weights by hand."""
        if runtime is not None:
            self.runtime_settings = RuntimeSettings(runtime, self.runtime_settings.ops_backend,
                                                    self.runtime_settings.compile)
        if precision is not None:
            self.model.config = self.settings.replace(precision=precision)
        self._runner, self._runtime = None, None
        self.model.forget_compiled()
        precision = self.settings.network.precision  # "auto": chosen with the runtime, on first use
        self.model.precision = "float32" if precision == "auto" else precision

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if "_runner" in self.__dict__:  # moved or cast: the exported graph and the runtime choice are stale
            self.reset_runtime()
        return out

    def infer(self, images_u8: torch.Tensor) -> ModelOutput:
        """uint8 (B, 3, H, W) images at input_hw -> the model's outputs, on the chosen runtime."""
        if self.runtime == "torch":
            return self.model(images_u8)
        with self._lock:
            if self._runner is None:
                from .export import onnx_bytes
                from .runtimes import build_runner

                self._runner = build_runner(self.runtime, onnx_bytes(self), self.precision)
            runner = self._runner
        return ModelOutput(*runner(images_u8))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] (B, 3, H, W), resized by the policy -> heatmaps at input_hw, scores (B,)."""
        out = self.model(to_canvas(images, self.input_hw, self.settings.geometry.resize))
        return out.heatmap, out.score

    # ---- fit, predict, calibrate -------------------------------------------------------------------------
    def fit(self, source, epochs: int | None = None, batch_size: int = 8, lr: float = 1e-3, val_fraction: float = 0.1,
            seed: int = 0, progress: bool = True, calibrate_quantile: float = 0.99, **train_kwargs) -> "Detector":
        """Train the student on normal images: a folder, an MVTec category folder (uses train/good), a list of
        paths, a tensor/array batch or a DataLoader. A held-out share (val_fraction) drives early stopping, the
        layer weights, the score's scales and the threshold. epochs=None: about 3,000 training images seen
        (train.auto_epochs). Further keywords are train.TrainConfig's (docs/training.md). Returns self."""
        from .fit import fit_detector

        fit_detector(self, source, epochs, batch_size, lr, val_fraction, seed, progress, calibrate_quantile,
                     **train_kwargs)
        return self

    @torch.no_grad()
    def predict_iter(self, images, batch_size: int = 16):
        """Like predict, one Prediction per batch: memory stays flat however many images there are."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.training:  # one-way, like model.eval(): never undone behind another thread's back
            self.eval()
        thr, policy, grid = float(self.threshold), self.settings.geometry.resize, self.model.grid
        for u8, sizes, names in iter_batches(images, self.input_hw, batch_size, policy):
            if grid is not None:
                tiling.warn_smaller_than_tile(sizes, names, grid, stacklevel=4)
            out = ModelOutput(*(t.cpu() if t.dtype == torch.int64 else t.float().cpu() for t in self.infer(u8)))
            labels = masks = None
            if not math.isnan(thr):
                labels, masks = out.score > thr, out.heatmap > thr
            yield Prediction(out.heatmap, out.score, labels, masks, sizes, names,
                             [content_box(hw, self.input_hw, policy) for hw in sizes], out.map_z, out.global_z,
                             out.peak)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 16, progress: bool = False) -> Prediction:
        """Heatmaps, scores and the scores' parts for paths, a folder, PIL images, uint8 arrays or float tensors
        of any size. Puts the detector in eval mode. Safe from several threads at once; not while fit() runs."""
        from tqdm.auto import tqdm

        return Prediction.concat(list(tqdm(self.predict_iter(images, batch_size), desc="predicting",
                                           disable=not progress)))

    @torch.no_grad()
    def calibrate(self, normal_images, quantile: float = 0.99, batch_size: int = 16, *,
                  leave_out_far: bool = True, names: Sequence[str] | None = None) -> float:
        """Set the threshold from defect-free images only: the `quantile` of their scores, so about
        (1 - quantile) of normal parts are flagged. leave_out_far: images beyond the upper quartile plus 3
        interquartile ranges (20 images or more) are left out, with a warning naming them (`names`, else the
        files, else their positions); their positions are kept in info["calibration"]["left_out"]."""
        calibration.check_quantile(quantile)  # before any inference
        if isinstance(normal_images, torch.Tensor) and normal_images.dtype == torch.uint8 \
                and normal_images.dim() == 4 and tuple(normal_images.shape[-2:]) == self.input_hw:
            scores, found = torch.cat([self.infer(normal_images[i:i + batch_size]).score.float().cpu()
                                       for i in range(0, len(normal_images), batch_size)]), None
        else:
            pred = self.predict(normal_images, batch_size=batch_size)
            scores, found = pred.scores, pred.names
        thr, left_out, message = calibration.fenced_threshold(scores, quantile, leave_out_far, names or found)
        if message:
            warnings.warn(message, stacklevel=3)  # past no_grad's wrapper, at calibrate's caller
        self.threshold.fill_(thr)
        kept = [s for i, s in enumerate(scores.tolist()) if i not in set(left_out)]
        self.info["calibration"] = {"quantile": quantile, "n_images": len(scores), "left_out": left_out,
                                    "reference": reference_from_scores(kept, thr)}  # the drift alarm's
        return thr

    def monitor(self, settings: DriftSettings | None = None) -> DriftMonitor:
        """A drift alarm on this detector's scores (fastmsfd.monitor): update() it with every batch's scores."""
        return DriftMonitor.for_detector(self, settings or DriftSettings())

    # ---- persistence and export --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write a self-contained .fastmsfd file (networks, settings, fitted statistics, threshold)."""
        save_detector(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, runtime: str = "auto", device: str | torch.device = "cpu",
             ops_backend: str = "auto", precision: str | None = None) -> "Detector":
        """A saved detector; precision (default: the file's) sets the inference precision. Loading runs no code
        from the file (safetensors, checked). A bad runtime or precision is refused before the file is read."""
        if precision is not None:
            DetectorConfig().replace(precision=precision)
        det = load_detector(cls, path, runtime=RuntimeSettings(runtime=runtime, ops_backend=ops_backend))
        det.reset_runtime(precision=precision)
        return det.to(device)

    def export_onnx(self, path: str | os.PathLike, dynamic_batch: bool = True) -> Path:
        """One ONNX graph from uint8 images (B, 3, H, W) to the model's outputs, normalisation inside,
        preprocessing and threshold in its metadata; written atomically (fastmsfd/export.py)."""
        from .export import export_onnx

        return export_onnx(self, path, dynamic_batch)
