"""The ASGI layers in front of the routes. Each answers from the request line and headers alone,
before a byte of the body is read: the drain gate (503 while shutting down), the API key (401),
the body limit (413). The metrics layer (metrics.py) wraps them all, so it counts their answers.
"""

from __future__ import annotations

import hmac
import threading
from typing import Callable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sglang_diffusion.server.errors import error_response

# Behind the API key besides /v1: the API's own description. /health, /model_info and /metrics stay
# open for probes and scrapers.
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
READ_METHODS = ("GET", "HEAD")


def needs_key(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/") or path in DOC_PATHS


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of `Authorization: Bearer TOKEN`; the scheme is case-insensitive (RFC 7235)."""
    value = dict(headers).get(b"authorization", b"")
    scheme, _, token = value.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


class Gate:
    """While draining, 503 with Retry-After for everything but reads (GET/HEAD: polling a job,
    fetching a file) and /health; with an API key, 401 for /v1 and the docs without it."""

    def __init__(self, app: ASGIApp, api_key: str | None, draining: threading.Event,
                 retry_after_s: Callable[[], int]):
        self.app, self.draining, self.retry_after_s = app, draining, retry_after_s
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if self.draining.is_set() and scope["method"] not in READ_METHODS and path != "/health":
                response = error_response(503, "the server is shutting down; retry on another server or later",
                                          type="server_error", code="shutting_down",
                                          headers={"Retry-After": str(self.retry_after_s())})
                return await response(scope, receive, send)
            if self.key is not None and needs_key(path):
                token = bearer_token(scope["headers"])
                if token is None or not hmac.compare_digest(token, self.key):
                    response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                              code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                    return await response(scope, receive, send)
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a request body over `limit` bytes: at once from Content-Length, else while it
    streams in, before it is parsed or spooled to disk."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    def _message(self) -> str:
        return f"the request body is over the limit of {self.limit // 2**20} MiB (max_upload_mb)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await error_response(413, self._message(), code="request_too_large")(scope, receive, send)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)
