"""Packaging: the `vllm` package, its console script and the CPU kernels (vllm._C_<isa>)."""
import os
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_ext import ascend_extensions, cpu_extensions  # noqa: E402


def read_requirements(name: str) -> list[str]:
    requirements = []
    with open(name) as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r "):
                requirements += read_requirements(line[3:].strip())
            elif line:
                requirements.append(line)
    return requirements


def target_requirements() -> list[str]:
    target = os.environ.get("VLLM_TARGET_DEVICE", "cpu")
    return read_requirements(f"requirements-{target}.txt")


_target = os.environ.get("VLLM_TARGET_DEVICE", "cpu")
# CPU: the C++ kernels; NPU: those for the host's CPU (aarch64 on 910B hosts) too, and the
# AscendC KV-copy kernels where CANN is installed.
ext_modules = {"cpu": cpu_extensions,
               "npu": lambda: cpu_extensions() + ascend_extensions()}.get(_target, list)()
cmdclass = {}
if ext_modules:
    from torch.utils.cpp_extension import BuildExtension
    cmdclass["build_ext"] = BuildExtension

setup(
    name="vllm-pd",
    version="0.1.0",
    description="vLLM-compatible inference engine with disaggregated prefill/decode",
    packages=find_packages(include=["vllm", "vllm.*"]),
    python_requires=">=3.10",
    install_requires=target_requirements(),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["vllm = vllm.entrypoints.cli.main:main"]},
)
