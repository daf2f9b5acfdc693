"""FLUX.1: FluxPipeline folders, `full` as black-forest-labs/FLUX.1-dev (19 double- and 38
single-stream blocks with guidance embedding, CLIP-L pooled + T5-XXL text, 16-channel VAE
packed 2x2 into 64 transformer channels)."""

from __future__ import annotations

from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.text_encoders import clip_text_encoder, t5_encoder
from sglang_diffusion.testing.vision import kl_vae_config
from sglang_diffusion.testing.writer import Asset, PipelineSpec, Weights, dit_pipeline, flow_match_scheduler


def flux_scheduler() -> Asset:
    """FLUX.1-dev's scheduler/scheduler_config.json; FLUX.2-dev ships the same one."""
    return flow_match_scheduler(max_image_seq_len=4096, max_shift=1.15, shift=3.0)


def transformer_config(preset: str, text_dim: int, pooled_dim: int) -> dict:
    size = by_preset(
        preset,
        tiny=dict(num_layers=1, num_single_layers=2, num_attention_heads=2, attention_head_dim=16,
                  axes_dims_rope=[4, 6, 6]),
        small=dict(num_layers=2, num_single_layers=4, num_attention_heads=8, attention_head_dim=64,
                   axes_dims_rope=[8, 28, 28]),
        full=dict(num_layers=19, num_single_layers=38, num_attention_heads=24, attention_head_dim=128,
                  axes_dims_rope=[16, 56, 56]),
    )  # fmt: skip
    return dict(
        patch_size=1,
        in_channels=64,
        out_channels=None,
        **size,
        joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=True,
    )


def image_vae_config(preset: str, latent_channels: int, **extra) -> dict:
    """The 2D AutoencoderKL of FLUX.1 and FLUX.2 (they differ in latents and quant convs)."""
    blocks = ("DownEncoderBlock2D", "UpDecoderBlock2D")
    return kl_vae_config(preset, blocks, latent_channels, small_width=32, small_groups=32, sample_size=1024, **extra)


def vae_config(preset: str) -> dict:
    latents = dict(scaling_factor=0.3611, shift_factor=0.1159, force_upcast=True)
    return image_vae_config(preset, 16, use_quant_conv=False, use_post_quant_conv=False, **latents)


def pipeline_spec(preset: str, class_name: str = "FluxPipeline") -> PipelineSpec:
    """FLUX.1-dev, or (class_name FluxKontextPipeline) FLUX.1 Kontext-dev: the same components."""
    clip, t5 = clip_text_encoder(preset), t5_encoder(preset, umt5=False)
    transformer = transformer_config(preset, text_dim=t5[0].config["d_model"], pooled_dim=clip[0].config["hidden_size"])
    return dit_pipeline(
        class_name,
        flux_scheduler(),
        [clip, t5],
        Weights("diffusers", "FluxTransformer2DModel", transformer),
        Weights("diffusers", "AutoencoderKL", vae_config(preset)),
    )


TINY_SAMPLING = dict(height=64, width=64, num_inference_steps=2)
