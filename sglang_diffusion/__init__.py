"""sglang-diffusion: a fast inference engine for image and video diffusion models."""

__version__ = "0.1.0"
