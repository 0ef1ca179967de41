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
    # -Wno-(maybe-)uninitialized: silence GCC 12 false positives inside its own
    # AVX-512 intrinsics (_mm512_reduce_add_ps, _mm512_cvtepu8_epi32).
    return ["-O3", f"-march={march}", "-fopenmp", "-Wno-maybe-uninitialized",
            "-Wno-uninitialized"]


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


# ---- Ascend (built only where CANN is installed; the CPU build above is unchanged) --------
ASCEND_SOURCE_DIR = os.path.join("csrc", "ascend")
# 910B (Atlas A2) vector cores: the KV copy kernels use no cube unit, so they are built
# vector-only and launched with up to one block per vector core (the count is asked of
# the device at run time, csrc/ascend/torch_bindings.cpp). VLLM_ASCEND_SOC_ARCH overrides.
DEFAULT_ASCEND_ARCH = "dav-c220-vec"


def cann_home():
    """The CANN toolkit folder from ASCEND_HOME_PATH / ASCEND_TOOLKIT_HOME (set_env.sh)."""
    for name in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"):
        path = os.environ.get(name)
        if path and os.path.isdir(path):
            return path
    return None


def find_bisheng(home):
    """bisheng (or ccec, its older name) from PATH or the toolkit's compiler folder."""
    import shutil
    for name in ("bisheng", "ccec"):
        found = shutil.which(name) or os.path.join(home, "compiler", "ccec_compiler", "bin", name)
        if os.path.isfile(found):
            return found
    return None


def compile_ascend_kernels(home, compiler, build_dir):
    """The AscendC kernels and their launchers as one object file, for vllm._ascend_C."""
    import subprocess
    os.makedirs(build_dir, exist_ok=True)
    out = os.path.join(build_dir, "ascend_kv_copy.o")
    arch = os.environ.get("VLLM_ASCEND_SOC_ARCH", DEFAULT_ASCEND_ARCH)
    tikcpp = os.path.join(home, "compiler", "tikcpp", "tikcfw")
    includes = [tikcpp, os.path.join(tikcpp, "impl"), os.path.join(tikcpp, "interface"),
                os.path.join(home, "include"), os.path.join(REPO_ROOT, ASCEND_SOURCE_DIR)]
    command = [compiler, "-xcce", f"--cce-aicore-arch={arch}", "-O2", "-std=c++17", "-fPIC",
               "-c", os.path.join(REPO_ROOT, ASCEND_SOURCE_DIR, "launch.cpp"), "-o", out]
    command += [f"-I{path}" for path in includes]
    subprocess.run(command, check=True)
    return out


def ascend_extensions() -> list:
    """CppExtension list for vllm._ascend_C, or [] without CANN, bisheng or torch_npu."""
    home = cann_home()
    compiler = find_bisheng(home) if home else None
    if compiler is None:
        return []
    try:
        import torch_npu
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        return []
    torch_npu_dir = os.path.dirname(torch_npu.__file__)
    kernels = compile_ascend_kernels(home, compiler, os.path.join(REPO_ROOT, "build", "ascend"))
    return [
        CppExtension(
            name="vllm._ascend_C",
            sources=[os.path.join(ASCEND_SOURCE_DIR, "torch_bindings.cpp")],
            include_dirs=[os.path.join(torch_npu_dir, "include"), os.path.join(home, "include")],
            library_dirs=[os.path.join(torch_npu_dir, "lib"), os.path.join(home, "lib64")],
            libraries=["torch_npu", "ascendcl", "runtime"],
            extra_objects=[kernels],
            extra_compile_args=["-O2", "-std=c++17"],
        )
    ]
