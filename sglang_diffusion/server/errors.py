"""OpenAI-style error bodies, `{"error": {"message", "type", "param", "code"}}`, for every failure.

Status codes: 400 a malformed request (missing or mistyped field, value out of range, size not
"WxH", a float that is not finite); 401 a missing or wrong API key; 403 a LoRA path outside the
allowed directories; 404 an unknown route or job; 409 a video not finished yet; 413 a body or
upload over the limit; 422 a well-formed request this model or server cannot serve (an image
for a text-only model, a size it does not make, a LoRA adapter it cannot load); 429 the queue is full (with Retry-After); 503
shutting down (with Retry-After). A bug answers 500 with no internals in the body; the traceback
goes to the log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sglang_diffusion.errors import ConfigError, InvalidRequestError, ModelLoadError

logger = logging.getLogger(__name__)

INVALID_REQUEST = "invalid_request_error"
_DESCRIPTIONS = {400: "Malformed request", 401: "Missing or wrong API key", 403: "Path not allowed",
                 404: "Not found", 409: "Not ready", 413: "Body or upload too large",
                 422: "Not servable by this model or server", 429: "Queue full (see Retry-After)",
                 503: "Shutting down (see Retry-After)"}
# What any route can answer: a bad body or query, the body limit, the drain gate.
COMMON_STATUSES = (400, 413, 503)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_responses(*statuses: int) -> dict:
    """`responses=` for a route: the error statuses it can answer besides COMMON_STATUSES, each with
    the error body (401 is added to every route behind the API key when the server has one)."""
    return {status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
            for status in sorted({*COMMON_STATUSES, *statuses})}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


def error_response(status: int, message: str, *, type: str = INVALID_REQUEST, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    # field names and list indices; not the tags pydantic adds for union members ("constrained-float")
    loc = [str(p) for p in first.get("loc", ())
           if p not in ("body", "query", "path", "form") and (isinstance(p, int) or str(p).isidentifier())]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing":
        return f"{param} is required", param
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def _methods_of(request: Request) -> list[str]:
    methods = set()
    for route in request.app.routes:
        if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code,
                              headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        headers = exc.headers
        if exc.status_code == 405:  # every method of the path: its routes are separate (GET and POST /v1/videos)
            headers = {**(headers or {}), "Allow": ", ".join(_methods_of(request))}
        return error_response(exc.status_code, str(exc.detail), code=code, headers=headers)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError):
        return error_response(400, str(exc), code="invalid_value")

    @app.exception_handler(ModelLoadError)
    async def _load(request: Request, exc: ModelLoadError):  # a LoRA adapter named by a well-formed request
        return error_response(422, str(exc), code="cannot_load")

    @app.exception_handler(InvalidRequestError)
    async def _unservable(request: Request, exc: InvalidRequestError):
        return error_response(422, str(exc), code="unsupported_by_model")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (details are in the server log)", type="server_error",
                              code="internal_error")
