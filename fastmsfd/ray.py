"""Batch inference on Ray Data: list and read image files (a local folder, or any path Ray Data reads, such as
object storage on a cluster), decode them in parallel tasks, score them in a pool of actors (one Detector each,
batched), and return a Ray Dataset with the columns of `fastmsfd predict`'s scores.csv.

    from fastmsfd import ray as fray
    ds = fray.predict("s3://bucket/line7/", "model.fastmsfd")       # a ray.data.Dataset, lazily computed
    ds.write_csv("s3://bucket/line7-scores/")

Optional extra: pip install fastmsfd[ray]. docs/scale-out.md has the cluster set-up and measurements.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .batch import SCORE_COLUMNS

DECODE_BATCH = 16


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"fastmsfd's Ray path needs Ray Data ({exc}): pip install 'fastmsfd[ray]'") from None
    return ray


def init(address: str | None = "local", num_cpus: int | None = None):
    """Connect to a cluster (an address such as "ray://head:10001" or "auto") or start a local one ("local")."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    if address in (None, "local"):
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return ray


def model_settings(model_path: str | os.PathLike):
    """The checkpoint's settings (config.DetectorConfig), read (and checked) before any work starts: a missing or
    broken file is a CheckpointError naming it here, not a failure in every actor."""
    from .checkpoint import read_settings

    return read_settings(model_path)


def decode_batch(batch: dict[str, Any], image_size: int | Sequence[int], resize: str = "squash") -> dict[str, Any]:
    """Ray Data task: raw file bytes -> uint8 (3, S, S) images; an unreadable file gets its error, not a crash."""
    from .data import as_hw, decode_bytes_resized
    from .errors import FastMSFDError

    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), 3, *as_hw(image_size)), np.uint8)
    errors = [""] * len(paths)
    sizes = np.zeros((len(paths), 2), np.int64)  # each image's own (height, width): where its heatmap peaks
    for i, (path, data) in enumerate(zip(paths, batch["bytes"])):
        try:
            image, sizes[i] = decode_bytes_resized(bytes(data), path, image_size, resize=resize)
            images[i] = image.numpy()
        except FastMSFDError as exc:
            errors[i] = str(exc)
    return {"path": np.array(paths, dtype=object), "image": images, "size": sizes,
            "error": np.array(errors, dtype=object)}


class DetectorActor:
    """One Detector per actor; __call__ scores a batch of decoded images (rows with an error pass through)."""

    def __init__(self, model_path: str, runtime: str = "auto", threads: int | None = None,
                 heatmaps: str | None = None, heatmap_dir: str | None = None):
        import torch

        from .detector import Detector

        if threads:
            torch.set_num_threads(threads)
        self.det = Detector.load(model_path, runtime=runtime)
        self.det.eval()
        self.heatmaps, self.heatmap_dir = heatmaps, heatmap_dir
        if heatmap_dir:
            Path(heatmap_dir).mkdir(parents=True, exist_ok=True)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        from .geometry import content_box
        from .prediction import explanation

        n = len(batch["path"])
        errors = [str(e) for e in batch["error"]]
        ok = [i for i in range(n) if not errors[i]]
        scores = np.full(n, np.nan, np.float64)
        labels: list[Any] = [None] * n
        parts = np.full((n, 4), np.nan, np.float64)  # map_z, global_z, peak_x, peak_y
        heat_ref = [""] * n
        if ok:
            images = torch.from_numpy(np.ascontiguousarray(np.stack([batch["image"][i] for i in ok])))
            pred = self.det.predict(images, batch_size=len(ok))
            scores[ok] = pred.scores.double().numpy()
            for j, i in enumerate(ok):
                box = content_box(tuple(batch["size"][i]), self.det.input_hw, self.det.settings.geometry.resize)
                x = explanation(pred.map_z[j], pred.global_z[j], pred.peaks[j].tolist(), box,
                                tuple(batch["size"][i]))
                parts[i] = [x["map_z"], np.nan if x["global_z"] is None else x["global_z"], x["peak"]["x"],
                            x["peak"]["y"]]
            if pred.labels is not None:
                for j, i in enumerate(ok):
                    labels[i] = bool(pred.labels[j])
            if self.heatmaps:
                for i, ref in zip(ok, self._write_heatmaps(pred.heatmaps.numpy(), [batch["path"][i] for i in ok])):
                    heat_ref[i] = ref
        out = {"path": np.array([str(p) for p in batch["path"]], dtype=object), "score": scores,
               "anomalous": np.array(labels, dtype=object), "map_z": parts[:, 0], "global_z": parts[:, 1],
               "peak_x": parts[:, 2], "peak_y": parts[:, 3], "error": np.array(errors, dtype=object)}
        if self.heatmaps:
            out["heatmap"] = np.array(heat_ref, dtype=object)
        return out

    def _write_heatmaps(self, heat: np.ndarray, paths: Sequence[str]) -> list[str]:
        """npy: one float16 (B, S, S) shard per batch, referenced as 'shard.npy#index'; png: one 8-bit PNG per image
        (heatmap / (2 * threshold), so the threshold sits mid-grey)."""
        from .checkpoint import atomic_path

        folder = Path(self.heatmap_dir)
        if self.heatmaps == "npy":
            shard = folder / f"heatmaps-{uuid.uuid4().hex[:12]}.npy"
            with atomic_path(shard, suffix=".npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, heat.astype(np.float16))
            return [f"{shard}#{i}" for i in range(len(paths))]
        from PIL import Image

        thr = float(self.det.threshold)
        scale = 2 * thr if np.isfinite(thr) and thr > 0 else float(heat.max()) or 1.0
        refs = []
        for h, p in zip(heat, paths):
            out = folder / f"{Path(p).stem}-{uuid.uuid4().hex[:8]}.png"
            with atomic_path(out, suffix=".png") as tmp:
                Image.fromarray((np.clip(h / scale, 0, 1) * 255).astype(np.uint8)).save(tmp, format="PNG")
            refs.append(str(out))
        return refs


def _actor_plan(ray, actors: int | None, cpus_per_actor: float | None) -> tuple[int, float, float, int]:
    """(actors, CPUs reserved each, GPUs each, inference threads each) from the cluster's resources unless given:
    one actor per GPU; on CPUs, one actor per 4 CPUs with a CPU left for the decoding tasks. Decoding is light,
    so the actors' threads share all the CPUs between them (the reserved ones and the decoding one)."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 1))
    if gpus:
        n = actors or gpus
        return n, cpus_per_actor or 1.0, 1.0, max(1, cpus // n)
    per = cpus_per_actor or float(max(1, min(4, cpus - 1)))
    n = actors or max(1, int((cpus - 1) // per))
    return n, per, 0.0, max(1, cpus // n)


def predict(paths_or_dataset, model_path: str | os.PathLike, batch_size: int = 16, actors: int | None = None,
            cpus_per_actor: float | None = None, runtime: str = "auto", heatmaps: str | None = None,
            heatmap_dir: str | os.PathLike | None = None, address: str | None = None,
            actor_cls: type = DetectorActor, threads: int | None = None):
    """A Ray Dataset of (path, score, anomalous, error[, heatmap]) rows, one per image file.

    paths_or_dataset: a folder, a file, a list of them (local paths or any URI Ray Data reads), or a Ray Dataset
    with columns "path" and "bytes" (what ray.data.read_binary_files(..., include_paths=True) gives).
    actors / cpus_per_actor: the actor pool (default: from the cluster's CPUs and GPUs, see _actor_plan).
    heatmaps: None, "npy" or "png", written under heatmap_dir. address: a cluster to connect to when Ray is not
    initialised yet (default: a local one). An actor that dies is restarted by Ray Data and its batch
    retried (Ray Data's actor-pool default). threads: inference threads per actor (default: the cluster's CPUs
    shared between the actors, see _actor_plan). actor_cls: DetectorActor or a subclass (to post-process each
    batch, for example)."""
    if heatmaps not in (None, "npy", "png"):
        raise ValueError(f"heatmaps must be None, 'npy' or 'png', got {heatmaps!r}")
    if heatmaps and not heatmap_dir:
        raise ValueError("heatmaps needs heatmap_dir (where to write them)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model_path = str(model_path)
    geometry = model_settings(model_path).geometry
    size, resize = geometry.image_size, geometry.resize
    ray = init(address or "local")
    if isinstance(paths_or_dataset, ray.data.Dataset):
        ds = paths_or_dataset
    else:
        items = [paths_or_dataset] if isinstance(paths_or_dataset, (str, os.PathLike)) else list(paths_or_dataset)
        if not items:
            raise ValueError("no input paths")
        ds = ray.data.read_binary_files([str(p) for p in items], include_paths=True, file_extensions=[
            e.lstrip(".") for e in _extensions()], ignore_missing_paths=False)
    n_actors, cpus, gpus, actor_threads = _actor_plan(ray, actors, cpus_per_actor)
    decoded = ds.map_batches(decode_batch, fn_kwargs={"image_size": size, "resize": resize},
                             batch_size=DECODE_BATCH)
    return decoded.map_batches(
        actor_cls, fn_constructor_kwargs=dict(model_path=model_path, runtime=runtime,
                                                  threads=threads or actor_threads,
                                                  heatmaps=heatmaps,
                                                  heatmap_dir=None if heatmap_dir is None else str(heatmap_dir)),
        batch_size=batch_size, concurrency=n_actors, num_cpus=cpus, num_gpus=gpus)


def _extensions() -> tuple[str, ...]:
    from .data import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)


def rows_to_scores(rows: Sequence[dict], order: Sequence[str] | None = None):
    """batch.FileScore objects from the dataset's rows, in `order` (paths) where given, else sorted by path."""
    from .batch import FileScore

    by_path = {}
    for r in rows:
        score = r["score"]
        ok = not r["error"] and score is not None and np.isfinite(score)
        parts = None
        if ok:
            g = r["global_z"]
            parts = {"map_z": float(r["map_z"]), "global_z": None if g is None or np.isnan(g) else float(g),
                     "peak": {"x": int(r["peak_x"]), "y": int(r["peak_y"])}}
        by_path[_local(str(r["path"]))] = FileScore(_local(str(r["path"])), float(score) if ok else None,
                                                    r["anomalous"] if ok else None, str(r["error"] or ""), parts)
    keys = [_local(str(p)) for p in order] if order is not None else sorted(by_path)
    return [by_path[k] for k in keys if k in by_path]


def _local(path: str) -> str:
    return path[len("local://"):] if path.startswith("local://") else path


__all__ = ["predict", "init", "DetectorActor", "decode_batch", "rows_to_scores", "SCORE_COLUMNS"]
