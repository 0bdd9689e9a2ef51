"""/docs and /redoc without internet: Swagger UI's and ReDoc's scripts and styles come from the fastapi-offline
package (installed with the serve extra; only its files are used), not from a CDN, so the pages work on an
isolated line network."""
from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, Response

ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
PREFIX = "/docs-assets"


def docs_assets():
    """The folder of Swagger UI's and ReDoc's files, or None without fastapi-offline."""
    try:
        folder = resources.files("fastapi_offline") / "static"
    except ModuleNotFoundError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _missing() -> JSONResponse:
    return JSONResponse({"error": "the API pages need fastapi-offline (pip install 'fastmsfd[serve]'); the API "
                                  "itself is described at /openapi.json", "status": 404}, 404)


def add_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    async def swagger():
        if docs_assets() is None:
            return _missing()
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{PREFIX}/swagger-ui.css",
                                   swagger_favicon_url=f"{PREFIX}/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        if docs_assets() is None:
            return _missing()
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                              redoc_js_url=f"{PREFIX}/redoc.standalone.js", redoc_favicon_url=f"{PREFIX}/favicon.png",
                              with_google_fonts=False)

    @app.get(PREFIX + "/{name}", include_in_schema=False)
    async def asset(name: str):
        folder = docs_assets()
        if name not in ASSETS or folder is None:
            return JSONResponse({"error": f"no asset {name!r}", "status": 404}, 404)
        return Response((folder / name).read_bytes(), media_type=ASSETS[name],
                        headers={"cache-control": "public, max-age=86400"})
