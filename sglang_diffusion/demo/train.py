"""Train the demo model from nothing: the VAE, then the DiT and the text encoder together.

    python -m sglang_diffusion.demo.train --output-dir demo-model [--work-dir demo-work]

Phases, each resumable from its checkpoint in the work folder (run the same command again
after a stop):

1. `init`: the diffusers folder with seeded random weights (`folder.write_initial_folder`).
2. `vae`: AutoencoderKLWan made frame-independent (`make_frame_independent`): every causal
   convolution looks at the current frame only, the encoder's temporal downsampling keeps the
   second frame of each pair and the decoder's upsampling draws each latent frame twice, so a
   17-frame video is the image VAE applied to frames 0, 2, .., 16 and each of those shown for two
   frames. Motion then advances every other frame (the DiT still draws 9 positions), and the VAE
   is trained on images alone: its temporal path, which minutes of video training here never made
   stable (colours drifting across latent frames), has nothing left to learn. Training runs on
   random crops of synthetic frames, small first, then the full frame, L1 + MSE on the unclamped
   output (the pipeline's clamp to [-1, 1] would stop the gradient of every saturated pixel). The
   decoder sees the posterior mean plus a small noise relative to its spread (so that it
   tolerates the DiT's errors); the posterior's own variance is not trained (a KL weight small
   enough not to blur would take thousands of steps to shrink it). Nearly every convolution feeds
   a channel RMS norm, which makes its output independent of the weights' scale: with weights
   initialised ~0.02, Adam's per-weight steps of 1e-4 and more turn them so fast that the output
   stops depending on the input (measured: identity on 8 flat colours fails at 1e-3 and is learnt
   at 3e-5). So the convolution and norm weights start `vae_init_scale` times larger (but the
   output convolutions), which slows those turns down by the square of it and lets the rest learn
   at a higher rate. Crops are taken around the shape (its centre anywhere in the crop), where the
   edges are.
   `vae_gate`: the checker on reconstructions of held-out clips and images (full size), logged
   and kept in the work folder: a DiT can only be as good as the VAE that draws its latents.
3. `latents`: the trained encoder's latents (posterior means) of a fixed set of full-size
   17-frame videos and 1-frame images of the training scenes, and their per-channel mean and
   std, which go into the VAE config (latents_mean / latents_std) as Wan's do. Each path's
   midpoint lies within `dit_layout_jitter` pixels of the frame's centre: with the shape
   anywhere, the best guess at high noise is a uniform tint whatever the prompt says, and the
   words matter only in a narrow band of noise levels; centred, the best guess at every level is
   the prompt's shape on the prompt's path (measured: in frame 76% after 4400 DiT steps against
   58% after 7600 uncentred, shape and colour a little better too).
4. `text`: the UMT5 encoder alone, taught the role of each word (object colour, background
   colour, shape, motion, other) by a linear probe on its output. Trained only through the DiT,
   its states stayed the embeddings of the words (measured: "red" in "a red circle on a blue
   background" and in "a blue circle on a red background", cosine 0.9998 after 2900 DiT steps),
   so the DiT could not tell the object's colour from the background's and drew either on
   either (background right in a third of the evaluation prompts, not improving).
5. `dit`: the Wan DiT and the UMT5 encoder on those latents with the rectified-flow objective
   of the pipeline's scheduler (UniPC, flow_prediction, shift `FLOW_SHIFT`): x_t = (1 - s) x0 +
   s noise at timestep 1000 s, the target noise - x0; the prompt dropped to "" 10% of the time
   for classifier-free guidance. Held-out scenes (`world.held_out`) are never drawn. The
   learning rate is constant after its warm-up until the cool-down (`cooldown_lr_at`), so until
   then a run stopped at step n has the weights of a run configured to end later. Every
   `eval_every` steps the current weights are saved as a folder and our own pipeline generates
   `eval_prompts` fixed prompts (a third held out), which the checker scores (`eval` lines of
   the log).
6. `save`: every trained component saved over the folder, the loss curve as loss_curve.png and
   what was done in training.json.

Deterministic under the config's seed: each sample is drawn from its own generator
(`world.scene_rng(seed, index)`) and each step's noise from a generator seeded by the step,
so a resumed run continues exactly where the stopped one was.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from sglang_diffusion.demo import folder as demo_folder
from sglang_diffusion.demo import world

CONFIG_PATH = pathlib.Path(__file__).with_name("train_config.json")
PAD_LENGTH = 512  # the pipelines pad prompt embeddings to 512 tokens with zeros


@dataclass(frozen=True)
class VaeStage:
    """`steps` steps on `batch` crops of `crop` x `crop` pixels of single frames; the learning
    rate follows a warm-up + cosine schedule over `schedule_steps` (>= steps: a stage may stop
    part-way down its schedule)."""

    steps: int
    schedule_steps: int
    batch: int
    crop: int
    lr: float
    warmup_steps: int


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    vae_stages: tuple[VaeStage, ...]
    vae_latent_noise: float  # times the batch's latent std
    vae_init_scale: float
    vae_gate_clips: int
    num_videos: int
    num_images: int
    video_frames: int
    size: int
    dit_steps: int
    dit_batch: int
    dit_image_batch: int
    dit_image_every: int
    dit_lr: float
    dit_cooldown_steps: int  # the DiT's last steps, over which its learning rate falls linearly to zero
    dit_layout_jitter: float  # px (at 128x128) the DiT's scenes' path midpoints lie from the centre
    text_steps: int  # the role pre-training of the text encoder
    text_batch: int
    text_lr: float
    text_lr_scale: float  # the text encoder's learning rate over the DiT's
    text_dropout: float
    warmup_steps: int  # the DiT's
    checkpoint_every: int
    eval_every: int
    eval_prompts: int

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        values = json.loads(pathlib.Path(path).read_text())
        names = {f.name for f in fields(cls)}
        if set(values) != names:
            raise SystemExit(f"{path}: keys {sorted(set(values) ^ names)} are missing or unknown")
        values["vae_stages"] = tuple(VaeStage(**stage) for stage in values["vae_stages"])
        return cls(**values)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak over `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def cooldown_lr_at(step: int, total: int, peak: float, warmup: int, cooldown: int) -> float:
    """Linear warm-up, constant, then a linear fall to zero over the last `cooldown` of `total`
    steps. The constant middle lets a run stopped at step N go on as if it had been set to
    end later; the fall at the end is what sharpens the DiT's samples (at a constant rate they
    stay a mixture of the positions and shapes the noise allows)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * min(1.0, (total - step) / max(1, cooldown))


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """[F, H, W, 3] uint8 -> [3, F, H, W] in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def random_scene(rng: np.random.Generator, scenes: list[world.Scene]) -> world.Scene:
    return scenes[rng.integers(len(scenes))]


def save_checkpoint(path: pathlib.Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


class PhaseClock:
    """Seconds spent in each phase, kept in `path` (timings.json). A phase that checkpoints calls
    `mark` after each checkpoint, so that a run stopped and resumed counts the time of every
    process up to its last checkpoint (the steps redone after a stop count once)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.seconds = json.loads(path.read_text()) if path.exists() else {}
        self.phase, self.t0, self.before = None, 0.0, 0.0

    def run(self, phase: str, fn):
        self.phase, self.t0, self.before = phase, time.time(), self.seconds.get(phase, 0.0)
        result = fn()
        self.mark()
        self.phase = None
        return result

    def mark(self) -> None:
        if self.phase is not None:
            self.seconds[self.phase] = self.before + time.time() - self.t0
            self.path.write_text(json.dumps(self.seconds, indent=2))


class Progress:
    def __init__(self, phase: str, total: int, start: int):
        self.phase, self.total, self.start, self.t0 = phase, total, start, time.time()

    def report(self, step: int, loss: float) -> None:
        done = step + 1 - self.start
        elapsed = time.time() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step - 1)
        log(f"{self.phase} step {step + 1}/{self.total} loss {loss:.4f} ({elapsed / max(done, 1):.2f} s/step, "
            f"eta {eta / 60:.1f} min)")


# ---------------------------------------------------------------------------------------- 2. VAE
def make_frame_independent(vae) -> list:
    """Turn AutoencoderKLWan into an image VAE applied frame by frame (see the module note):
    the past taps of every causal convolution zeroed, and the temporal resampling convolutions
    (`time_conv`) set to pick the current frame: the encoder's keeps the second frame of each
    pair, the decoder's draws each latent frame twice. Returns the hooks that keep the zeroed
    taps at zero under training (their gradients masked; `time_conv` is frozen)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    hooks = []
    with torch.no_grad():
        for name, module in vae.named_modules():
            if not isinstance(module, WanCausalConv3d) or module.kernel_size[0] == 1:
                continue
            weight = module.weight  # [out, in, kt, kh, kw]; tap kt - 1 is the current frame
            if name.endswith("time_conv"):
                out, inp = weight.shape[:2]
                weight.zero_()
                eye = torch.eye(inp)
                for first in range(0, out, inp):  # decoder: [2C, C], both frames of the pair
                    weight[first:first + inp, :, -1, 0, 0] = eye
                module.bias.zero_()
                module.requires_grad_(False)
                continue
            mask = torch.zeros_like(weight)
            mask[:, :, -1] = 1
            weight.mul_(mask)
            hooks.append(weight.register_hook(lambda grad, mask=mask: grad * mask))
    return hooks


def vae_batch(config: TrainConfig, stage: int, step: int) -> torch.Tensor:
    """[B, 3, 1, crop, crop] random crops of random training frames, each with the shape's
    centre somewhere inside it (where the frame allows)."""
    spec, scenes, crops = config.vae_stages[stage], world.training_scenes(), []
    for j in range(spec.batch):
        rng = world.scene_rng(config.seed * 7 + 1 + 10 * stage, step * spec.batch + j)
        layout = world.place(random_scene(rng, scenes), config.size, config.size, 1, rng)
        frame = world.render(layout, 1)
        jitter = rng.integers(-(spec.crop // 2), spec.crop // 2 + 1, size=2)
        x, y = (int(np.clip(c - spec.crop / 2 + j, 0, config.size - spec.crop)) for c, j in
                zip((layout.x, layout.y), jitter))
        crops.append(to_tensor(frame[:, y:y + spec.crop, x:x + spec.crop]))
    return torch.stack(crops)


def decode_unclamped(vae, z: torch.Tensor) -> torch.Tensor:
    """`vae.decode(z).sample` without its final clamp to [-1, 1]: [B, C, T, h, w] -> [B, 3, F, H, W]."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for i in range(z.shape[2]):  # one latent frame at a time through the causal cache, as diffusers decodes
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def train_vae(config: TrainConfig, vae, work: pathlib.Path, on_checkpoint=lambda: None) -> list[float]:
    """The stages in turn, on single frames (the VAE is frame-independent); `on_checkpoint()`
    after each checkpoint."""
    ckpt_path = work / "vae.pt"
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if param.dim() >= 4 and "conv_out" not in name:  # convolutions, attention and norm gains
                param.mul_(config.vae_init_scale)
    hooks = make_frame_independent(vae)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.vae_stages[0].lr, weight_decay=0.0)
    done, losses = 0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        done, losses = ckpt["step"], ckpt["losses"]
        log(f"vae: resumed at step {done}")
    vae.train()
    total, first = sum(s.steps for s in config.vae_stages), 0
    progress = Progress("vae", total, done)
    for stage, spec in enumerate(config.vae_stages):
        for step in range(max(0, done - first), spec.steps):
            overall = first + step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, spec.schedule_steps, spec.lr, spec.warmup_steps)
            x = vae_batch(config, stage, step)  # [B, 3, 1, h, w]
            mean = vae.encode(x).latent_dist.mean  # [B, C, 1, h, w]
            noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + overall))
            recon = decode_unclamped(vae, mean + config.vae_latent_noise * mean.detach().std() * noise)
            error = recon - x
            loss = error.abs().mean() + error.pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            losses.append(loss.item())
            if (overall + 1) % 10 == 0 or overall + 1 == total:
                progress.report(overall, float(np.mean(losses[-10:])))
            if (overall + 1) % config.checkpoint_every == 0 or overall + 1 == total:
                save_checkpoint(ckpt_path, dict(model=vae.state_dict(), optimizer=optimizer.state_dict(),
                                                step=overall + 1, losses=losses))
                on_checkpoint()
        first += spec.steps
    for hook in hooks:
        hook.remove()
    vae.eval()
    return losses


# ------------------------------------------------------------------------------------ 3. latents
def dataset_scenes(config: TrainConfig, scenes: list[world.Scene], count: int, frames: int, stream: int):
    """`count` layouts: every training scene in turn, each of a random size, its path's midpoint
    within `dit_layout_jitter` of the centre (`world.place`)."""
    order = np.random.default_rng([config.seed, stream]).permutation(len(scenes))
    items = []
    for i in range(count):
        rng = world.scene_rng(config.seed * 7 + stream, i)
        layout = world.place(scenes[order[i % len(scenes)]], config.size, config.size, frames, rng,
                             jitter=config.dit_layout_jitter)
        items.append(layout)
    return items


def inference_copy(vae):
    """A copy of `vae` in eval mode with the CPU fast paths the pipeline uses."""
    from sglang_diffusion.models.vaes.wan import accelerate_wan_vae

    fast = type(vae).from_config(vae.config).eval()
    fast.load_state_dict(vae.state_dict())
    accelerate_wan_vae(fast)
    return fast


def to_pixels(video: torch.Tensor) -> np.ndarray:
    """[3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8."""
    return ((video.permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def accuracies(verdicts: list[dict[str, bool]]) -> dict[str, float]:
    return {k: float(np.mean([v[k] for v in verdicts])) for k in verdicts[0]}


@torch.no_grad()
def vae_gate(config: TrainConfig, vae, work: pathlib.Path) -> dict:
    """The checker's scores on VAE reconstructions of `vae_gate_clips` held-out scenes, as
    17-frame videos and as images, at full size."""
    from sglang_diffusion.demo.check import judge

    path = work / "vae_gate.json"
    if path.exists():
        return json.loads(path.read_text())
    fast, scenes = inference_copy(vae), world.held_out_scenes()
    order = np.random.default_rng([config.seed, 5]).permutation(len(scenes))
    result = {}
    for kind, frames in (("videos", config.video_frames), ("images", 1)):
        verdicts = []
        for i in range(config.vae_gate_clips):
            layout = world.place(scenes[order[i % len(scenes)]], config.size, config.size, frames,
                                 world.scene_rng(config.seed * 7 + 5, i))
            clip = to_tensor(world.render(layout, frames))[None]
            recon = fast.decode(fast.encode(clip).latent_dist.mean).sample[0]
            verdicts.append(judge(to_pixels(recon), layout.scene).correct())
        result[kind] = accuracies(verdicts)
        log(f"vae gate, {kind} of {config.vae_gate_clips} held-out scenes reconstructed: "
            + ", ".join(f"{k} {v:.0%}" for k, v in result[kind].items()))
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def encode_latents(config: TrainConfig, vae, work: pathlib.Path, scenes: list[world.Scene]) -> dict:
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    fast = inference_copy(vae)
    data = {}
    for kind, count, frames, stream in (("videos", config.num_videos, config.video_frames, 2),
                                        ("images", config.num_images, 1, 3)):
        layouts = dataset_scenes(config, scenes, count, frames, stream)
        latents, t0 = [], time.time()
        for i in range(0, count, 8):
            clips = torch.stack([to_tensor(world.render(l, frames)) for l in layouts[i:i + 8]])
            latents.append(fast.encode(clips).latent_dist.mean)
            if (i // 8 + 1) % 10 == 0:
                log(f"latents: {kind} {i + len(clips)}/{count} ({time.time() - t0:.0f} s)")
        data[kind] = torch.cat(latents)  # [N, C, T, h, w]
        data[kind + "_prompts"] = [l.scene.prompt() for l in layouts]
    both = torch.cat([data["videos"].transpose(1, 2).flatten(0, 1), data["images"].transpose(1, 2).flatten(0, 1)])
    data["mean"] = both.mean(dim=(0, 2, 3))  # [C]
    data["std"] = both.std(dim=(0, 2, 3))
    save_checkpoint(path, data)
    log(f"latents: {len(data['videos'])} videos, {len(data['images'])} images encoded")
    return data


# --------------------------------------------------------------------------------------- 4. text
ROLES = ("other", "object colour", "background colour", "shape", "motion")


def word_roles(prompt: str) -> list[int]:
    """The index in ROLES of each token of `prompt` as the demo tokenizer cuts it (its known
    words, then </s>, an "other"): the first colour is the object's, the second the background's."""
    roles, colours = [], 0
    for word in world.words(prompt):
        if word not in world.VOCABULARY:
            continue
        if word in world.COLOURS:
            colours += 1
            roles.append(1 if colours == 1 else 2)
        else:
            roles.append(3 if word in world.SHAPES else 4 if word in world.MOTIONS else 0)
    return [*roles, 0]


def train_text(config: TrainConfig, text_encoder, tokenizer, work: pathlib.Path) -> list[float]:
    """The role probe's cross-entropy over every token of batches of training prompts; the
    encoder's weights go to text.pt (the DiT phase starts from them)."""
    path = work / "text.pt"
    if path.exists():
        ckpt = torch.load(path, weights_only=False)
        text_encoder.load_state_dict(ckpt["text_encoder"])
        return ckpt["losses"]
    probe = torch.nn.Linear(text_encoder.config.d_model, len(ROLES))
    torch.manual_seed(config.seed)
    torch.nn.init.normal_(probe.weight, std=0.02)
    params = [*text_encoder.parameters(), *probe.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.text_lr, weight_decay=0.0)
    scenes, losses = world.training_scenes(), []
    text_encoder.train()
    for step in range(config.text_steps):
        rng = np.random.default_rng([config.seed, 6, step])
        prompts = [training_prompt(random_scene(rng, scenes).prompt(), rng, 0.0) for _ in range(config.text_batch)]
        ids = tokenizer(prompts, padding="longest", return_tensors="pt")
        labels = torch.full(ids.input_ids.shape, -100)
        for i, prompt in enumerate(prompts):
            roles = word_roles(prompt)
            labels[i, :len(roles)] = torch.tensor(roles)
        states = text_encoder(ids.input_ids, ids.attention_mask).last_hidden_state
        loss = F.cross_entropy(probe(states).flatten(0, 1), labels.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == config.text_steps:
            log(f"text step {step + 1}/{config.text_steps} role loss {np.mean(losses[-50:]):.4f}")
    text_encoder.eval()
    save_checkpoint(path, dict(text_encoder=text_encoder.state_dict(), losses=losses))
    return losses


# ---------------------------------------------------------------------------------------- 4. DiT
class PaddedTextAttention:
    """Cross-attention over a prompt padded with zero embeddings to 512 tokens, computed with
    the padding collapsed into one slot: the padded tokens have identical keys and values, so
    attending to n of them equals attending to one with log(n) added to its logit. Exact (to
    float rounding) and about half the DiT's training cost. Training only; `bias` is set per
    batch, [B, 1, 1, S]."""

    def __init__(self):
        self.bias = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)  # [B, H, S, D]
        k = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        v = attn.to_v(encoder_hidden_states).unflatten(2, (attn.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
        return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))


def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings [B, L + 1, D] (each prompt's tokens, zeros after them, one zero slot standing
    for its padding) and the attention bias [B, 1, 1, L + 1] that makes that slot count as
    512 - length padded tokens and hides the zeros after a shorter prompt."""
    ids = tokenizer(prompts, padding="longest", return_tensors="pt")
    lengths = ids.attention_mask.sum(dim=1)  # [B]
    states = text_encoder(ids.input_ids, ids.attention_mask).last_hidden_state  # [B, L, D]
    states = states * ids.attention_mask[..., None]
    states = torch.cat([states, states.new_zeros(states.shape[0], 1, states.shape[2])], dim=1)
    positions = torch.arange(states.shape[1])[None]  # [1, L + 1]
    bias = torch.where(positions < lengths[:, None], 0.0, -math.inf)
    bias[torch.arange(len(prompts)), lengths] = torch.log((PAD_LENGTH - lengths).float())
    return states, bias[:, None, None, :]


def training_prompt(prompt: str, rng: np.random.Generator, dropout: float) -> str:
    if rng.random() < dropout:
        return ""
    if rng.random() < 0.3:  # "a" and "an" are both fine before any colour
        words = prompt.split()
        words[0] = "an" if words[0] == "a" else "a"
        return " ".join(words)
    return prompt


def sample_sigmas(u: torch.Tensor) -> torch.Tensor:
    """Noise levels as the scheduler spaces them: uniform u pushed toward noise by the shift."""
    shift = demo_folder.FLOW_SHIFT
    return shift * u / (1 + (shift - 1) * u)


def eval_scenes(count: int) -> list[world.Scene]:
    """The fixed scenes of the in-training evaluation: a third held out, the rest trained on."""
    rng, held, train = np.random.default_rng(17), world.held_out_scenes(), world.training_scenes()
    return ([held[i] for i in rng.permutation(len(held))[:count // 3]]
            + [train[i] for i in rng.permutation(len(train))[:count - count // 3]])


def evaluate(config: TrainConfig, folder: pathlib.Path) -> dict[str, float]:
    """Our pipeline on the folder, at the demo's sampling, judged on `eval_scenes`."""
    from sglang_diffusion.config.sampling_params import SamplingParams
    from sglang_diffusion.config.server_args import ServerArgs
    from sglang_diffusion.demo import DEMO_SAMPLING
    from sglang_diffusion.demo.check import judge
    from sglang_diffusion.pipelines.registry import build_pipeline
    from sglang_diffusion.platform import Platform

    threads = torch.get_num_threads()
    pipe = build_pipeline(ServerArgs(model_path=str(folder)), Platform.current())
    sampling = {k: v for k, v in DEMO_SAMPLING.items() if k != "fps"}
    verdicts = []
    for i, scene in enumerate(eval_scenes(config.eval_prompts)):
        out = pipe.generate(SamplingParams(prompt=scene.prompt(), seed=i, save_output=False, **sampling))
        verdicts.append(judge(out.frames[0], scene).correct())
    torch.set_num_threads(threads)
    return accuracies(verdicts)


def save_folder(init: pathlib.Path, output_dir: pathlib.Path, vae, data: dict, transformer, text_encoder) -> None:
    """The initial folder with the trained components saved over it."""
    shutil.rmtree(output_dir, ignore_errors=True)
    shutil.copytree(init, output_dir)
    vae.register_to_config(latents_mean=data["mean"].tolist(), latents_std=data["std"].tolist())
    vae.save_pretrained(output_dir / "vae")
    transformer.save_pretrained(output_dir / "transformer")
    text_encoder.save_pretrained(output_dir / "text_encoder")


def train_dit(config: TrainConfig, transformer, text_encoder, tokenizer, data: dict, work: pathlib.Path,
              eval_folder=None, on_checkpoint=lambda: None):
    """`eval_folder(path)` writes the current weights as a folder at `path` (for the evaluation);
    `on_checkpoint()` after each checkpoint."""
    ckpt_path = work / "dit.pt"
    params = [*transformer.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW([dict(params=list(transformer.parameters()), lr_scale=1.0),
                                   dict(params=list(text_encoder.parameters()), lr_scale=config.text_lr_scale)],
                                  lr=config.dit_lr, weight_decay=0.01)
    start, losses = 0, []
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        transformer.load_state_dict(ckpt["transformer"])
        text_encoder.load_state_dict(ckpt["text_encoder"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, losses = ckpt["step"], ckpt["losses"]
        log(f"dit: resumed at step {start}")
    processors = []
    for block in transformer.blocks:
        processors.append(PaddedTextAttention())
        block.attn2.set_processor(processors[-1])
    mean, std = data["mean"][None, :, None, None, None], data["std"][None, :, None, None, None]
    transformer.train()
    text_encoder.train()
    progress = Progress("dit", config.dit_steps, start)
    for step in range(start, config.dit_steps):
        for group in optimizer.param_groups:
            group["lr"] = group["lr_scale"] * cooldown_lr_at(step, config.dit_steps, config.dit_lr,
                                                             config.warmup_steps, config.dit_cooldown_steps)
        rng = np.random.default_rng([config.seed, 4, step])
        kind, batch = ("images", config.dit_image_batch) if step % config.dit_image_every == 3 else \
            ("videos", config.dit_batch)
        index = rng.choice(len(data[kind]), size=batch, replace=False)
        x0 = (data[kind][index] - mean) / std  # [B, C, T, h, w]
        prompts = [training_prompt(data[kind + "_prompts"][i], rng, config.text_dropout) for i in index]
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = sample_sigmas(torch.rand(batch, generator=gen))[:, None, None, None, None]
        x_t = (1 - sigma) * x0 + sigma * noise
        states, bias = encode_prompts(text_encoder, tokenizer, prompts)
        for p in processors:
            p.bias = bias
        pred = transformer(x_t, sigma.flatten() * 1000, states, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == config.dit_steps:
            progress.report(step, float(np.mean(losses[-10:])))
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.dit_steps:
            save_checkpoint(ckpt_path, dict(transformer=transformer.state_dict(), optimizer=optimizer.state_dict(),
                                            text_encoder=text_encoder.state_dict(), step=step + 1, losses=losses))
            on_checkpoint()
        if eval_folder is not None and (step + 1) % config.eval_every == 0 and step + 1 < config.dit_steps:
            t0 = time.time()
            eval_folder(work / "eval-model")
            scores = evaluate(config, work / "eval-model")
            log(f"eval at dit step {step + 1}, {config.eval_prompts} prompts ({config.eval_prompts // 3} held out): "
                + ", ".join(f"{k} {v:.0%}" for k, v in scores.items()) + f" ({time.time() - t0:.0f} s)")
            with (work / "evals.jsonl").open("a") as f:
                f.write(json.dumps(dict(step=step + 1, **scores)) + "\n")
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    for block in transformer.blocks:
        block.attn2.set_processor(WanAttnProcessor())
    transformer.eval()
    text_encoder.eval()
    return losses


# --------------------------------------------------------------------------------------- 5. save
def plot_losses(curves: dict[str, list[float]], path: pathlib.Path) -> None:
    """One panel per phase: the loss per step (light) and its running mean over 20 (dark), log y."""
    from PIL import Image, ImageDraw

    width, height, pad = 640, 240, 40
    image = Image.new("RGB", (width, height * len(curves)), "white")
    draw = ImageDraw.Draw(image)
    for row, (name, values) in enumerate(curves.items()):
        top = row * height
        logs = np.log10(np.maximum(np.asarray(values, dtype=np.float64), 1e-8))
        smooth = np.convolve(logs, np.ones(20) / 20, mode="valid") if len(logs) >= 20 else logs
        lo, hi = float(logs.min()), float(logs.max()) + 1e-9

        def xy(i, v, n=len(logs)):
            return pad + (width - 2 * pad) * i / max(1, n - 1), top + pad + (height - 2 * pad) * (hi - v) / (hi - lo)

        draw.rectangle([pad, top + pad, width - pad, top + height - pad], outline="black")
        draw.line([xy(i, v) for i, v in enumerate(logs)], fill=(170, 190, 230))
        offset = len(logs) - len(smooth)
        draw.line([xy(i + offset, v) for i, v in enumerate(smooth)], fill=(20, 40, 160), width=2)
        draw.text((pad, top + 10), f"{name} loss (log10 {lo:.2f} .. {hi:.2f}), {len(values)} steps, "
                                   f"last 20 mean {np.mean(values[-20:]):.4f}", fill="black")
    image.save(path)


def train(config: TrainConfig, output_dir: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    import diffusers
    import transformers

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    work.mkdir(parents=True, exist_ok=True)
    clock = PhaseClock(work / "timings.json")
    timed, timings = clock.run, clock.seconds

    init = work / "init"
    if not (init / "model_index.json").exists():
        shutil.rmtree(init, ignore_errors=True)
        demo_folder.write_initial_folder(init, config.seed)
    scenes = world.training_scenes()
    log(f"training on {len(scenes)} of {len(world.all_scenes())} scenes ({len(world.held_out_scenes())} held out)")
    vae = diffusers.AutoencoderKLWan.from_pretrained(init / "vae")
    vae_losses = timed("vae", lambda: train_vae(config, vae, work, clock.mark))
    gate = timed("vae_gate", lambda: vae_gate(config, vae, work))
    data = timed("latents", lambda: encode_latents(config, vae, work, scenes))
    transformer = diffusers.WanTransformer3DModel.from_pretrained(init / "transformer")
    text_encoder = transformers.UMT5EncoderModel.from_pretrained(init / "text_encoder", dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(init / "tokenizer")
    text_losses = timed("text", lambda: train_text(config, text_encoder, tokenizer, work))
    dit_losses = timed("dit", lambda: train_dit(
        config, transformer, text_encoder, tokenizer, data, work,
        eval_folder=lambda path: save_folder(init, path, vae, data, transformer, text_encoder),
        on_checkpoint=clock.mark))

    staging = output_dir.with_name(output_dir.name + ".partial")
    save_folder(init, staging, vae, data, transformer, text_encoder)
    plot_losses({"vae": vae_losses, "text roles": text_losses, "dit": dit_losses}, staging / "loss_curve.png")
    (staging / "training.json").write_text(json.dumps(dict(
        config=asdict(config), seconds=timings, vae_gate=gate, final_vae_loss=float(np.mean(vae_losses[-20:])),
        final_dit_loss=float(np.mean(dit_losses[-20:])), torch=torch.__version__, diffusers=diffusers.__version__,
        transformers=transformers.__version__, threads=torch.get_num_threads()), indent=2) + "\n")
    shutil.rmtree(output_dir, ignore_errors=True)
    staging.rename(output_dir)
    log(f"saved the demo model to {output_dir} (vae {timings['vae'] / 60:.1f} min, latents "
        f"{timings['latents'] / 60:.1f} min, dit {timings['dit'] / 60:.1f} min)")
    return output_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_diffusion.demo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True, help="where the trained diffusers folder goes")
    parser.add_argument("--work-dir", default=None, help="checkpoints and cached latents (default: <output-dir>.work)")
    parser.add_argument("--config", default=str(CONFIG_PATH), help="training configuration (JSON)")
    args = parser.parse_args(argv)
    output = pathlib.Path(args.output_dir).resolve()
    work = pathlib.Path(args.work_dir).resolve() if args.work_dir else output.with_name(output.name + ".work")
    train(TrainConfig.load(args.config), output, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
