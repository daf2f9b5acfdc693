"""The FastAPI app of `sglang serve`: OpenAI-compatible routes over one started Engine.

Layout: routes_info (health, models, model_info), routes_images, routes_videos, routes_lora,
routes_web (the web page at / and its static files), metrics (/metrics and the outermost layer,
which counts every request), middleware (the drain gate, the API key and the body limit, all
answered before the body is read). With an API key, every /v1 route and the API docs need it;
/health, /model_info, /metrics and the web page stay open.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sglang_diffusion import __version__
from sglang_diffusion.server import routes_images, routes_info, routes_lora, routes_videos, routes_web
from sglang_diffusion.server.errors import install_error_handlers
from sglang_diffusion.server.middleware import BodyLimit, Gate, needs_key
from sglang_diffusion.server.state import ServerState


def _openapi(app: FastAPI, state: ServerState):
    """The document of this server: the routes its model serves (an image model's server still
    answers /v1/videos, with 422, but does not offer it), its limits as schema bounds, and 401
    with the bearer scheme on the routes behind the key only when there is one."""

    def build() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            hidden = _unserved_prefixes(state)
            doc["paths"] = {path: ops for path, ops in doc["paths"].items() if not (hidden and path.startswith(hidden))}
            for operations in doc["paths"].values():
                for operation in operations.values():
                    for content in operation.get("requestBody", {}).get("content", {}).values():
                        _bound(content["schema"].get("properties", {}), state.args)
            if state.api_key is not None:
                doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http", "scheme": "bearer", "description": "The server's API key (scheme case-insensitive)."}
                ref = {"$ref": "#/components/schemas/ErrorBody"}  # there: every route lists error_responses()
                for path, operations in doc["paths"].items():
                    if needs_key(path):
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
                            operation["responses"]["401"] = {
                                "description": "Missing or wrong API key",
                                "content": {"application/json": {"schema": ref}}}
            app.openapi_schema = doc
        return app.openapi_schema

    return build


def _unserved_prefixes(state: ServerState) -> tuple[str, ...]:
    if state.family is not None and state.family.is_video:  # a text-to-video model makes images as one frame
        return ("/v1/images/edits",) if state.family.makes_images else ("/v1/images",)
    hidden = ("/v1/videos",) if state.family is not None else ()
    return hidden + (("/v1/images/edits",) if state.takes_image() is False else ())


def _bound(properties: dict, args) -> None:
    """The server's limits on request fields, as the schema's maximum / maxLength."""
    bounds = {"width": ("maximum", args.max_resolution), "height": ("maximum", args.max_resolution),
              "num_inference_steps": ("maximum", args.max_inference_steps),
              "num_frames": ("maximum", args.max_num_frames),
              "prompt": ("maxLength", args.max_prompt_chars), "negative_prompt": ("maxLength", args.max_prompt_chars)}
    for name, (keyword, limit) in bounds.items():
        if name in properties:
            for schema in properties[name].get("anyOf", [properties[name]]):
                if schema.get("type") in ("integer", "string"):
                    schema[keyword] = limit


def create_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.shutdown()

    app = FastAPI(title="sglang-diffusion", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible image and video generation.")
    app.state.server = state
    install_error_handlers(app)
    for router in (routes_info.router, routes_info.v1_router, routes_images.router, routes_videos.router,
                   routes_lora.router):
        app.include_router(router)
    routes_web.install(app)
    app.openapi = _openapi(app, state)
    app.add_middleware(BodyLimit, limit=state.args.max_upload_mb * 2**20)
    app.add_middleware(Gate, api_key=state.api_key, draining=state.queue.draining,
                       retry_after_s=state.queue.retry_after_s)
    state.metrics.install(app)  # outermost: it also counts what the layers inside refuse
    return app
