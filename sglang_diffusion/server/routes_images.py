"""`POST /v1/images/generations`, `POST /v1/images/edits` (multipart) and
`GET /v1/images/{image_id}/content` (the files behind `url` answers)."""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from sglang_diffusion.runtime.result import GenerationResult
from sglang_diffusion.server.errors import APIError
from sglang_diffusion.server.forms import openapi_body, read_body
from sglang_diffusion.server.media import decode_image, encode_image
from sglang_diffusion.server.outputs import IMAGE_FORMATS, new_id
from sglang_diffusion.server.schemas import ImageEditRequest, ImageGenerationRequest, ImageOptions
from sglang_diffusion.server.state import ServerState

router = APIRouter(prefix="/v1/images", tags=["images"])


def check_makes_images(state: ServerState) -> None:
    if state.family is not None and state.family.is_video:
        raise APIError(422, f"{state.model_id} makes videos: use POST /v1/videos", param="model",
                       code="unsupported_by_model")


def _check_options(body: ImageOptions) -> None:
    if body.stream:
        raise APIError(400, "stream: streaming is not supported", param="stream", code="invalid_value")


async def _store(state: ServerState, request: Request, content: bytes, output_format: str) -> str:
    """Write one image under images/ (and to the bucket, with cloud storage on); its URL."""
    image_id = new_id("img")
    path = state.outputs.images / f"{image_id}.{IMAGE_FORMATS[output_format]}"
    await asyncio.to_thread(path.write_bytes, content)
    key = await asyncio.wrap_future(state.outputs.publish(path, f"images/{path.name}"))
    if key is not None:
        return state.outputs.object_url(key)
    return str(request.url_for("image_content", image_id=image_id))


async def _respond(state: ServerState, request: Request, result: GenerationResult, body: ImageOptions) -> dict:
    if result.is_video:
        raise APIError(422, f"{state.model_id} makes videos: use POST /v1/videos", param="model",
                       code="unsupported_by_model")
    data = []
    for frames in result.frames:  # each uint8 [1, H, W, 3]
        content = await asyncio.to_thread(encode_image, frames[0], body.output_format)
        if body.response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(content).decode("ascii")})
        else:
            data.append({"url": await _store(state, request, content, body.output_format)})
    return {"created": int(time.time()), "data": data, "output_format": body.output_format,
            "size": f"{result.width}x{result.height}", "seed": result.seed}


@router.post("/generations", summary="Create images from a prompt")
async def create_images(body: ImageGenerationRequest, request: Request) -> dict:
    state: ServerState = request.app.state.server
    _check_options(body)
    check_makes_images(state)
    params = state.params.sampling(body, num_outputs_per_prompt=body.n, return_frames=True, save_output=False)
    result = await state.generate(params)
    return await _respond(state, request, result, body)


@router.post("/edits", summary="Edit images: multipart image (or several) + prompt, optional mask",
             openapi_extra=openapi_body(ImageEditRequest, {"image": "The image(s) to edit.",
                                                           "mask": "Where to edit, for models that take a mask."},
                                        allow_json=False))
async def edit_images(request: Request) -> dict:
    state: ServerState = request.app.state.server
    body, files = await read_body(request, ImageEditRequest, allow_json=False)
    _check_options(body)
    check_makes_images(state)
    limit = state.args.max_upload_mb * 2**20
    images = [decode_image(await f.read(), "image", limit) for f in files.get("image", [])]
    if not images:
        raise APIError(400, "image is required: upload the image to edit as the multipart field 'image'",
                       param="image", code="missing_image")
    extra = dict(state.params.defaults.diffusers_kwargs)
    if len(images) > 1:
        extra["image"] = images
    if files.get("mask"):
        extra["mask_image"] = decode_image(await files["mask"][0].read(), "mask", limit)
    path = state.outputs.upload_path()
    await asyncio.to_thread(images[0].save, path, format="PNG")
    try:
        params = state.params.sampling(body, image_path=str(path), diffusers_kwargs=extra,
                                       num_outputs_per_prompt=body.n, return_frames=True, save_output=False)
        result = await state.generate(params)
    finally:
        path.unlink(missing_ok=True)
    return await _respond(state, request, result, body)


@router.get("/{image_id}/content", name="image_content", summary="The file of an image answered by url",
            response_class=FileResponse)
async def image_content(image_id: str, request: Request):
    state: ServerState = request.app.state.server
    path = state.outputs.image_file(image_id)
    if path is None:
        raise APIError(404, f"no image {image_id!r}", param="image_id", code="not_found")
    return FileResponse(path)
