"""The Engine through the Python API: determinism, overrides, bad requests, and rank processes."""

import os
import signal

import numpy as np
import pytest

from sglang_diffusion.api import DiffGenerator
from sglang_diffusion.errors import InvalidRequestError, RankFailedError

FLUX_REQUEST = dict(prompt="a red cube", height=32, width=32, num_inference_steps=2, save_output=False,
                    return_frames=True)


@pytest.fixture(scope="module")
def flux(tiny_model):
    with DiffGenerator.from_pretrained(str(tiny_model("flux.1"))) as gen:
        yield gen


def test_same_seed_same_image_other_seed_different(flux):
    a = flux.generate(**FLUX_REQUEST, seed=1).frames[0]
    b = flux.generate(**FLUX_REQUEST, seed=1).frames[0]
    c = flux.generate(**FLUX_REQUEST, seed=2).frames[0]
    assert a.dtype == np.uint8 and a.shape == (1, 32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_several_outputs_per_prompt_one_result_each(flux, tmp_path):
    results = flux.generate(**{**FLUX_REQUEST, "save_output": True}, num_outputs_per_prompt=2,
                            output_path=str(tmp_path))
    assert len(results) == 2 and all(len(r.frames) == len(r.files) == 1 for r in results)
    assert results[0].files != results[1].files and all(r.files[0].exists() for r in results)
    assert not np.array_equal(results[0].frames[0], results[1].frames[0])


def test_bad_request_is_refused_and_engine_keeps_serving(flux, tmp_path):
    with pytest.raises(InvalidRequestError, match="num_frames"):
        flux.generate(**FLUX_REQUEST, num_frames=9)
    with pytest.raises(InvalidRequestError, match="takes no input image"):
        flux.generate(**FLUX_REQUEST, image_path=str(tmp_path / "x.png"))
    with pytest.raises(InvalidRequestError, match="a video is written as|an image is written as"):
        flux.generate(**{**FLUX_REQUEST, "save_output": True}, output_file_name="x.mp4",
                      output_path=str(tmp_path))
    assert flux.generate(**FLUX_REQUEST).frames[0].shape == (1, 32, 32, 3)


def test_component_override_takes_effect(tiny_model, tmp_path, flux):
    from sglang_diffusion.testing import build_model

    baseline = flux.generate(**FLUX_REQUEST).frames[0]
    same = build_model("flux.1", tmp_path / "same", seed=0)
    other = build_model("flux.1", tmp_path / "other", seed=1)
    with DiffGenerator.from_pretrained(str(tiny_model("flux.1")), vae_path=str(same / "vae")) as gen:
        assert np.array_equal(gen.generate(**FLUX_REQUEST).frames[0], baseline)
    with DiffGenerator.from_pretrained(str(tiny_model("flux.1")), vae_path=str(other / "vae")) as gen:
        assert not np.array_equal(gen.generate(**FLUX_REQUEST).frames[0], baseline)


@pytest.mark.slow
def test_two_ranks_agree_with_one_and_survive_a_bad_request(tiny_model, flux):
    expected = flux.generate(**FLUX_REQUEST).frames[0]
    with DiffGenerator.from_pretrained(str(tiny_model("flux.1")), num_gpus=2) as gen:
        assert np.array_equal(gen.generate(**FLUX_REQUEST).frames[0], expected)
        with pytest.raises(InvalidRequestError, match="num_frames"):
            gen.generate(**FLUX_REQUEST, num_frames=9)
        assert np.array_equal(gen.generate(**FLUX_REQUEST).frames[0], expected)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_dead_rank_is_a_clear_error_not_a_hang(tiny_model):
    gen = DiffGenerator.from_pretrained(str(tiny_model("flux.1")), num_gpus=2)
    try:
        victim = gen.engine._procs[1]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        with pytest.raises(RankFailedError, match="rank"):
            gen.generate(**FLUX_REQUEST)
        assert all(not p.is_alive() for p in gen.engine._procs)  # the rest were shut down
    finally:
        gen.shutdown()


@pytest.mark.slow
def test_a_rank_that_fails_to_load_stops_the_engine_cleanly(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline", "vae": ["diffusers", "AutoencoderKL"]}')
    from sglang_diffusion.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="diffusers cannot load"):
        DiffGenerator.from_pretrained(str(tmp_path), num_gpus=2, backend="diffusers")


def test_progress_is_reported_after_each_step_and_cancel_stops_the_request(flux):
    import threading

    from sglang_diffusion.config.loading import sampling_params_from_kwargs
    from sglang_diffusion.errors import RequestCancelled

    params = sampling_params_from_kwargs({**FLUX_REQUEST, "num_inference_steps": 4})
    seen = []
    flux.engine.generate(params, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    cancel = threading.Event()
    with pytest.raises(RequestCancelled, match="after 2 of 4"):
        flux.engine.generate(params, on_progress=lambda done, total: cancel.set(), cancel=cancel)
    assert flux.generate(**FLUX_REQUEST).frames[0].shape == (1, 32, 32, 3)


def test_diffusers_options_reach_the_pipeline(tiny_model):
    """diffusers_kwargs go to the call, the attention backend to diffusers, VAE tiling/slicing to the VAE."""
    from sglang_diffusion.errors import ConfigError

    with DiffGenerator.from_pretrained(str(tiny_model("flux.1")), backend="diffusers",
                                       diffusers_attention_backend="native", vae_tiling=True, vae_slicing=True) as gen:
        assert gen.engine.info["attention_backend"] == "native"
        vae = gen.engine._local.pipeline.pipe.vae
        assert vae.use_tiling and vae.use_slicing
        plain = gen.generate(**FLUX_REQUEST).frames[0]
        scaled = gen.generate(**FLUX_REQUEST, diffusers_kwargs={"max_sequence_length": 16}).frames[0]
        assert plain.shape == scaled.shape
        with pytest.raises(InvalidRequestError, match="takes no argument 'no_such_arg'"):
            gen.generate(**FLUX_REQUEST, diffusers_kwargs={"no_such_arg": 1})
    with pytest.raises(ConfigError, match="cannot run here"):
        DiffGenerator.from_pretrained(str(tiny_model("flux.1")), backend="diffusers", diffusers_attention_backend="flash")
