"""Builds sglang_diffusion._C, the native kernels, from csrc/. Metadata is in pyproject.toml.

- C++ (csrc/bindings.cpp + csrc/cpu/*.cpp) whenever torch is importable: build with
  `pip install --no-build-isolation -e .` or `pip wheel --no-build-isolation --no-deps .`.
- CUDA (csrc/cuda/*.cu) joins when there are such sources, torch is a CUDA build and a CUDA
  toolkit is found; bindings.cpp then sees SGLD_WITH_CUDA.
- Without torch in the build environment (an isolated build) the package is built without _C
  and runs on its pure-PyTorch paths.

Flags are portable (no -march=native): on x86-64 each csrc/cpu/*_avx2.cpp and *_avx512.cpp is
compiled on its own with that ISA's flags, and the kernels pick a build at run time from what
the CPU reports (csrc/cpu/isa.h).
"""

import os
import platform
import sys
from pathlib import Path

import setuptools
from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()

# The Triton kernels live at the top level (triton_kernels/, beside csrc/) and are installed as
# sglang_diffusion.triton_kernels: the bare name is taken on PyPI and by Triton's own repository.
# setuptools maps the folder for regular installs, wheels and editable installs alike.
PACKAGE_DIR = {"sglang_diffusion.triton_kernels": "triton_kernels"}
PACKAGES = find_packages(include=["sglang_diffusion", "sglang_diffusion.*"]) + list(PACKAGE_DIR)

X86_64 = platform.machine().lower() in ("x86_64", "amd64")
# No -ffast-math: the kernels accumulate in fp32 and must keep NaN/Inf semantics.
# -Wno-psabi: GCC notes on passing 32-byte vectors by value, as torch's own build silences.
CXX_FLAGS = ["-O3", "-fopenmp", "-Wno-psabi"] + (["-DSGLD_CPU_X86_BUILDS=1"] if X86_64 else [])
# What ATen compiles its own AVX2 and AVX-512 kernels with, per suffix of csrc/cpu/<op>_<isa>.cpp.
ISA_FLAGS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
}
# The .cu files include no torch headers: undo torch's CUDAExtension defines that hide the
# __half / __nv_bfloat16 operators, so they build here as they do under plain nvcc.
NVCC_FLAGS = ["-O3", "-lineinfo"] + [
    f"-U__CUDA_NO_{name}__"
    for name in ("HALF_OPERATORS", "HALF_CONVERSIONS", "HALF2_OPERATORS", "BFLOAT16_CONVERSIONS")
]
# $ORIGIN/../torch/lib: a wheel installed next to torch loads even before `import torch`.
LINK_FLAGS = ["-fopenmp", "-Wl,-rpath,$ORIGIN/../torch/lib"]


def _rel(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _cpu_sources():
    """(portable sources, {isa: that ISA's sources}); the ISA builds exist only on x86-64."""
    cpu = sorted(ROOT.glob("csrc/cpu/*.cpp"))
    portable = [p for p in cpu if not any(p.stem.endswith(f"_{isa}") for isa in ISA_FLAGS)]
    by_isa = {isa: _rel(p for p in cpu if p.stem.endswith(f"_{isa}")) if X86_64 else [] for isa in ISA_FLAGS}
    return _rel([ROOT / "csrc" / "bindings.cpp", *portable]), by_isa


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
    portable, isa_sources = _cpu_sources()
    extension = cpp_extension.CUDAExtension if cuda else cpp_extension.CppExtension
    ext = extension(
        name="sglang_diffusion._C",
        sources=portable + cuda,
        include_dirs=[str(ROOT / "csrc")],
        # Every csrc file: setuptools skips an up-to-date extension by comparing these times.
        depends=_rel(sorted(p for p in ROOT.glob("csrc/**/*") if p.is_file())),
        extra_compile_args={
            "cxx": CXX_FLAGS + (["-DSGLD_WITH_CUDA"] if cuda else []),
            "nvcc": NVCC_FLAGS,
        },
        extra_link_args=LINK_FLAGS,
    )
    ext.isa_sources = isa_sources

    class BuildExt(cpp_extension.BuildExtension):
        """Keeps object files in build/temp.* for editable installs too.

        setuptools gives an editable build a fresh temporary build_temp each time, so ninja
        would recompile everything; with a fixed one it recompiles only what changed.
        """

        def finalize_options(self):
            super().finalize_options()
            tag = f"{self.plat_name}-{sys.implementation.cache_tag}"
            self.build_temp = str(ROOT / "build" / f"temp.{tag}")

        def build_extension(self, ext):
            for isa, sources in ext.isa_sources.items():
                if not sources:
                    continue
                # Their own flags, so their own ninja file and folder; linked after the
                # portable objects and in ISA_FLAGS' order, so an inline function that several
                # builds emit is taken from the portable build, or else from the narrower one.
                objects = self.compiler.compile(
                    sources,
                    output_dir=os.path.join(self.build_temp, isa),
                    macros=ext.define_macros,
                    include_dirs=ext.include_dirs,
                    debug=self.debug,
                    extra_postargs=ext.extra_compile_args["cxx"] + ISA_FLAGS[isa],
                    depends=ext.depends,
                )
                ext.extra_objects = [*ext.extra_objects, *(o for o in objects if o not in ext.extra_objects)]
            super().build_extension(ext)

        def build_extensions(self):
            if getattr(self, "editable_mode", False) or self.inplace:
                # The in-tree library is not next to torch; it stays on this machine.
                lib = Path(torch.__file__).parent / "lib"
                for e in self.extensions:
                    e.extra_link_args = [*e.extra_link_args, f"-Wl,-rpath,{lib}"]
            super().build_extensions()

    return [ext], {"build_ext": BuildExt.with_options(use_ninja=True)}


ext_modules, cmdclass = _native_build()
# PEP 639's License-Expression with setuptools 77+; older ones (a system pip's, under
# --no-build-isolation) know only the free-text License field.
if int(setuptools.__version__.split(".")[0]) >= 77:
    LICENSE = {"license_expression": "Apache-2.0"}
else:
    LICENSE = {"license": "Apache-2.0"}
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass, **LICENSE)
