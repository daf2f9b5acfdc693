"""Sliding tile attention end to end: FastVideo's mask-strategy files, the sliding_tile_attn
backend and its errors, and the Wan DiT running tiled (reorder once, RoPE rows with the
tokens, the right window in the right layer and head at the right step, Ulysses on 2 gloo
ranks equal to one rank)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel as DiffusersWan

from sglang_diffusion.attention import sliding_tile as sliding_tile_mod
from sglang_diffusion.attention.backends import sliding_tile_attn as backend_mod
from sglang_diffusion.attention.selector import attention_request, select_attention_backend
from sglang_diffusion.attention.sliding_tile import MaskStrategy, StepCounter
from sglang_diffusion.config.server_args import ServerArgs
from sglang_diffusion.config.support import check_pipeline_supported, check_supported
from sglang_diffusion.errors import ConfigError
from sglang_diffusion.models.dits.wan import WanTransformer3DModel

WAN = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
           text_dim=16, freq_dim=32, ffn_dim=24, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", eps=1e-6)


def write_strategy(path, entries: dict) -> str:
    path.write_text(json.dumps({k: list(v) for k, v in entries.items()}))
    return str(path)


def sta(config: dict):
    return select_attention_backend("sliding_tile_attn", device="cpu", dtype=torch.float32, head_dim=12,
                                    config=config)


# ---- the mask-strategy file ----------------------------------------------------------------


def test_fastvideo_file_gives_windows_per_step_layer_and_head(tmp_path):
    entries = {f"{s}_{l}_{h}": (1 + s, 1 + l, 1 + h) for s in (2, 3) for l in range(2) for h in range(3)}
    strategy = MaskStrategy.from_file(write_strategy(tmp_path / "m.json", entries))
    strategy.check_model(num_layers=2, num_heads=3)
    assert strategy.windows(0) is None and strategy.windows(4) is None  # unnamed steps: full attention
    assert strategy.windows(3)[1][2] == (4, 2, 3)


@pytest.mark.parametrize("content, message", [
    ({"0_0_0": [1, 1, 1], "0_1_1": [1, 1, 1]}, "step 0 names 2 of its 2 layers x 2 heads; missing 0_0_1, 0_1_0"),
    ({"0_0": [1, 1, 1]}, "key '0_0' is not"),
    ({"0_0_0": [1, 0, 1]}, "three positive integers"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        MaskStrategy.from_file(path)
    with pytest.raises(ConfigError, match="cannot read it"):
        MaskStrategy.from_file(tmp_path / "missing.json")


def test_file_whose_layers_or_heads_do_not_fit_the_model_is_a_clear_error(tmp_path, wan_folder):
    model = WanTransformer3DModel.from_pretrained(wan_folder)
    for layers, heads in ((3, 2), (2, 1)):
        entries = {f"0_{l}_{h}": (1, 1, 1) for l in range(layers) for h in range(heads)}
        backend = sta({"mask_strategy_file_path": write_strategy(tmp_path / f"{layers}{heads}.json", entries)})
        with pytest.raises(ConfigError, match=f"{layers} layers x {heads} heads, the model has 2 layers x 2 heads"):
            model.set_attention_backend(backend)


def test_window_wider_than_the_grid_is_clamped_with_a_warning(wan_folder, caplog):
    model = WanTransformer3DModel.from_pretrained(wan_folder)
    model.set_attention_backend(sta({"window": "5x1x9", "tile_size": "2x3x4"}))
    with caplog.at_level("WARNING", logger="sglang_diffusion.attention.sliding_tile"):
        tiling = model.sliding_tiles.plan((5, 7, 9), torch.tensor([900.0]))
    assert tiling.windows[0] == ((3, 1, 3),) * 2
    assert "windows wider than this grid's 3x3x3 tiles (5x7x9 tokens in tiles of 2x3x4)" in caplog.text
    assert "(5, 1, 9) -> (3, 1, 3)" in caplog.text


def test_step_counter_follows_decreasing_timesteps():
    counter = StepCounter()
    assert [counter.observe(t) for t in (999, 999, 700, 700, 300, 999, 500)] == [0, 0, 1, 1, 2, 0, 1]


# ---- the backend and the flags -------------------------------------------------------------


def test_backend_needs_exactly_one_window_source_and_fa3_is_fa(tmp_path):
    with pytest.raises(ConfigError, match="needs exactly one of mask_strategy_file_path .* and window"):
        sta({})
    with pytest.raises(ConfigError, match="both were given"):
        sta({"window": "1x1x1", "mask_strategy_file_path": "x.json"})
    with pytest.raises(ConfigError, match="window: expected three positive integers"):
        sta({"window": "3x3"})
    fa3 = select_attention_backend("fa3", device="cpu", dtype=torch.float32, head_dim=12)
    assert fa3.name == "fa"


def test_mask_strategy_flag_selects_the_backend(tmp_path):
    assert attention_request("auto", "kernel=torch", "m.json") == (
        "sliding_tile_attn", {"kernel": "torch", "mask_strategy_file_path": "m.json"})
    assert attention_request("fa", None, None) == ("fa", None)
    with pytest.raises(ConfigError, match="use --attention-backend sliding_tile_attn"):
        attention_request("fa", None, "m.json")


class _Pipeline:
    def __init__(self, family, backend="sglang"):
        self.info = {"family": family, "backend": backend}

    def describe(self):
        return self.info


def test_image_models_ring_attention_and_diffusers_pipelines_refuse_it():
    args = ServerArgs(model_path="m", attention_backend="sliding_tile_attn")
    with pytest.raises(ConfigError, match="flux.1 is an image model"):
        check_pipeline_supported(args, _Pipeline("flux.1"))
    with pytest.raises(ConfigError, match="qwen-image is an image model"):
        check_pipeline_supported(args, _Pipeline("qwen-image"))
    with pytest.raises(ConfigError, match="on the diffusers backend"):
        check_pipeline_supported(args, _Pipeline("hunyuanvideo", "diffusers"))
    check_pipeline_supported(args, _Pipeline("wan2.1-t2v"))
    with pytest.raises(ConfigError, match="ring_degree=2: ring attention splits the keys"):
        check_supported(ServerArgs(model_path="m", num_gpus=2, ring_degree=2, mask_strategy_file_path="m.json"))


def joint_inputs(layout, heads=2, text_len=5, d=16):
    from tests.ops.helpers import randn

    video = [randn((1, layout.num_tokens, heads, d), seed) for seed in (0, 1, 2)]  # [B, S, H, D] tiled
    text = [randn((1, text_len, heads, d), seed) for seed in (3, 4, 5)]  # [B, L, H, D]
    return video, text


def test_joint_attention_sees_the_window_and_all_text():
    """A dual-stream DiT's joint attention (HunyuanVideo) through the tiled layer."""
    from sglang_diffusion.ops.sliding_tile_attention import TileLayout, sliding_tile_attention_reference

    layout = TileLayout((3, 5, 7), (2, 2, 3))
    windows = ((1, 2, 2), (2, 1, 3))
    (q, k, v), (tq, tk, tv) = joint_inputs(layout)
    video, text = sliding_tile_mod.TiledSelfAttention(layout, windows).joint_attention(q, k, v, tq, tk, tv, sta({
        "window": "1x1x1"}))
    want, _ = sliding_tile_attention_reference(*(torch.cat(p, 1) for p in ((q, tq), (k, tk), (v, tv))), layout,
                                               windows, 5)
    torch.testing.assert_close(torch.cat([video, text], 1), want, atol=1e-5, rtol=1e-5)


# ---- the Wan DiT, tiled --------------------------------------------------------------------


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    torch.manual_seed(0)
    ref = DiffusersWan(**WAN).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("wan")
    ref.save_pretrained(folder)
    return folder


def wan_inputs(per_token=False):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 5, 14, 18, generator=g)  # 5 x 7 x 9 tokens: tiles of 2x3x4 do not divide it
    t = torch.full((1, 5 * 7 * 9), 700.0) if per_token else torch.tensor([700.0])
    if per_token:
        t[:, :63] = 0.0  # the first frame's tokens
    return x, t, torch.randn(1, 7, 16, generator=g)


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("per_token", [False, True], ids=["t2v", "per_token_timesteps"])
def test_window_covering_the_grid_equals_dense_attention(wan_folder, per_token):
    """Tokens, RoPE rows and per-token modulation reordered once and restored: exact."""
    model = WanTransformer3DModel.from_pretrained(wan_folder)
    x, t, text = wan_inputs(per_token)
    with torch.no_grad():
        dense = model(x, t, text)
        model.set_attention_backend(sta({"window": "3x3x3", "tile_size": "2x3x4"}))
        tiled = model(x, t, text)
        branches = model.forward_branches(x, t, [model.encode_context(text)])[0]
        model.set_attention_backend(sta({"window": "1x1x1", "tile_size": "2x3x4"}))
        local = model(x, t, text)
    assert rel_err(tiled, dense) <= 1e-5 and rel_err(branches, dense) <= 1e-5
    assert rel_err(local, dense) > 1e-2  # a one-tile window is a different attention


def test_per_step_layer_and_head_windows_reach_their_layers(tmp_path, wan_folder, monkeypatch):
    entries = {f"{s}_{l}_{h}": (1, 1 + h, 1 + l) for s in (1, 2) for l in range(2) for h in range(2)}
    entries["2_1_0"] = (2, 2, 2)
    backend = sta({"mask_strategy_file_path": write_strategy(tmp_path / "m.json", entries), "tile_size": "2x3x4"})
    calls = []
    run = backend_mod.sliding_tile_attention

    def counting(q, k, v, layout, windows, *args, **kwargs):
        calls.append((step[0], tuple(windows)))
        return run(q, k, v, layout, windows, *args, **kwargs)

    monkeypatch.setattr(backend_mod, "sliding_tile_attention", counting)
    model = WanTransformer3DModel.from_pretrained(wan_folder)
    model.set_attention_backend(backend)
    x, _, text = wan_inputs()
    context = model.encode_context(text)
    step = [0]
    with torch.no_grad():
        for step[0], t in enumerate((900.0, 600.0, 600.0, 300.0)):  # steps 0, 1, 1 (a second branch), 2
            model(x, torch.tensor([t]), context=context)
    layer0, layer1 = ((1, 1, 1), (1, 2, 1)), ((1, 1, 2), (1, 2, 2))
    assert calls == [(1, layer0), (1, layer1), (2, layer0), (2, layer1),
                     (3, layer0), (3, ((2, 2, 2), (1, 2, 2)))]  # step 0 is not in the file: full attention


def _tiled_wan(folder, strategy_path, seq=None):
    model = WanTransformer3DModel.from_pretrained(folder)
    model.set_attention_backend(sta({"mask_strategy_file_path": strategy_path, "tile_size": "2x3x4"}))
    x, t, text = wan_inputs()
    with torch.no_grad():
        return model(x, t, text, seq=seq)


# ---- the guide's config, end to end ----------------------------------------------------------


@pytest.mark.slow
def test_guide_config_with_a_mask_strategy_file_runs_natively(tiny_model, tmp_path):
    """The CLI guide's config.json with mask_strategy_file_path set to a file for the tiny
    model's 2 layers x 2 heads: step 1 of 2 runs its windows, step 0 full attention."""
    from tests.cli.test_generate import guide_config
    from tests.conftest import run_cli

    strategy = write_strategy(tmp_path / "mask_strategy.json",
                              {f"1_{l}_{h}": (1, 1 + h, 2) for l in range(2) for h in range(2)})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(guide_config(tiny_model("wan2.1-t2v"), tmp_path, num_gpus=1, sp_size=1, height=64,
                                            width=64, mask_strategy_file_path=strategy,
                                            attention_backend_config="tile_size=1x2x2")))
    proc = run_cli("generate", "--config", path)
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("*.mp4"))) == 1
    assert "sliding_tile_attn" in proc.stderr
