"""Sliding tile attention in the native HunyuanVideo DiT: a window covering the grid equals the
dense DiT (tokens and RoPE rows reordered once and restored, text attended jointly), a smaller
window changes the output, every block (dual-stream, then single-stream: the mask file's layer
index) runs the window the file names for it with the text, and `sglang generate` runs the tiny model natively with a mask-strategy file. Ulysses on 2 ranks:
tests/distributed/test_hunyuan_video_sliding_tile_parallel.py."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel as DiffusersHunyuan

from sglang_diffusion.attention.backends import sliding_tile_attn as backend_mod
from sglang_diffusion.attention.selector import select_attention_backend
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.config.support import check_pipeline_supported
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.models.dits.hunyuan_video import HunyuanVideoTransformer3DModel
from tests.compare import rel_err
from tests.models.dit_pairs import saved_pair
from tests.models.test_hunyuan_video_dit import CONFIG

TILE = "2x3x4"  # the 3 x 7 x 7 token grid below is 2 x 3 x 2 tiles that do not divide it
TEXT = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hunyuan-sta")
    saved_pair(DiffusersHunyuan, HunyuanVideoTransformer3DModel, CONFIG, folder)
    return folder


@pytest.fixture(scope="module")
def model(folder):
    return HunyuanVideoTransformer3DModel.from_pretrained(folder)


def inputs(timestep=700.0):
    g = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 4, 3, 14, 14, generator=g), timestep=torch.tensor([timestep]),
                encoder_hidden_states=torch.randn(1, TEXT, 24, generator=g),
                encoder_attention_mask=torch.ones(1, TEXT), pooled_projections=torch.randn(1, 12, generator=g),
                guidance=torch.tensor([6000.0]))


def sta(config: dict):
    return select_attention_backend("sliding_tile_attn", device="cpu", dtype=torch.float32, head_dim=16,
                                    config=config)


def test_window_covering_the_grid_equals_the_dense_dit(model):
    kw = inputs()
    with torch.no_grad():
        model.set_attention_backend(select_attention_backend("torch_sdpa", device="cpu", dtype=torch.float32,
                                                             head_dim=16))
        dense = model(**kw)
        model.set_attention_backend(sta({"window": "2x3x2", "tile_size": TILE}))
        tiled = model(**kw)
        model.set_attention_backend(sta({"window": "1x1x1", "tile_size": TILE}))
        local = model(**kw)
    assert rel_err(tiled, dense) <= 1e-5
    assert rel_err(local, dense) > 1e-2  # a one-tile window is a different attention


def test_each_block_runs_the_window_the_file_names_for_it(model, tmp_path, monkeypatch):
    """4 layers (2 dual-stream, then 2 single-stream blocks) x 2 heads, steps 1 and 2 named."""
    entries = {f"{s}_{l}_{h}": [1 + l // 2, 1 + h, 1 + l % 2] for s in (1, 2) for l in range(4) for h in range(2)}
    entries["2_3_0"] = [2, 3, 2]
    path = tmp_path / "mask.json"
    path.write_text(json.dumps(entries))
    calls = []
    run = backend_mod.sliding_tile_attention

    def counting(q, k, v, layout, windows, text_len, *args, **kwargs):
        calls.append((step[0], tuple(windows), text_len))
        return run(q, k, v, layout, windows, text_len, *args, **kwargs)

    monkeypatch.setattr(backend_mod, "sliding_tile_attention", counting)
    model.set_attention_backend(sta({"mask_strategy_file_path": str(path), "tile_size": TILE}))
    step = [0]
    with torch.no_grad():
        for step[0], t in enumerate((900.0, 600.0, 300.0)):  # step 0 is not in the file: full attention
            model(**inputs(t))
    layers = [tuple((1 + l // 2, 1 + h, 1 + l % 2) for h in range(2)) for l in range(4)]
    assert calls == [*((1, w, TEXT) for w in layers),
                     *((2, w, TEXT) for w in layers[:3]), (2, ((2, 3, 2), (2, 2, 2)), TEXT)]


def test_a_file_for_other_layers_is_a_clear_error(model, tmp_path):
    path = tmp_path / "mask.json"
    path.write_text(json.dumps({f"1_{l}_{h}": [1, 1, 1] for l in range(2) for h in range(2)}))  # dual only
    with pytest.raises(ConfigError, match="2 layers x 2 heads, the model has 4 layers x 2 heads"):
        model.set_attention_backend(sta({"mask_strategy_file_path": str(path)}))


def test_hunyuanvideo_is_not_refused_and_image_models_are():
    class Built:
        def __init__(self, family):
            self.info = {"family": family, "backend": "sglang"}

        def describe(self):
            return self.info

    args = ServerArgs(model_path="m", attention_backend="sliding_tile_attn")
    check_pipeline_supported(args, Built("hunyuanvideo"))
    with pytest.raises(ConfigError, match="flux.1 is an image model"):
        check_pipeline_supported(args, Built("flux.1"))


def _tiled(folder, strategy_path, seq=None):
    model = HunyuanVideoTransformer3DModel.from_pretrained(folder)
    model.set_attention_backend(sta({"mask_strategy_file_path": strategy_path, "tile_size": TILE}))
    with torch.no_grad():
        return model(**inputs(), seq=seq)


@pytest.mark.slow
def test_sglang_generate_runs_hunyuanvideo_natively_with_a_mask_strategy_file(tiny_model, tmp_path):
    """The tiny model (1 dual + 1 single block, 2 heads): step 1 of 2 runs the file's windows."""
    from tests.conftest import run_cli

    strategy = tmp_path / "mask_strategy.json"
    strategy.write_text(json.dumps({f"1_{l}_{h}": [1, 1 + h, 2] for l in range(2) for h in range(2)}))
    proc = run_cli("generate", "--model-path", tiny_model("hunyuanvideo"), "--prompt", "a red kite",
                   "--height", 32, "--width", 48, "--num-frames", 5, "--num-inference-steps", 2,
                   "--mask-strategy-file-path", strategy, "--attention-backend-config", "tile_size=1x2x2",
                   "--output-path", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("*.mp4"))) == 1
    assert "sliding_tile_attn" in proc.stderr and "HunyuanVideoTransformer3DModel" in proc.stderr
