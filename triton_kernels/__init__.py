"""Triton kernels, one op per file: the kernel and its launcher only (the reference, the
dispatcher and the torch.library registration live in sglang_diffusion/ops/<op>.py).

They run on CUDA. On a CPU they run only under Triton's interpreter (TRITON_INTERPRET=1, set
before this package is imported), which is how CI tests them, on small shapes. Each module lists
``AOT_SPECS``: the signatures ``aot.py`` compiles ahead of time for a GPU target, so a kernel
that would not build for Hopper fails CI without a GPU.

Importing a module here imports triton; sglang_diffusion.ops imports them only when it
dispatches to them.
"""
