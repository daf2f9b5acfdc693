"""The demo model's diffusers folder: a Wan2.1 T2V layout (WanPipeline) with a small Wan DiT,
a small Wan VAE, a small UMT5 encoder and a word-level tokenizer over the demo vocabulary.

`write_initial_folder` writes it with seeded random weights (the tiny-model factory's writer),
which is where training starts; training then saves each trained component over it, so the
shipped folder and a fresh build have the same layout.

The VAE is Wan2.1's AutoencoderKLWan as it is, narrow (base 16 channels, 8 latent channels):
8x spatial and 2x temporal compression, trained frame-independent (see
`train.make_frame_independent`: each latent frame is one video frame, drawn twice), so a
128x128, 17-frame video is an 8-channel 9 x 16 x 16 latent; the DiT reads it in 1x4x4 patches,
144 tokens: small enough to train and run in seconds on a CPU. A patch (4 x 4 x 8 = 128 values)
is narrower than the DiT (192): with Wan's 16 latent channels it is 256 values, which the patch
embedding and the output projection squeeze through 192, so 64 dimensions of the noise per
token could be neither seen nor removed (measured: the loss stalled at ~0.59 and samples stayed
blotchy). (Not 1x temporal: diffusers' WanPipeline then rounds every frame count up by one,
`num_frames % 1 != 1`.)
"""

from __future__ import annotations

import os
import pathlib

from sglang_diffusion.demo.world import VOCABULARY
from sglang_diffusion.testing.writer import Asset, PipelineSpec, Weights, dit_pipeline, scheduler, write_pipeline

FLOW_SHIFT = 3.0  # the scheduler's, and the noise levels training samples
TEXT_DIM = 64

TRANSFORMER = dict(
    patch_size=[1, 4, 4],
    num_attention_heads=6,
    attention_head_dim=32,
    in_channels=8,
    out_channels=8,
    text_dim=TEXT_DIM,
    freq_dim=256,
    ffn_dim=768,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)

VAE = dict(
    base_dim=16,
    z_dim=8,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, False, True],
    dropout=0.0,
    scale_factor_temporal=2,
    scale_factor_spatial=8,
)

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5 / UMT5

TEXT_ENCODER = dict(
    vocab_size=len(SPECIAL_TOKENS) + len(VOCABULARY),
    d_model=TEXT_DIM,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    tie_word_embeddings=False,
    dropout_rate=0.0,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)


def demo_tokenizer():
    """A word-level tokenizer over `VOCABULARY` that lower-cases, turns anything but letters
    into spaces and drops unknown words (its normalizer), then appends </s> like T5's. Saved as
    a plain tokenizer.json (PreTrainedTokenizerFast), which transformers loads as it is."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *VOCABULARY))}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    known = "|".join(VOCABULARY)
    backend.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[^a-z]+"), " "),
        normalizers.Replace(Regex(rf"\b(?!(?:{known})\b)[a-z]+"), " "),
    ])
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def pipeline_spec() -> PipelineSpec:
    unipc = scheduler("UniPCMultistepScheduler", prediction_type="flow_prediction", use_flow_sigmas=True,
                      num_train_timesteps=1000, flow_shift=FLOW_SHIFT)
    encoder = Weights("transformers", "UMT5EncoderModel", TEXT_ENCODER, "UMT5Config")
    tokenizer = Asset("transformers", "PreTrainedTokenizerFast", demo_tokenizer)
    transformer = Weights("diffusers", "WanTransformer3DModel", TRANSFORMER)
    vae = Weights("diffusers", "AutoencoderKLWan", VAE)
    return dit_pipeline("WanPipeline", unipc, [(encoder, tokenizer)], transformer, vae)


def write_initial_folder(output_dir: str | os.PathLike, seed: int) -> pathlib.Path:
    """The folder with seeded random weights (fp32): training's starting point."""
    return write_pipeline(pipeline_spec(), output_dir, "tiny", seed)
