"""LoRA adapter files and what they change in a native model's checkpoint.

The adapter is read (a .safetensors file, a folder holding one, or a Hugging Face id), its keys
are matched to the checkpoint's layers (`match_lora`), and each matched layer's weight gets

    W += strength * (alpha / rank) * B @ A        (bias += strength * scale * B.bias, or + diff_b)

(`lora_deltas`). `lora_native` applies these to a running DiT's parameters (--lora-path at
start-up and the run-time LoRA routes); `merge_lora` applies them to a checkpoint dict.

Key layouts understood (the module path in the middle is matched against the checkpoint's own
layer names, so any model's keys work, not a fixed list):
- diffusers / peft: `transformer.blocks.0.attn1.to_q.lora_A.weight`, `lora_B.weight`
  (`base_model.model.` prefixes too); alpha from `<module>.alpha` keys or the
  `lora_adapter_metadata` that diffusers writes into the file (`lora_alpha`, `r`, patterns);
- original Wan: `diffusion_model.blocks.0.self_attn.q.lora_down.weight` / `lora_up` /
  `.alpha`, `diff_b` bias deltas and `diff` weight deltas, with Wan's own module names
  (`self_attn.q` -> `attn1.to_q`, `ffn.0` -> `ffn.net.0.proj`, `head.head` -> `proj_out`, ...);
- kohya / musubi-tuner: `lora_unet_blocks_0_self_attn_q.lora_down.weight` (module path with
  underscores), `.alpha`;
- original HunyuanVideo (Tencent's names, as diffusion-pipe and musubi-tuner write them, dots or
  underscores): `double_blocks.0.img_attn_qkv`, `single_blocks.0.linear1`, ... -> diffusers'
  `transformer_blocks.0.attn.to_q`, ...; a fused layer (q, k, v: `img_attn_qkv`, `txt_attn_qkv`;
  q, k, v and the MLP input: `linear1`) is split along its output features into the layers it
  stands for, each keeping the shared down matrix (`HUNYUAN_ORIGINAL`).
- FLUX.1: BFL names (kohya `lora_unet_double_blocks_0_img_attn_qkv`, `diffusion_model.double_blocks.0.
  img_attn.qkv.lora_A`) with fused qkv / linear1 split as HunyuanVideo's, and XLabs
  `double_blocks.0.processor.qkv_lora1.down.weight` / `up`;
- FLUX.2: the same BFL names (ai-toolkit `diffusion_model.*` with lora_A/B or lora_down/up, kohya
  `lora_unet_*` with alpha), where `linear1` stays fused (diffusers' attn.to_qkv_mlp_proj),
  `img_mlp.0` is ff.linear_in and the shared modulations are `double_stream_modulation_img.lin`, ...;
  the layers outside the blocks (`img_in`, `txt_in`, `time_in.in_layer`, `final_layer.linear`, ...)
  for FLUX.1 and FLUX.2.
A file that cannot be read, or whose keys match no layer, is a ModelLoadError.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sglang_diffusion.errors import ModelLoadError

logger = logging.getLogger(__name__)

_PREFIXES = ("base_model.model.", "diffusion_model.", "lora_unet_", "lora_transformer_", "model.")
_SUFFIXES = {  # key ending -> what it is
    ".lora_A.weight": "A", ".lora_down.weight": "A", ".lora_A.default.weight": "A",
    ".lora_B.weight": "B", ".lora_up.weight": "B", ".lora_B.default.weight": "B",
    ".lora_B.bias": "B_bias", ".lora_up.bias": "B_bias",
    ".alpha": "alpha", ".diff_b": "diff_b", ".diff": "diff",
    ".down.weight": "A", ".up.weight": "B",  # XLabs FLUX LoRAs
}
# Original (Wan repository) module names -> diffusers', as fragments of a module path.
WAN_ORIGINAL_NAMES = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "head.head": "proj_out",
}


# Original HunyuanVideo and FLUX.1 / FLUX.2 (BFL: kohya lora_unet_*, diffusion_model.* / ai-toolkit;
# XLabs processor.*) layers -> the diffusers modules they are: candidates in order, the first
# whose modules the checkpoint has wins (FLUX.2 keeps `linear1` fused as attn.to_qkv_mlp_proj,
# FLUX.1 and HunyuanVideo split it). A candidate lists modules in output order (several for a
# fused layer; "*" is the rest of the output features after the others' sizes).
HUNYUAN_ORIGINAL_BLOCKS = {"double_blocks": "transformer_blocks", "single_blocks": "single_transformer_blocks"}
HUNYUAN_ORIGINAL = {
    "img_attn_qkv": (("attn.to_q", "attn.to_k", "attn.to_v"),), "img_attn_proj": (("attn.to_out.0",),),
    "img_mlp_fc1": (("ff.net.0.proj",),), "img_mlp_fc2": (("ff.net.2",),), "img_mod_linear": (("norm1.linear",),),
    "txt_attn_qkv": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),),
    "txt_attn_proj": (("attn.to_add_out",),),
    "txt_mlp_fc1": (("ff_context.net.0.proj",),), "txt_mlp_fc2": (("ff_context.net.2",),),
    "txt_mod_linear": (("norm1_context.linear",),),
    "linear1": (("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp*"), ("attn.to_qkv_mlp_proj",)),
    "linear2": (("proj_out",), ("attn.to_out",)),
    "modulation_linear": (("norm.linear",),),
    # FLUX's own names for the layers that HunyuanVideo's differ in (FLUX.1's FeedForward, FLUX.2's)
    "img_mlp_0": (("ff.net.0.proj",), ("ff.linear_in",)), "img_mlp_2": (("ff.net.2",), ("ff.linear_out",)),
    "img_mod_lin": (("norm1.linear",),),
    "txt_mlp_0": (("ff_context.net.0.proj",), ("ff_context.linear_in",)),
    "txt_mlp_2": (("ff_context.net.2",), ("ff_context.linear_out",)),
    "txt_mod_lin": (("norm1_context.linear",),), "modulation_lin": (("norm.linear",),),
    "processor_qkv_lora1": (("attn.to_q", "attn.to_k", "attn.to_v"),),
    "processor_proj_lora1": (("attn.to_out.0",),),
    "processor_qkv_lora2": (("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),),
    "processor_proj_lora2": (("attn.to_add_out",),),
}
# BFL names of the layers outside the blocks (dots as underscores), FLUX.1's then FLUX.2's.
BFL_TOP_LEVEL = {
    "img_in": ("x_embedder",), "txt_in": ("context_embedder",), "final_layer_linear": ("proj_out",),
    "time_in_in_layer": ("time_text_embed.timestep_embedder.linear_1", "time_guidance_embed.timestep_embedder.linear_1"),
    "time_in_out_layer": ("time_text_embed.timestep_embedder.linear_2", "time_guidance_embed.timestep_embedder.linear_2"),
    "guidance_in_in_layer": ("time_text_embed.guidance_embedder.linear_1",
                             "time_guidance_embed.guidance_embedder.linear_1"),
    "guidance_in_out_layer": ("time_text_embed.guidance_embedder.linear_2",
                              "time_guidance_embed.guidance_embedder.linear_2"),
    "vector_in_in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in_out_layer": ("time_text_embed.text_embedder.linear_2",),
    "double_stream_modulation_img_lin": ("double_stream_modulation_img.linear",),
    "double_stream_modulation_txt_lin": ("double_stream_modulation_txt.linear",),
    "single_stream_modulation_lin": ("single_stream_modulation.linear",),
}
_HUNYUAN_ORIGINAL_KEY = re.compile(r"^(double_blocks|single_blocks)[._](\d+)[._](.+)$")


@dataclass
class LoraLayer:
    A: torch.Tensor | None = None  # [r, in]
    B: torch.Tensor | None = None  # [out, r]
    alpha: float | None = None
    B_bias: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None
    diff: torch.Tensor | None = None


@dataclass
class LoraFile:
    """An adapter as read from disk: per module path (as the file names it), its tensors."""

    path: str
    layers: dict[str, LoraLayer] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # peft config: lora_alpha, r, alpha_pattern, rank_pattern

    def config_for(self, component: str) -> dict:
        """The peft config of `component`: diffusers writes `<component>.<key>` entries, peft
        plain ones."""
        plain = {k: v for k, v in self.metadata.items() if "." not in k}
        prefixed = {k.split(".", 1)[1]: v for k, v in self.metadata.items() if k.startswith(component + ".")}
        return {**plain, **prefixed}


def _resolve_file(path: str) -> Path:
    local = Path(path).expanduser()
    if not local.exists() and re.match(r"^[\w.-]+/[\w.-]+$", path):
        from huggingface_hub import snapshot_download

        try:
            local = Path(snapshot_download(path, allow_patterns=["*.safetensors", "*.json"]))
        except Exception as e:  # hub errors come in many classes
            raise ModelLoadError(f"lora_path {path!r}: not a local file or folder, and the Hugging Face "
                                 f"download failed ({type(e).__name__}: {e})") from None
    if local.is_dir():
        files = sorted(local.glob("*.safetensors"))
        preferred = [f for f in files if f.name == "pytorch_lora_weights.safetensors"]
        if preferred or len(files) == 1:
            return (preferred or files)[0]
        raise ModelLoadError(f"lora_path {path!r}: the folder holds {len(files)} .safetensors files "
                             f"({', '.join(f.name for f in files[:5]) or 'none'}); give the file")
    if not local.is_file():
        raise ModelLoadError(f"lora_path {path!r}: no such file or folder")
    return local


def read_lora(path: str) -> LoraFile:
    from safetensors import SafetensorError, safe_open

    file = _resolve_file(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"lora_path {path!r}: cannot read {file.name} as safetensors ({e})") from None
    lora = LoraFile(str(file))
    if "lora_adapter_metadata" in metadata:
        try:
            lora.metadata = json.loads(metadata["lora_adapter_metadata"])
        except json.JSONDecodeError:
            logger.warning("lora_path %s: unreadable lora_adapter_metadata, alpha taken as the rank", path)
    for key, tensor in tensors.items():
        kind = next((k for s, k in _SUFFIXES.items() if key.endswith(s)), None)
        if kind is None:
            continue
        module = key[: -len(next(s for s in _SUFFIXES if key.endswith(s)))]
        layer = lora.layers.setdefault(module, LoraLayer())
        setattr(layer, kind, float(tensor.item()) if kind == "alpha" else tensor)
    if not lora.layers:
        raise ModelLoadError(f"lora_path {path!r}: {file.name} holds no LoRA weights (no lora_A/lora_B, "
                             "lora_down/lora_up or diff keys)")
    return lora


def _aliases(module: str) -> list[str]:
    """The names a checkpoint module (diffusers path) may go by in an adapter file."""
    original = module
    for theirs, ours in WAN_ORIGINAL_NAMES.items():
        original = re.sub(rf"(^|\.){re.escape(ours)}$", rf"\g<1>{theirs}", original)
    names = {module, original}
    return [*names, *(n.replace(".", "_") for n in names)]


def _strip(module: str) -> tuple[str | None, str]:
    """(component the key is for, or None when it names none; the module path without prefixes)."""
    target = None
    for name in ("transformer_2", "transformer"):
        for sep in (".", "_"):
            # "transformer_blocks.0...." (FLUX, Qwen-Image modules without a prefix) names no component
            if module.startswith(name + sep) and not module.startswith("transformer_blocks"):
                target, module = name, module[len(name) + 1:]
                break
        if target:
            break
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if module.startswith(prefix):
                module, stripped = module[len(prefix):], True
    return target, module


def _split_fused(path: str, layer: LoraLayer, shapes: dict[str, tuple[int, ...]]) -> dict[str, LoraLayer]:
    """An adapter layer (its module path, prefixes stripped) -> {module path: layer}: itself, or,
    for an original HunyuanVideo / FLUX layer, the diffusers modules it stands for (a fused one
    split along its output features). `shapes`: the checkpoint's, by key."""
    top = BFL_TOP_LEVEL.get(path.replace(".", "_"))
    if top is not None:
        return {next((m for m in top if f"{m}.weight" in shapes), path): layer}
    match = _HUNYUAN_ORIGINAL_KEY.match(path)
    original = match.group(3).replace(".", "_") if match else None
    if original not in HUNYUAN_ORIGINAL:
        return {path: layer}
    prefix = f"{HUNYUAN_ORIGINAL_BLOCKS[match.group(1)]}.{match.group(2)}"
    modules = next((c for c in HUNYUAN_ORIGINAL[original]
                    if all(f"{prefix}.{m.rstrip('*')}.weight" in shapes for m in c)), None)
    if modules is None:
        return {path: layer}  # no such block or layer: reported as unmatched
    if len(modules) == 1:
        return {f"{prefix}.{modules[0]}": layer}
    sizes = [shapes[f"{prefix}.{m}.weight"][0] for m in modules if not m.endswith("*")]
    if modules[-1].endswith("*"):
        out_features = next(t.shape[0] for t in (layer.B, layer.diff, layer.diff_b, layer.B_bias) if t is not None)
        sizes.append(out_features - sum(sizes))

    def part(t, i):
        return None if t is None else t.split(sizes, dim=0)[i]

    return {f"{prefix}.{m.rstrip('*')}": LoraLayer(layer.A, part(layer.B, i), layer.alpha, part(layer.B_bias, i),
                                                   part(layer.diff_b, i), part(layer.diff, i))
            for i, m in enumerate(modules)}


def _scale(lora: LoraFile, component: str, name: str, layer: LoraLayer) -> float:
    rank = layer.A.shape[0]
    alpha = layer.alpha
    meta = lora.config_for(component)
    if alpha is None and meta:
        rank = next((r for pattern, r in meta.get("rank_pattern", {}).items() if re.search(pattern, name)),
                    meta.get("r", rank))
        alpha = next((a for pattern, a in meta.get("alpha_pattern", {}).items() if re.search(pattern, name)),
                     meta.get("lora_alpha"))
    if alpha is None:
        return 1.0
    return alpha / math.sqrt(rank) if meta.get("use_rslora") else alpha / rank


@dataclass
class MatchedLayer:
    name: str  # as the file names it
    path: str  # its module path, prefixes stripped (a part of a fused BFL layer: the diffusers module)
    module: str  # the checkpoint module it changes
    layer: LoraLayer


def match_lora(shapes: dict[str, tuple[int, ...]], lora: LoraFile, component: str = "transformer",
               unprefixed: str = "transformer") -> list[MatchedLayer]:
    """The layers of `lora` that change a checkpoint with diffusers keys (`shapes`: key -> shape),
    for the layers whose keys name `component`; keys naming no component or `transformer` are
    `unprefixed`'s: by default `transformer`'s, as diffusers loads them (a Wan2.2 A14B LoRA
    reaches `transformer_2` only through `transformer_2.` keys), or the component an adapter is
    aimed at (the low-noise file of a Wan2.2 LoRA pair set with target transformer_2, as diffusers'
    load_into_transformer_2). Layers that match nothing are logged and left out."""
    by_alias = {}
    for key in shapes:
        if key.endswith(".weight"):
            module = key[: -len(".weight")]
            for alias in _aliases(module):
                by_alias.setdefault(alias, module)
    matched, unmatched = [], []
    for name, layer in lora.layers.items():
        target, path = _strip(name)
        if (unprefixed if target in (None, "transformer") else target) != component:
            continue
        for part, part_layer in _split_fused(path, layer, shapes).items():
            module = by_alias.get(part)
            if module is None:
                unmatched.append(name)
            else:
                matched.append(MatchedLayer(name, part, module, part_layer))
    if unmatched:
        logger.warning("LoRA %s: %d of its layers match no layer of %s and are ignored (e.g. %s)", lora.path,
                       len(unmatched), component, ", ".join(unmatched[:3]))
    return matched


def lora_deltas(matched: list[MatchedLayer], shapes: dict[str, tuple[int, ...]], lora: LoraFile,
                component: str = "transformer", strength: float = 1.0, device: torch.device | str = "cpu"):
    """(checkpoint key, fp32 delta on `device`) of each matched layer's weight and bias, one
    layer at a time (the deltas of a large model would not fit in memory at once):

        W += strength * scale * B @ A (+ strength * diff),  bias += strength * (scale * B.bias + diff_b)
    """
    for m in matched:
        layer, weight_key, bias_key = m.layer, m.module + ".weight", m.module + ".bias"
        shape = tuple(shapes[weight_key])
        delta, bias = None, None
        if layer.A is not None and layer.B is not None:
            scale = _scale(lora, component, m.path, layer)
            a, b = layer.A.to(device, torch.float32), layer.B.to(device, torch.float32)
            delta = strength * scale * (b.flatten(1) @ a.flatten(1))
            if layer.B_bias is not None:
                bias = strength * scale * layer.B_bias.to(device, torch.float32)
        elif (layer.A is None) != (layer.B is None):
            raise ModelLoadError(f"lora_path {lora.path!r}: {m.name} has only one of its two LoRA matrices")
        if layer.diff is not None:
            diff = strength * layer.diff.to(device, torch.float32)
            delta = diff if delta is None else delta.view(diff.shape) + diff
        if layer.diff_b is not None:
            diff_b = strength * layer.diff_b.to(device, torch.float32)
            bias = diff_b if bias is None else bias + diff_b
        if delta is not None:
            if delta.numel() != math.prod(shape):
                raise ModelLoadError(f"lora_path {lora.path!r}: {m.name} gives a {tuple(delta.shape)} update to "
                                     f"{weight_key} of shape {shape}")
            yield weight_key, delta.reshape(shape)
        if bias is not None and bias_key in shapes:
            yield bias_key, bias


def merge_lora(state: dict[str, torch.Tensor], lora: LoraFile, component: str = "transformer",
               strength: float = 1.0) -> int:
    """Merge `lora` into `state` (a checkpoint with diffusers keys) in place; returns how many
    layers were changed."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    matched = match_lora(shapes, lora, component)
    for key, delta in lora_deltas(matched, shapes, lora, component, strength):
        state[key] = (state[key].float() + delta).to(state[key].dtype)
    return len(matched)
