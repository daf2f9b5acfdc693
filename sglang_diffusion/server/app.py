"""The FastAPI app of `sglang serve`: OpenAI-compatible routes over one started Engine.

Layout: routes_info (health, models, model_info), routes_images, routes_videos, routes_lora,
metrics (/metrics and the request middleware). Every /v1 route requires the API key when
one is set; /health, /model_info and /metrics stay open for probes and scrapers.
"""

from __future__ import annotations

import hmac
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sglang_diffusion import __version__
from sglang_diffusion.server import routes_images, routes_info, routes_lora, routes_videos
from sglang_diffusion.server.errors import APIError, error_response, install_error_handlers
from sglang_diffusion.server.state import ServerState


def _api_key_check(api_key: str | None):
    bearer = HTTPBearer(auto_error=False, description="The server's --api-key, when it has one.")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    return check


class BodyLimit:
    """413 for a request body over `limit` bytes: at once from Content-Length, else while it
    streams in, before it is parsed or spooled to disk."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(413, f"the request body is over the limit of {self.limit // 2**20} MiB "
                                           "(max_upload_mb)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            e = self._too_large()
            return await error_response(413, e.detail, code="request_too_large")(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._too_large()
            return message

        await self.app(scope, counted, send)


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.shutdown()

    app = FastAPI(title="sglang-diffusion", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible image and video generation.")
    app.state.server = state
    install_error_handlers(app)
    auth = [Depends(_api_key_check(state.args.api_key))]
    app.include_router(routes_info.router)
    for router in (routes_info.v1_router, routes_images.router, routes_videos.router, routes_lora.router):
        app.include_router(router, dependencies=auth)
    app.add_middleware(BodyLimit, limit=state.args.max_upload_mb * 2**20)
    state.metrics.install(app)  # outermost: it also counts what the body limit refuses
    return app
