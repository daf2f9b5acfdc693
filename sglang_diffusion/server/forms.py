"""Request bodies, JSON or multipart forms (uploads beside fields), checked against one pydantic
model either way, with the OpenAPI description to match. Every route reads its body here, so
that JSON is parsed one way everywhere: bounded in size (the body limit) and in depth."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from sglang_diffusion.server.errors import APIError

_MAX_FILES = 16
_MAX_FIELDS = 64
MAX_JSON_DEPTH = 16  # our bodies nest 3 levels at most


def _check_nesting(values) -> None:
    """Depth within MAX_JSON_DEPTH, and every string encodable (JSON may spell lone surrogates)."""
    level, depth = [values], 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
        children = []
        for node in level:
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            for key, value in items:
                for text in (key, value):
                    if isinstance(text, str) and not text.isascii():
                        try:
                            text.encode("utf-8")
                        except UnicodeEncodeError:
                            raise APIError(400, "the request body has a string that is not valid Unicode "
                                           "(a lone surrogate escape)", code="invalid_json") from None
                if isinstance(value, (dict, list)):
                    children.append(value)
        level = children


def parse_json(raw: bytes) -> dict:
    """A JSON object body, or a 400 that says why not."""
    try:
        values = json.loads(raw)
    except RecursionError:  # the C parser's own depth guard
        raise APIError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json") \
            from None
    except ValueError:  # not JSON, or not UTF-8
        raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(values, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    _check_nesting(values)
    return values


def _validate(model: type[BaseModel], values: dict) -> BaseModel:
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None


async def read_body(request: Request, model: type[BaseModel], *, allow_json: bool = True, allow_form: bool = True,
                    optional: bool = False) -> tuple[BaseModel, dict[str, list[UploadFile]]]:
    """The body as `model`, and its uploads by field name (`image[]` counts as `image`).
    `optional`: an empty body is the model's defaults."""
    content_type = request.headers.get("content-type", "")
    if allow_json and content_type.startswith("application/json"):
        raw = await request.body()
        values = {} if optional and not raw else parse_json(raw)  # whitespace alone is not JSON
        return _validate(model, values), {}
    if allow_form and content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        return await _read_form(request, model)
    if optional and not await request.body():
        return _validate(model, {}), {}
    expected = " or ".join(name for name, allowed in (("application/json", allow_json),
                                                     ("multipart/form-data", allow_form)) if allowed)
    raise APIError(400, f"the request body must be {expected}", code="invalid_content_type")


async def _read_form(request: Request, model: type[BaseModel]) -> tuple[BaseModel, dict[str, list[UploadFile]]]:
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


def openapi_body(model: type[BaseModel], files: dict[str, str] | None = None, *, allow_json: bool = True,
                 allow_form: bool = True, optional: bool = False) -> dict:
    """`openapi_extra` for a route that reads its body with `read_body`; `files`: field -> description
    (each also taken repeated, and as `field[]`)."""
    raw = model.model_json_schema()
    schema = _inline_refs(raw, raw.get("$defs", {}))
    content = {}
    if allow_json:
        content["application/json"] = {"schema": schema}
    if allow_form:
        uploads = {name: {"type": "string", "format": "binary", "description": text}
                   for name, text in (files or {}).items()}
        content["multipart/form-data"] = {"schema": {**schema, "properties": {
            **{k: v for k, v in schema["properties"].items() if k not in uploads}, **uploads}}}
    return {"requestBody": {"required": not optional, "content": content}}
