"""Builds sglang_diffusion._C, the native kernels, from csrc/. Metadata is in pyproject.toml.

- C++ (csrc/bindings.cpp + csrc/cpu/*.cpp) whenever torch is importable: build with
  `pip install --no-build-isolation -e .` or `pip wheel --no-build-isolation --no-deps .`.
- CUDA (csrc/cuda/*.cu) joins when there are such sources, torch is a CUDA build and a CUDA
  toolkit is found; bindings.cpp then sees SGLD_WITH_CUDA.
- Without torch in the build environment (an isolated build) the package is built without _C
  and runs on its pure-PyTorch paths.

Flags are portable (no -march=native): wider instruction sets come from per-kernel
translation units under a GCC target pragma, chosen at run time (csrc/cpu/isa.h).
"""

import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()

# No -ffast-math: the kernels accumulate in fp32 and must keep NaN/Inf semantics.
CXX_FLAGS = ["-O3", "-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo"]
# $ORIGIN/../torch/lib: a wheel installed next to torch loads even before `import torch`.
LINK_FLAGS = ["-fopenmp", "-Wl,-rpath,$ORIGIN/../torch/lib"]


def _rel(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _cpu_sources():
    # Portable translation units link first, so an inline function that two units both emit
    # is taken from the portable one, never from an AVX2 one (csrc/cpu/isa.h).
    cpu = sorted(ROOT.glob("csrc/cpu/*.cpp"), key=lambda p: (p.stem.endswith("_avx2"), p.name))
    return _rel([ROOT / "csrc" / "bindings.cpp", *cpu])


def _cuda_sources(torch, cuda_home):
    """The .cu sources to build, and why none are built when so."""
    sources = sorted(ROOT.glob("csrc/cuda/*.cu"))
    if not sources:
        return [], "there are no csrc/cuda/*.cu sources"
    if torch.version.cuda is None:
        return [], f"torch {torch.__version__} is not a CUDA build"
    if cuda_home is None:
        return [], "no CUDA toolkit was found (set CUDA_HOME)"
    return _rel(sources), None


def _native_build():
    """(ext_modules, cmdclass): empty when torch cannot be imported here."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        print(
            f"sglang-diffusion: building without sglang_diffusion._C: torch is not importable "
            f"in this build environment ({exc}). The package will run on pure-PyTorch paths; "
            f"to build the kernels, install torch and use `pip install --no-build-isolation`.",
            file=sys.stderr,
        )
        return [], {}

    cuda, no_cuda_reason = _cuda_sources(torch, cpp_extension.CUDA_HOME)
    if no_cuda_reason:
        print(f"sglang-diffusion: building _C without CUDA: {no_cuda_reason}", file=sys.stderr)
    extension = cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension
    ext = extension(
        name="sglang_diffusion._C",
        sources=_cpu_sources() + cuda,
        include_dirs=[str(ROOT / "csrc")],
        # Headers too: setuptools skips an up-to-date extension by comparing these times.
        depends=_rel(sorted({*ROOT.glob("csrc/**/*.h"), *ROOT.glob("csrc/**/*.cuh")})),
        extra_compile_args={
            "cxx": CXX_FLAGS + (["-DSGLD_WITH_CUDA"] if cuda else []),
            "nvcc": NVCC_FLAGS,
        },
        extra_link_args=LINK_FLAGS,
    )

    class BuildExt(cpp_extension.BuildExtension):
        """Keeps object files in build/temp.* for editable installs too.

        setuptools gives an editable build a fresh temporary build_temp each time, so ninja
        would recompile everything; with a fixed one it recompiles only what changed.
        """

        def finalize_options(self):
            super().finalize_options()
            tag = f"{self.plat_name}-{sys.implementation.cache_tag}"
            self.build_temp = str(ROOT / "build" / f"temp.{tag}")

        def build_extensions(self):
            if getattr(self, "editable_mode", False) or self.inplace:
                # The in-tree library is not next to torch; it stays on this machine.
                lib = Path(torch.__file__).parent / "lib"
                for e in self.extensions:
                    e.extra_link_args = [*e.extra_link_args, f"-Wl,-rpath,{lib}"]
            super().build_extensions()

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _native_build()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
