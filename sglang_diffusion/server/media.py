"""Images in and out of the HTTP API: encoding outputs, and checking uploads before they reach
the engine. An upload's bytes are bounded by max_upload_mb, its pixels by max_upload_pixels as
its header declares them, before anything is decoded: a small PNG can declare 12000x12000
pixels, half a GiB once decoded. Decoding runs off the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from sglang_diffusion.server.errors import APIError
from sglang_diffusion.server.outputs import IMAGE_FORMATS
from sglang_diffusion.storage.local import image_save_options

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(frame: np.ndarray, output_format: str, quality: int | None = None,  # frame: uint8 [H, W, 3]
                 compression: int | None = None) -> bytes:
    buffer = io.BytesIO()
    options = image_save_options("." + IMAGE_FORMATS[output_format], quality, compression)
    Image.fromarray(frame).save(buffer, format=_PIL_FORMATS[output_format], **options)
    return buffer.getvalue()


def _too_large(param: str, limit_bytes: int) -> APIError:
    return APIError(413, f"{param}: the upload is over the limit of {limit_bytes // 2**20} MiB (max_upload_mb)",
                    param=param, code="upload_too_large")


def _unreadable(param: str) -> APIError:
    return APIError(400, f"{param}: not a readable image (PNG, JPEG, WebP, ...)", param=param, code="invalid_image")


def decode_image(data: bytes, param: str, limit_bytes: int, limit_pixels: int) -> Image.Image:
    """Bytes a client sent -> an RGB image, or a 400/413 naming the field. Blocking: call it
    through `asyncio.to_thread`."""
    if len(data) > limit_bytes:
        raise _too_large(param, limit_bytes)
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
            if width * height > limit_pixels:
                raise APIError(413, f"{param}: {width}x{height} is over the limit of {limit_pixels} pixels "
                               "(max_upload_pixels)", param=param, code="image_too_large")
            im.load()  # the first frame only, of an animated image
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError, SyntaxError):
        raise _unreadable(param) from None


def decode_data_url(url: str, param: str, limit_bytes: int, limit_pixels: int) -> Image.Image:
    """`data:image/...;base64,...` -> an image. Remote URLs are refused: the server fetches nothing."""
    head, sep, payload = url.partition(",")
    if not (head.startswith("data:") and head.endswith(";base64") and sep):
        raise APIError(400, f"{param}: only data: URLs (data:image/png;base64,...) are accepted; upload the file "
                       "instead of a link", param=param, code="invalid_image")
    if len(payload) * 3 // 4 > limit_bytes:
        raise _too_large(param, limit_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{param}: the data: URL is not valid base64", param=param, code="invalid_image") from None
    return decode_image(data, param, limit_bytes, limit_pixels)
