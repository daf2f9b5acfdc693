"""Wan 2.1 / 2.2: WanPipeline and WanImageToVideoPipeline folders.

The `full` numbers are those of the Wan-AI/*-Diffusers checkpoints (as written by
diffusers' scripts/convert_wan_to_diffusers.py): Wan2.1-T2V-1.3B, Wan2.1-I2V-14B-480P,
Wan2.2-T2V-A14B (two experts split at boundary_ratio 0.875) and Wan2.2-TI2V-5B (48-channel
VAE with 16x spatial compression, one timestep per latent frame: expand_timesteps)."""

from __future__ import annotations

from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.text_encoders import t5_encoder
from sglang_diffusion.testing.vision import clip_image_processor, wan_vae_config
from sglang_diffusion.testing.writer import Asset, JsonFiles, PipelineSpec, Weights, dit_pipeline, scheduler

# Per variant: the real transformer's width and depth, and its channels.
_FULL_TRANSFORMER = {
    "wan2.1-t2v": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16, out_channels=16),
    "wan2.1-i2v": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=36, out_channels=16),
    "wan2.2-t2v-a14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=16, out_channels=16),
    "wan2.2-ti2v-5b": dict(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48),
}
VARIANTS = tuple(_FULL_TRANSFORMER)

# Wan2.2's VAE statistics per latent channel, as in the real vae/config.json.
# fmt: off
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]
# fmt: on

def transformer_config(variant: str, preset: str, text_dim: int, image_dim: int | None) -> dict:
    full = _FULL_TRANSFORMER[variant]
    size = by_preset(
        preset,
        tiny=dict(num_attention_heads=2, attention_head_dim=16, ffn_dim=64, num_layers=2),
        small=dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=4),
        full=dict(attention_head_dim=128, **{k: full[k] for k in ("num_attention_heads", "ffn_dim", "num_layers")}),
    )
    inner_dim = size["num_attention_heads"] * size["attention_head_dim"]
    return dict(
        patch_size=[1, 2, 2],
        **size,
        in_channels=full["in_channels"],
        out_channels=full["out_channels"],
        text_dim=text_dim,
        freq_dim=256,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        # Wan2.1 I2V attends to CLIP image tokens through extra K/V projections.
        image_dim=image_dim,
        added_kv_proj_dim=inner_dim if image_dim is not None else None,
        rope_max_seq_len=1024,
    )


def vae_config(variant: str, preset: str) -> dict:
    config = wan_vae_config(preset)
    if variant == "wan2.2-ti2v-5b":
        # 2x2 pixel patching into 12 channels plus 8x downsampling: 16x spatial compression.
        config.update(
            base_dim=by_preset(preset, 4, 8, 160),
            decoder_base_dim=by_preset(preset, 8, 12, 256),
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_temporal=4,
            scale_factor_spatial=16,
            latents_mean=WAN22_LATENTS_MEAN,
            latents_std=WAN22_LATENTS_STD,
        )
    return config


def _image_encoder(preset: str) -> tuple[Weights, Asset]:
    """Open-CLIP ViT-H/14 as CLIPVisionModel; the pipeline reads its penultimate hidden state."""
    size = by_preset(
        preset,
        tiny=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56),
        small=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=112),
        full=dict(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224
        ),
    )
    config = dict(**size, projection_dim=by_preset(preset, 32, 64, 1024), patch_size=14, hidden_act="gelu")
    side = size["image_size"]
    processor = clip_image_processor(
        "CLIPImageProcessor",
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        size={"shortest_edge": side},
    )
    return (
        Weights("transformers", "CLIPVisionModel", config, "CLIPVisionConfig"),
        Asset("transformers", "CLIPImageProcessor", lambda: JsonFiles({"preprocessor_config.json": processor})),
    )


def pipeline_spec(variant: str, preset: str) -> PipelineSpec:
    umt5 = t5_encoder(preset, umt5=True)
    flow_shift = 5.0 if variant == "wan2.2-ti2v-5b" else 3.0
    unipc = scheduler(
        "UniPCMultistepScheduler",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=flow_shift,
    )
    image_dim, others, config = None, {}, None
    if variant == "wan2.1-i2v":
        others["image_encoder"], others["image_processor"] = _image_encoder(preset)
        image_dim = others["image_encoder"].config["hidden_size"]
    transformer = Weights(
        "diffusers", "WanTransformer3DModel", transformer_config(variant, preset, umt5[0].config["d_model"], image_dim)
    )
    if variant == "wan2.2-t2v-a14b":
        # High-noise expert for t >= 0.875 * 1000, low-noise expert below.
        others["transformer_2"], config = transformer, dict(boundary_ratio=0.875, expand_timesteps=False)
    elif variant == "wan2.2-ti2v-5b":
        others["transformer_2"], config = None, dict(boundary_ratio=None, expand_timesteps=True)
    # Wan2.1 was converted before diffusers knew Wan2.2: no transformer_2 or boundary_ratio keys.
    class_name = "WanImageToVideoPipeline" if variant == "wan2.1-i2v" else "WanPipeline"
    vae = Weights("diffusers", "AutoencoderKLWan", vae_config(variant, preset))
    return dit_pipeline(class_name, unipc, [umt5], transformer, vae, config, **others)


TINY_SAMPLING = {variant: dict(height=64, width=64, num_frames=9, num_inference_steps=2) for variant in VARIANTS}
