"""HunyuanVideo: HunyuanVideoPipeline folders, `full` as hunyuanvideo-community/HunyuanVideo
(13B DiT with guidance embedding, llava-llama-3-8b text encoder read at its third-to-last
hidden state, CLIP-L pooled text, 4x8x8 causal VAE, flow matching with shift 7)."""

from __future__ import annotations

from sglang_diffusion.testing import tokenizers
from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.text_encoders import clip_text_encoder, gqa_decoder_config, text_dims
from sglang_diffusion.testing.vision import kl_vae_config
from sglang_diffusion.testing.writer import Asset, PipelineSpec, Weights, dit_pipeline, scheduler


def transformer_config(preset: str, text_dim: int, pooled_dim: int) -> dict:
    size = by_preset(
        preset,
        tiny=dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1,
                  num_refiner_layers=1, rope_axes_dim=[4, 6, 6]),
        small=dict(num_attention_heads=8, attention_head_dim=64, num_layers=2, num_single_layers=4,
                   num_refiner_layers=1, rope_axes_dim=[8, 28, 28]),
        full=dict(num_attention_heads=24, attention_head_dim=128, num_layers=20, num_single_layers=40,
                  num_refiner_layers=2, rope_axes_dim=[16, 56, 56]),
    )  # fmt: skip
    return dict(
        in_channels=16,
        out_channels=16,
        **size,
        mlp_ratio=4.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        rope_theta=256.0,
    )


def vae_config(preset: str) -> dict:
    blocks = ("HunyuanVideoDownBlock3D", "HunyuanVideoUpBlock3D")
    compression = dict(spatial_compression_ratio=8, temporal_compression_ratio=4)
    return kl_vae_config(preset, blocks, 16, small_width=16, small_groups=8, scaling_factor=0.476986, **compression)


def _llama_encoder(preset: str) -> tuple[Weights, Asset]:
    tokenizer = tokenizers.llama_tokenizer()
    dims = text_dims(preset, full_hidden=4096, full_head_dim=128)
    config = gqa_decoder_config(dims, tokenizer, rope_theta=500000.0, hidden_act="silu", max_position_embeddings=8192)
    return (
        Weights("transformers", "LlamaModel", config, "LlamaConfig"),
        Asset("transformers", "LlamaTokenizerFast", tokenizers.llama_tokenizer),
    )


def pipeline_spec(preset: str) -> PipelineSpec:
    llama, clip = _llama_encoder(preset), clip_text_encoder(preset)
    transformer = transformer_config(
        preset, text_dim=llama[0].config["hidden_size"], pooled_dim=clip[0].config["hidden_size"]
    )
    return dit_pipeline(
        "HunyuanVideoPipeline",
        scheduler("FlowMatchEulerDiscreteScheduler", shift=7.0),
        [llama, clip],
        Weights("diffusers", "HunyuanVideoTransformer3DModel", transformer),
        Weights("diffusers", "AutoencoderKLHunyuanVideo", vae_config(preset)),
    )


TINY_SAMPLING = dict(height=64, width=64, num_frames=9, num_inference_steps=2)
