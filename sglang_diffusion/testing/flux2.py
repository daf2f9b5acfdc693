"""FLUX.2: Flux2Pipeline folders, `full` as black-forest-labs/FLUX.2-dev (8 double- and 48
single-stream blocks, 4-axis RoPE, text from Mistral Small 3.1 hidden states 10, 20 and 30
stacked into 3 x 5120 = 15360 channels, 32-channel VAE packed 2x2 into 128).

The text encoder keeps 30 layers in every preset, so the pipeline's default
`text_encoder_out_layers=(10, 20, 30)` works. Its `tokenizer` is a PixtralProcessor folder,
as in the real checkpoint; transformers can only instantiate that class with torchvision
installed. Without it, pass `tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer")`
to from_pretrained: Flux2Pipeline only calls `apply_chat_template` on it."""

from __future__ import annotations

from sglang_diffusion.testing import tokenizers
from sglang_diffusion.testing.flux import flux_scheduler, image_vae_config
from sglang_diffusion.testing.presets import by_preset
from sglang_diffusion.testing.text_encoders import gqa_decoder_config, text_dims
from sglang_diffusion.testing.vision import clip_image_processor
from sglang_diffusion.testing.writer import Asset, JsonFiles, PipelineSpec, Weights, dit_pipeline

TEXT_ENCODER_LAYERS = 30
HIDDEN_STATES_STACKED = 3  # Flux2Pipeline's text_encoder_out_layers=(10, 20, 30)
PATCH_SIZE = 14


def transformer_config(preset: str, text_dim: int) -> dict:
    size = by_preset(
        preset,
        tiny=dict(num_layers=1, num_single_layers=2, num_attention_heads=2, attention_head_dim=16,
                  axes_dims_rope=[4, 4, 4, 4]),
        small=dict(num_layers=2, num_single_layers=4, num_attention_heads=8, attention_head_dim=64,
                   axes_dims_rope=[16, 16, 16, 16]),
        full=dict(num_layers=8, num_single_layers=48, num_attention_heads=48, attention_head_dim=128,
                  axes_dims_rope=[32, 32, 32, 32]),
    )  # fmt: skip
    return dict(
        patch_size=1,
        in_channels=128,
        out_channels=None,
        **size,
        joint_attention_dim=HIDDEN_STATES_STACKED * text_dim,
        timestep_guidance_channels=256,
        mlp_ratio=3.0,
        rope_theta=2000,
        eps=1e-6,
        guidance_embeds=True,
    )


def vae_config(preset: str) -> dict:
    extra = dict(batch_norm_eps=1e-4, batch_norm_momentum=0.1, patch_size=[2, 2])
    return image_vae_config(preset, 32, use_quant_conv=True, use_post_quant_conv=True, **extra)


class _PixtralProcessorFolder:
    """The files of a PixtralProcessor: the tokenizer, the image processor and the
    processor's own config, written without instantiating the class (it needs torchvision)."""

    def __init__(self, longest_edge: int):
        self.longest_edge = longest_edge

    def save_pretrained(self, folder) -> None:
        tokenizers.mistral_tokenizer().save_pretrained(folder)
        processor = dict(
            image_break_token="[IMG_BREAK]",
            image_end_token="[IMG_END]",
            image_token="[IMG]",
            patch_size=PATCH_SIZE,
            processor_class="PixtralProcessor",
            spatial_merge_size=2,
        )
        image_processor = clip_image_processor(
            "PixtralImageProcessor",
            patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE},
            processor_class="PixtralProcessor",
            size={"longest_edge": self.longest_edge},
        )
        JsonFiles({"processor_config.json": processor, "preprocessor_config.json": image_processor}).save_pretrained(
            folder
        )


def _text_encoder(preset: str) -> tuple[Weights, Asset]:
    """Mistral3ForConditionalGeneration; the Pixtral vision tower stays one small block in
    every preset (text-to-image never runs it)."""
    tokenizer = tokenizers.mistral_tokenizer()
    dims = text_dims(preset, full_hidden=5120, full_head_dim=128)
    text_config = gqa_decoder_config(
        dims,
        tokenizer,
        rope_theta=1000000000.0,
        model_type="mistral",
        num_hidden_layers=TEXT_ENCODER_LAYERS,
        max_position_embeddings=131072,
        sliding_window=None,
    )
    vision_config = dict(
        model_type="pixtral",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=by_preset(preset, 112, 224, 1540),
        patch_size=PATCH_SIZE,
    )
    config = dict(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    processor = _PixtralProcessorFolder(longest_edge=vision_config["image_size"])
    return (
        Weights("transformers", "Mistral3ForConditionalGeneration", config, "Mistral3Config"),
        Asset("transformers", "PixtralProcessor", lambda: processor),
    )


def pipeline_spec(preset: str) -> PipelineSpec:
    mistral = _text_encoder(preset)
    transformer = transformer_config(preset, text_dim=mistral[0].config["text_config"]["hidden_size"])
    return dit_pipeline(
        "Flux2Pipeline",
        flux_scheduler(),
        [mistral],
        Weights("diffusers", "Flux2Transformer2DModel", transformer),
        Weights("diffusers", "AutoencoderKLFlux2", vae_config(preset)),
    )


TINY_SAMPLING = dict(height=64, width=64, num_inference_steps=2)


# -- the guide's tiny autoencoder override (`--vae-path fal/FLUX.2-Tiny-AutoEncoder`) ------------

TINY_AUTOENCODER_MODULE = "flux2_tiny_autoencoder"
_TINY_AUTOENCODER_STAND_IN = '''"""Stand-in for fal/FLUX.2-Tiny-AutoEncoder's flux2_tiny_autoencoder.py, written by the
sglang_diffusion test-model factory: the class config.json's auto_map names, with the repository's
config keys and weight layout (sglang_diffusion's implementation, under this module's name)."""

from sglang_diffusion.models.vaes.flux2_tiny import Flux2TinyAutoEncoder as _Implementation


class Flux2TinyAutoEncoder(_Implementation):
    """What --trust-remote-code loads (diffusers' AutoModel through auto_map)."""
'''


def tiny_autoencoder_config(preset: str) -> dict:
    """Flux2TinyAutoEncoder's config.json: `full` is the repository's (its constructor's defaults);
    the latent stays 128 channels (the FLUX.2 DiT's in_channels) and 8x + 2x2 packing in every preset."""
    widths, blocks = by_preset(preset, ([8] * 4, [1] * 4), ([32] * 4, [1, 2, 2, 2]), ([64] * 4, [1, 3, 3, 3]))
    return dict(in_channels=3, out_channels=3, latent_channels=128, encoder_block_out_channels=widths,
                decoder_block_out_channels=widths, act_fn="silu", upsampling_scaling_factor=2,
                num_encoder_blocks=blocks, num_decoder_blocks=blocks[::-1], latent_magnitude=3.0, latent_shift=0.5,
                force_upcast=False, scaling_factor=0.13025)


def write_tiny_autoencoder(output_dir, preset: str = "tiny", seed: int = 0):
    """A folder laid out as fal/FLUX.2-Tiny-AutoEncoder: config.json (`_class_name`
    Flux2TinyAutoEncoder, `auto_map` to the repository's module), the safetensors weights and
    that module (a stand-in: see `_TINY_AUTOENCODER_STAND_IN`). Returns the folder."""
    import json
    import pathlib

    from sglang_diffusion.models.vaes.flux2_tiny import Flux2TinyAutoEncoder
    from sglang_diffusion.testing.writer import _weights_context, component_seed

    out = pathlib.Path(output_dir)
    with _weights_context(component_seed(seed, "flux2_tiny_autoencoder"), preset):
        model = Flux2TinyAutoEncoder.from_config(tiny_autoencoder_config(preset)).eval()
        _calibrate_output(model)
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModel": f"{TINY_AUTOENCODER_MODULE}.Flux2TinyAutoEncoder"}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / f"{TINY_AUTOENCODER_MODULE}.py").write_text(_TINY_AUTOENCODER_STAND_IN)
    return out


def _calibrate_output(model) -> None:
    """Random TAESD weights decode to black (the last conv's output sits near 0, the decoder maps
    it to 2x - 1): its weights scaled 20x and its bias shifted so that random latents decode to
    images around mid-grey, whose differences a test can see."""
    import torch

    last = model.tiny_vae.decoder.layers[-1]
    with torch.no_grad():
        last.weight.mul_(20.0)
        last.bias.mul_(20.0)
        probe = model.decode(torch.randn(1, model.config.latent_channels, 4, 4)).sample  # [1, 3, 64, 64]
        last.bias.sub_(probe.mean(dim=(0, 2, 3)) / 2)
