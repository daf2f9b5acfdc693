"""Tiled VAE decoding split across the sequence-parallel ranks (`--vae-sp`), for
`AutoencoderKLWan` and `AutoencoderKLHunyuanVideo`.

Wan: diffusers' `AutoencoderKLWan.tiled_decode` cuts the latent into overlapping spatial tiles,
decodes each one over all frames (the causal cache cleared per tile), then blends every tile
into its upper and left neighbours and crops. Here the ranks of an SP group share that work:
rank r decodes tiles r, r + size, r + 2 * size, ... (row-major order), the decoded tiles are
all-gathered, and every rank blends them as `tiled_decode` does. Each tile goes through the
same calls on the same input as in `tiled_decode`, so the video is the single-rank tiled
decode's, bit for bit where the convolutions are deterministic (the CPU).

HunyuanVideo: `AutoencoderKLHunyuanVideo.decode` cuts long latents into overlapping temporal
tiles (`_temporal_tiled_decode`, on by default), each of them spatially tiled when it is large
(`tiled_decode`); every tile is decoded on its own (no cache between tiles). The ranks share
the (temporal, spatial) tiles the same way, and every rank blends them as diffusers does.
"""

from __future__ import annotations

import math

import torch

from sglang_diffusion.distributed.parallel_state import RankGroup, all_gather
from sglang_diffusion.errors import ConfigError


def check_vae_supports_sp(vae) -> None:
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLWan

    if not isinstance(vae, (AutoencoderKLWan, AutoencoderKLHunyuanVideo)):
        raise ConfigError(f"vae_sp: splitting VAE decoding across ranks is implemented for AutoencoderKLWan and "
                          f"AutoencoderKLHunyuanVideo, not {type(vae).__name__}")


def sp_decode(vae, z: torch.Tensor, group: RankGroup) -> torch.Tensor:
    """What `vae.decode(z)` returns ([B, 3, F, H, W] in [-1, 1]), its tiles decoded across
    `group` (a collective: every rank of the group calls it with the same z)."""
    from diffusers import AutoencoderKLHunyuanVideo

    hunyuan = isinstance(vae, AutoencoderKLHunyuanVideo)
    if group.size == 1 or not (_hunyuan_tiles(vae, z)[1] if hunyuan else _is_tiled(vae, z)):
        return vae.decode(z, return_dict=False)[0]  # a single tile: nothing to split
    decode = _hunyuan_decode if hunyuan else _tiled_decode
    if vae.use_slicing and z.shape[0] > 1:  # as decode() slices: one video at a time
        return torch.cat([decode(vae, part, group) for part in z.split(1)])
    return decode(vae, z, group)


def _is_tiled(vae, z: torch.Tensor) -> bool:
    """Whether `vae.decode(z)` takes the tiled path (the test of `AutoencoderKLWan._decode`)."""
    height, width = z.shape[-2:]
    ratio = vae.spatial_compression_ratio
    return vae.use_tiling and (width > vae.tile_sample_min_width // ratio or
                               height > vae.tile_sample_min_height // ratio)


def _decode_tile(vae, tile: torch.Tensor) -> torch.Tensor:
    """One latent tile [B, C, F', h, w] over all its frames: the inner loop of `tiled_decode`."""
    vae.clear_cache()
    frames = []
    for k in range(tile.shape[2]):
        vae._conv_idx = [0]
        x = vae.post_quant_conv(tile[:, :, k:k + 1])
        frames.append(vae.decoder(x, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=(k == 0)))
    return torch.cat(frames, dim=2)


def _tiled_decode(vae, z: torch.Tensor, group: RankGroup) -> torch.Tensor:
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    _, _, _, height, width = z.shape  # [B, C, F', H', W']
    ratio, patch = vae.spatial_compression_ratio, vae.config.patch_size or 1
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    step_h, step_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
    starts = [(i, j) for i in range(0, height, step_h) for j in range(0, width, step_w)]
    mine = [_decode_tile(vae, z[:, :, :, i:i + tile_h, j:j + tile_w])
            for i, j in starts[group.rank::group.size]]
    vae.clear_cache()
    tiles = _all_gather_tiles(mine, len(starts), group, vae.dtype, z.device)

    # Blend and crop as tiled_decode does (blend_v / blend_h write into their second tile)
    stride_h, stride_w = vae.tile_sample_stride_height // patch, vae.tile_sample_stride_width // patch
    blend_h = vae.tile_sample_min_height // patch - stride_h
    blend_w = vae.tile_sample_min_width // patch - stride_w
    dec = _blend_tiles(vae, tiles, len(range(0, width, step_w)), (blend_h, blend_w), (stride_h, stride_w))
    dec = dec[:, :, :, :height * ratio // patch, :width * ratio // patch]
    if vae.config.patch_size is not None:
        dec = unpatchify(dec, patch_size=vae.config.patch_size)
    return torch.clamp(dec, min=-1.0, max=1.0)


def _all_gather_tiles(mine: list[torch.Tensor], count: int, group: RankGroup, dtype: torch.dtype,
                      device: torch.device) -> list[torch.Tensor]:
    """All `count` decoded tiles in tile order, rank r having decoded tiles r, r + size, ...
    Edge tiles are smaller and a rank may have none, so the shapes go first (a fixed-size
    table per rank), then each rank's tiles flattened into one buffer padded to the longest."""
    per_rank = math.ceil(count / group.size)
    shapes = torch.zeros(per_rank, 5, dtype=torch.int64, device=device)  # [per_rank, (B, C, F, H, W)]
    for n, tile in enumerate(mine):
        shapes[n] = torch.tensor(tile.shape, dtype=torch.int64)
    shapes = [s.tolist() for s in all_gather(shapes, group)]
    numels = [sum(math.prod(s) for s in table) for table in shapes]
    flat = torch.zeros(max(numels), dtype=dtype, device=device)
    if mine:
        torch.cat([t.flatten() for t in mine], out=flat[:numels[group.rank]])
    buffers = all_gather(flat, group)
    tiles: list[torch.Tensor] = [None] * count  # type: ignore[list-item]
    for r, (table, buffer) in enumerate(zip(shapes, buffers)):
        offset = 0
        for k, shape in zip(range(r, count, group.size), table):
            size = math.prod(shape)
            tiles[k] = buffer[offset:offset + size].view(shape)
            offset += size
    return tiles


# ---- AutoencoderKLHunyuanVideo -------------------------------------------------------------


def _hunyuan_tiles(vae, z: torch.Tensor) -> tuple[bool, list[tuple[int, list[tuple[int, int]] | None]]]:
    """The tiles `vae.decode(z)` decodes: (temporal tiling or not, [(first latent frame of a
    temporal tile, its spatial tile starts (latent rows, columns) or None when it decodes
    whole)]). No temporal tiling: one temporal tile at frame 0; a single whole tile: no tiles."""
    frames, height, width = z.shape[2:]
    ratio = vae.spatial_compression_ratio
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    step_h, step_w = vae.tile_sample_stride_height // ratio, vae.tile_sample_stride_width // ratio
    tile_t = vae.tile_sample_min_num_frames // vae.temporal_compression_ratio
    temporal = vae.use_framewise_decoding and frames > tile_t
    spatial = vae.use_tiling and (width > tile_w or height > tile_h)
    if not temporal and not spatial:
        return False, []
    starts = [(i, j) for i in range(0, height, step_h) for j in range(0, width, step_w)] if spatial else None
    if not temporal:
        return False, [(0, starts)]
    step_t = vae.tile_sample_stride_num_frames // vae.temporal_compression_ratio
    return True, [(t, starts) for t in range(0, frames, step_t)]


def _hunyuan_decode(vae, z: torch.Tensor, group: RankGroup) -> torch.Tensor:
    """`vae.decode(z)` with its tiles decoded across `group`: the (temporal, spatial) tiles in
    order, rank r decoding tiles r, r + size, ...; every rank then blends them as
    `_temporal_tiled_decode` and `tiled_decode` do."""
    ratio, t_ratio = vae.spatial_compression_ratio, vae.temporal_compression_ratio
    tile_h, tile_w = vae.tile_sample_min_height // ratio, vae.tile_sample_min_width // ratio
    temporal, temporal_tiles = _hunyuan_tiles(vae, z)
    tile_t = vae.tile_sample_min_num_frames // t_ratio + 1 if temporal else z.shape[2]
    work = []  # latent tiles in decode order
    for t, starts in temporal_tiles:
        clip = z[:, :, t:t + tile_t]
        work += [clip] if starts is None else [clip[:, :, :, i:i + tile_h, j:j + tile_w] for i, j in starts]
    mine = [vae.decoder(vae.post_quant_conv(tile)) for tile in work[group.rank::group.size]]
    tiles = iter(_all_gather_tiles(mine, len(work), group, vae.dtype, z.device))

    decoded = []  # per temporal tile: [B, 3, f, H, W]
    for t, starts in temporal_tiles:
        clip_shape = z[:, :, t:t + tile_t].shape
        decoded.append(next(tiles) if starts is None else _hunyuan_blend_spatial(vae, [next(tiles) for _ in starts],
                                                                                 starts, clip_shape))
    if not temporal:
        return decoded[0]
    stride = vae.tile_sample_stride_num_frames
    blend = vae.tile_sample_min_num_frames - stride
    result = []
    for n, tile in enumerate(decoded):  # as _temporal_tiled_decode
        if n > 0:
            tile = vae.blend_t(decoded[n - 1], tile[:, :, 1:], blend)
            decoded[n] = tile
            result.append(tile[:, :, :stride])
        else:
            result.append(tile[:, :, :stride + 1])
    return torch.cat(result, dim=2)[:, :, :(z.shape[2] - 1) * t_ratio + 1]


def _hunyuan_blend_spatial(vae, tiles: list[torch.Tensor], starts: list[tuple[int, int]], shape) -> torch.Tensor:
    """Decoded spatial tiles of one latent clip (`shape` [B, C, f, h, w]) blended and cropped as
    `AutoencoderKLHunyuanVideo.tiled_decode` does."""
    ratio = vae.spatial_compression_ratio
    stride = (vae.tile_sample_stride_height, vae.tile_sample_stride_width)
    blend = (vae.tile_sample_min_height - stride[0], vae.tile_sample_min_width - stride[1])
    dec = _blend_tiles(vae, tiles, len({j for _, j in starts}), blend, stride)
    return dec[:, :, :, :shape[3] * ratio, :shape[4] * ratio]


def _blend_tiles(vae, tiles: list[torch.Tensor], cols: int, blend: tuple[int, int], stride: tuple[int, int]
                 ) -> torch.Tensor:
    """Decoded tiles in row-major order, `cols` per row -> one frame stack, each tile blended into
    its upper and left neighbours over `blend` (height, width) pixels and cut to `stride`, as the
    VAEs' tiled_decode do (blend_v / blend_h write into their second tile)."""
    rows = [tiles[r:r + cols] for r in range(0, len(tiles), cols)]
    result_rows = []
    for i, row in enumerate(rows):
        result_row = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = vae.blend_v(rows[i - 1][j], tile, blend[0])
            if j > 0:
                tile = vae.blend_h(row[j - 1], tile, blend[1])
            result_row.append(tile[:, :, :, :stride[0], :stride[1]])
        result_rows.append(torch.cat(result_row, dim=-1))
    return torch.cat(result_rows, dim=3)
