"""Image-side components shared by several families: the two VAE layouts (diffusers'
AutoencoderKL blocks for FLUX.1, FLUX.2 and HunyuanVideo; Wan's causal VAE for Wan and
Qwen-Image) and the CLIP-normalised image processor (Wan I2V's CLIP, FLUX.2's Pixtral)."""

from __future__ import annotations

from sglang_diffusion.testing.presets import by_preset

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def kl_vae_config(
    preset: str, blocks: tuple[str, str], latent_channels: int, small_width: int, small_groups: int, **extra
) -> dict:
    """Four (down, up) blocks of widths 1:2:4:4 from an RGB image; `full` is the real
    128-channel VAE, `tiny` 8 channels with groups of 2, `small` as the family chose."""
    width = by_preset(preset, 8, small_width, 128)
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=[blocks[0]] * 4,
        up_block_types=[blocks[1]] * 4,
        block_out_channels=[width, 2 * width, 4 * width, 4 * width],
        layers_per_block=by_preset(preset, 1, 1, 2),
        act_fn="silu",
        latent_channels=latent_channels,
        norm_num_groups=by_preset(preset, 4, small_groups, 32),
        mid_block_add_attention=True,
        **extra,
    )


def wan_vae_config(preset: str) -> dict:
    """AutoencoderKLWan with 16 latent channels, 8x spatial and 4x temporal compression
    (Wan2.1; Qwen-Image uses it on single frames)."""
    return dict(
        base_dim=by_preset(preset, 4, 8, 96),
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=by_preset(preset, 1, 1, 2),
        attn_scales=[],
        temperal_downsample=[False, True, True],
        dropout=0.0,
    )


def clip_image_processor(image_processor_type: str, **extra) -> dict:
    """preprocessor_config.json of an image processor that resizes, rescales to [0, 1] and
    normalises with CLIP's statistics."""
    return dict(
        do_convert_rgb=True,
        do_normalize=True,
        do_rescale=True,
        do_resize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        image_processor_type=image_processor_type,
        resample=3,
        rescale_factor=1 / 255,
        **extra,
    )
