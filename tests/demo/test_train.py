"""The demo training script end to end on a tiny schedule: it writes a WanPipeline folder that
diffusers loads, with the loss curve and training record; run again, it resumes from its
checkpoints and writes the same weights."""

import json
import subprocess
import sys

import pytest

from sglang_diffusion.demo.train import CONFIG_PATH

TINY = dict(
    vae_stages=[dict(steps=2, schedule_steps=2, frames=5, batch=1, lr=1e-4, warmup_steps=1),
                dict(steps=1, schedule_steps=1, frames=9, batch=1, lr=1e-4, warmup_steps=1, decoder_only=True,
                     first_frame_weight=4.0)],
    vae_gate_clips=1, num_videos=2, num_images=2, dit_steps=2, dit_batch=2, dit_image_batch=2, dit_image_every=2,
    warmup_steps=1, checkpoint_every=1, eval_every=1, eval_prompts=1,
)


def train(config, out, work):
    proc = subprocess.run([sys.executable, "-m", "sglang_diffusion.demo.train", "--output-dir", str(out),
                           "--work-dir", str(work), "--config", str(config)], capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_tiny_training_writes_the_folder_and_resumes_to_the_same_weights(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**json.loads(CONFIG_PATH.read_text()), **TINY}))
    out, work = tmp_path / "model", tmp_path / "work"
    log = train(config, out, work)
    assert "vae step 3/3" in log and "dit step 2/2" in log and "saved the demo model" in log
    assert "vae gate, videos of 1 held-out scenes" in log and "eval at dit step 1, 1 prompts" in log
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and (out / "loss_curve.png").stat().st_size > 0
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert len(vae_config["latents_mean"]) == len(vae_config["latents_std"]) == 16
    weights = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.safetensors")}

    again = train(config, out, work)
    assert "vae: resumed at step 3" in again and "dit: resumed at step 2" in again
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.safetensors")} == weights

    import diffusers

    pipe = diffusers.WanPipeline.from_pretrained(out)
    assert pipe.tokenizer("A red circle!").input_ids[:2] == pipe.tokenizer("a red circle").input_ids[:2]


def test_unclamped_decode_is_diffusers_decode_before_its_clamp():
    import diffusers
    import torch

    from sglang_diffusion.demo.train import decode_unclamped

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, attn_scales=[],
                                     temperal_downsample=[True], scale_factor_temporal=2, scale_factor_spatial=2).eval()
    z = torch.randn(1, 4, 3, 4, 4)
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(50)  # so that some outputs leave [-1, 1]
        raw = decode_unclamped(vae, z)
        clamped = vae.decode(z).sample
    assert raw.shape == clamped.shape == (1, 3, 5, 8, 8) and raw.abs().max() > 1
    torch.testing.assert_close(raw.clamp(-1, 1), clamped)
