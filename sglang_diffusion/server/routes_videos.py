"""Video jobs: `POST /v1/videos` creates one (JSON, or multipart with an `input_reference` image),
`GET /v1/videos/{id}` polls it, `GET /v1/videos/{id}/content` fetches the MP4, `GET /v1/videos`
lists, `DELETE /v1/videos/{id}` cancels a queued or running job (the engine stops at its next
denoising step) or deletes a finished one.

A job runs on the engine's feeder thread; its state lives in the job store, so that polling,
restarts and cancellation all read one record, and it moves only along the store's transitions:
a DELETE and the job's own thread race, and exactly one of them records the outcome (counted
once in /metrics). A DELETE while the finished video is being stored fails the job as cancelled,
and the stored file is then removed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.errors import RequestCancelled, SGLangDiffusionError
from sglang_diffusion.server.errors import APIError, error_responses
from sglang_diffusion.server.forms import openapi_body, read_body
from sglang_diffusion.server.jobs import CANCELLED, COMPLETED, EXPIRED, FAILED, IN_PROGRESS, INTERRUPTED, VideoJob
from sglang_diffusion.server.media import decode_data_url, decode_image
from sglang_diffusion.server.outputs import new_id, valid_id
from sglang_diffusion.server.schemas import VideoCreateRequest
from sglang_diffusion.server.state import ServerState

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/videos", tags=["videos"])
LIST_PROMPT_CHARS = 256  # a listed job shows this much of its prompt; GET /v1/videos/{id} shows all


def _seconds(num_frames: int | None, fps: int) -> str:
    return f"{num_frames / fps:g}" if num_frames else "auto"


def video_object(state: ServerState, request: Request, job: VideoJob, listed: bool = False) -> dict:
    url = None
    if job.status == COMPLETED:
        url = (state.outputs.object_url(job.s3_key) if job.s3_key
               else str(request.url_for("video_content", video_id=job.id)))
    prompt = job.prompt
    if listed and prompt is not None and len(prompt) > LIST_PROMPT_CHARS:
        prompt = prompt[:LIST_PROMPT_CHARS] + "..."
    return {"id": job.id, "object": "video", "model": job.model, "status": job.status, "progress": job.progress,
            "created_at": job.created_at, "completed_at": job.completed_at,
            "expires_at": state.expiry.expires_at(job.completed_at), "prompt": prompt, "seconds": job.seconds,
            "size": job.size, "remixed_from_video_id": None,
            "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
            "url": url}


def _get(state: ServerState, video_id: str) -> VideoJob:
    job = state.jobs.get(video_id) if valid_id(video_id, "video") else None
    if job is None:
        raise APIError(404, f"no video job {video_id!r}", param="video_id", code="not_found")
    return job


def _fail(state: ServerState, job_id: str, code: str, message: str) -> bool:
    """Fail the job unless it already finished (someone else recorded the outcome); whether it did."""
    failed = state.jobs.transition(job_id, FAILED, error_code=code, error_message=message,
                                   completed_at=int(time.time()))
    if failed:
        state.metrics.jobs.labels(CANCELLED if code == CANCELLED else FAILED).inc()
    return failed


def _run_job(state: ServerState, job_id: str, params: SamplingParams, cancel: threading.Event) -> None:
    """The body of a job, on the feeder thread; the upload (if any) finishes it in the background."""
    try:
        if state.queue.draining.is_set():
            return _fail(state, job_id, INTERRUPTED, "the server shut down before the job started; submit it again")
        if cancel.is_set() or not state.jobs.transition(job_id, IN_PROGRESS):
            return _fail(state, job_id, CANCELLED, "cancelled before it started")

        def on_progress(done: int, total: int) -> None:
            state.jobs.update(job_id, progress=min(99, done * 100 // max(total, 1)))

        try:
            result = state.engine.generate(params, on_progress=on_progress, cancel=cancel)
        except RequestCancelled as e:
            return _fail(state, job_id, CANCELLED, str(e))
        except SGLangDiffusionError as e:
            state.metrics.observe_error(e)
            return _fail(state, job_id, "invalid_request", str(e))
        except Exception as e:  # a bug or a dead rank: the job says so, the server keeps serving
            logger.exception("video job %s failed", job_id)
            state.metrics.observe_error(e)
            return _fail(state, job_id, "internal_error", f"{type(e).__name__}: the server log has the details")
    finally:
        if params.image_path:
            Path(params.image_path).unlink(missing_ok=True)
    state.metrics.observe_result(result)
    if not result.is_video:
        return _fail(state, job_id, "unsupported_by_model", "this model makes images: use /v1/images/generations")
    path = result.files[0]
    state.jobs.update(job_id, file_name=path.name, size=f"{result.width}x{result.height}",
                      seconds=_seconds(result.num_frames, result.fps))
    if cancel.is_set():  # cancelled as the last step ended
        path.unlink(missing_ok=True)
        return _fail(state, job_id, CANCELLED, "cancelled after its last denoising step")
    logger.info("video job %s: storing %s", job_id, path.name)
    state.outputs.publish(path, f"videos/{path.name}").future.add_done_callback(
        lambda upload: _finish(state, job_id, path, upload.result(), cancel))


def _finish(state: ServerState, job_id: str, path: Path, key: str | None, cancel: threading.Event) -> None:
    """The upload is over (or there was none): completed, unless a DELETE cancelled the job meanwhile
    (it failed the job itself, or set `cancel` as the generation ended)."""
    if cancel.is_set():
        _fail(state, job_id, CANCELLED, "cancelled while its video was being stored")
    elif state.jobs.transition(job_id, COMPLETED, progress=100, completed_at=int(time.time()), s3_key=key,
                               file_name=None if key else path.name):
        state.metrics.jobs.labels(COMPLETED).inc()
        return
    path.unlink(missing_ok=True)
    if key:
        state.outputs.delete_object(key)
    logger.info("video job %s was cancelled while its file was stored; the file is removed", job_id)


async def _input_image(state: ServerState, body: VideoCreateRequest, files: dict) -> str | None:
    """The image-to-video input, decoded off the event loop and saved under uploads/ for the engine; its path."""
    limits = state.args.max_upload_mb * 2**20, state.args.max_upload_pixels
    if files.get("input_reference"):
        data = await files["input_reference"][0].read()
        image = await asyncio.to_thread(decode_image, data, "input_reference", *limits)
    elif body.input_reference is not None:
        if body.input_reference.file_id is not None or body.input_reference.image_url is None:
            raise APIError(400, "input_reference: upload the image (multipart) or give image_url as a data: URL; "
                           "file ids are not supported", param="input_reference", code="invalid_value")
        image = await asyncio.to_thread(decode_data_url, body.input_reference.image_url, "input_reference", *limits)
    else:
        return None
    path = state.outputs.upload_path()
    await asyncio.to_thread(image.save, path, format="PNG")
    return str(path)


@router.post("", summary="Create a video job", responses=error_responses(404, 422, 429),
             openapi_extra=openapi_body(VideoCreateRequest, {"input_reference": "The first frame (image-to-video)."}))
async def create_video(request: Request) -> dict:
    state: ServerState = request.app.state.server
    body, files = await read_body(request, VideoCreateRequest)
    if state.family is not None and not state.family.is_video:
        raise APIError(422, f"{state.model_id} makes images: use POST /v1/images/generations", param="model",
                       code="unsupported_by_model")
    has_image = bool(files.get("input_reference")) or body.input_reference is not None
    if state.family is not None and has_image != (state.family.task == "i2v") and state.family.task != "ti2v":
        problem = "takes no input image" if has_image else "needs input_reference (image-to-video)"
        raise APIError(422, f"{state.model_id} {problem}", param="input_reference", code="unsupported_by_model")
    num_frames, fps = state.params.video_frames(body)
    job_id = new_id("video")
    # everything but the input image is checked before it is decoded
    params = state.params.sampling(body, num_frames=num_frames, fps=fps, save_output=True, return_frames=False,
                                   output_path=str(state.outputs.videos), output_file_name=f"{job_id}.mp4")
    image_path = await _input_image(state, body, files)
    try:
        params = dataclasses.replace(params, image_path=image_path)
        width, height = params.width or state.params.default("width"), params.height or state.params.default("height")
        job = VideoJob(id=job_id, model=state.params.served_name(body.model), prompt=body.prompt,
                       size=f"{width}x{height}" if width and height else "auto", seconds=_seconds(num_frames, fps),
                       params={k: v for k, v in params.explicit().items()
                               if k not in ("output_path", "image_path", "output_file_name", "prompt")})
        state.jobs.add(job)
        cancel = threading.Event()
        try:
            future = state.submit(lambda: _run_job(state, job_id, params, cancel))
        except APIError:
            state.jobs.delete(job_id)
            raise
    except BaseException:
        if image_path:
            Path(image_path).unlink(missing_ok=True)
        raise
    state.running[job_id] = (future, cancel)
    future.add_done_callback(lambda _: state.running.pop(job_id, None))
    logger.info("video job %s queued (%s)", job_id, body.user or "anonymous")
    return video_object(state, request, job)


@router.get("", summary="List video jobs (each prompt shortened to its first "
            f"{LIST_PROMPT_CHARS} characters)", responses=error_responses(404))
async def list_videos(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None,
                      order: Literal["asc", "desc"] = "desc") -> dict:
    state: ServerState = request.app.state.server
    if after is not None:
        _get(state, after)
    jobs = state.jobs.list(limit + 1, order, after)
    data = [video_object(state, request, j, listed=True) for j in jobs[:limit]]
    return {"object": "list", "data": data, "has_more": len(jobs) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


@router.get("/{video_id}", summary="A video job's status and progress", responses=error_responses(404))
async def retrieve_video(video_id: str, request: Request) -> dict:
    state: ServerState = request.app.state.server
    return video_object(state, request, _get(state, video_id))


@router.get("/{video_id}/content", name="video_content", summary="The MP4 of a completed job",
            response_class=FileResponse, responses={200: {"content": {"video/mp4": {}}}, 307: {"description":
                                                    "Redirect to the object (cloud storage)"},
                                                    **error_responses(404, 409)})
async def video_content(video_id: str, request: Request, variant: Literal["video"] = "video"):
    state: ServerState = request.app.state.server
    job = _get(state, video_id)
    if job.status == EXPIRED:
        raise APIError(404, f"video {video_id} has expired; its file is deleted", param="video_id", code="expired")
    if job.status != COMPLETED:
        raise APIError(409, f"video {video_id} is {job.status}, not completed", param="video_id",
                       code="video_not_ready")
    if job.s3_key:
        return RedirectResponse(state.outputs.object_url(job.s3_key), status_code=307)
    return FileResponse(state.outputs.videos / job.file_name, media_type="video/mp4", filename=f"{video_id}.mp4")


@router.delete("/{video_id}", summary="Cancel a queued or running job, or delete a finished one",
               responses=error_responses(404))
async def delete_video(video_id: str, request: Request) -> dict:
    state: ServerState = request.app.state.server
    job = _get(state, video_id)
    if not job.finished:
        future, cancel = state.running.get(video_id, (None, None))
        if future is not None and future.cancel():  # still queued: it will never run
            _fail(state, video_id, CANCELLED, "cancelled before it started")
        elif future is not None:  # on the engine: it stops at its next step and records that itself
            cancel.set()
        else:  # its file is being stored: the upload's end sees the job failed and removes the file
            _fail(state, video_id, CANCELLED, "cancelled while its video was being stored")
        logger.info("video job %s cancelled", video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": False, "cancelled": True}
    if job.file_name:
        (state.outputs.videos / job.file_name).unlink(missing_ok=True)
    if job.s3_key:
        state.outputs.delete_object(job.s3_key)
    state.jobs.delete(video_id)
    return {"id": video_id, "object": "video.deleted", "deleted": True}
