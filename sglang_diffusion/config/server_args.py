"""`ServerArgs`: how the engine is built (model, parallel layout, backends, precision, offload).

Every field is a flag of `sglang generate` / `sglang serve` and a config-file key.
Values here are what the user asked for; what the engine derives from them (the parallel
layout, the device, dtypes) is computed by methods and logged, never written back.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from sglang_diffusion.config.cache import CacheDitParams, cache_dit_params_from_env
from sglang_diffusion.config.fields import option
from sglang_diffusion.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "bf16")
BACKENDS = ("auto", "sglang", "diffusers")
DIFFUSERS_ATTENTION_BACKENDS = ("flash", "_flash_3_hub", "sage", "xformers", "native")
DEFAULT_PORT = 30010
# Native attention backends (issue: kernels) and diffusers' names for the same kernels, so that
# `--attention-backend fa` also means something on a model served by the diffusers backend.
NATIVE_ATTENTION_BACKENDS = {"fa": "flash", "torch_sdpa": "native", "sage_attn": "sage"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
CLOUD_STORAGE_TYPES = ("local", "s3")
LAUNCHERS = ("auto", "spawn", "torchrun")


def _env(name: str, default: str | None = None):
    """A default_factory: the environment variable `name` (unset or empty: `default`)."""
    return lambda: os.environ.get(name) or default


def _env_flag(name: str):
    """A default_factory: the boolean environment variable `name`, read when the args are built."""

    def read() -> bool:
        value = os.environ.get(name, "").strip().lower()
        if value not in _TRUE + _FALSE:
            raise ConfigError(f"{name}: expected one of {', '.join(v for v in _TRUE + _FALSE if v)}, "
                              f"got {os.environ[name]!r}")
        return value in _TRUE

    return read


def _torchrun_world_size() -> int:
    """num_gpus' default: torchrun's WORLD_SIZE when this process is one of its ranks, else 1."""
    if "TORCHELASTIC_RUN_ID" in os.environ and os.environ.get("WORLD_SIZE", "").isdigit():
        return int(os.environ["WORLD_SIZE"])
    return 1


@dataclass
class VaeConfig:
    load_encoder: bool = option(True, "Load the VAE encoder (needed for image inputs).")
    load_decoder: bool = option(True, "Load the VAE decoder (needed to produce pixels).")
    tile_sample_min_height: int | None = option(None, "Tile height in pixels for VAE tiling.")
    tile_sample_min_width: int | None = option(None, "Tile width in pixels for VAE tiling.")
    tile_sample_min_num_frames: int | None = option(None, "Tile length in frames for video VAE tiling.")


@dataclass
class ServerArgs:
    # Model
    model_path: str | None = option(None, "Local diffusers folder or Hugging Face model id.", metavar="PATH")
    backend: str = option("auto", "auto: native pipeline when there is one, else diffusers; "
                          "sglang: native only; diffusers: always diffusers.", choices=BACKENDS)
    trust_remote_code: bool = option(False, "Allow custom pipeline code from the model repository.")
    revision: str | None = option(None, "Hugging Face revision (branch, tag or commit) of model_path.")
    component_paths: dict = option(None, "Component overrides {component: path}; also given as "
                                   "--<component>-path for any key of model_index.json.",
                                   default_factory=dict, metavar="JSON")
    # LoRA
    lora_path: str | None = option(None, "LoRA adapter: a .safetensors file, a folder or a Hugging Face id.",
                                   metavar="PATH")
    lora_nickname: str = option("default", "Nickname of the LoRA adapter.")
    lora_scale: float = option(1.0, "Strength the --lora-path adapter is merged with at start-up.")
    # Parallelism
    num_gpus: int = option(1, "Number of GPUs (rank processes; on a CPU, processes) to use, on all machines "
                           "together. Under torchrun the default is its WORLD_SIZE.",
                           default_factory=_torchrun_world_size)
    tp_size: int = option(1, "Tensor parallel size, for the text encoder only.")
    sp_degree: int | None = option(None, "Sequence parallel size: ulysses_degree x ring_degree "
                                   "(default: their product).", aliases=("sp_size",))
    ulysses_degree: int | None = option(None, "Degree of DeepSpeed-Ulysses-style SP in USP.")
    ring_degree: int | None = option(None, "Degree of ring-attention-style SP in USP.")
    enable_cfg_parallel: bool = option(False, "Run the conditional and unconditional branches of "
                                       "classifier-free guidance on different ranks.")
    dist_init_addr: str | None = option(None, "host:port of rank 0 for torch.distributed "
                                        "(default: a free port on this machine; needed with nnodes > 1).")
    nnodes: int = option(1, "Machines the ranks span: run the same command on each with its --node-rank; "
                         "num_gpus counts the ranks of all of them.")
    node_rank: int = option(0, "This machine's index among nnodes; node 0 takes the requests, the others "
                            "serve its ranks until it stops.")
    launcher: str = option("auto", "How the rank processes start. spawn: this process starts one per rank "
                           "of this machine; torchrun: this process is one rank, started by torchrun (RANK, "
                           "WORLD_SIZE, MASTER_ADDR, MASTER_PORT from its environment); auto: torchrun when "
                           "launched by it.", choices=LAUNCHERS)
    # Attention and kernels
    attention_backend: str = option("auto", "Attention backend: for native pipelines fa, torch_sdpa, "
                                    "sage_attn, ...; for diffusers pipelines a diffusers backend name.")
    attention_backend_config: str | None = option(
        None, "Attention backend options: a JSON string, a JSON/YAML file, or k=v,k2=v2 pairs.",
        metavar="CONFIG")
    diffusers_attention_backend: str | None = option(
        None, "Attention backend of diffusers pipelines (diffusers' own names, e.g. "
        + ", ".join(DIFFUSERS_ATTENTION_BACKENDS) + ").")
    enable_cache_dit: bool = option(
        False, "Cache-DiT acceleration of the diffusion transformer: blocks whose result barely changes "
        "between steps are skipped (native and diffusers pipelines; default from SGLANG_CACHE_DIT_ENABLED).",
        default_factory=_env_flag("SGLANG_CACHE_DIT_ENABLED"))
    cache_dit_config: str | None = option(None, "Cache-DiT YAML/JSON config file; implies enable_cache_dit. "
                                          "Native pipelines read the cache_dit_params keys from it, the "
                                          "diffusers backend Cache-DiT's own format.", metavar="PATH")
    cache_dit_params: CacheDitParams = option(
        None, "DBCache settings of native pipelines (Fn_compute_blocks, Bn_compute_blocks, max_warmup_steps, "
        "residual_diff_threshold, max_continuous_cached_steps, enable_taylorseer, taylorseer_order, scm_preset, "
        "scm_compute_bins, scm_cache_bins, scm_policy; secondary_cache_config for a second expert). "
        "Default from the SGLANG_CACHE_DIT_* variables.", default_factory=cache_dit_params_from_env,
        metavar="JSON")
    mask_strategy_file_path: str | None = option(None, "Sliding-tile attention mask strategy file.",
                                                 metavar="PATH")
    enable_torch_compile: bool = option(False, "torch.compile the diffusion transformer.")
    # Precision
    dit_precision: str | None = option(None, "Precision of the DiT (default: bf16 on a GPU; on a CPU bf16 "
                                       "where measured clearly faster than fp32, else fp32, and a requested "
                                       "bf16/fp16 runs as fp32 where measured slower).",
                                       choices=PRECISIONS, aliases=("precision",))
    vae_precision: str = option("fp32", "Precision of the VAE.", choices=PRECISIONS)
    text_encoder_precisions: list = option(
        None, "Precision of each text encoder, in model_index order (default: the DiT's default, "
        "measured on a CPU, bf16 on a GPU).", default_factory=list, choices=PRECISIONS)
    # VAE
    vae_tiling: bool = option(False, "Decode the VAE tile by tile (large outputs, less memory).")
    vae_slicing: bool = option(False, "Decode the VAE one batch element at a time.")
    vae_sp: bool = option(False, "Split VAE decoding across the sequence-parallel ranks.")
    vae_config: VaeConfig = option(None, "VAE options: load_encoder, load_decoder, "
                                   "tile_sample_min_height, tile_sample_min_width.",
                                   default_factory=VaeConfig, metavar="JSON")
    # Offload
    text_encoder_cpu_offload: bool = option(False, "Keep the text encoders in host memory; they run "
                                            "there or move to the GPU for their stage only.")
    pin_cpu_memory: bool = option(False, "Pin host memory of offloaded weights (faster transfers).")
    # Server
    host: str = option("127.0.0.1", "Address the HTTP server listens on (serve only).")
    port: int = option(DEFAULT_PORT, "Port the HTTP server listens on (serve only).")
    api_key: str | None = option(None, "Require `Authorization: Bearer API_KEY` on every /v1 route and the API "
                                 "docs (serve only). Default from SGLANG_API_KEY (not visible in ps).", secret=True,
                                 default_factory=_env("SGLANG_API_KEY"))
    api_key_file: str | None = option(None, "Read the API key from this file (its first line) instead "
                                      "(serve only).", metavar="PATH")
    served_model_name: list = option(None, "Name(s) the server lists in /v1/models and echoes in answers "
                                     "(default: model_path); requests may name any model (serve only).",
                                     default_factory=list, metavar="NAME")
    max_queue_size: int = option(16, "Requests waiting for the engine past which the server answers 429 "
                                 "with Retry-After (serve only).")
    max_batch_size: int = option(1, "Most outputs one forward makes for requests that can share it (same size, "
                                 "frames, steps, guidance, adapters...): concurrent server requests and several "
                                 "prompts/seeds are batched up to this (1: no batching).")
    batching_delay_ms: float = option(20.0, "Longest a request waits for compatible company before its batch runs "
                                      "(with max_batch_size over 1).")
    max_upload_mb: int = option(20, "Largest request body (uploaded images included), in MiB (serve only).")
    max_resolution: int = option(4096, "Largest width or height a request may ask for, in pixels (serve only).")
    max_num_frames: int = option(1024, "Most video frames a request may ask for (serve only).")
    max_inference_steps: int = option(1000, "Most denoising steps a request may ask for (serve only).")
    max_upload_pixels: int = option(4096 * 4096, "Largest uploaded image, in pixels (width x height, read from "
                                    "its header before it is decoded) (serve only).")
    max_prompt_chars: int = option(8192, "Longest prompt and negative prompt, in characters (serve only).")
    max_prompt_tokens: int = option(1024, "Longest prompt and negative prompt, in tokens of the model's "
                                    "longest-reaching tokenizer (serve only).")
    output_ttl_s: int | None = option(None, "Seconds a finished video job and served files are kept, then "
                                      "deleted (jobs listed as expired); 0: forever. Default: 86400 for local "
                                      "storage, 0 with cloud storage (serve only).")
    lora_dirs: list = option(None, "Directories the LoRA routes may load adapters from. Any other local path "
                             "is refused; Hugging Face ids are allowed (serve only).",
                             default_factory=list, metavar="DIR")
    # Output storage (serve only); defaults from the SGLANG_CLOUD_STORAGE_TYPE / SGLANG_S3_* variables
    cloud_storage_type: str = option("local", "Where served outputs go: local (the output path) or s3 "
                                     "(uploaded, then deleted locally). Default from SGLANG_CLOUD_STORAGE_TYPE.",
                                     choices=CLOUD_STORAGE_TYPES,
                                     default_factory=_env("SGLANG_CLOUD_STORAGE_TYPE", "local"))
    s3_bucket_name: str | None = option(None, "S3 bucket of the outputs. Default from SGLANG_S3_BUCKET_NAME.",
                                        default_factory=_env("SGLANG_S3_BUCKET_NAME"))
    s3_endpoint_url: str | None = option(None, "S3-compatible endpoint (MinIO, OSS, COS, ...). Default from "
                                         "SGLANG_S3_ENDPOINT_URL, else AWS.", metavar="URL",
                                         default_factory=_env("SGLANG_S3_ENDPOINT_URL"))
    s3_region_name: str = option("us-east-1", "S3 region. Default from SGLANG_S3_REGION_NAME, else us-east-1.",
                                 default_factory=_env("SGLANG_S3_REGION_NAME", "us-east-1"))
    s3_access_key_id: str | None = option(None, "S3 access key id. Default from SGLANG_S3_ACCESS_KEY_ID, else "
                                          "boto3's own credential chain.", secret=True,
                                          default_factory=_env("SGLANG_S3_ACCESS_KEY_ID"))
    s3_secret_access_key: str | None = option(None, "S3 secret access key. Default from "
                                              "SGLANG_S3_SECRET_ACCESS_KEY.", secret=True,
                                              default_factory=_env("SGLANG_S3_SECRET_ACCESS_KEY"))
    s3_presigned_urls: bool = option(False, "Answer with presigned URLs (for a private bucket) instead of "
                                     "the objects' public URLs.")
    s3_url_expiry_s: int = option(3600, "Lifetime of a presigned URL, in seconds.")
    s3_connect_timeout_s: float = option(5.0, "Seconds to wait for a connection to the S3 endpoint.")
    s3_read_timeout_s: float = option(10.0, "Seconds to wait for each answer of the S3 endpoint.")
    s3_max_attempts: int = option(2, "Tries of each S3 call (1: no retry). An image answered by url waits at "
                                  "most s3_max_attempts x (connect + read timeout), then answers the local URL.")
    # Logging
    log_level: str = option("info", "Log level.", choices=("debug", "info", "warning", "error"))

    def __post_init__(self):
        validate_server_args(self)

    @property
    def sp_layout(self) -> tuple[int, int, int]:
        """(sp, ulysses, ring) as the engine will run them, derived from what was given."""
        sp, ulysses, ring = self.sp_degree, self.ulysses_degree, self.ring_degree
        if ulysses is None and ring is None:
            sp = sp or 1
            return sp, sp, 1
        ulysses, ring = ulysses or 1, ring or 1
        return ulysses * ring, ulysses, ring

    @property
    def cfg_degree(self) -> int:
        return 2 if self.enable_cfg_parallel else 1

    @property
    def under_torchrun(self) -> bool:
        """Whether this process is one rank of a torchrun launch (launcher, or auto and its environment)."""
        return self.launcher == "torchrun" or (self.launcher == "auto" and "TORCHELASTIC_RUN_ID" in os.environ)

    @property
    def cache_dit_enabled(self) -> bool:
        """Cache-DiT runs when asked for, or when given a config."""
        return self.enable_cache_dit or self.cache_dit_config is not None


def _diffusers_attention_names() -> list[str]:
    """diffusers' attention backends, asked for only where a name is not ours: importing diffusers
    takes seconds, which a native request does not pay."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


def validate_server_args(args: ServerArgs) -> None:
    """Cross-field checks; each failure names the keys involved."""
    for name in ("num_gpus", "tp_size", "sp_degree", "ulysses_degree", "ring_degree"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"port must be between 1 and 65535, got {args.port}")
    if not 0 <= args.batching_delay_ms <= 60_000:
        raise ConfigError(f"batching_delay_ms must be 0 to 60000, got {args.batching_delay_ms}")
    for name in ("max_queue_size", "max_batch_size", "max_upload_mb", "max_resolution", "max_num_frames",
                 "max_inference_steps", "max_upload_pixels", "max_prompt_chars", "max_prompt_tokens", "s3_url_expiry_s",
                 "s3_max_attempts"):
        if getattr(args, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(args, name)}")
    for name in ("s3_connect_timeout_s", "s3_read_timeout_s"):
        if not 0 < getattr(args, name) <= 600:
            raise ConfigError(f"{name} must be over 0 and at most 600 seconds, got {getattr(args, name)}")
    if args.output_ttl_s is not None and args.output_ttl_s < 0:
        raise ConfigError(f"output_ttl_s must be 0 (keep forever) or more, got {args.output_ttl_s}")
    if args.api_key and args.api_key_file:
        raise ConfigError("give api_key (or SGLANG_API_KEY) or api_key_file, not both")
    if args.cloud_storage_type not in CLOUD_STORAGE_TYPES:
        raise ConfigError(f"cloud_storage_type (or SGLANG_CLOUD_STORAGE_TYPE): {args.cloud_storage_type!r} is "
                          f"not one of {', '.join(CLOUD_STORAGE_TYPES)}")
    from sglang_diffusion.attention.selector import VALID_NAMES

    if args.attention_backend not in VALID_NAMES:
        valid = [*VALID_NAMES, *_diffusers_attention_names()]
        if args.attention_backend not in valid:
            raise ConfigError(f"attention_backend: unknown backend {args.attention_backend!r} "
                              f"(valid: {', '.join(valid)})")
    if args.diffusers_attention_backend is not None:
        diffusers_names = _diffusers_attention_names()
        if args.diffusers_attention_backend not in diffusers_names:
            raise ConfigError(f"diffusers_attention_backend: unknown diffusers backend "
                              f"{args.diffusers_attention_backend!r} (valid: {', '.join(diffusers_names)})")
    u, r = args.ulysses_degree, args.ring_degree
    if args.sp_degree is not None and (u is not None or r is not None):
        if (u or 1) * (r or 1) != args.sp_degree:
            raise ConfigError(
                f"ulysses_degree ({u or 1}) x ring_degree ({r or 1}) = {(u or 1) * (r or 1)} "
                f"must equal sp_degree ({args.sp_degree})")
    sp, _, _ = args.sp_layout
    group = sp * args.cfg_degree
    if args.num_gpus % group:
        raise ConfigError(
            f"sp_degree ({sp}) x cfg parallel degree ({args.cfg_degree}) = {group} does not divide "
            f"num_gpus ({args.num_gpus})")
    if args.num_gpus % args.tp_size:
        raise ConfigError(f"tp_size ({args.tp_size}) does not divide num_gpus ({args.num_gpus})")
    if args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise ConfigError(f"node_rank must be in [0, nnodes), got node_rank {args.node_rank} with nnodes {args.nnodes}")
    if args.num_gpus % args.nnodes:
        raise ConfigError(f"nnodes ({args.nnodes}) does not divide num_gpus ({args.num_gpus}): each machine runs "
                          "num_gpus / nnodes ranks")
    if args.nnodes > 1 and not args.dist_init_addr:
        raise ConfigError("nnodes > 1 needs dist_init_addr: host:port of node 0, reachable from every machine")
    if args.nnodes > 1 and args.launcher == "torchrun":
        raise ConfigError("launcher torchrun: torchrun places the ranks on machines itself (its --nnodes, "
                          "--node-rank); nnodes and node_rank are for launcher spawn")
    if args.tp_size > 1 and args.text_encoder_cpu_offload:
        raise ConfigError("tp_size > 1 cannot be combined with text_encoder_cpu_offload "
                          "(layer-wise offload with prefetch is faster; use one or the other)")
    if args.pin_cpu_memory and not args.text_encoder_cpu_offload:
        raise ConfigError("pin_cpu_memory needs text_encoder_cpu_offload")
    for i, p in enumerate(args.text_encoder_precisions):
        if p not in PRECISIONS:
            raise ConfigError(f"text_encoder_precisions[{i}]: {p!r} is not one of {', '.join(PRECISIONS)}")
    for key, path in args.component_paths.items():
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{key}_path must be a path or a Hugging Face id, got {path!r}")


def server_arg_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ServerArgs)]
