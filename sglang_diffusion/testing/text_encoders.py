"""Text encoders shared by several families (T5 / UMT5, CLIP text), with their tokenizers,
and the size table every family's text encoder follows.

A `full` text encoder keeps the real hidden size (the DiT's input projection reads it) and
head size, with few heads, a small FFN and two layers: the text encoder runs once per
request, so its real depth adds little to a DiT benchmark and would add gigabytes."""

from __future__ import annotations

from sglang_diffusion.testing import tokenizers
from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.writer import Asset, Weights


def text_dims(
    preset: str, full_hidden: int, full_head_dim: int, full_heads: int = 4, full_ffn: int = 1024, full_layers: int = 2
) -> dict:
    """hidden size, heads, head size, FFN width and layers of a text encoder."""
    return by_preset(
        preset,
        tiny=dict(hidden=32, heads=2, head_dim=16, ffn=64, layers=2),
        small=dict(hidden=64, heads=2, head_dim=32, ffn=128, layers=2),
        full=dict(hidden=full_hidden, heads=full_heads, head_dim=full_head_dim, ffn=full_ffn, layers=full_layers),
    )


def sized_config(dims: dict, vocab_size: int, **config) -> dict:
    """A transformers text model's config: the size keys Llama, Mistral, Qwen2 and CLIP name
    alike, from `text_dims`, then the model's own keys (which may override them)."""
    sizes = dict(
        vocab_size=vocab_size,
        hidden_size=dims["hidden"],
        intermediate_size=dims["ffn"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
    )
    return {**sizes, **config}


def gqa_decoder_config(dims: dict, tokenizer, rope_theta: float, **config) -> dict:
    """A Llama-style decoder (Llama 3, Mistral): half as many K/V heads as query heads,
    RMSNorm eps 1e-5, default RoPE, and the tokenizer's special ids."""
    return sized_config(
        dims,
        len(tokenizer),
        num_key_value_heads=dims["heads"] // 2,
        head_dim=dims["head_dim"],
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )


def t5_encoder(preset: str, umt5: bool) -> tuple[Weights, Asset]:
    """UMT5-XXL (Wan) or T5-v1.1-XXL (FLUX.1) encoder, with a T5TokenizerFast."""
    tokenizer = tokenizers.t5_tokenizer()
    dims = text_dims(preset, full_hidden=4096, full_head_dim=64)
    config = dict(
        vocab_size=len(tokenizer),
        d_model=dims["hidden"],
        d_kv=dims["head_dim"],
        d_ff=dims["ffn"],
        num_layers=dims["layers"],
        num_heads=dims["heads"],
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,  # as the real configs; transformers reads it as scale_decoder_outputs
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    if umt5:
        encoder = Weights("transformers", "UMT5EncoderModel", config, "UMT5Config")
    else:
        encoder = Weights("transformers", "T5EncoderModel", config, "T5Config")
    return encoder, Asset("transformers", "T5TokenizerFast", tokenizers.t5_tokenizer)


def clip_text_encoder(preset: str) -> tuple[Weights, Asset]:
    """CLIP ViT-L/14's text tower (FLUX.1, HunyuanVideo). Its pooled output feeds the DiT;
    `full` keeps the real tower (all but its vocabulary), it is small."""
    tokenizer = tokenizers.clip_tokenizer()
    dims = text_dims(preset, full_hidden=768, full_head_dim=64, full_heads=12, full_ffn=3072, full_layers=12)
    config = sized_config(
        dims,
        len(tokenizer),
        projection_dim=dims["hidden"],
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        # As openai/clip-vit-large-patch14: eos_token_id 2 makes the pooler take the
        # argmax id, which is <|endoftext|>, the last token of the vocab.
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
    )
    return (
        Weights("transformers", "CLIPTextModel", config, "CLIPTextConfig"),
        Asset("transformers", "CLIPTokenizer", tokenizers.clip_tokenizer),
    )
