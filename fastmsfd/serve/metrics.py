"""The service's Prometheus metrics (prometheus-client), one registry per app: requests and images by outcome,
latency histograms, batches, queue depth, the model in use, the anomaly rate and the drift alarm.
docs/serving.md lists them with a scrape config and Grafana queries."""
from __future__ import annotations

from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# score minus threshold: the fused score is in units of normal images' spread, so a few units either side
RELATIVE = (-8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
ENDPOINTS = ("/predict", "/health", "/metadata", "/metrics", "/admin/reload", "/", "/login", "/docs",
             "/openapi.json")
ANOMALY_WINDOW = 200  # images the anomaly-rate gauge looks back over


class ServeMetrics:
    def __init__(self, max_batch: int):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("fastmsfd_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.images = Counter("fastmsfd_images", "images by outcome: normal, anomalous, unlabelled (no threshold), "
                                                 "rejected (undecodable), failed (not answered)", ["outcome"],
                              registry=r)
        self.queue_wait = Histogram("fastmsfd_queue_wait_seconds", "from an image's arrival in the queue to the "
                                    "start of its model call", buckets=SECONDS, registry=r)
        self.inference = Histogram("fastmsfd_inference_seconds", "one model call (a batch)", buckets=SECONDS,
                                   registry=r)
        self.request_latency = Histogram("fastmsfd_request_seconds", "a /predict request from its body's arrival "
                                         "to its answer", buckets=SECONDS, registry=r)
        self.batch_size = Histogram("fastmsfd_batch_size", "images per model call",
                                    buckets=tuple(float(b) for b in range(1, max_batch + 1)), registry=r)
        self.queue_depth = Gauge("fastmsfd_queue_depth", "images queued or running", registry=r)
        self.load_seconds = Gauge("fastmsfd_model_load_seconds", "loading and warming up the model in use",
                                  registry=r)
        self.loaded_at = Gauge("fastmsfd_model_loaded_timestamp_seconds", "when the model in use was loaded",
                               registry=r)
        self.reloads = Counter("fastmsfd_reloads", "model reloads by outcome", ["outcome"], registry=r)
        self.anomaly_rate = Gauge("fastmsfd_anomaly_rate", f"share of the last {ANOMALY_WINDOW} images above the "
                                  "threshold", registry=r)
        self.relative_score = Histogram("fastmsfd_score_minus_threshold", "image score minus the model's "
                                        "threshold (> 0: anomalous)", buckets=RELATIVE, registry=r)
        self.model_info = Info("fastmsfd_model", "the model in use: file, hash, runtime, precision", registry=r)
        self.drift = Gauge("fastmsfd_drift", "1 while the drift alarm is raised", registry=r)
        self.drift_p = Gauge("fastmsfd_drift_p_value", "the drift tests' p-values (rate: share above the threshold; "
                             "shift: Kolmogorov-Smirnov)", ["test"], registry=r)
        self.drift_window = Gauge("fastmsfd_drift_window_images", "scores in the drift window", registry=r)
        self._labels: deque[bool] = deque(maxlen=ANOMALY_WINDOW)

    def model_loaded(self, model) -> None:
        self.load_seconds.set(model.load_seconds)
        self.loaded_at.set(model.loaded_at)
        det = model.det
        self.model_info.info({"path": str(model.path or ""), "sha256": model.sha256 or "",
                              "runtime": det.runtime, "precision": det.precision,
                              "backbone": det.settings.network.backbone, "layers": ",".join(det.layers)})
        self.drift_state(None)

    def batch(self, n: int, waits: list[float], seconds: float) -> None:
        self.batch_size.observe(n)
        self.inference.observe(seconds)
        for w in waits:
            self.queue_wait.observe(w)

    def scored(self, scores, threshold: float) -> None:
        if threshold != threshold:  # NaN: no threshold, no label
            self.images.labels("unlabelled").inc(len(scores))
            return
        for s in scores:
            anomalous = s > threshold
            self.images.labels("anomalous" if anomalous else "normal").inc()
            self.relative_score.observe(s - threshold)
            self._labels.append(anomalous)
        self.anomaly_rate.set(sum(self._labels) / len(self._labels))

    def drift_state(self, state) -> None:
        """state: a monitor.DriftState, or None (no verdict yet, or no monitor)."""
        self.drift.set(1 if state is not None and state.drift else 0)
        self.drift_window.set(0 if state is None else state.images)
        for test in ("rate", "shift"):
            p = None if state is None else getattr(state, f"p_{test}")
            self.drift_p.labels(test).set(float("nan") if p is None else p)

    def response(self, path: str, code: int) -> None:
        self.requests.labels(path if path in ENDPOINTS else "other", str(code)).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StatusMiddleware:
    """Counts every response by endpoint and status code (ASGI: the status is in the response's start)."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counting_send(message):
            if message["type"] == "http.response.start":
                self.metrics.response(scope["path"], message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)
