"""Cross-builds every aarch64 variant of the CPU kernels (build_ext.py's) against torch's
aarch64 wheel and runs them under qemu-aarch64 against double-precision references.

    python scripts/cross_build_aarch64.py                # build neon + portable, run the harness
    python scripts/cross_build_aarch64.py --build-only   # the shared libraries only
    python scripts/cross_build_aarch64.py --torch 2.5.1 --build-only  # the Ascend image's torch

Needs aarch64-linux-gnu-g++ and qemu-aarch64 (Debian: g++-aarch64-linux-gnu qemu-user), this
machine's torch (build_ext.py's extension list comes from it) and Python headers. The wheel
is fetched from PyPI once and unpacked under ~/.cache/vllm-pd/aarch64 (VLLM_AARCH64_CACHE);
what is built goes to build/aarch64/. Exit status 0 only if every step passed.
"""
import argparse
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
KERNEL_DIR = os.path.join(REPO_ROOT, "csrc", "cpu")
HARNESS_DIR = os.path.join(KERNEL_DIR, "tests")
CROSS_CXX = os.environ.get("VLLM_AARCH64_CXX", "aarch64-linux-gnu-g++")
CROSS_READELF = os.environ.get("VLLM_AARCH64_READELF", "aarch64-linux-gnu-readelf")
QEMU = os.environ.get("VLLM_QEMU_AARCH64", "qemu-aarch64")
GUEST_LIBC = "/usr/aarch64-linux-gnu"  # Debian's cross glibc and libstdc++ (libc6-arm64-cross)
# The qemu CPU model closest to Kunpeng 920 (Armv8.2 with dot product, no SVE).
QEMU_CPUS = ("neoverse-n1", "cortex-a76", "cortex-a72")
CACHE = os.environ.get("VLLM_AARCH64_CACHE",
                       os.path.join(os.path.expanduser("~"), ".cache", "vllm-pd", "aarch64"))
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
# pip matches no older manylinux tag by itself when --platform is given: list them all.
WHEEL_PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(28, 16, -1)]
WHEEL_PLATFORMS.append("manylinux2014_aarch64")
# What of the torch wheel an extension build and a C++ program linking libtorch need;
# torch.libs/ holds what auditwheel bundled into older wheels (2.5's OpenBLAS, ACL, libgomp).
TORCH_MEMBERS = ("torch/include/", "torch/lib/", "torch/share/cmake/", "torch.libs/",
                 "torch/utils/cpp_extension.py", "torch/version.py")
# Bumped when TORCH_MEMBERS changes, so older caches are unpacked again.
CACHE_LAYOUT = 2
# PyPI's aarch64 torch is a CUDA build: libtorch_cpu itself links libcudart and libcupti
# (found through its RPATH, $ORIGIN/../../nvidia/<cuda>/lib). Those two libraries come from
# the runtime wheels its cuda-toolkit pin names; nothing else of CUDA is unpacked.
CUDA_EXTRAS = "cudart,cupti"
CUDA_LIBRARY = re.compile(r"^nvidia/[^/]+/lib/lib(cudart|cupti)\.so[.0-9]*$")


class StepFailed(Exception):
    """A build or run step failed; its message is the report."""


@dataclasses.dataclass
class Variant:
    """One kernel build, as build_ext.cpu_extensions() describes it for aarch64."""
    isa: str
    name: str            # the module, vllm._C_<isa>
    sources: list        # absolute paths (build_ext's per-ISA wrappers)
    include_dirs: list   # the project's own (torch's are this machine's; replaced)
    compile_args: list
    link_args: list
    libraries: list


def log(message: str) -> None:
    print(message, flush=True)


def run(command: list, what: str, **kwargs) -> subprocess.CompletedProcess:
    """Runs `command`; a failure raises StepFailed with its output's tail."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        raise StepFailed(f"{what} failed (exit {result.returncode}):\n  " + " ".join(command) +
                         "\n" + "\n".join(output[-60:]))
    return result


# ---- toolchain inputs -----------------------------------------------------------------------

def torch_pin() -> str:
    """The torch version requirements-cpu.txt pins (the one the x86 build uses)."""
    with open(os.path.join(REPO_ROOT, "requirements-cpu.txt")) as handle:
        for line in handle:
            match = re.match(r"\s*torch==([\w.]+)", line)
            if match:
                return match.group(1)
    raise StepFailed("requirements-cpu.txt pins no torch version; pass --torch")


def pip_download(requirement: str, folder: str, with_deps: bool) -> None:
    command = [sys.executable, "-m", "pip", "download", "-q", requirement, "-d", folder,
               "--only-binary=:all:", "--python-version", PYTHON_VERSION]
    command += [option for tag in WHEEL_PLATFORMS for option in ("--platform", tag)]
    run(command + ([] if with_deps else ["--no-deps"]), f"pip download {requirement}")


def unpack(wheel: str, root: str, keep) -> str:
    """Extracts the members `keep(name)` accepts under root; returns the wheel's METADATA."""
    metadata = ""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".dist-info/METADATA"):
                metadata = archive.read(info).decode()
            elif keep(info.filename):
                archive.extract(info, root)
    return metadata


def fetch_torch(version: str) -> str:
    """torch's aarch64 headers and libraries (plus the CUDA runtime libraries libtorch_cpu
    links, for CUDA builds), unpacked once into the cache; returns that folder."""
    root = os.path.join(CACHE, f"torch-{version}-cp{PYTHON_VERSION.replace('.', '')}")
    marker = os.path.join(root, ".complete")
    if os.path.exists(marker) and read_bytes(marker).decode() == f"{version} {CACHE_LAYOUT}\n":
        log(f"torch {version} (aarch64, cp{PYTHON_VERSION}): cached in {root}")
        return root
    start = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as downloads:
        pip_download(f"torch=={version}", downloads, with_deps=False)
        wheel, = glob.glob(os.path.join(downloads, "torch-*.whl"))
        metadata = unpack(wheel, root, lambda name: name.startswith(TORCH_MEMBERS))
        pin = re.search(r"^Requires-Dist: cuda-toolkit\[[^\]]*\]==([\w.]+)", metadata, re.M)
        if pin:
            pip_download(f"cuda-toolkit[{CUDA_EXTRAS}]=={pin.group(1)}", downloads, with_deps=True)
            for runtime in glob.glob(os.path.join(downloads, "nvidia_*.whl")):
                unpack(runtime, root, CUDA_LIBRARY.match)
    with open(marker, "w") as handle:
        handle.write(f"{version} {CACHE_LAYOUT}\n")
    log(f"torch {version} (aarch64, cp{PYTHON_VERSION}): unpacked into {root} "
        f"in {time.monotonic() - start:.0f} s")
    return root


def torch_build_flags(root: str) -> list:
    """What torch's BuildExtension adds to every compile, read from the wheel's own
    cpp_extension.py: its C++ standard, the extension-header define and, where that torch
    still sets it, the libstdc++ ABI from TorchConfig.cmake. setuptools adds -fPIC and
    Python's CFLAGS (-DNDEBUG -fwrapv, warnings and -g, which change no code: left out)."""
    with open(os.path.join(root, "torch", "utils", "cpp_extension.py")) as handle:
        text = handle.read()
    standard = re.search(r"cpp_flag_prefix \+ '(c\+\+\d+)'", text)
    if not standard:
        raise StepFailed("could not read the C++ standard from the wheel's cpp_extension.py")
    flags = ["-fPIC", "-DNDEBUG", "-fwrapv", "-DTORCH_API_INCLUDE_EXTENSION_H",
             f"-std={standard.group(1)}"]
    if "-D_GLIBCXX_USE_CXX11_ABI=" in text:
        cmake = os.path.join(root, "torch", "share", "cmake", "Torch", "TorchConfig.cmake")
        with open(cmake) as handle:
            abi = re.search(r"_GLIBCXX_USE_CXX11_ABI=(\d)", handle.read())
        flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={abi.group(1) if abi else 1}")
    return flags


def torch_includes(root: str) -> list:
    """The wheel's include folders (CppExtension's two) and this Python's headers, which
    torch/extension.h needs: the wheel is for this Python version, and CPython's headers
    differ between 64-bit Linux targets only in feature macros that no kernel uses."""
    python = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(python, "Python.h")):
        raise StepFailed(f"no Python.h in {python}: install this Python's headers "
                         f"(python{PYTHON_VERSION}-dev)")
    include = os.path.join(root, "torch", "include")
    return [include, os.path.join(include, "torch", "csrc", "api", "include"), python]


def library_dirs(root: str) -> list:
    bundled = sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib")))
    bundled += [path for path in [os.path.join(root, "torch.libs")] if os.path.isdir(path)]
    return [os.path.join(root, "torch", "lib")] + bundled


# ---- the variants, as build_ext describes them ---------------------------------------------

def aarch64_variants() -> list:
    """build_ext.cpu_extensions() with VLLM_CPU_ARCH=aarch64: the same sources, flags and
    libraries setup.py would use on an aarch64 host (VLLM_CPU_ISAS narrows it there too)."""
    os.environ["VLLM_CPU_ARCH"] = "aarch64"
    import build_ext
    from torch.utils.cpp_extension import include_paths
    host_torch = set(include_paths())
    variants = []
    for extension in build_ext.cpu_extensions():
        variants.append(Variant(
            isa=extension.name.rsplit("_C_", 1)[1],
            name=extension.name,
            sources=[os.path.join(REPO_ROOT, source) for source in extension.sources],
            include_dirs=[path for path in extension.include_dirs if path not in host_torch],
            compile_args=list(extension.extra_compile_args),
            link_args=list(extension.extra_link_args),
            libraries=list(extension.libraries)))
    if not variants:
        raise StepFailed("build_ext.cpu_extensions() returned none (is torch importable here?)")
    return variants


def defines_python_module(source: str) -> bool:
    """Whether the kernel source behind build_ext's wrapper is the Python module's (the
    harness, a plain program, links every other one)."""
    with open(os.path.join(KERNEL_DIR, os.path.basename(source))) as handle:
        return "PYBIND11_MODULE" in handle.read()


# ---- compiling and linking ------------------------------------------------------------------

def headers_digest() -> str:
    """A digest of the cross compiler and of every header under csrc/cpu: an object is
    reused only while these and its own source are unchanged (torch's headers sit in a
    folder named by version, which is part of the command)."""
    digest = hashlib.sha256(run([CROSS_CXX, "--version"], "cross compiler").stdout.encode())
    for folder, _, files in sorted(os.walk(KERNEL_DIR)):
        for name in sorted(files):
            if name.endswith(".h"):
                digest.update(name.encode() + read_bytes(os.path.join(folder, name)))
    return digest.hexdigest()


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def source_digest(source: str) -> str:
    """The source's text and, for build_ext's one-line wrappers, the kernel file it includes."""
    digest = hashlib.sha256(read_bytes(source))
    kernel = os.path.join(KERNEL_DIR, os.path.basename(source))
    if os.path.exists(kernel):
        digest.update(read_bytes(kernel))
    return digest.hexdigest()


@dataclasses.dataclass
class Compile:
    source: str
    output: str
    flags: list
    what: str


def compile_one(task: Compile, headers: str, store: str) -> str:
    """Compiles one object, or copies it from `store` when the same command on the same
    sources made it before (switching branches back costs no rebuild); returns the
    compiler's warnings (empty when reused or clean)."""
    command = [CROSS_CXX, *task.flags, "-c", task.source, "-o", task.output]
    inputs = json.dumps([command, headers, source_digest(task.source)])
    stored = os.path.join(store, hashlib.sha256(inputs.encode()).hexdigest() + ".o")
    os.makedirs(os.path.dirname(task.output), exist_ok=True)
    if os.path.exists(stored):
        shutil.copyfile(stored, task.output)
        return ""
    result = run(command, f"compiling {task.what}")
    shutil.copyfile(task.output, stored + ".part")
    os.replace(stored + ".part", stored)  # whole objects only, even if interrupted
    return result.stderr.strip()


def compile_all(tasks: list, jobs: int, store: str) -> None:
    headers = headers_digest()
    os.makedirs(store, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(compile_one, task, headers, store): task for task in tasks}
        for future in concurrent.futures.as_completed(futures):
            warnings = future.result()
            if warnings:
                log(f"warnings compiling {futures[future].what}:\n{warnings}")


def link(objects: list, output: str, root: str, libraries: list, link_args: list,
         shared: bool) -> None:
    # -rpath-link: libtorch_cpu's own dependencies (libcudart, ...) sit beside it, not on
    # the cross linker's path; the guest finds them through libtorch's RPATH.
    dirs = library_dirs(root)
    command = [CROSS_CXX, *(["-shared"] if shared else []), *objects, "-o", output]
    command += [f"-L{dirs[0]}"] + [f"-l{name}" for name in libraries] + link_args
    command += [f"-Wl,-rpath-link,{path}" for path in dirs]
    run(command, f"linking {os.path.basename(output)}")


def check_module(path: str, variant: Variant) -> None:
    """The library is an AArch64 ELF with the entry point Python imports it by."""
    header = run([CROSS_READELF, "-h", path], "readelf").stdout
    if "AArch64" not in header:
        raise StepFailed(f"{path} is not an AArch64 library")
    entry = "PyInit_" + variant.name.rsplit(".", 1)[-1]
    if entry not in run([CROSS_READELF, "--dyn-syms", "-W", path], "readelf").stdout:
        raise StepFailed(f"{path} does not export {entry}")


def build(variants: list, root: str, out: str, jobs: int, with_harness: bool) -> dict:
    """Compiles and links every variant (and its harness); returns {isa: harness path}."""
    base = torch_build_flags(root)
    includes = torch_includes(root)
    variant_dir = lambda variant: os.path.join(out, variant.isa)  # noqa: E731
    tasks, kernel_objects = [], {}
    for variant in variants:
        include_flags = [f"-I{path}" for path in variant.include_dirs + includes]
        # BuildExtension's module-name define, then build_ext's own flags (its -O3, -march...).
        flags = base + include_flags + [f"-DTORCH_EXTENSION_NAME={variant.name.rsplit('.', 1)[-1]}"]
        flags += variant.compile_args
        kernel_objects[variant.isa] = []
        for source in variant.sources:
            output = os.path.join(variant_dir(variant), os.path.basename(source)[:-4] + ".o")
            what = f"{os.path.basename(source)} ({variant.isa})"
            tasks.append(Compile(source, output, flags, what))
            kernel_objects[variant.isa].append((source, output))
        if with_harness:  # the ISA report shares the kernels' exact flags
            tasks.append(Compile(os.path.join(HARNESS_DIR, "isa_report.cpp"),
                                 os.path.join(variant_dir(variant), "isa_report.o"), flags,
                                 f"isa_report.cpp ({variant.isa})"))
    harness_object = os.path.join(out, "kernel_harness.o")
    if with_harness:  # one harness object for every variant: it only calls ops.h
        flags = base + [f"-I{path}" for path in [KERNEL_DIR] + includes] + ["-O2", "-fopenmp"]
        tasks.append(Compile(os.path.join(HARNESS_DIR, "kernel_harness.cpp"), harness_object,
                             flags, "kernel_harness.cpp"))
    start = time.monotonic()
    compile_all(tasks, jobs, os.path.join(out, "objects"))
    log(f"compiled {len(tasks)} objects in {time.monotonic() - start:.0f} s")

    harnesses = {}
    for variant in variants:
        module = os.path.join(out, variant.name.rsplit(".", 1)[-1] + ".so")
        link([path for _, path in kernel_objects[variant.isa]], module, root, variant.libraries,
             variant.link_args, shared=True)
        check_module(module, variant)
        log(f"built {variant.name} for aarch64: {os.path.relpath(module, REPO_ROOT)} "
            f"({', '.join(variant.compile_args[:3])} ...)")
        if with_harness:
            harness = os.path.join(out, f"kernel_harness_{variant.isa}")
            kernels = [path for source, path in kernel_objects[variant.isa]
                       if not defines_python_module(source)]
            link([harness_object, os.path.join(variant_dir(variant), "isa_report.o"), *kernels],
                 harness, root, ["torch_cpu", "c10"], variant.link_args, shared=False)
            harnesses[variant.isa] = harness
    return harnesses


# ---- running under qemu ---------------------------------------------------------------------

def qemu_root(out: str, threads: int) -> str:
    """qemu-aarch64's -L prefix: Debian's cross libraries, plus the /proc/cpuinfo and
    /sys/devices/system/cpu files of a Kunpeng 920 (HiSilicon 0x48, part 0xd01) with
    `threads` cores. qemu 7 hands the guest the host's x86 /proc/cpuinfo, on which torch's
    cpuinfo_initialize crashes; qemu opens guest paths under the prefix first when they
    exist there, so these files are what torch reads."""
    root = os.path.join(out, "qemu-root")
    shutil.rmtree(root, ignore_errors=True)
    cpus = os.path.join(root, "sys", "devices", "system", "cpu")
    os.makedirs(os.path.join(root, "proc"))
    os.makedirs(cpus)
    os.symlink(os.path.join(GUEST_LIBC, "lib"), os.path.join(root, "lib"))
    features = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid "
                "asimdrdm jscvt fcma dcpop asimddp asimdfhm")
    with open(os.path.join(root, "proc", "cpuinfo"), "w") as handle:
        for cpu in range(threads):
            handle.write(f"processor\t: {cpu}\nBogoMIPS\t: 200.00\nFeatures\t: {features}\n"
                         "CPU implementer\t: 0x48\nCPU architecture: 8\nCPU variant\t: 0x1\n"
                         "CPU part\t: 0xd01\nCPU revision\t: 0\n\n")
    for name in ("possible", "present", "online"):
        with open(os.path.join(cpus, name), "w") as handle:
            handle.write(f"0-{threads - 1}\n" if threads > 1 else "0\n")
    for cpu in range(threads):
        identification = os.path.join(cpus, f"cpu{cpu}", "regs", "identification")
        os.makedirs(identification)
        with open(os.path.join(identification, "midr_el1"), "w") as handle:
            handle.write("0x00000000481fd010\n")
    return root


def qemu_cpu() -> str:
    # `-cpu help` lists the models but exits 1 on qemu 7: read its output, not its status.
    listing = subprocess.run([QEMU, "-cpu", "help"], capture_output=True, text=True)
    models = listing.stdout.split()
    return next((model for model in QEMU_CPUS if model in models), "max")


def run_harness(isa: str, harness: str, root: str, prefix: str, threads: int, seed: int,
                timeout: int) -> None:
    # Multiarch arm64 libraries, where installed: torch 2.5's bundled libgfortran needs
    # libz.so.1, which the cross toolchain packages lack (apt-get install zlib1g:arm64).
    guest_paths = [os.path.join(root, "torch", "lib")]
    guest_paths += [path for path in ["/usr/lib/aarch64-linux-gnu"] if os.path.isdir(path)]
    command = [QEMU, "-cpu", qemu_cpu(), "-L", prefix,
               "-E", f"LD_LIBRARY_PATH={':'.join(guest_paths)}",
               "-E", f"OMP_NUM_THREADS={threads}", harness, isa, str(seed)]
    start = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"harness {isa}: no result within {timeout} s under qemu")
    for line in (result.stdout + result.stderr).strip().splitlines():
        log(f"  [{isa}] {line}")
    if result.returncode != 0:
        raise StepFailed(f"harness {isa} failed under qemu (exit {result.returncode})")
    log(f"harness {isa}: passed under qemu-aarch64 in {time.monotonic() - start:.0f} s")


# ---- main -----------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default=None,
                        help="torch version (default: the one requirements-cpu.txt pins)")
    parser.add_argument("--build-only", action="store_true", help="build, do not run the harness")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--threads", type=int, default=2, help="guest threads (OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=20240607, help="the harness's random seed")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per harness run")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    start = time.monotonic()
    try:
        for tool in [CROSS_CXX, CROSS_READELF] + ([] if args.build_only else [QEMU]):
            if shutil.which(tool) is None:
                raise StepFailed(f"{tool} not found (Debian: apt-get install "
                                 "g++-aarch64-linux-gnu qemu-user)")
        version = args.torch or torch_pin()
        root = fetch_torch(version)
        variants = aarch64_variants()
        out = os.path.join(REPO_ROOT, "build", "aarch64", f"torch-{version}")
        harnesses = build(variants, root, out, args.jobs, with_harness=not args.build_only)
        if not args.build_only:
            prefix = qemu_root(out, args.threads)
            failed = []  # every variant runs, so one report shows all that fails
            for isa, harness in harnesses.items():
                try:
                    run_harness(isa, harness, root, prefix, args.threads, args.seed, args.timeout)
                except StepFailed as failure:
                    log(f"FAILED: {failure}")
                    failed.append(isa)
            if failed:
                raise StepFailed(f"the harness failed for {', '.join(failed)}")
    except StepFailed as failure:
        log(f"FAILED: {failure}")
        return 1
    isas = ", ".join(variant.isa for variant in variants)
    done = "built" if args.build_only else "built and passed the harness under qemu-aarch64"
    log(f"aarch64 kernels ({isas}) against torch {version}: {done} "
        f"in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
