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
          precision: str | None = None, log_level: str = "info", *, token: str | None = None,
          insecure_no_token: bool = False, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
          path=None) -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests finish before it exits. SIGHUP reloads the model
    file. token (else cfg.token, else $FASTMSFD_TOKEN): required beyond loopback unless insecure_no_token.
    ssl_certfile/ssl_keyfile: HTTPS (uvicorn's TLS)."""
    import dataclasses
    import os

    import uvicorn

    from .app import ServeConfig, create_app
    from .auth import TOKEN_ENV, check_bind

    cfg = cfg or ServeConfig()
    token = token or cfg.token or os.environ.get(TOKEN_ENV) or None
    check_bind(host, token, insecure_no_token)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise ValueError("HTTPS needs both ssl_certfile and ssl_keyfile (--ssl-certfile, --ssl-keyfile)")
    for f in (ssl_certfile, ssl_keyfile):
        if f and not os.path.isfile(f):
            raise FileNotFoundError(f"{f}: no such TLS certificate or key file")
    app = create_app(model, dataclasses.replace(cfg, token=token), runtime, precision, reload_on_sighup=True,
                     path=path)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=max(cfg.timeout_s, 1),
                ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
