"""C++ extension list for setup.py: the CPU kernels, built once per instruction set
as ``vllm._C_<isa>``.

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


def isa_sources(isa: str) -> list:
    """One file per source under build/csrc-<isa>/ that includes it: the variants then
    compile to object files of their own (setuptools names objects after sources)."""
    folder = os.path.join("build", f"csrc-{isa}")
    os.makedirs(os.path.join(REPO_ROOT, folder), exist_ok=True)
    wrappers = []
    for source in cpu_sources():
        wrapper = os.path.join(folder, os.path.basename(source))
        text = f'#include "{os.path.join(REPO_ROOT, source)}"\n'
        path = os.path.join(REPO_ROOT, wrapper)
        if not os.path.exists(path) or open(path).read() != text:
            with open(path, "w") as handle:
                handle.write(text)
        wrappers.append(wrapper)
    return wrappers


# The instruction sets vllm._C is built for, by machine: each becomes its own module,
# vllm._C_<isa>, registering its ops as torch.ops._C_<isa>.*; vllm/platforms/cpu_isa.py
# picks one at run time from the CPU's features (VLLM_CPU_ISA forces one). "portable"
# is the kernels' plain C++ (vectorised by the compiler alone), for CPUs below the rest.
ISA_FLAGS = {
    "x86_64": {
        "avx512": ["-march=x86-64-v4", "-mtune=generic"],
        "avx2": ["-march=x86-64-v3", "-mtune=generic"],
        "portable": ["-march=x86-64", "-mtune=generic", "-DVLLM_CPU_PORTABLE"],
    },
    "aarch64": {
        "neon": ["-march=armv8-a"],
        "portable": ["-march=armv8-a", "-DVLLM_CPU_PORTABLE"],
    },
}


def machine() -> str:
    """The target machine: VLLM_CPU_ARCH (for cross builds) or this one's."""
    import platform
    name = os.environ.get("VLLM_CPU_ARCH", platform.machine()).lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def isa_variants(arch: str) -> dict:
    """{isa: its compiler flags} for `arch` (other machines get the portable build only),
    narrowed to VLLM_CPU_ISAS (comma-separated) when set, for quicker builds while editing."""
    variants = ISA_FLAGS.get(arch, {"portable": ["-DVLLM_CPU_PORTABLE"]})
    listed = os.environ.get("VLLM_CPU_ISAS", "").split(",")
    wanted = [name.strip() for name in listed if name.strip()]
    unknown = sorted(set(wanted) - set(variants))
    if unknown:
        raise SystemExit(f"VLLM_CPU_ISAS: {', '.join(unknown)} not among {', '.join(variants)}")
    return {isa: flags for isa, flags in variants.items() if not wanted or isa in wanted}


def compile_flags(isa_flags: list, isa: str) -> list:
    # -fopenmp: at::parallel_for is inline OpenMP code; without it the kernels run
    # on one thread. torch ships libgomp, which the extension then shares.
    # -Wno-(maybe-)uninitialized: silence GCC 12 false positives inside its own
    # AVX-512 intrinsics (_mm512_reduce_add_ps, _mm512_cvtepu8_epi32).
    # -g0: Python's CFLAGS add -g; debug info of torch's templates is most of each object's
    # compile time and of the module's size.
    return ["-O3", "-g0", *isa_flags, f"-DVLLM_CPU_OPS_NAMESPACE=_C_{isa}", "-fopenmp",
            "-Wno-maybe-uninitialized", "-Wno-uninitialized"]


def cpu_extensions() -> list:
    """One CppExtension vllm._C_<isa> per instruction set of this machine's architecture,
    or [] when torch is not importable."""
    try:
        from torch.utils.cpp_extension import CppExtension
    except ImportError:
        return []
    return [
        CppExtension(
            name=f"vllm._C_{isa}",
            sources=isa_sources(isa),
            include_dirs=[os.path.join(REPO_ROOT, CPU_SOURCE_DIR)],
            extra_compile_args=compile_flags(flags, isa),
            extra_link_args=["-fopenmp"],
        )
        for isa, flags in isa_variants(machine()).items()
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
