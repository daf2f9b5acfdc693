"""`POST /v1/images/generations`, `POST /v1/images/edits` (multipart), `GET /v1/images` (the
stored ones), `GET /v1/images/progress/{id}` (the steps of a request in flight that named itself
with `X-Progress-Id`) and `GET /v1/images/{image_id}/content` (the files behind `url` answers)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from sglang_diffusion.runtime.result import GenerationResult
from sglang_diffusion.server import image_progress
from sglang_diffusion.server.errors import APIError, error_responses
from sglang_diffusion.server.forms import openapi_body, read_body
from sglang_diffusion.server.media import decode_image, encode_image
from sglang_diffusion.server.outputs import IMAGE_FORMATS, new_id
from sglang_diffusion.server.schemas import ImageEditRequest, ImageGenerationRequest, ImageOptions
from sglang_diffusion.server.state import ServerState

router = APIRouter(prefix="/v1/images", tags=["images"])
_GENERATION_ERRORS = error_responses(404, 409, 422, 429)


def check_makes_images(state: ServerState) -> None:
    if state.family is not None and not state.family.makes_images:
        raise APIError(422, f"{state.model_id} makes videos: use POST /v1/videos", param="model",
                       code="unsupported_by_model")


def _one_frame(state: ServerState) -> dict:
    """What an image request sets on a text-to-video model: one frame."""
    return {"num_frames": 1} if state.family is not None and state.family.is_video else {}


async def _store(state: ServerState, request: Request, content: bytes, output_format: str) -> str:
    """Write one image under images/ (and to the bucket, with cloud storage on); its URL. The
    upload is awaited at most the storage's bounded time, then the local URL answers."""
    image_id = new_id("img")
    path = state.outputs.images / f"{image_id}.{IMAGE_FORMATS[output_format]}"
    await asyncio.to_thread(path.write_bytes, content)
    publication = state.outputs.publish(path, f"images/{path.name}")
    if not publication.future.done():
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(publication.future)), state.outputs.wait_s)
        except asyncio.TimeoutError:
            publication.keep_local(f"the upload of {path.name} took over {state.outputs.wait_s:g} s")
    key = publication.future.result()
    if key is not None:
        return state.outputs.object_url(key)
    return str(request.url_for("image_content", image_id=image_id))


async def _respond(state: ServerState, request: Request, result: GenerationResult, body: ImageOptions) -> dict:
    if result.num_frames != 1:
        raise APIError(422, f"{state.model_id} makes videos: use POST /v1/videos", param="model",
                       code="unsupported_by_model")
    data = []
    for frames in result.frames:  # each uint8 [1, H, W, 3]
        content = await asyncio.to_thread(encode_image, frames[0], body.output_format, body.output_quality,
                                          body.output_compression)
        if body.response_format == "b64_json":
            data.append({"b64_json": base64.b64encode(content).decode("ascii")})
        else:
            data.append({"url": await _store(state, request, content, body.output_format)})
    return {"created": int(time.time()), "data": data, "model": state.params.served_name(body.model),
            "output_format": body.output_format, "size": f"{result.width}x{result.height}", "seed": result.seed}


@router.post("/generations", summary="Create images from a prompt", responses=_GENERATION_ERRORS,
             openapi_extra=openapi_body(ImageGenerationRequest, allow_form=False) | {
                 "parameters": image_progress.OPENAPI_PARAMETERS})
async def create_images(request: Request) -> dict:
    state: ServerState = request.app.state.server
    body, _ = await read_body(request, ImageGenerationRequest, allow_form=False)
    check_makes_images(state)
    params = state.params.sampling(body, num_outputs_per_prompt=body.n, return_frames=True, save_output=False,
                                   **_one_frame(state))
    async with state.answering():
        result = await state.generate(params, request, request.headers.get(image_progress.HEADER))
        return await _respond(state, request, result, body)


async def _decode_all(state: ServerState, uploads: list, param: str) -> list:
    """Each upload of a field as an image, decoded one at a time off the event loop."""
    limit, pixels = state.args.max_upload_mb * 2**20, state.args.max_upload_pixels
    return [await asyncio.to_thread(decode_image, await f.read(), param, limit, pixels) for f in uploads]


@router.post("/edits", summary="Edit images: multipart image (or several: repeated image, or image[]) + prompt, "
             "optional mask", responses=_GENERATION_ERRORS,
             openapi_extra=openapi_body(ImageEditRequest, {"image": "The image(s) to edit.",
                                                           "mask": "Where to edit, for models that take a mask."},
                                        allow_json=False) | {"parameters": image_progress.OPENAPI_PARAMETERS})
async def edit_images(request: Request) -> dict:
    state: ServerState = request.app.state.server
    body, files = await read_body(request, ImageEditRequest, allow_json=False)
    check_makes_images(state)
    if not files.get("image"):
        raise APIError(400, "image is required: upload the image to edit as the multipart field 'image'",
                       param="image", code="missing_image")
    if state.takes_image() is False:
        raise APIError(422, f"{state.model_id} takes no input image: use POST /v1/images/generations",
                       param="image", code="unsupported_by_model")
    # everything but the images is checked before they are decoded
    params = state.params.sampling(body, num_outputs_per_prompt=body.n, return_frames=True, save_output=False)
    images = await _decode_all(state, files["image"], "image")
    extra = dict(params.diffusers_kwargs)
    if files.get("mask"):
        (extra["mask_image"],) = await _decode_all(state, files["mask"][:1], "mask")
    paths = [state.outputs.upload_path() for _ in images]  # several images: image_path is their list
    for image, path in zip(images, paths):
        await asyncio.to_thread(image.save, path, format="PNG")
    del images
    try:
        image_path = [str(p) for p in paths] if len(paths) > 1 else str(paths[0])
        params = dataclasses.replace(params, image_path=image_path, diffusers_kwargs=extra)
        async with state.answering():
            result = await state.generate(params, request, request.headers.get(image_progress.HEADER))
            return await _respond(state, request, result, body)
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


@router.get("", summary="The newest images this server keeps (those answered by url), newest first",
            responses=error_responses())
async def list_images(request: Request, limit: int = Query(20, ge=1, le=100)) -> dict:
    state: ServerState = request.app.state.server
    data = [{"id": image_id, "object": "image", "created_at": int(mtime),
             "url": str(request.url_for("image_content", image_id=image_id))}
            for image_id, mtime in await asyncio.to_thread(state.outputs.recent_images, limit)]
    return {"object": "list", "data": data}


@router.get("/progress/{progress_id}", responses=error_responses(404),
            summary=f"The progress of an image request in flight, sent with {image_progress.HEADER}")
async def get_image_progress(progress_id: str, request: Request) -> dict:
    state: ServerState = request.app.state.server
    entry = state.progress.get(progress_id)
    if entry is None:
        raise APIError(404, f"no image request in flight with {image_progress.HEADER} {progress_id!r}",
                       param="progress_id", code="not_found")
    return {"id": progress_id, "object": "image.progress", "status": entry.status, "progress": entry.percent(),
            "step": entry.done, "num_steps": entry.total}


@router.get("/{image_id}/content", name="image_content", summary="The file of an image answered by url",
            response_class=FileResponse, responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
                                                    **error_responses(404)})
async def image_content(image_id: str, request: Request):
    state: ServerState = request.app.state.server
    path = state.outputs.image_file(image_id)
    if path is None:
        raise APIError(404, f"no image {image_id!r}", param="image_id", code="not_found")
    return FileResponse(path)
