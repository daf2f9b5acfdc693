"""`GET /health`, `GET /v1/models`, `GET /model_info`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from sglang_diffusion.server.errors import error_responses
from sglang_diffusion.server.state import ServerState

router = APIRouter(tags=["info"])
v1_router = APIRouter(prefix="/v1", tags=["info"])
# what a request gets when it leaves these out (the web page shows them); None: the pipeline decides
SAMPLING_DEFAULTS = ("width", "height", "num_frames", "fps", "num_inference_steps", "guidance_scale", "seed")


@router.get("/health", summary="200 while serving; 503 once shutting down (in-flight work is draining)",
            responses={503: {"description": "Shutting down", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"status": {"const": "shutting_down"}}}}}}})
async def health(request: Request) -> JSONResponse:
    state: ServerState = request.app.state.server
    if state.queue.draining.is_set():
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    return JSONResponse({"status": "ok", "queue_depth": state.queue.depth})


@v1_router.get("/models", summary="The served model, under each of its served names", responses=error_responses())
async def models(request: Request) -> dict:
    state: ServerState = request.app.state.server
    return {"object": "list", "data": [{"id": name, "object": "model", "created": state.started_at,
                                        "owned_by": "sglang-diffusion"} for name in state.params.served_names]}


@router.get("/model_info", summary="Model, task, pipeline, backends and parallel layout")
async def model_info(request: Request) -> dict:
    state: ServerState = request.app.state.server
    args, info = state.args, state.engine.info
    sp, ulysses, ring = args.sp_layout
    return {
        "model": state.model_id, "served_model_names": state.params.served_names, "task": state.family.task if state.family else None,
        "family": info.get("family"), "pipeline": info.get("pipeline"), "backend": info.get("backend"),
        "attention_backend": info.get("attention_backend"), "device": info.get("device"),
        # what the model runs in (a requested bf16 may run as fp32 where it is slower), not what was asked
        "dit_precision": _precision(info.get("dit_dtype")), "vae_precision": _precision(info.get("vae_dtype")),
        "parallel": {"num_gpus": args.num_gpus, "tp_size": args.tp_size, "sp_degree": sp, "ulysses_degree": ulysses,
                     "ring_degree": ring, "cfg_degree": args.cfg_degree},
        "cloud_storage": args.cloud_storage_type, "max_queue_size": args.max_queue_size,
        # outputs per forward for compatible requests (1: one at a time, and why when batching was asked for)
        "batching": {"max_batch_size": state.engine.max_batch_size, "batching_delay_ms": args.batching_delay_ms,
                     "refused": info.get("batch_refusal") if args.max_batch_size > 1 else None},
        "image_input": state.takes_image(),  # true: takes an input image (edits, image-to-video); null: unknown
        "defaults": {name: state.params.default(name) for name in SAMPLING_DEFAULTS},
        "limits": {"max_resolution": args.max_resolution, "max_inference_steps": args.max_inference_steps,
                   "max_num_frames": args.max_num_frames, "max_prompt_chars": args.max_prompt_chars},
    }


def _precision(dtype: str | None) -> str | None:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
