"""Step caching over any native DiT's block protocol (`models.dits.blocks`): DBCache with
TaylorSeer and step computation masks, TeaCache; per-request state; decisions that every rank
of a sequence-parallel group takes alike."""

from sglang_diffusion.cache.caching import Caching, RequestCache, check_block_protocol

__all__ = ["Caching", "RequestCache", "check_block_protocol"]
