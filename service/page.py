"""The web page at `/` (service/static: plain HTML, CSS and JavaScript against the API) and the
API's own documentation at `/docs`, Swagger UI from files in the installed package: both work
with no network beyond the service."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
SWAGGER = Path(str(importlib.resources.files("fastapi_swagger") / "resources"))  # Swagger UI 5 (OpenAPI 3.1)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(SWAGGER / "favicon-32x32.png", media_type="image/png")


@router.get("/docs")
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json", title="ragtune API", swagger_js_url="/static/swagger/swagger-ui-bundle.js",
        swagger_css_url="/static/swagger/swagger-ui.css", swagger_favicon_url="/static/swagger/favicon-32x32.png",
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER), name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
