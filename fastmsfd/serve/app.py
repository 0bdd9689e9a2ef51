"""The HTTP service behind `fastmsfd serve` (FastAPI on uvicorn): /health, /metadata, /predict, /metrics,
/admin/reload, the page at / and the API docs at /docs (assets served locally)."""
import asyncio
import base64
import io
import itertools
import json
import math
import os
import platform
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
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
from ..monitor import DriftSettings
from ..prediction import explanation
from .auth import TokenMiddleware, check_token, is_loopback
from .batcher import MicroBatcher, Overloaded
from .docs import add_docs
from .limits import BodyLimitMiddleware, BodyTooLarge
from .metrics import ServeMetrics, StatusMiddleware
from .models import ServedModel, load_model, log

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
    token: Optional[str] = field(default=None, repr=False)  # None: no access control (loopback only, auth.py)
    drift: DriftSettings = DriftSettings()


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


def _metadata(served: ServedModel, cfg: ServeConfig) -> dict:
    import fastapi

    from .. import __version__

    det, thr = served.det, served.threshold
    return {"backbone": det.settings.network.backbone, "layers": list(det.layers),
            "input": {"height": det.input_hw[0], "width": det.input_hw[1], "channels": 3, "dtype": "uint8",
                      "resize": f"{det.settings.geometry.resize} (antialiased bilinear)"},
            "threshold": None if math.isnan(thr) else thr, "runtime": det.runtime, "precision": det.precision,
            "fitted": det.fitted, "model": served.describe(),
            "batching": {"max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "max_queue": cfg.max_queue},
            "limits": {"max_body_mb": cfg.max_body_mb, "timeout_s": cfg.timeout_s, "max_pixels": cfg.max_pixels},
            "drift": {"window": cfg.drift.window, "min_images": cfg.drift.min_images, "alpha": cfg.drift.alpha,
                      "clear_alpha": cfg.drift.clear_alpha},
            "access": "token" if cfg.token else "open",
            "versions": {"fastmsfd": __version__, "torch": torch.__version__, "fastapi": fastapi.__version__,
                         "python": platform.python_version()}}


def _drift_changed(served: ServedModel, state) -> None:
    if state.drift:
        log.warning("drift alarm raised: %.1f%% of the last %d images above the threshold (normal parts: about "
                    "%.1f%%), p=%.2g; score distribution against the fit's normal images p=%.2g. Check the camera, "
                    "the lighting and the material (docs/serving.md)", 100 * state.rate, state.images,
                    100 * state.expected_rate, state.p_rate, state.p_shift)
    else:
        log.warning("drift alarm cleared: the last %d scores look like the fit's normal images again", state.images)


def create_app(model, cfg: ServeConfig = ServeConfig(), runtime: str = "auto", precision: Optional[str] = None,
               reload_on_sighup: bool = False, path=None):
    """The ASGI app; model: a Detector or the path of a .fastmsfd file (loaded and warmed up at start-up, and
    /health says ready only then); path: the file a Detector came from (reloads read it again).
    reload_on_sighup: SIGHUP reloads the model's file (needs the event loop in the main thread)."""
    check_token(cfg.token)
    state: dict = {"ready": False}
    metrics = ServeMetrics(cfg.max_batch)

    def run_batch(items: list[tuple[ServedModel, torch.Tensor, float]]):
        """One model call per run of images that arrived for the same model (a reload can split a batch)."""
        out = []
        for served, group in itertools.groupby(items, key=lambda item: item[0]):
            group = list(group)
            t0 = time.perf_counter()
            pred = served.det.predict(torch.stack([u8 for _, u8, _ in group]), batch_size=len(group))
            seconds = time.perf_counter() - t0
            scores = pred.scores.tolist()
            metrics.batch(len(group), [t0 - queued for _, _, queued in group], seconds)
            metrics.scored(scores, served.threshold)
            if served.monitor is not None:
                was = served.monitor.state.drift
                now = served.monitor.update(scores)
                if served is state.get("model"):
                    metrics.drift_state(now)
                if now.drift != was:
                    _drift_changed(served, now)
            out += [(scores[i], pred.heatmaps[i].numpy(), seconds * 1000, len(group),
                     (pred.map_z[i], pred.global_z[i], pred.peaks[i].tolist())) for i in range(len(group))]
        return out

    def use(served: ServedModel) -> None:
        state["model"], state["metadata"] = served, _metadata(served, cfg)
        metrics.model_loaded(served)

    async def reload(path: Optional[str]) -> ServedModel:
        """A new model beside the old one, warmed up, then swapped in between batches; the old one keeps serving
        when the new one fails."""
        async with state["reload_lock"]:
            old = state["model"]
            target = path or old.path
            if target is None:
                raise ApiError(400, "the server runs an in-memory detector: give the new model's path")
            try:
                new = await run_in_threadpool(load_model, target, runtime, precision, cfg.max_batch, cfg.drift)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the old model serving
                metrics.reloads.labels("failed").inc()
                log.error("reload of %s failed, still serving %s: %s", target, old.path, exc)
                raise ApiError(400 if isinstance(exc, (ValueError, OSError, KeyError)) else 500,
                               f"reload of {target} failed; still serving {old.path or 'the in-memory detector'} "
                               f"(sha256 {old.sha256}): {exc}") from None
            use(new)
            metrics.reloads.labels("ok").inc()
            log.warning("reloaded %s (sha256 %s) in %.1f s", new.path, new.sha256, new.load_seconds)
            return new

    async def on_sighup():
        try:
            await reload(None)
        except ApiError as exc:
            log.error("SIGHUP: %s", exc.message)

    @asynccontextmanager
    async def lifespan(app):
        use(await run_in_threadpool(load_model, model, runtime, precision, cfg.max_batch, cfg.drift, path))
        state["reload_lock"] = asyncio.Lock()
        # decoding and PNG encoding: a small pool of its own (a thread per core), not one thread per request
        state["cpu_pool"] = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="fastmsfd-decode")
        state["batcher"] = batcher = MicroBatcher(run_batch, cfg.max_batch, cfg.max_wait_ms, cfg.max_queue)
        batcher.start()
        metrics.queue_depth.set_function(lambda: batcher.pending)
        loop, hup = asyncio.get_running_loop(), False
        if reload_on_sighup:
            try:
                loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(on_sighup()))
                hup = True
            except (ValueError, RuntimeError, NotImplementedError) as exc:  # not the main thread, or Windows
                log.warning("SIGHUP will not reload the model (%s); POST /admin/reload does", exc)
        state["ready"] = True
        yield
        state["ready"] = False
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        await batcher.stop()  # in-flight and queued images finish first
        state["cpu_pool"].shutdown(wait=True)

    app = FastAPI(title="fastmsfd", summary="Multi-Scale Feature Distillation anomaly detection",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(cfg.max_body_mb * 1024 * 1024))
    app.add_middleware(TokenMiddleware, token=cfg.token)
    app.add_middleware(StatusMiddleware, metrics=metrics)  # outermost: refused requests are counted too
    add_docs(app)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request, exc: BodyTooLarge):
        return _error(413, str(exc))

    @app.get("/health", summary="ready once the model is loaded and warmed up; the drift alarm's state")
    async def health():
        if not state["ready"]:
            return _error(503, "loading")
        return {"status": "ready", "pending_images": state["batcher"].pending, "drift": state["model"].drift()}

    @app.get("/metadata", summary="backbone, input geometry, threshold, runtime, precision, the model file's hash "
                                  "and load time, versions")
    async def metadata():
        if "metadata" not in state:
            raise ApiError(503, "the model is still loading")
        return state["metadata"]

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def prometheus():
        body, ctype = metrics.exposition()
        return Response(body, media_type=ctype)

    @app.post("/admin/reload", summary="load a model file (the same path by default) beside the running one, warm "
                                       "it up and switch to it between batches; JSON body {\"path\": ...} optional")
    async def admin_reload(request: Request):
        if not state["ready"]:
            raise ApiError(503, "the model is still loading", {"Retry-After": "1"})
        if cfg.token is None and not is_loopback(request.client.host if request.client else ""):
            raise ApiError(403, "without --token, /admin/reload is accepted from loopback only")
        body = await request.body()
        try:
            path = (json.loads(body) if body.strip() else {}).get("path")
        except (ValueError, AttributeError):
            raise ApiError(400, 'the body must be empty or JSON {"path": "model.fastmsfd"}') from None
        if path is not None and not isinstance(path, str):
            raise ApiError(400, f"path must be a string, got {path!r}")
        served = await reload(path)
        return {"status": "reloaded", "model": served.describe()}

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
        t_start = time.perf_counter()
        files = await uploads(request)
        if len(files) > cfg.max_queue:
            raise ApiError(413, f"{len(files)} images in one request; at most {cfg.max_queue} (--max-queue)")
        served = state["model"]  # this request runs on this model to the end, whatever a reload does meanwhile
        S, resize = served.det.input_hw, served.det.settings.geometry.resize
        loop = asyncio.get_running_loop()
        try:
            decoded = [await loop.run_in_executor(state["cpu_pool"], _decode, data, name, S, cfg.max_pixels, resize)
                       for name, data in files]
        except ApiError:
            metrics.images.labels("rejected").inc()
            raise
        try:
            queued = time.perf_counter()
            results = await asyncio.wait_for(state["batcher"].submit([(served, u8, queued) for u8, _ in decoded]),
                                             cfg.timeout_s)
        except Overloaded as exc:
            metrics.images.labels("failed").inc(len(decoded))
            raise ApiError(503, f"busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            metrics.images.labels("failed").inc(len(decoded))
            raise ApiError(504, f"no result within {cfg.timeout_s} s (the server is overloaded)") from None
        thr = served.threshold if threshold is None else threshold
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
        metrics.request_latency.observe(time.perf_counter() - t_start)
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
