"""The HTTP service behind `fastmsfd serve` (FastAPI on uvicorn): /health, /metadata, /predict, the page at /."""
import asyncio
import base64
import io
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch

try:
    from fastapi import FastAPI, Query, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
except ImportError as exc:  # the serve extra is optional
    raise ImportError(f"fastmsfd serve needs FastAPI, uvicorn and python-multipart ({exc}): "
                      "pip install 'fastmsfd[serve]'") from None

from ..geometry import content_box
from ..prediction import explanation
from .batcher import MicroBatcher, Overloaded
from .limits import BodyLimitMiddleware, BodyTooLarge

IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp", "image/x-portable-graymap",
               "image/x-portable-pixmap")


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_body_mb: float = 50.0
    max_queue: int = 64          # images waiting for the model; beyond it requests get 503 + Retry-After
    timeout_s: float = 30.0      # per request, queueing and inference together
    max_pixels: int = 50_000_000  # per decoded image (decompression bombs, huge dimensions)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _error(status: int, message: str, headers: Optional[dict] = None):
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _decode(data: bytes, name: str, size: int, max_pixels: int, resize: str):
    """uint8 (3, H, W) for the model, the original (H, W); ApiError 400 naming the upload and the problem."""
    from ..data import decode_bytes_resized
    from ..errors import ImageDecodeError

    try:
        return decode_bytes_resized(data, name, size, max_pixels, resize)
    except ImageDecodeError as exc:
        raise ApiError(400, str(exc)) from None


def _heatmap_png(image_u8: torch.Tensor, heat: np.ndarray, threshold: float, box) -> str:
    from PIL import Image

    from ..viz import overlay, overlay_vmax

    top, left, h, w = box  # resize="keep_aspect": the padding is not part of the image
    image_u8, heat = image_u8[:, top:top + h, left:left + w], heat[top:top + h, left:left + w]
    png = io.BytesIO()
    Image.fromarray(overlay(image_u8.permute(1, 2, 0).numpy(), heat, overlay_vmax(threshold, [heat]))).save(
        png, format="PNG")
    return base64.b64encode(png.getvalue()).decode("ascii")


def _metadata(det, cfg: ServeConfig) -> dict:
    import fastapi

    from .. import __version__

    thr = float(det.threshold)
    return {"backbone": det.settings.network.backbone, "layers": list(det.layers),
            "input": {"height": det.input_hw[0], "width": det.input_hw[1], "channels": 3, "dtype": "uint8",
                      "resize": f"{det.settings.geometry.resize} (antialiased bilinear)"},
            "threshold": None if math.isnan(thr) else thr, "runtime": det.runtime, "precision": det.precision,
            "fitted": det.fitted, "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms,
                                               "max_queue": cfg.max_queue},
            "limits": {"max_body_mb": cfg.max_body_mb, "timeout_s": cfg.timeout_s, "max_pixels": cfg.max_pixels},
            "versions": {"fastmsfd": __version__, "torch": torch.__version__, "fastapi": fastapi.__version__,
                         "python": platform.python_version()}}


def create_app(model, cfg: ServeConfig = ServeConfig(), runtime: str = "auto", precision: Optional[str] = None):
    """The ASGI app; model: a Detector or the path of a .fastmsfd file (loaded and warmed up at start-up, and
    /health says ready only then)."""
    from ..detector import Detector

    state: dict = {"ready": False}

    def run_batch(images: list[torch.Tensor]):
        det = state["det"]
        t0 = time.perf_counter()
        pred = det.predict(torch.stack(images), batch_size=len(images))
        ms = (time.perf_counter() - t0) * 1000
        return [(float(pred.scores[i]), pred.heatmaps[i].numpy(), ms, len(images),
                 (pred.map_z[i], pred.global_z[i], pred.peaks[i].tolist())) for i in range(len(images))]

    @asynccontextmanager
    async def lifespan(app):
        def load():
            det = Detector.load(model, runtime=runtime, precision=precision) if isinstance(model, (str, Path)) \
                else model
            det.eval()
            H, W = det.input_hw
            # warm-up: every batch size the batcher can form runs once, so the runtime's per-shape memory is
            # allocated before /health says ready
            for n in range(1, cfg.max_batch + 1):
                det.predict(torch.zeros(n, 3, H, W, dtype=torch.uint8), batch_size=n)
            return det

        state["det"] = await run_in_threadpool(load)
        # decoding and PNG encoding: a small pool of its own (a thread per core), not one thread per request
        state["cpu_pool"] = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="fastmsfd-decode")
        state["metadata"] = _metadata(state["det"], cfg)
        state["batcher"] = batcher = MicroBatcher(run_batch, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue)
        batcher.start()
        state["ready"] = True
        yield
        state["ready"] = False
        await batcher.stop()  # in-flight and queued images finish first
        state["cpu_pool"].shutdown(wait=True)

    app = FastAPI(title="fastmsfd", summary="Multi-Scale Feature Distillation anomaly detection",
                  lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(cfg.max_body_mb * 1024 * 1024))

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request, exc: BodyTooLarge):
        return _error(413, str(exc))

    @app.get("/health", summary="ready once the model is loaded and warmed up")
    async def health():
        if not state["ready"]:
            return _error(503, "loading")
        return {"status": "ready", "pending_images": state["batcher"].pending}

    @app.get("/metadata", summary="backbone, input geometry, threshold, runtime, precision and versions")
    async def metadata():
        if "metadata" not in state:
            raise ApiError(503, "the model is still loading")
        return state["metadata"]

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_files=cfg.max_queue + 1, max_fields=cfg.max_queue + 1)
            files = [(getattr(f, "filename", None) or f"file[{i}]", f) for i, f in enumerate(form.getlist("file"))]
            if not files:
                raise ApiError(400, "multipart request without a 'file' field: send the image(s) as field 'file'")
            out = []
            for name, f in files:
                if isinstance(f, str):
                    raise ApiError(400, f"field 'file' ({name}) is text, not an uploaded file")
                out.append((name, await f.read()))
            return out
        if ctype.startswith("image/"):
            return [("body", await request.body())]
        raise ApiError(415, f"unsupported Content-Type {ctype or '(none)'!r}: send raw image bytes with an image "
                            "Content-Type (image/png, image/jpeg, ...) or multipart/form-data with field 'file'")

    @app.post("/predict", summary="score images: raw bytes with an image Content-Type, or multipart field(s) "
                                  "'file'; ?heatmap=png adds a base64 PNG overlay")
    async def predict(request: Request, heatmap: Optional[str] = Query(None, pattern="^png$"),
                      threshold: Optional[float] = Query(None, description="override the model's threshold")):
        if not state["ready"]:
            raise ApiError(503, "the model is still loading", {"Retry-After": "1"})
        if threshold is not None and not math.isfinite(threshold):
            raise ApiError(422, f"threshold must be a finite number, got {threshold}")
        files = await uploads(request)
        if len(files) > cfg.max_queue:
            raise ApiError(413, f"{len(files)} images in one request; at most {cfg.max_queue} (--max-queue)")
        S, resize = state["det"].input_hw, state["det"].settings.geometry.resize
        loop = asyncio.get_running_loop()
        decoded = [await loop.run_in_executor(state["cpu_pool"], _decode, data, name, S, cfg.max_pixels, resize)
                   for name, data in files]
        try:
            results = await asyncio.wait_for(state["batcher"].submit([u8 for u8, _ in decoded]), cfg.timeout_s)
        except Overloaded as exc:
            raise ApiError(503, f"busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"no result within {cfg.timeout_s} s (the server is overloaded)") from None
        thr = float(state["det"].threshold) if threshold is None else threshold
        out = []
        for (name, _), (u8, (h, w)), (score, heat, ms, batch, parts) in zip(files, decoded, results):
            box = content_box((h, w), S, resize)
            item = {"name": name, "score": score, "label": None if math.isnan(thr) else bool(score > thr),
                    "threshold": None if math.isnan(thr) else thr, "inference_ms": round(ms, 3), "batch": batch,
                    "width": int(w), "height": int(h), "explanation": explanation(*parts, box, (h, w))}
            if heatmap == "png":
                item["heatmap_png"] = await loop.run_in_executor(state["cpu_pool"], _heatmap_png, u8, heat, thr,
                                                                 box)
            out.append(item)
        return {"results": out}

    static = resources.files("fastmsfd.serve") / "static"

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        types = {"app.js": "text/javascript", "app.css": "text/css"}
        if name not in types:
            raise ApiError(404, f"no asset {name!r}")
        return Response((static / name).read_bytes(), media_type=types[name])

    return app
