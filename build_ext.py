"""C++ extension list for setup.py: the CPU kernels built as ``vllm._C``.

Usage in setup.py::

    from build_ext import cpu_extensions
    ext_modules = cpu_extensions()
    cmdclass = {}
    if ext_modules:
        from torch.utils.cpp_extension import BuildExtension
        cmdclass["build_ext"] = BuildExtension
    setup(..., ext_modules=ext_modules, cmdclass=cmdclass)
"""

import glob
import os

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
CPU_SOURCE_DIR = os.path.join("csrc", "cpu")


def cpu_sources() -> list:
    """All C++ sources of vllm._C, relative to the repository root."""
    pattern = os.path.join(REPO_ROOT, CPU_SOURCE_DIR, "*.cpp")
    return sorted(os.path.relpath(path, REPO_ROOT) for path in glob.glob(pattern))


def compile_flags() -> list:
    # -march=native: the AVX-512 paths are chosen at compile time, so the build
    # targets the machine it runs on. VLLM_CPU_MARCH overrides it (e.g. "x86-64-v4").
    march = os.environ.get("VLLM_CPU_MARCH", "native")
    # -fopenmp: at::parallel_for is inline OpenMP code; without it the kernels run
    # on one thread. torch ships libgomp, which the extension then shares.
    # -Wno-maybe-uninitialized: silences a GCC 12 false positive inside its own
    # AVX-512 reduce intrinsics.
    return ["-O3", f"-march={march}", "-fopenmp", "-Wno-maybe-uninitialized"]


def cpu_extensions() -> list:
    """CppExtension list for vllm._C, or [] when torch is not importable."""
    try:
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        return []
    return [
        CppExtension(
            name="vllm._C",
            sources=cpu_sources(),
            include_dirs=[os.path.join(REPO_ROOT, CPU_SOURCE_DIR)],
            extra_compile_args=compile_flags(),
            extra_link_args=["-fopenmp"],
        )
    ]
