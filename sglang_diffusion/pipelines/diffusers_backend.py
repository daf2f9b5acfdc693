"""The diffusers backend: any diffusers pipeline, run through our engine.

The engine's options map onto diffusers' own switches: per-component dtypes, component
overrides, attention backend, VAE tiling/slicing, Cache-DiT, torch.compile, text-encoder offload.
Sampling parameters map onto the pipeline's `__call__` arguments; one the pipeline does not
take is an error when the user set it, and is left out when it only came from defaults.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from sglang_diffusion.attention.selector import BACKENDS
from sglang_diffusion.config.families import Family, detect_family
from sglang_diffusion.config.resolutions import apply_resolution
from sglang_diffusion.config.sampling_params import SamplingParams
from sglang_diffusion.config.server_args import NATIVE_ATTENTION_BACKENDS, ServerArgs
from sglang_diffusion.errors import ConfigError, InvalidRequestError, ModelLoadError
from sglang_diffusion.loader.components import component_dtypes, load_component_override, torchvision_free_components
from sglang_diffusion.loader.lora import LoraManager, LoraSpec
from sglang_diffusion.loader.resolve import ModelIndex
from sglang_diffusion.pipelines.base import PipelineOutput
from sglang_diffusion.pipelines.hooks import StepHooks
from sglang_diffusion.pipelines.stages.decoding import enable_vae_tiling
from sglang_diffusion.pipelines.stages.timesteps import ScheduleShift
from sglang_diffusion.pipelines.timing import StageTimer
from sglang_diffusion.platform import Platform

logger = logging.getLogger(__name__)

# SamplingParams field -> the __call__ argument names it may go by
_CALL_ARGS = {
    "prompt": ("prompt",),
    "negative_prompt": ("negative_prompt",),
    "num_inference_steps": ("num_inference_steps",),
    "guidance_scale": ("guidance_scale", "true_cfg_scale"),
    "guidance_scale_2": ("guidance_scale_2",),
    "guidance_rescale": ("guidance_rescale",),
    "true_cfg_scale": ("true_cfg_scale",),
    "height": ("height",),
    "width": ("width",),
    "num_frames": ("num_frames",),
    "num_outputs_per_prompt": ("num_videos_per_prompt", "num_images_per_prompt"),
}


def _stage_of(component: str) -> str | None:
    if component.startswith("transformer") or component == "unet":
        return "denoising"
    if component.startswith("text_encoder"):
        return "text_encoding"
    if component == "image_encoder":
        return "image_encoding"
    return None


def _take_inputs_in_own_dtype(module: torch.nn.Module, method: str) -> None:
    """Makes ``module.method`` cast its floating-point tensor arguments to the module's dtype.

    diffusers' pipelines assume one dtype for every component: FluxPipeline hands the latents,
    in the transformer's dtype, to ``vae.decode`` as they are. Our precision options are per
    component (a CPU where bf16 pays runs the DiT in bf16 and the VAE in fp32 by default), so
    the VAE takes what it is given in its own dtype, as diffusers' Wan pipelines do themselves."""
    original = getattr(module, method)

    def cast(value):
        return value.to(module.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    @functools.wraps(original)
    def in_own_dtype(*args, **kwargs):
        return original(*map(cast, args), **{k: cast(v) for k, v in kwargs.items()})

    setattr(module, method, in_own_dtype)


class DiffusersBackendPipeline:
    backend = "diffusers"

    def __init__(self, args: ServerArgs, index: ModelIndex, platform: Platform):
        self.args, self.index, self.platform = args, index, platform
        self.family: Family | None = detect_family(index.class_name, index.extras, index.path)
        self._check_options()
        dtypes = component_dtypes(args, index, platform)
        overrides = {name: load_component_override(name, path, index, dtypes.get(name), args.trust_remote_code)
                     for name, path in args.component_paths.items()}
        # processors that need torchvision: left out of from_pretrained (diffusers checks a passed
        # component against the placeholder class), their tokenizers set in their place after it
        stand_ins = torchvision_free_components(index, skip=overrides)
        self.pipe = self._load(dtypes, {**overrides, **dict.fromkeys(stand_ins)})
        for name, component in stand_ins.items():
            setattr(self.pipe, name, component)
        self.lora = self._setup_lora()
        self.timer = StageTimer()
        self._configure()
        self._call_params = inspect.signature(self.pipe.__call__).parameters

    # -- loading ---------------------------------------------------------------------------
    def _check_options(self) -> None:
        if self.args.vae_config.load_decoder is False:
            raise ConfigError("vae_config.load_decoder=false: generate and serve need the VAE decoder "
                              "to produce images and videos")

    def _load(self, dtypes: dict, overrides: dict):
        import diffusers
        import transformers
        from diffusers import DiffusionPipeline

        if not sys.stderr.isatty():  # loading bars are noise in logs; the denoising bar follows tqdm's rule
            diffusers.utils.logging.disable_progress_bar()
            transformers.utils.logging.disable_progress_bar()

        try:
            pipe = DiffusionPipeline.from_pretrained(
                self.index.path, dtype={**dtypes, "default": torch.float32},
                trust_remote_code=self.args.trust_remote_code, **overrides)
        except ValueError as e:
            if "trust_remote_code" in str(e):
                raise ConfigError(f"{self.index.class_name} needs custom code from the model repository: "
                                  "pass --trust-remote-code to allow it") from None
            raise ModelLoadError(f"diffusers cannot load {self.index.path}: {e}") from None
        except (OSError, EnvironmentError) as e:
            raise ModelLoadError(f"diffusers cannot load {self.index.path}: {e}") from None
        pipe.to(self.platform.device)
        return pipe

    def _setup_lora(self) -> LoraManager | None:
        """LoRA support where the pipeline has diffusers' LoRA loader; --lora-path is merged now."""
        manager = LoraManager(self.pipe, self._modules()) if hasattr(self.pipe, "load_lora_weights") else None
        if self.args.lora_path:
            if manager is None:
                raise ConfigError(f"lora_path: {type(self.pipe).__name__} does not support LoRA adapters")
            manager.set([LoraSpec(self.args.lora_nickname, self.args.lora_path, strength=self.args.lora_scale)])
        return manager

    def _modules(self):
        return {name: getattr(self.pipe, name) for name in self.index.components
                if isinstance(getattr(self.pipe, name, None), torch.nn.Module)}

    def _configure(self) -> None:
        args, modules = self.args, self._modules()
        for name, module in modules.items():
            stage = _stage_of(name)
            if stage:
                self.timer.watch_forward(stage, module)
        vae = modules.get("vae")
        if vae is not None:
            self.timer.watch_method("decoding", vae, "decode")
            self._configure_vae(vae)
        backend = args.diffusers_attention_backend
        if backend is None and args.attention_backend != "auto":
            if args.attention_backend in BACKENDS and args.attention_backend not in NATIVE_ATTENTION_BACKENDS:
                raise ConfigError(f"attention_backend {args.attention_backend!r} runs in native pipelines only; "
                                  f"the diffusers backend takes {', '.join(NATIVE_ATTENTION_BACKENDS)} or a "
                                  "--diffusers-attention-backend name")
            backend = NATIVE_ATTENTION_BACKENDS.get(args.attention_backend, args.attention_backend)
        self._attention_backend = backend
        self._cache_dit = None
        if backend:
            self._set_attention_backend(backend, modules)
        if args.cache_dit_enabled:  # before torch.compile, so that it traces the cached forward
            from sglang_diffusion.pipelines.cache_dit import enable_cache_dit

            self._cache_dit = enable_cache_dit(self.pipe, args.cache_dit_config)
        if args.enable_torch_compile:
            for name, module in modules.items():
                if _stage_of(name) == "denoising":
                    module.compile()
                    logger.info("torch.compile enabled for %s", name)
        if args.text_encoder_cpu_offload:
            self._offload_text_encoders(modules)

    def _configure_vae(self, vae) -> None:
        cfg = self.args.vae_config
        for method in ("encode", "decode"):
            if hasattr(vae, method):
                _take_inputs_in_own_dtype(vae, method)
        if self.args.vae_tiling:
            enable_vae_tiling(vae, cfg)
        if self.args.vae_slicing:
            if not hasattr(vae, "enable_slicing"):
                raise ConfigError(f"vae_slicing: {type(vae).__name__} does not support slicing")
            vae.enable_slicing()
        if not cfg.load_encoder and getattr(vae, "encoder", None) is not None:
            vae.encoder = None  # frees its weights; requests that need it are refused in generate()
            logger.info("vae_config.load_encoder=false: VAE encoder dropped")

    def _set_attention_backend(self, backend: str, modules: dict) -> None:
        for name, module in modules.items():
            if _stage_of(name) == "denoising" and hasattr(module, "set_attention_backend"):
                try:
                    module.set_attention_backend(backend)
                except (ImportError, RuntimeError, ValueError) as e:
                    raise ConfigError(f"diffusers attention backend {backend!r} cannot run here: {e}") from None
        logger.info("diffusers attention backend: %s", backend)

    def _offload_text_encoders(self, modules: dict) -> None:
        encoders = {n: m for n, m in modules.items() if n.startswith("text_encoder")}
        if self.platform.is_cpu:
            logger.info("text_encoder_cpu_offload: the device is the CPU, so %s already run from host memory",
                        ", ".join(encoders) or "the text encoders")
            return
        from accelerate import cpu_offload

        for name, module in encoders.items():
            module.to("cpu")
            if self.args.pin_cpu_memory:
                for p in module.parameters():
                    p.data = p.data.pin_memory()
            cpu_offload(module, execution_device=self.platform.device)
            logger.info("%s offloaded to host memory; moved to %s for its stage only", name,
                        self.platform.device)

    # -- generation ------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"pipeline": type(self.pipe).__name__, "backend": self.backend,
                "family": self.family.name if self.family else None, "image_input": "image" in self._call_params,
                "attention_backend": self._attention_backend or "diffusers default",
                "cache_dit": self._cache_dit.describe() if self._cache_dit else None,
                **{f"{key}_dtype": str(module.dtype).removeprefix("torch.") for key, module in
                   (("dit", getattr(self.pipe, "transformer", None) or getattr(self.pipe, "unet", None)),
                    ("vae", getattr(self.pipe, "vae", None))) if module is not None and hasattr(module, "dtype")},
                "batch_refusal": "a diffusers pipeline draws a batch's noise otherwise than each request alone"}

    def generate_batch(self, requests: list[SamplingParams], hooks: StepHooks | None = None) -> list[PipelineOutput]:
        return [self.generate(params, hooks) for params in requests]

    def _call_kwargs(self, params: SamplingParams, explicit: set[str]) -> dict:
        if params.enable_teacache:
            raise InvalidRequestError("enable_teacache: TeaCache runs on native pipelines only (backend sglang or "
                                      "auto with a native pipeline); on the diffusers backend use Cache-DiT "
                                      "(--cache-dit-config)")
        kwargs = {}
        for field_name, names in _CALL_ARGS.items():
            value = getattr(params, field_name)
            if value is None:
                continue
            target = next((n for n in names if n in self._call_params), None)
            if target is None:
                if field_name in explicit and not (field_name == "num_outputs_per_prompt" and value == 1):
                    raise InvalidRequestError(f"{field_name}: {type(self.pipe).__name__} does not take it")
                continue
            kwargs[target] = value
        if "max_area" in self._call_params and "height" in kwargs and "width" in kwargs:
            # FluxKontextPipeline scales the size to max_area (1024 x 1024) at its aspect ratio:
            # the requested size is the area, as on the native pipeline
            kwargs["max_area"] = kwargs["height"] * kwargs["width"]
        if params.image_path is not None:
            if "image" not in self._call_params:
                raise InvalidRequestError(f"image_path: {type(self.pipe).__name__} takes no input image")
            if self.pipe.vae is not None and getattr(self.pipe.vae, "encoder", True) is None:
                raise InvalidRequestError("image_path: the VAE encoder was not loaded (vae_config.load_encoder)")
            paths = params.image_path  # several input images (FLUX.2 editing): a list
            kwargs["image"] = [_load_image(p) for p in paths] if isinstance(paths, list) else _load_image(paths)
        elif "image" in self._call_params and self._call_params["image"].default is inspect.Parameter.empty:
            raise InvalidRequestError(f"{type(self.pipe).__name__} needs an input image: pass image_path")
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in self._call_params.values())
        for key in params.diffusers_kwargs:
            if key not in self._call_params and not accepts_any:
                raise InvalidRequestError(f"diffusers_kwargs: {type(self.pipe).__name__} takes no argument {key!r}")
        kwargs.update(params.diffusers_kwargs)
        return kwargs

    def _step_callback(self, hooks: StepHooks) -> dict:
        if "callback_on_step_end" not in self._call_params:
            return {}

        def on_step_end(pipe, step, timestep, callback_kwargs):
            hooks.after_step(step + 1, getattr(pipe, "num_timesteps", None) or step + 1)
            return callback_kwargs

        return {"callback_on_step_end": on_step_end}

    def generate(self, params: SamplingParams, hooks: StepHooks | None = None) -> PipelineOutput:
        explicit = set(params.explicit())
        params = apply_resolution(params, self.family)
        if self.family:
            params = params.resolve(self.family.defaults)
        kwargs = self._call_kwargs(params, explicit)
        if hooks is not None:
            kwargs.update(self._step_callback(hooks))
            hooks.before_steps(params)
        # with the step callback, the hooks report progress (sglang_diffusion.progress): no second bar
        self.pipe.set_progress_bar_config(disable=True if "callback_on_step_end" in kwargs else None)
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        self.timer.take()
        try:
            with torch.inference_mode(), self._schedule(params):
                result = self.pipe(**kwargs, generator=generator, output_type="np")
        except ValueError as e:  # diffusers' check_inputs: a combination this pipeline refuses
            raise InvalidRequestError(f"{type(self.pipe).__name__}: {e}") from None
        timings = self.timer.take()
        is_video = hasattr(result, "frames")
        frames = _to_uint8(result.frames if is_video else result.images, is_video)
        return PipelineOutput(frames=frames, is_video=is_video, params=params, timings=timings)


    @contextlib.contextmanager
    def _schedule(self, params: SamplingParams):
        """flow_shift and boundary_ratio for one call: diffusers pipelines read them from the
        scheduler's and the pipeline's config, not from `__call__`. A scheduler of the request's
        static shift stands in (a dynamic-shifting one gives the same sigmas at that shift, see
        stages.timesteps.ScheduleShift); model_index's boundary_ratio is set, then put back."""
        scheduler, config = self.pipe.scheduler, self.pipe.config
        if params.boundary_ratio is not None and "boundary_ratio" not in config:
            raise InvalidRequestError(f"boundary_ratio: {type(self.pipe).__name__} has no second expert")
        if params.flow_shift is not None:
            shift = ScheduleShift(scheduler)
            shift.check(params.flow_shift)
            self.pipe.scheduler = type(scheduler).from_config(scheduler.config, use_dynamic_shifting=False,
                                                              **{shift.key: params.flow_shift})
        if params.boundary_ratio is not None:
            self.pipe.register_to_config(boundary_ratio=params.boundary_ratio)
        try:
            yield
        finally:
            self.pipe.scheduler = scheduler
            if "boundary_ratio" in config:
                self.pipe.register_to_config(boundary_ratio=config["boundary_ratio"])


def _load_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(Path(path).expanduser()) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise InvalidRequestError(f"image_path: {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidRequestError(f"image_path: {path!r} is not a readable image ({e})") from None


def _to_uint8(x, is_video: bool) -> np.ndarray:
    """diffusers' np output (floats in [0, 1], or PIL lists) -> uint8 [N, F, H, W, 3]."""
    if isinstance(x, torch.Tensor):
        x = x.float().cpu().numpy()
    if isinstance(x, list):
        x = np.stack([np.asarray(i) for i in x])
    x = np.asarray(x)
    if x.dtype != np.uint8:
        x = (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if not is_video:
        x = x[:, None]  # [N, H, W, C] -> [N, 1, H, W, C]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x
