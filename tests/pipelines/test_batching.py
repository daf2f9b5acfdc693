"""Requests batched in one forward on every native family equal the same requests run alone
(fp32 latents within 1e-5 relative), each with its own prompt, seed and noise."""

from __future__ import annotations

import pytest

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform
from sglang_diffusion.testing import TINY_SAMPLING
from tests.compare import rel_err

TOLERANCE = 1e-5
TRUE_CFG = ("flux.1", "flux.2", "qwen-image", "hunyuanvideo")  # CFG only with a negative prompt


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    """pipeline(family) -> its tiny fp32 native pipeline, built once per module."""
    built = {}

    def get(family: str):
        if family not in built:
            args = ServerArgs(model_path=str(tiny_model(family)), dit_precision="fp32")
            built[family] = build_pipeline(args, Platform.current())
        return built[family]

    return get


def _requests(family: str, prompts: list[str], negatives: list[str]) -> list[SamplingParams]:
    common = dict(TINY_SAMPLING[family], num_inference_steps=2, save_output=False)
    if family in TRUE_CFG:
        common["true_cfg_scale"] = 2.0
    # the second request makes two outputs from its one seed, as it would alone
    return [SamplingParams(prompt=prompt, negative_prompt=negative, seed=seed, num_outputs_per_prompt=n, **common)
            for prompt, negative, seed, n in zip(prompts, negatives, (1, 2), (1, 2))]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["wan2.1-t2v", "flux.1", "flux.2", "qwen-image", "hunyuanvideo"])
def test_batched_requests_equal_each_alone_in_one_forward(pipeline, family):
    pipe = pipeline(family)
    # same token counts, so that prompts encoded without padding (Qwen-Image, HunyuanVideo) stack too
    requests = _requests(family, ["a red cube", "a blue cube"], ["dark", "ugly"])
    alone = [pipe.run(r) for r in requests]
    batched = pipe.run_batch(requests)
    for request, one, together in zip(requests, alone, batched):
        assert together.forward_outputs == 3 and one.forward_outputs == request.num_outputs_per_prompt
        assert together.latents.shape == one.latents.shape
        assert rel_err(one.latents, together.latents) <= TOLERANCE
        assert abs(one.frames.astype(int) - together.frames).max() <= 1  # uint8 rounding of equal latents
    assert rel_err(batched[0].latents, batched[1].latents[:1]) > 0.1  # each its own prompt and noise


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen-image", "hunyuanvideo"])
def test_prompts_of_other_token_counts_run_in_their_own_forward(pipeline, family):
    """Prompts these families encode without padding stack only at equal token counts."""
    pipe = pipeline(family)
    requests = _requests(family, ["a red cube", "a blue cube on a long wooden table by the sea"], ["dark", "ugly"])
    alone = [pipe.run(r) for r in requests]
    batched = pipe.run_batch(requests)
    assert [s.forward_outputs for s in batched] == [1, 2]
    for one, together in zip(alone, batched):
        assert rel_err(one.latents, together.latents) <= TOLERANCE


@pytest.mark.slow
def test_image_to_video_requests_sharing_their_image_batch(pipeline, tmp_path):
    from PIL import Image

    pipe = pipeline("wan2.1-i2v")
    image = tmp_path / "frame.png"
    Image.new("RGB", (64, 64), (200, 40, 90)).save(image)
    common = dict(TINY_SAMPLING["wan2.1-i2v"], num_inference_steps=2, save_output=False, image_path=str(image))
    requests = [SamplingParams(prompt="a cat", seed=1, **common), SamplingParams(prompt="a dog", seed=2, **common)]
    alone = [pipe.run(r) for r in requests]
    batched = pipe.run_batch(requests)
    assert [s.forward_outputs for s in batched] == [2, 2]
    for one, together in zip(alone, batched):
        assert rel_err(one.latents, together.latents) <= TOLERANCE


def test_cache_dit_and_the_diffusers_backend_refuse_batching_with_a_reason(tiny_model, pipeline):
    model = str(tiny_model("flux.1"))
    assert pipeline("flux.1").describe()["batch_refusal"] is None
    cached = build_pipeline(ServerArgs(model_path=model, enable_cache_dit=True), Platform.current())
    assert "Cache-DiT" in cached.describe()["batch_refusal"]
    diffusers = build_pipeline(ServerArgs(model_path=model, backend="diffusers"), Platform.current())
    assert "diffusers" in diffusers.describe()["batch_refusal"]
