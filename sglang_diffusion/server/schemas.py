"""Request bodies of the OpenAI-compatible routes (OpenAI's field names, plus our extensions).

Fields OpenAI defines that mean nothing here (quality, style, background, moderation, ...) are
accepted and ignored, so that clients written for OpenAI work unchanged. Every float is finite
and within a stated range. Checks that depend on server options (largest size, most steps,
longest prompt) happen in `params.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sglang_diffusion.config.resolutions import ORIENTATIONS, RESOLUTIONS

MAX_IMAGES_PER_REQUEST = 10  # OpenAI's own bound on n
MAX_SEED = 2**53 - 1  # exact in every JSON parser (a double), so a seed survives any client
SIZE_PATTERN = r"^\s*(auto|(\d{1,6})\s*[xX]\s*(\d{1,6}))?\s*$"  # the sizes of "WxH", "auto" or empty
MAX_GUIDANCE_SCALE = 100.0
MAX_LORA_STRENGTH = 100.0


class RequestBody(BaseModel):
    """A request body: no NaN or Infinity in any float, and no `true` / `false` read as a number
    (pydantic's lax mode would take `false` as 0.0)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value, info: ValidationInfo):
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in items) and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not true or false")
        return value


def _numeric(annotation) -> bool:
    """Whether a field's type takes numbers and not booleans (`float | list[float] | None` does)."""
    args = get_args(annotation)
    if not args:
        return annotation in (int, float)
    return bool not in args and any(_numeric(a) for a in args if a is not type(None))


Strength = Field(ge=-MAX_LORA_STRENGTH, le=MAX_LORA_STRENGTH)
Nickname = Annotated[str, Field(min_length=1, max_length=128, pattern=r"\S")]


class GenerationOptions(RequestBody):
    """What every generation route takes besides the prompt."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Any name: the server serves its one model whatever this says, "
                              "and answers with its served name (see /v1/models).")
    user: str | None = Field(None, description="An end-user id, logged with the request.")
    size: str | None = Field(None, description='"WIDTHxHEIGHT" in pixels, e.g. "1024x1024", or "auto" '
                             "(the model's default).", max_length=32, pattern=SIZE_PATTERN)
    width: int | None = Field(None, ge=1, description="Width in pixels (instead of size).")
    height: int | None = Field(None, ge=1, description="Height in pixels (instead of size).")
    negative_prompt: str | None = Field(None, description="What to steer the generation away from.")
    num_inference_steps: int | None = Field(None, ge=1, description="Denoising steps (default: the model's).")
    guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE_SCALE,
                                         description="Classifier-free guidance scale.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed (default: the server's).")
    enable_teacache: bool | None = Field(None, description="TeaCache for this request (native pipelines): skip the "
                                         "DiT's blocks on steps whose timestep embedding barely changed.")
    teacache_thresh: float | None = Field(None, ge=0, description="TeaCache's threshold (default: the model's "
                                          "calibrated one; higher is faster).")
    lora_nickname: Nickname | Annotated[list[Nickname], Field(min_length=1)] | None = Field(
        None, description="LoRA adapter(s) for this request, by the nicknames set_lora loaded them under "
        "(default: the adapters set on the server).")
    lora_strength: Annotated[float, Strength] | list[Annotated[float, Strength]] | None = Field(
        None, description="Strength of each of lora_nickname's adapters (one for all, or one each; default 1).")
    guidance_scale_2: float | None = Field(None, ge=0, le=MAX_GUIDANCE_SCALE, description="Guidance scale of the "
                                           "low-noise expert (Wan2.2 A14B).")
    true_cfg_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE_SCALE, description="Classifier-free guidance "
                                         "scale, with a negative prompt, of models whose guidance_scale is an "
                                         "embedding (FLUX, HunyuanVideo) or unused (Qwen-Image).")
    guidance_rescale: float | None = Field(None, ge=0, le=1, description="Rescale the guided prediction toward "
                                           "the conditional one's standard deviation: 0 (off) to 1.")
    flow_shift: float | None = Field(None, gt=0, le=1000, description="Shift of the flow-matching noise schedule "
                                     "(default: the model's).")
    boundary_ratio: float | None = Field(None, ge=0, le=1, description="Two-expert models (Wan2.2 A14B): the "
                                         "fraction of the training timesteps above which the high-noise expert "
                                         "runs (default: the model's).")
    resolution: Literal[RESOLUTIONS] | None = Field(None, description="Output size by name, mapped to the "
                                                    "model's size for it (instead of size / width / height).")
    orientation: Literal[ORIENTATIONS] | None = Field(None, description="Orientation of resolution (default: the "
                                                      "model's default size's).")
    output_quality: int | None = Field(None, ge=1, le=100, description="Quality of JPEG / WebP / MP4 outputs.")
    output_compression: int | None = Field(None, ge=0, le=100, description="Compression of the output (OpenAI's "
                                           "name): quality 100 - compression; PNG: its zlib level.")


class ImageOptions(GenerationOptions):
    n: int = Field(1, ge=1, le=MAX_IMAGES_PER_REQUEST, description="How many images.")
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="b64_json: the image in the response; url: a link to the stored file.")
    output_format: Literal["png", "jpeg", "webp"] = "png"
    stream: Literal[False] = Field(False, description="Streaming is not supported; must be false.")


class ImageGenerationRequest(ImageOptions):
    prompt: str = Field(min_length=1, description="What to draw.")


class ImageEditRequest(ImageOptions):
    """The form fields of /v1/images/edits (the image and mask files come beside them)."""

    prompt: str = Field(min_length=1, description="How to change the image.")


class InputReference(RequestBody):
    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(None, description="A data: URL (data:image/png;base64,...); remote URLs are "
                                  "not fetched.")
    file_id: str | None = Field(None, description="Not supported: upload the file instead.")


class VideoCreateRequest(GenerationOptions):
    prompt: str = Field(min_length=1, description="What the video shows.")
    seconds: float | None = Field(None, gt=0, le=3600, description="Length in seconds (num_frames wins).")
    fps: int | None = Field(None, ge=1, le=240, description="Frames per second of the MP4.")
    num_frames: int | None = Field(None, ge=1, description="Number of frames.")
    input_reference: InputReference | None = Field(
        None, description="Image-to-video: the first frame, as an uploaded file (multipart) or a data: URL.")


class LoraSetRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    lora_nickname: Nickname | Annotated[list[Nickname], Field(min_length=1)] = Field(
        description="Name(s) of the adapter(s) to merge.")
    lora_path: str | None | list[str | None] = Field(
        None, description="Where to load each adapter from (a .safetensors file, a folder or a Hugging Face id); "
        "may be left out for an adapter already loaded under its nickname.")
    target: str | list[str] = Field("all", description='Component(s) to merge into: "all", "transformer", ...')
    strength: Annotated[float, Strength] | list[Annotated[float, Strength]] = Field(
        1.0, description=f"Scale of each adapter's delta, within +-{MAX_LORA_STRENGTH:g}.")


class LoraMergeRequest(RequestBody):
    model_config = ConfigDict(extra="forbid")

    target: str | None = Field(None, description="Component to merge into (default: as last set).")
    strength: Annotated[float, Strength] | None = Field(
        None, description=f"Scale of the delta, within +-{MAX_LORA_STRENGTH:g} (default: as last set).")
