"""Bodies that may be multipart forms (uploads beside fields) or JSON, checked against one
pydantic model either way, with the OpenAPI description to match."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from sglang_diffusion.server.errors import APIError

_MAX_FILES = 16
_MAX_FIELDS = 64


def _validate(model: type[BaseModel], values: dict) -> BaseModel:
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None


async def read_body(request: Request, model: type[BaseModel], *,
                    allow_json: bool) -> tuple[BaseModel, dict[str, list[UploadFile]]]:
    """The body as `model`, and its uploads by field name (`image[]` counts as `image`)."""
    content_type = request.headers.get("content-type", "")
    if allow_json and content_type.startswith("application/json"):
        try:
            values = await request.json()
        except ValueError:
            raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(values, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return _validate(model, values), {}
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        expected = "application/json or multipart/form-data" if allow_json else "multipart/form-data"
        raise APIError(400, f"the request body must be {expected}", code="invalid_content_type")
    form = await request.form(max_files=_MAX_FILES, max_fields=_MAX_FIELDS)
    fields: dict[str, str] = {}
    files: dict[str, list[UploadFile]] = {}
    for key, value in form.multi_items():
        name = key.removesuffix("[]")
        if isinstance(value, UploadFile):
            files.setdefault(name, []).append(value)
        elif name in fields:
            raise APIError(400, f"{name} is given twice", param=name, code="invalid_value")
        else:
            fields[name] = value
    return _validate(model, fields), files


def _inline_refs(node, defs: dict):
    """pydantic's local `#/$defs/...` references, replaced by what they name (OpenAPI resolves
    references from the document's root, where those definitions are not)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def openapi_body(model: type[BaseModel], files: dict[str, str], *, allow_json: bool) -> dict:
    """`openapi_extra` for a route that reads its body with `read_body`; `files`: field -> description."""
    raw = model.model_json_schema()
    schema = _inline_refs(raw, raw.get("$defs", {}))
    form_schema = {**schema, "properties": {
        **{k: v for k, v in schema["properties"].items() if k not in files},
        **{name: {"type": "string", "format": "binary", "description": text} for name, text in files.items()}}}
    content = {"multipart/form-data": {"schema": form_schema}}
    if allow_json:
        content["application/json"] = {"schema": schema}
    return {"requestBody": {"required": True, "content": content}}
