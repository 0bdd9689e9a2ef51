"""`fastmsfd serve`: the detector as an HTTP service (FastAPI + uvicorn) with micro-batching and a web page.

Optional extra: pip install fastmsfd[serve]. Importing this package needs FastAPI only when create_app or serve
is used."""
from __future__ import annotations

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name):
    if name in ("ServeConfig", "create_app"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)


def serve(model, host: str = "127.0.0.1", port: int = 8000, cfg=None, runtime: str = "auto",
          precision: str | None = None, log_level: str = "info") -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests finish before it exits."""
    import uvicorn

    from .app import ServeConfig, create_app

    cfg = cfg or ServeConfig()
    uvicorn.run(create_app(model, cfg, runtime, precision), host=host, port=port, log_level=log_level,
                timeout_graceful_shutdown=max(cfg.timeout_s, 1))
