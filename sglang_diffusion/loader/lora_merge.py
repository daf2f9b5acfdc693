"""LoRA adapters merged into a native model's checkpoint at start-up (`--lora-path`).

The adapter is read (a .safetensors file, a folder holding one, or a Hugging Face id), its keys
are matched to the checkpoint's layers, and each matched layer's weight gets

    W += strength * (alpha / rank) * B @ A        (bias += strength * scale * B.bias, or + diff_b)

before the model is built from the checkpoint, so the running model has no LoRA layers at all.

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
  `double_blocks.0.processor.qkv_lora1.down.weight` / `up`.
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


# Original HunyuanVideo and FLUX (BFL: kohya lora_unet_*, diffusion_model.*; XLabs processor.*)
# block layers -> the diffusers modules they are, in output order (several for a fused layer;
# "*" is the rest of the output features after the others' hidden_size each).
HUNYUAN_ORIGINAL_BLOCKS = {"double_blocks": "transformer_blocks", "single_blocks": "single_transformer_blocks"}
HUNYUAN_ORIGINAL = {
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_fc1": ("ff.net.0.proj",), "img_mlp_fc2": ("ff.net.2",), "img_mod_linear": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_fc1": ("ff_context.net.0.proj",), "txt_mlp_fc2": ("ff_context.net.2",),
    "txt_mod_linear": ("norm1_context.linear",),
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp*"), "linear2": ("proj_out",),
    "modulation_linear": ("norm.linear",),
    # FLUX.1's own names for the layers that HunyuanVideo's differ in
    "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",), "img_mod_lin": ("norm1.linear",),
    "txt_mlp_0": ("ff_context.net.0.proj",), "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",), "modulation_lin": ("norm.linear",),
    "processor_qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"), "processor_proj_lora1": ("attn.to_out.0",),
    "processor_qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "processor_proj_lora2": ("attn.to_add_out",),
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


def _split_fused(path: str, layer: LoraLayer, state: dict[str, torch.Tensor]) -> dict[str, LoraLayer]:
    """An adapter layer (its module path, prefixes stripped) -> {module path: layer}: itself, or,
    for an original HunyuanVideo block layer, the diffusers modules it stands for (a fused one
    split along its output features)."""
    match = _HUNYUAN_ORIGINAL_KEY.match(path)
    original = match.group(3).replace(".", "_") if match else None
    if original not in HUNYUAN_ORIGINAL:
        return {path: layer}
    prefix = f"{HUNYUAN_ORIGINAL_BLOCKS[match.group(1)]}.{match.group(2)}"
    modules = HUNYUAN_ORIGINAL[original]
    if len(modules) == 1:
        return {f"{prefix}.{modules[0]}": layer}
    if any(f"{prefix}.{m.rstrip('*')}.weight" not in state for m in modules):
        return {path: layer}  # no such block: reported as unmatched
    sizes = [state[f"{prefix}.{m}.weight"].shape[0] for m in modules if not m.endswith("*")]
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


def merge_lora(state: dict[str, torch.Tensor], lora: LoraFile, component: str = "transformer",
               strength: float = 1.0) -> int:
    """Merge `lora` into `state` (a checkpoint with diffusers keys) in place, for the layers whose
    keys name `component`; keys naming no component are `transformer`'s (as diffusers loads them:
    a Wan2.2 A14B LoRA reaches `transformer_2` only through `transformer_2.` keys). Returns how
    many layers were changed."""
    by_alias = {}
    for key in state:
        if key.endswith(".weight"):
            module = key[: -len(".weight")]
            for alias in _aliases(module):
                by_alias.setdefault(alias, module)
    merged, unmatched = 0, []
    layers = []  # (name in the file, module path, layer)
    for name, layer in lora.layers.items():
        target, path = _strip(name)
        if (target or "transformer") == component:
            layers += [(name, *split) for split in _split_fused(path, layer, state).items()]
    for name, path, layer in layers:
        module = by_alias.get(path)
        if module is None:
            unmatched.append(name)
            continue
        weight_key, bias_key = module + ".weight", module + ".bias"
        weight = state[weight_key]
        delta = None
        if layer.A is not None and layer.B is not None:
            scale = _scale(lora, component, path, layer)
            a, b = layer.A.float(), layer.B.float()
            delta = strength * scale * (b.flatten(1) @ a.flatten(1)).view(weight.shape)
            if layer.B_bias is not None and bias_key in state:
                state[bias_key] = (state[bias_key].float() + strength * scale * layer.B_bias.float()).to(
                    state[bias_key].dtype)
        elif (layer.A is None) != (layer.B is None):
            raise ModelLoadError(f"lora_path {lora.path!r}: {name} has only one of its two LoRA matrices")
        if layer.diff is not None:
            delta = strength * layer.diff.float() + (0 if delta is None else delta)
        if delta is not None:
            if tuple(delta.shape) != tuple(weight.shape):
                raise ModelLoadError(f"lora_path {lora.path!r}: {name} gives a {tuple(delta.shape)} update to "
                                     f"{weight_key} of shape {tuple(weight.shape)}")
            state[weight_key] = (weight.float() + delta).to(weight.dtype)
        if layer.diff_b is not None and bias_key in state:
            state[bias_key] = (state[bias_key].float() + strength * layer.diff_b.float()).to(state[bias_key].dtype)
        merged += 1
    if unmatched:
        logger.warning("LoRA %s: %d of its layers match no layer of %s and are ignored (e.g. %s)", lora.path,
                       len(unmatched), component, ", ".join(unmatched[:3]))
    return merged


def lora_state_edit(args, component: str = "transformer"):
    """`state_edit` for a native DiT's `from_pretrained` that merges --lora-path into the
    checkpoint (None without one); an adapter none of whose weights match is a ModelLoadError."""
    if not args.lora_path:
        return None
    lora = read_lora(args.lora_path)

    def state_edit(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        merged = merge_lora(state, lora, component=component)
        logger.info("LoRA %r merged into the %s: %d layers", args.lora_nickname, component, merged)
        if merged == 0:
            raise ModelLoadError(f"lora_path {args.lora_path!r}: none of its weights match a layer of the {component}")
        return state

    return state_edit
