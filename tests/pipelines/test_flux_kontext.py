"""FLUX.1 Kontext natively: the DiT with the input image's reference tokens against diffusers'
FluxTransformer2DModel as FluxKontextPipeline calls it; the pipeline against diffusers'
FluxKontextPipeline with the same seed on the tiny model (an input image of another size, resized
to the nearest Kontext resolution); both backends behind `sglang generate --image-path`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel as DiffusersFlux
from PIL import Image

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.errors import InvalidRequestError
from sglang_diffusion.models.dits.flux import FluxTransformer2DModel, image_ids, pack_latents
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from tests.compare import psnr, rel_err
from tests.models.dit_pairs import saved_pair

REQUEST = dict(prompt="make it blue", height=64, width=48, num_inference_steps=2, seed=5, guidance_scale=2.5)
LATENT_TOL = 1e-4
MIN_PSNR = 40.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("kontext") / "in.png"
    Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_dit_with_reference_tokens_equals_diffusers(tmp_path):
    config = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=[4, 6, 6],
                  guidance_embeds=True)
    ref, ours = saved_pair(DiffusersFlux, FluxTransformer2DModel, config, tmp_path)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 6, 4, generator=g)  # [B, in_channels / 4, H, W]: a 3 x 2 token grid
    reference = torch.randn(1, 12, 16, generator=g)  # a 3 x 4 grid of packed reference tokens
    text, pooled = torch.randn(2, 7, 24, generator=g), torch.randn(2, 12, generator=g)
    t, guidance = torch.tensor([0.7, 0.3]), torch.full((2,), 3.5)
    ref_ids = image_ids(3, 4, first=1.0)
    with torch.no_grad():
        expected = ref(hidden_states=torch.cat([pack_latents(latents), reference.expand(2, -1, -1)], dim=1),
                       encoder_hidden_states=text, pooled_projections=pooled, timestep=t, guidance=guidance,
                       img_ids=torch.cat([image_ids(3, 2), ref_ids]), txt_ids=torch.zeros(7, 3),
                       return_dict=False)[0][:, :6]  # FluxKontextPipeline keeps the noise tokens' prediction
        context = ours.encode_context(text, pooled, guidance, reference=reference, reference_ids=ref_ids)
        got = pack_latents(ours(latents, t, context))
    assert context.reference_tokens == 12
    assert rel_err(expected, got) <= 1e-5


def diffusers_run(folder, request: dict, image_path):
    """diffusers' FluxKontextPipeline at the requested size (max_area = height x width):
    (final packed latents [B, S, 64], uint8 images [B, 1, H, W, 3])."""
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(folder)
    seen = {}

    def keep_latents(p, step, t, kwargs):
        seen["latents"] = kwargs["latents"]
        return kwargs

    kwargs = {k: v for k, v in request.items() if k != "seed"}
    out = pipe(**kwargs, image=Image.open(image_path).convert("RGB"), max_area=request["height"] * request["width"],
               generator=torch.Generator("cpu").manual_seed(request["seed"]), output_type="np",
               callback_on_step_end=keep_latents).images
    return seen["latents"], (np.clip(out, 0, 1) * 255).round().astype(np.uint8)[:, None]


@pytest.mark.slow
def test_native_matches_diffusers_kontext_with_the_same_seed(tiny_model, reference):
    folder = tiny_model("flux.1-kontext")
    native = build_pipeline(ServerArgs(model_path=str(folder)), Platform.current())
    state = native.run(SamplingParams(**REQUEST, image_path=str(reference)))
    latents, frames = diffusers_run(folder, REQUEST, reference)
    assert rel_err(latents, pack_latents(state.latents[:, :, 0])) <= LATENT_TOL
    assert state.frames.shape == frames.shape == (1, 1, 64, 48, 3)
    assert psnr(frames, state.frames) >= MIN_PSNR
    with pytest.raises(InvalidRequestError, match="takes one input image, got 2"):
        native.run(SamplingParams(**REQUEST, image_path=[str(reference)] * 2))


@pytest.mark.slow
def test_generate_edits_natively_and_matches_the_diffusers_backend(tiny_model, reference, tmp_path):
    from tests.conftest import run_cli

    folder = tiny_model("flux.1-kontext")
    common = ("--prompt", "make it blue", "--height", 64, "--width", 48, "--num-inference-steps", 2, "--seed", 5,
              "--image-path", reference, "--output-path", tmp_path)
    proc = run_cli("generate", "--model-path", folder, *common, "--output-file-name", "native.png")
    assert proc.returncode == 0, proc.stderr
    assert "pipeline FluxKontextPipeline on sglang backend (family flux.1-kontext), attention: " in proc.stderr
    native = np.asarray(Image.open(tmp_path / "native.png"))
    assert native.shape == (64, 48, 3)
    pipe = build_pipeline(ServerArgs(model_path=str(folder), backend="diffusers"), Platform.current())
    frames = pipe.generate(SamplingParams(**dict(REQUEST, guidance_scale=3.5), image_path=str(reference))).frames
    assert psnr(native[None, None], frames) >= MIN_PSNR
