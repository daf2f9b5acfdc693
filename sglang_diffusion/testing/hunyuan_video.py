"""HunyuanVideo: HunyuanVideoPipeline folders, `full` as hunyuanvideo-community/HunyuanVideo
(13B DiT with guidance embedding, llava-llama-3-8b text encoder read at its third-to-last
hidden state, CLIP-L pooled text, 4x8x8 causal VAE, flow matching with shift 7)."""

from __future__ import annotations

from sglang_diffusion.testing import tokenizers
from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.text_encoders import clip_text_encoder, text_dims
from sglang_diffusion.testing.writer import Asset, PipelineSpec, Weights, scheduler


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
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        down_block_types=["HunyuanVideoDownBlock3D"] * 4,
        up_block_types=["HunyuanVideoUpBlock3D"] * 4,
        block_out_channels=by_preset(preset, [8, 16, 32, 32], [16, 32, 64, 64], [128, 256, 512, 512]),
        layers_per_block=by_preset(preset, 1, 1, 2),
        act_fn="silu",
        norm_num_groups=by_preset(preset, 4, 8, 32),
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )


def _llama_encoder(preset: str) -> tuple[Weights, Asset]:
    tokenizer = tokenizers.llama_tokenizer()
    dims = text_dims(preset, full_hidden=4096, full_head_dim=128)
    config = dict(
        vocab_size=len(tokenizer),
        hidden_size=dims["hidden"],
        intermediate_size=dims["ffn"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
        num_key_value_heads=dims["heads"] // 2,
        head_dim=dims["head_dim"],
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return (
        Weights("transformers", "LlamaModel", config, "LlamaConfig"),
        Asset("transformers", "LlamaTokenizerFast", tokenizers.llama_tokenizer),
    )


def pipeline_spec(preset: str) -> PipelineSpec:
    text_encoder, tokenizer = _llama_encoder(preset)
    text_encoder_2, tokenizer_2 = clip_text_encoder(preset)
    transformer = transformer_config(
        preset, text_dim=text_encoder.config["hidden_size"], pooled_dim=text_encoder_2.config["hidden_size"]
    )
    return PipelineSpec(
        "HunyuanVideoPipeline",
        dict(
            scheduler=scheduler("FlowMatchEulerDiscreteScheduler", shift=7.0),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            transformer=Weights("diffusers", "HunyuanVideoTransformer3DModel", transformer),
            vae=Weights("diffusers", "AutoencoderKLHunyuanVideo", vae_config(preset)),
        ),
    )


TINY_SAMPLING = dict(height=64, width=64, num_frames=9, num_inference_steps=2)
