"""Decoding: latents back to pixels through the VAE (tiled or sliced when asked; with --vae-sp
its tiles split across the sequence-parallel ranks), then to uint8 frames [B, F, H, W, 3]."""

from __future__ import annotations

import contextlib
import inspect
import logging

import numpy as np
import torch

from sglang_diffusion.config.server_args import ServerArgs, VaeConfig
from sglang_diffusion.distributed.parallel_state import RankGroup
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.pipelines.stages.base import GenerationState, Stage
from sglang_diffusion.pipelines.stages.image_encoding import _latent_stats
from sglang_diffusion.progress import Progress

logger = logging.getLogger(__name__)

_TILE_KEYS = ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_min_num_frames")


def _compression(vae, axis: str) -> int:
    """Pixels (frames) per latent element along `axis` of a diffusers VAE (1 when it does not say)."""
    kind = "temporal" if axis == "num_frames" else "spatial"
    return int(getattr(vae, f"{kind}_compression_ratio", None) or getattr(vae.config, f"{kind}_compression_ratio", None)
               or getattr(vae.config, f"scale_factor_{kind}", None) or 1)


def _tile_and_stride(tile: int, stride: int | None, ratio: int) -> tuple[int, int | None]:
    """A tile of whole latent elements (a multiple of `ratio`, at least one) and, when the VAE's
    stride is longer than the tile, a stride that shrinks with it.

    diffusers' tiled decoders step through the latent by stride // ratio and keep `stride`
    pixels (frames) of each decoded tile: a stride longer than the tile leaves gaps (a smaller
    video), one that is not a multiple of the ratio misaligns the tiles, and a tile shorter
    than one latent element makes no tile at all. The shrunk stride keeps diffusers' default
    overlap of a quarter where the tile allows one (256 pixels every 192, 16 frames every 12)."""
    tile = max(ratio, tile // ratio * ratio)
    if stride is not None and stride > tile:
        stride = max(ratio, tile * 3 // 4 // ratio * ratio)
    return tile, stride


def enable_vae_tiling(vae, cfg: VaeConfig) -> None:
    """Tiled decoding with vae_config's tile sizes, for any diffusers VAE that tiles. Every tile
    size a VAE takes gives the video of the requested size (see `_tile_and_stride`)."""
    if not hasattr(vae, "enable_tiling"):
        raise ConfigError(f"vae_tiling: {type(vae).__name__} does not support tiling")
    sizes = {k: getattr(cfg, k) for k in _TILE_KEYS if getattr(cfg, k) is not None}
    accepted = inspect.signature(vae.enable_tiling).parameters
    refused = [k for k in sizes if k not in accepted]
    if refused:
        raise ConfigError(f"vae_config.{refused[0]}: {type(vae).__name__} tiling does not take it")
    for axis in ("height", "width", "num_frames"):
        key, stride_key = f"tile_sample_min_{axis}", f"tile_sample_stride_{axis}"
        if key not in sizes:
            continue
        if sizes[key] < 1:
            raise ConfigError(f"vae_config.{key} must be positive, got {sizes[key]}")
        old_stride = getattr(vae, stride_key, None) if stride_key in accepted else None
        tile, stride = _tile_and_stride(sizes[key], old_stride, _compression(vae, axis))
        if tile != sizes[key]:
            logger.info("vae_config.%s=%d: tiles are whole latent elements, using %d", key, sizes[key], tile)
        sizes[key] = tile
        if stride != old_stride:
            sizes[stride_key] = stride
            logger.info("vae_config.%s=%d is below the VAE's %s (%d): stride set to %d", key, tile, stride_key,
                        old_stride, stride)
    vae.enable_tiling(**sizes)
    logger.info("VAE tiling on (%s)", ", ".join(f"{k}={getattr(vae, k)}" for k in
                                                ("tile_sample_min_height", "tile_sample_min_width",
                                                 "tile_sample_min_num_frames", "tile_sample_stride_height",
                                                 "tile_sample_stride_width", "tile_sample_stride_num_frames")
                                                if hasattr(vae, k)))


def configure_vae(vae, args: ServerArgs, sp_size: int = 1) -> bool:
    """--vae-tiling (with vae_config's tile sizes), --vae-slicing, vae_config.load_encoder, --vae-sp
    (`sp_size`: the sequence-parallel ranks). Returns whether the ranks split the decoding."""
    cfg = args.vae_config
    if not cfg.load_decoder:
        raise ConfigError("vae_config.load_decoder=false: generation needs the VAE decoder to produce videos")
    split = args.vae_sp and sp_size > 1
    if args.vae_sp and not split:
        logger.info("vae_sp: one sequence-parallel rank, nothing to split; this rank decodes alone")
    if split:
        from sglang_diffusion.distributed.vae_parallel import check_vae_supports_sp

        check_vae_supports_sp(vae)
        if not args.vae_tiling:
            logger.info("vae_sp: VAE tiling turned on (vae_tiling is off): the ranks split the VAE's tiles")
    sizes = {k: getattr(cfg, k) for k in _TILE_KEYS if getattr(cfg, k) is not None}
    if sizes and not (args.vae_tiling or split):
        logger.warning("vae_config tile sizes (%s) apply to --vae-tiling, which is off", ", ".join(sizes))
    if args.vae_tiling or split:
        enable_vae_tiling(vae, cfg)
    if args.vae_slicing:
        vae.enable_slicing()
        logger.info("VAE slicing on: one video at a time")
    if not cfg.load_encoder and getattr(vae, "encoder", None) is not None:
        vae.encoder = None  # frees its weights; requests that need it are refused
        logger.info("vae_config.load_encoder=false: VAE encoder dropped")
    if split:
        logger.info("vae_sp: VAE tiles split across the %d sequence-parallel ranks", sp_size)
    return split


def video_vae_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Denoised latents [B, C, F, H, W] -> the video VAE's decoder input: AutoencoderKLWan's
    per-channel mean and std, AutoencoderKLHunyuanVideo's `latents / scaling_factor`."""
    if vae.config.get("latents_mean") is not None:
        mean, inv_std = _latent_stats(vae, latents)
        return latents / inv_std + mean
    return latents / vae.config.scaling_factor


class DecodingStage(Stage):
    name = "decoding"
    reads = ("latents",)
    writes = ("frames",)

    def __init__(self, vae, sp: RankGroup | None = None):
        self.vae = vae
        self.sp = sp  # the ranks that split the VAE's tiles (--vae-sp); None: this rank decodes alone

    def describe(self) -> str:
        flags = [f for f, on in (("tiled", getattr(self.vae, "use_tiling", False)),
                                 ("sliced", getattr(self.vae, "use_slicing", False))) if on]
        if self.sp is not None:
            flags.append(f"tiles split over {self.sp.size} SP ranks")
        return f"{self.name}({type(self.vae).__name__}{', ' + ', '.join(flags) if flags else ''})"

    def __call__(self, state: GenerationState) -> None:
        p = next(self.vae.parameters())
        latents = state.latents.to(p.device, p.dtype)
        if not hasattr(self.vae.config, "z_dim") and not hasattr(self.vae.config, "temporal_compression_ratio"):
            # a 2D image VAE (FLUX): [B, C, 1, H, W] decodes as [B, C, H, W]
            video = self.vae.decode(image_vae_latents(self.vae, latents[:, :, 0]), return_dict=False)[0]
            state.frames = _to_frames(video.unsqueeze(2))
            return
        latents = video_vae_latents(self.vae, latents)
        with tile_progress(self.vae, latents, whole=self.sp is None):  # SP ranks decode a share of the tiles
            if self.sp is not None:
                from sglang_diffusion.distributed.vae_parallel import sp_decode

                video = sp_decode(self.vae, latents, self.sp)  # [B, 3, F, H, W] in [-1, 1], on every rank
            else:
                video = self.vae.decode(latents, return_dict=False)[0]  # [B, 3, F, H, W] in [-1, 1]
        state.frames = _to_frames(video)


@contextlib.contextmanager
def tile_progress(vae, latents: torch.Tensor, whole: bool = True):
    """With --vae-tiling: the tiles' progress (sglang_diffusion.progress), counted at the VAE
    decoder's calls. AutoencoderKLWan's tiled decode calls its decoder once per spatial tile and
    latent frame, so its count is known up front when this rank decodes them all (`whole`); for
    other VAEs it is open-ended."""
    decoder = getattr(vae, "decoder", None)
    if not getattr(vae, "use_tiling", False) or not isinstance(decoder, torch.nn.Module):
        yield
        return
    progress = Progress("vae tiles", _wan_tile_calls(vae, latents) if whole else None, unit="tile")
    handle = decoder.register_forward_hook(lambda *_: progress.update(progress.done + 1))
    try:
        yield
    finally:
        handle.remove()
        progress.close()


def _wan_tile_calls(vae, latents: torch.Tensor) -> int | None:
    """Decoder calls of AutoencoderKLWan's decode of `latents` [B, C, F', H', W'] with tiling on
    (rows x columns of tiles x latent frames; one per frame when the latent fits one tile); None
    for other VAEs."""
    if type(vae).__name__ != "AutoencoderKLWan":
        return None
    ratio = vae.spatial_compression_ratio
    frames, height, width = latents.shape[2:]
    samples = latents.shape[0] if getattr(vae, "use_slicing", False) else 1  # slicing decodes one at a time
    if height <= vae.tile_sample_min_height // ratio and width <= vae.tile_sample_min_width // ratio:
        return frames * samples
    rows = len(range(0, height, vae.tile_sample_stride_height // ratio))
    cols = len(range(0, width, vae.tile_sample_stride_width // ratio))
    return rows * cols * frames * samples


def image_vae_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Denoised latents [B, C, H, W] -> the 2D VAE's decoder input, as diffusers' pipelines
    undo the latent normalisation: AutoencoderKL (FLUX.1) `latents / scaling_factor +
    shift_factor`; AutoencoderKLFlux2 (FLUX.2) takes its 2x2-patchified latents [B, 4C, H/2, W/2],
    normalised by its batch-norm statistics, and unpatchifies them here."""
    bn = getattr(vae, "bn", None)
    if bn is None:
        return latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    mean = bn.running_mean.view(1, -1, 1, 1).to(latents)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents)
    b, c, h, w = latents.shape
    x = (latents * std + mean).view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)  # [B, C/4, h, 2, w, 2]
    return x.reshape(b, c // 4, h * 2, w * 2)


def _to_frames(video: torch.Tensor) -> np.ndarray:
    """Decoded [B, 3, F, H, W] in [-1, 1] -> uint8 frames [B, F, H, W, 3]."""
    video = (video / 2 + 0.5).clamp(0, 1).float()
    return (video * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()
