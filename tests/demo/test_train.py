"""The demo training script end to end on a tiny schedule: it writes a WanPipeline folder that
diffusers loads, with the loss curve and training record; run again, it resumes from its
checkpoints and writes the same weights."""

import json
import subprocess
import sys

import pytest

from sglang_diffusion.demo.train import CONFIG_PATH, cooldown_lr_at

TINY = dict(
    vae_stages=[dict(steps=2, schedule_steps=2, batch=2, crop=32, lr=1e-4, warmup_steps=1),
                dict(steps=1, schedule_steps=1, batch=1, crop=128, lr=1e-4, warmup_steps=1)],
    text_steps=2, text_batch=2, vae_gate_clips=1, num_videos=2, num_images=2, dit_steps=2, dit_batch=2, dit_image_batch=2, dit_image_every=2,
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
    assert len(vae_config["latents_mean"]) == len(vae_config["latents_std"]) == vae_config["z_dim"] == 8
    weights = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.safetensors")}

    again = train(config, out, work)
    assert "vae: resumed at step 3" in again and "dit: resumed at step 2" in again
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*.safetensors")} == weights

    import diffusers

    pipe = diffusers.WanPipeline.from_pretrained(out)
    assert pipe.tokenizer("A red circle!").input_ids[:2] == pipe.tokenizer("a red circle").input_ids[:2]


def test_the_dit_rate_warms_up_holds_then_falls_to_zero_over_the_cooldown():
    rates = [cooldown_lr_at(step, 100, 1.0, 10, 20) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(r == 1.0 for r in rates[10:81]) and rates[81] < 1.0
    assert rates[-1] == pytest.approx(1 / 20) and all(a > b for a, b in zip(rates[80:], rates[81:]))
    # a run set to end later has the same rates up to the start of the shorter run's cooldown
    assert [cooldown_lr_at(step, 150, 1.0, 10, 20) for step in range(81)] == rates[:81]


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


def test_a_frame_independent_vae_is_the_image_vae_on_every_other_frame_and_stays_so_in_training():
    """Video = the image VAE on frames 0, 2, 4, ..., each decoded latent frame drawn twice; a
    training step leaves the zeroed past taps at zero and the temporal resampling untouched."""
    import diffusers
    import torch

    from sglang_diffusion.demo.train import decode_unclamped, make_frame_independent

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1, attn_scales=[],
                                     temperal_downsample=[False, True], scale_factor_temporal=2,
                                     scale_factor_spatial=4)
    hooks = make_frame_independent(vae)
    time_convs = {n: p.clone() for n, p in vae.named_parameters() if "time_conv" in n}
    assert len(time_convs) == 4 and hooks
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1

    def check():
        vae.eval()
        with torch.no_grad():
            z = vae.encode(video).latent_dist.mean  # [1, 4, 5, 4, 4]
            frames = video[:, :, 0::2].transpose(1, 2).flatten(0, 1)[:, :, None]  # 5 images
            z_images = vae.encode(frames).latent_dist.mean  # [5, 4, 1, 4, 4]
            torch.testing.assert_close(z[0].transpose(0, 1), z_images[:, :, 0], rtol=1e-4, atol=1e-5)
            decoded, decoded_images = vae.decode(z).sample[0], vae.decode(z_images).sample[:, :, 0]
        assert decoded.shape == (3, 9, 16, 16)
        torch.testing.assert_close(decoded.transpose(0, 1), decoded_images[[0, 1, 1, 2, 2, 3, 3, 4, 4]],
                                   rtol=1e-4, atol=1e-5)

    check()
    vae.train()
    optimizer = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=1e-2)
    clip = video[:, :, :5]
    loss = (decode_unclamped(vae, vae.encode(clip).latent_dist.mean) - clip).abs().mean()
    loss.backward()
    optimizer.step()
    for name, param in vae.named_parameters():
        if "time_conv" in name:
            assert torch.equal(param, time_convs[name]), name
        elif param.dim() == 5 and param.shape[2] == 3:
            assert param[:, :, :2].abs().max() == 0, name
    check()


def test_phase_time_counts_every_run_up_to_its_last_checkpoint(tmp_path):
    import time

    from sglang_diffusion.demo.train import PhaseClock

    path = tmp_path / "timings.json"
    clock = PhaseClock(path)

    def stopped_after_a_checkpoint():
        time.sleep(0.05)
        clock.mark()  # a checkpoint, then the process is killed before the phase ends
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        clock.run("dit", stopped_after_a_checkpoint)
    first = json.loads(path.read_text())["dit"]
    assert first >= 0.05
    resumed = PhaseClock(path)  # the next process
    resumed.run("dit", lambda: time.sleep(0.05))
    assert json.loads(path.read_text())["dit"] >= first + 0.05
    assert resumed.seconds["dit"] == json.loads(path.read_text())["dit"]
