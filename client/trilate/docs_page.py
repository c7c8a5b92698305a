"""The OpenAPI pages (``/docs``, ``/redoc``) served without the internet.

FastAPI's default pages load Swagger UI's script and stylesheet (and ReDoc's script, and a favicon)
from public CDNs, so in an air-gapped cluster ``/docs`` is an empty white page.  Here the same pages
are served from the pinned ``fastapi-offline`` package's copies of Swagger UI 5 and ReDoc 2 (Swagger
UI 5 is the first to render OpenAPI 3.1, which FastAPI writes), mounted under ``STATIC_URL``.

    app = FastAPI(...)
    install_offline_docs(app)      # replaces FastAPI's /docs, /docs/oauth2-redirect and /redoc
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' `Request` annotation at run time.
from pathlib import Path

STATIC_URL = "/docs-static"
# Swagger UI validates the spec against a public service by default; off, so nothing leaves the machine.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def assets_directory() -> Path:
    """The folder of ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``, ``favicon.png``."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install_offline_docs(app, static_url: str = STATIC_URL) -> None:
    """Serve ``app``'s ``/docs`` and ``/redoc`` from local assets instead of FastAPI's CDN pages.

    Keeps the app's own ``docs_url``, ``redoc_url``, ``openapi_url`` and oauth2 redirect paths; honours
    ``root_path`` (behind a proxy that strips a prefix) like FastAPI does.
    """
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles
    from starlette.requests import Request
    from starlette.responses import HTMLResponse

    docs_url, redoc_url, oauth2_url = app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url
    replaced = {docs_url, redoc_url, oauth2_url} - {None}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in replaced]
    app.openapi_schema = None  # routes changed; FastAPI rebuilds the schema on the next request
    app.mount(static_url, StaticFiles(directory=assets_directory()), name="docs-static")
    parameters = {**(app.swagger_ui_parameters or {}), **SWAGGER_PARAMETERS}

    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    if docs_url:
        async def swagger_ui(request: Request) -> HTMLResponse:
            root = prefix(request)
            return get_swagger_ui_html(
                openapi_url=root + app.openapi_url, title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=root + oauth2_url if oauth2_url else None,
                swagger_js_url=f"{root}{static_url}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{static_url}/swagger-ui.css",
                swagger_favicon_url=f"{root}{static_url}/favicon.png",
                swagger_ui_parameters=parameters,
            )

        app.add_api_route(docs_url, swagger_ui, methods=["GET"], include_in_schema=False)
        if oauth2_url:
            async def oauth2_redirect() -> HTMLResponse:
                return get_swagger_ui_oauth2_redirect_html()

            app.add_api_route(oauth2_url, oauth2_redirect, methods=["GET"], include_in_schema=False)
    if redoc_url:
        async def redoc(request: Request) -> HTMLResponse:
            root = prefix(request)
            return get_redoc_html(
                openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{static_url}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{static_url}/favicon.png", with_google_fonts=False,
            )

        app.add_api_route(redoc_url, redoc, methods=["GET"], include_in_schema=False)
