"""HunyuanVideo on several gloo ranks: the native pipeline's latents under Ulysses, ring, USP (video
tokens split, text replicated) and CFG parallelism (true CFG's two branches on two ranks) equal
one rank's (fp32, 1e-4 relative), with a token count that divides the ranks and one that does not; --vae-sp splits AutoencoderKLHunyuanVideo's
temporal and spatial tiles and gives one rank's `vae.decode` bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.distributed.parallel_state import (ParallelLayout, initialize_model_parallel, parallel_groups,
                                                         resolve_layout)
from sglang_diffusion.distributed.vae_parallel import sp_decode
from sglang_diffusion.pipelines.registry import build_pipeline
from sglang_diffusion.platform import Platform

BASE = dict(prompt="a lighthouse in a storm", num_frames=5, num_inference_steps=2, guidance_scale=6.0, seed=5)
REQUESTS = {"24 tokens": dict(BASE, height=64, width=48),
            "15 tokens, true CFG": dict(BASE, height=48, width=80, true_cfg_scale=3.0, negative_prompt="dark")}
LATENT_TOL = 1e-4
# (num_gpus, ulysses, ring, cfg)
LAYOUTS = [(2, 2, 1, 1), (2, 1, 2, 1), (4, 2, 2, 1), (2, 1, 1, 2), (4, 2, 1, 2)]


def server_args(model_path, num_gpus=1, ulysses=None, ring=None, cfg=1) -> ServerArgs:
    return ServerArgs(model_path=str(model_path), backend="sglang", num_gpus=num_gpus, ulysses_degree=ulysses,
                      ring_degree=ring, enable_cfg_parallel=cfg == 2)


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def layout_case(layout, model_path):
    world = layout[0]
    resolved, _ = resolve_layout(server_args(model_path, *layout), num_heads=2)
    if initialize_model_parallel(resolved, ranks=range(world)) is None:
        return None
    pipe = build_pipeline(server_args(model_path, *layout), Platform.current(dist.get_rank()))
    out = {name: pipe.run(SamplingParams(**request)).latents.cpu() for name, request in REQUESTS.items()}
    out["describe"] = pipe.describe()["parallel"]
    return out


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("hunyuanvideo")


@pytest.fixture(scope="module")
def single_rank(model):
    pipe = build_pipeline(server_args(model), Platform.current())
    return {name: pipe.run(SamplingParams(**request)).latents for name, request in REQUESTS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: "gpus{}-ulysses{}-ring{}-cfg{}".format(*l))
def test_sequence_parallel_layouts_give_the_single_rank_latents(pools, layout, model, single_rank):
    results = pools("gloo").run(layout_case, layout, model, timeout=600)
    world = layout[0]
    assert all(r is None for r in results[world:])
    for rank, per_rank in enumerate(results[:world]):
        for name, want in single_rank.items():
            err = rel_err(per_rank[name], want)
            assert err <= LATENT_TOL, (rank, name, err)
        assert f"ulysses={layout[1]} x ring={layout[2]}), cfg={layout[3]}" in per_rank["describe"]


# ---- vae_sp ---------------------------------------------------------------------------------

# latent [F', H', W'] and tiling (sample pixels / frames): spatial 32-pixel tiles every 24
# (latent 4 every 3), temporal 8-frame tiles every 4 (latent 2 every 1)
VAE_CASES = {
    "6 spatial tiles": ((2, 6, 8), dict(tile_sample_min_num_frames=16)),
    "3 temporal tiles": ((3, 4, 4), dict(tile_sample_min_num_frames=8, tile_sample_stride_num_frames=4)),
    "3 x 4 tiles": ((3, 6, 6), dict(tile_sample_min_num_frames=8, tile_sample_stride_num_frames=4)),
}


def load_vae(path, case):
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(path / "vae").eval()
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=24,
                      tile_sample_stride_width=24, **VAE_CASES[case][1])
    return vae


def vae_case(world, path):
    if initialize_model_parallel(ParallelLayout(world, ulysses=world), ranks=range(world)) is None:
        return None
    out = {}
    with torch.inference_mode():
        for case, (shape, _) in VAE_CASES.items():
            vae = load_vae(path, case)
            z = torch.randn(1, 16, *shape, generator=torch.Generator().manual_seed(0))
            split = sp_decode(vae, z, parallel_groups().sp)
            out[case] = (split, vae.decode(z, return_dict=False)[0] if parallel_groups().sp.rank == 0 else None)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_vae_sp_splits_temporal_and_spatial_tiles_bit_for_bit(pools, world, model):
    results = pools("gloo").run(vae_case, world, model, timeout=300)
    for case, (shape, _) in VAE_CASES.items():
        want = results[0][case][1]
        assert want.shape[2:] == ((shape[0] - 1) * 4 + 1, shape[1] * 8, shape[2] * 8)
        for rank in range(world):
            got = results[rank][case][0]
            assert torch.equal(got, want), (case, rank, (got - want).abs().max().item())


# ---- the guide's config files ------------------------------------------------------------------


def guide_files(model, tmp_path) -> dict:
    """The CLI guide's config.json and config.yaml (num_gpus 2, sp_size 2, vae_tiling and vae_sp
    with its 256-pixel tiles, two text_encoder_precisions), the model swapped for the tiny
    HunyuanVideo, 448 pixels wide so that the VAE makes 3 tiles (2 on rank 0, 1 on rank 1)."""
    import json

    import yaml

    from tests.cli.test_generate import guide_config

    files = {}
    for kind in ("json", "yaml"):
        config = guide_config(model, tmp_path / kind, width=448, text_encoder_precisions=["fp16", "fp16"])
        files[kind] = tmp_path / f"config.{kind}"
        files[kind].write_text(json.dumps(config) if kind == "json" else yaml.safe_dump(config))
    return files


@pytest.mark.slow
def test_guide_config_json_and_yaml_on_two_ranks_give_one_rank_and_diffusers(model, tmp_path):
    import imageio.v3 as iio
    import numpy as np

    from sglang_diffusion.api import DiffGenerator
    from sglang_diffusion.config.loading import build_args, load_config_file
    from tests.conftest import run_cli
    from tests.distributed.test_engine_parallel import psnr

    files = guide_files(model, tmp_path)
    for kind, path in files.items():
        proc = run_cli("generate", "--config", path, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "tiles split over 2 SP ranks" in proc.stderr and "sp=2" in proc.stderr
    for name, extra in {"one": dict(num_gpus=1, sp_degree=1),
                        "diffusers": dict(num_gpus=1, sp_degree=1, vae_sp=False, backend="diffusers")}.items():
        server, sampling = build_args({**load_config_file(files["json"]), **extra, "output_path": str(tmp_path / name)})
        with DiffGenerator(server) as gen:
            gen.engine.generate(sampling)
    videos = {d: iio.imread(next((tmp_path / d).glob("*.mp4")), plugin="pyav")
              for d in ("json", "yaml", "one", "diffusers")}
    assert videos["one"].shape == (5, 32, 448, 3)
    assert np.array_equal(videos["json"], videos["yaml"])
    for other in ("json", "diffusers"):
        assert psnr(videos[other], videos["one"]) >= 40.0, (other, psnr(videos[other], videos["one"]))
