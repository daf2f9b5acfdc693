"""LoRA management: `POST /v1/set_lora`, `POST /v1/merge_lora_weights`,
`POST /v1/unmerge_lora_weights`, `GET /v1/list_loras`, on native pipelines and the diffusers
backend alike (`loader.lora`). A generation request may also name its adapters (lora_nickname,
lora_strength): the engine switches to them for it.

The work runs on every rank through `Engine.call`, queued behind the generations already
waiting (so a generation never sees half-merged weights). An adapter comes from a Hugging Face
id or from a path under --lora-dirs; any other path is refused here with one answer whether it
exists or not, before any rank touches it. One that cannot be loaded is refused by the loader,
which leaves the weights as they were.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fastapi import APIRouter, Request

from sglang_diffusion.loader.lora import list_loras, lora_specs, merge_loras, set_loras, unmerge_loras
from sglang_diffusion.loader.resolve import is_repo_id
from sglang_diffusion.server.errors import APIError, error_responses
from sglang_diffusion.server.forms import openapi_body, read_body
from sglang_diffusion.server.schemas import LoraMergeRequest, LoraSetRequest
from sglang_diffusion.server.state import ServerState

router = APIRouter(prefix="/v1", tags=["lora"], responses=error_responses(422))


def allowed_lora_path(path: str, lora_dirs: list[str]) -> str:
    """What the loader may open for `path`: a Hugging Face id as is (unless a local path of that
    name exists), or a path inside one of `lora_dirs`, resolved (symlinks and `..` included)."""
    try:
        local = Path(path).expanduser()
        if is_repo_id(path) and not local.exists():
            return path
        real = local.resolve()
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop, "~nobody": no allowed path
        real = None
    if real is None or not any(real.is_relative_to(Path(d).expanduser().resolve()) for d in lora_dirs):
        where = "the allowed LoRA directories (lora_dirs)" if lora_dirs else "any allowed directory: this server " \
            "loads LoRA adapters from Hugging Face ids only (start it with --lora-dirs for local ones)"
        raise APIError(403, f"lora_path {path!r} is outside {where}", param="lora_path", code="path_not_allowed")
    if not real.exists():
        raise APIError(400, f"lora_path {path!r}: no such file or folder", param="lora_path", code="not_found")
    return str(real)


async def _on_engine(request: Request, fn, *args) -> dict:
    state: ServerState = request.app.state.server
    return await state.call(lambda: state.engine.call(fn, *args), bounded=False)


@router.post("/set_lora", summary="Load LoRA adapter(s) by nickname and merge them into the weights",
             responses=error_responses(403), openapi_extra=openapi_body(LoraSetRequest, allow_form=False))
async def set_lora(request: Request) -> dict:
    state: ServerState = request.app.state.server
    body, _ = await read_body(request, LoraSetRequest, allow_form=False)
    specs = [replace(spec, path=None if spec.path is None else allowed_lora_path(spec.path, state.args.lora_dirs))
             for spec in lora_specs(body.lora_nickname, body.lora_path, body.target, body.strength)]
    return {"status": "ok", **await _on_engine(request, set_loras, specs)}


@router.post("/merge_lora_weights", summary="Merge the last set LoRA adapter(s) again",
             openapi_extra=openapi_body(LoraMergeRequest, allow_form=False, optional=True))
async def merge_lora_weights(request: Request) -> dict:
    body, _ = await read_body(request, LoraMergeRequest, allow_form=False, optional=True)
    return {"status": "ok", **await _on_engine(request, merge_loras, body.target, body.strength)}


@router.post("/unmerge_lora_weights", summary="Restore the original weights, bit for bit")
async def unmerge_lora_weights(request: Request) -> dict:
    return {"status": "ok", **await _on_engine(request, unmerge_loras)}


@router.get("/list_loras", summary="Loaded adapters and what is merged where")
async def get_loras(request: Request) -> dict:
    return await _on_engine(request, list_loras)
