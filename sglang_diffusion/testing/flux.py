"""FLUX.1: FluxPipeline folders, `full` as black-forest-labs/FLUX.1-dev (19 double- and 38
single-stream blocks with guidance embedding, CLIP-L pooled + T5-XXL text, 16-channel VAE
packed 2x2 into 64 transformer channels)."""

from __future__ import annotations

from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.text_encoders import clip_text_encoder, t5_encoder
from sglang_diffusion.testing.writer import PipelineSpec, Weights, scheduler

# FLUX.1-dev's scheduler/scheduler_config.json; FLUX.2-dev ships the same one.
FLUX_SCHEDULER = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)


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


def vae_config(preset: str) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=by_preset(preset, [8, 16, 32, 32], [32, 64, 128, 128], [128, 256, 512, 512]),
        layers_per_block=by_preset(preset, 1, 1, 2),
        act_fn="silu",
        latent_channels=16,
        norm_num_groups=by_preset(preset, 4, 32, 32),
        sample_size=1024,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


def pipeline_spec(preset: str) -> PipelineSpec:
    text_encoder, tokenizer = clip_text_encoder(preset)
    text_encoder_2, tokenizer_2 = t5_encoder(preset, umt5=False)
    transformer = transformer_config(
        preset, text_dim=text_encoder_2.config["d_model"], pooled_dim=text_encoder.config["hidden_size"]
    )
    return PipelineSpec(
        "FluxPipeline",
        dict(
            scheduler=scheduler("FlowMatchEulerDiscreteScheduler", **FLUX_SCHEDULER),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            transformer=Weights("diffusers", "FluxTransformer2DModel", transformer),
            vae=Weights("diffusers", "AutoencoderKL", vae_config(preset)),
        ),
    )


TINY_SAMPLING = dict(height=64, width=64, num_inference_steps=2)
