"""The CPU kernel builds: one per instruction set, each what its name says, chosen at run
time from the CPU's flags or forced with VLLM_CPU_ISA."""
import os
import subprocess
import sys

import pytest

from vllm.platforms import cpu_isa


def test_this_cpu_runs_at_least_the_portable_build():
    assert cpu_isa.runnable_isas()[-1] == "portable"


@pytest.mark.parametrize("isa", cpu_isa.built_isas())
def test_each_build_compiled_the_code_paths_of_its_name(isa):
    assert cpu_isa.load_ops(isa).built_isa() == isa


def test_every_runnable_isa_is_built():
    # pip install -e . (and .ci/run) builds every variant of this machine's architecture.
    assert cpu_isa.built_isas() == cpu_isa.runnable_isas()


def test_flags_select_builds_best_first(monkeypatch):
    monkeypatch.setattr(cpu_isa, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: cpu_isa.REQUIRED_CPU_FLAGS["avx2"])
    assert cpu_isa.runnable_isas() == ["avx2", "portable"]
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: cpu_isa.REQUIRED_CPU_FLAGS["avx512"]
                        | cpu_isa.REQUIRED_CPU_FLAGS["avx2"])
    assert cpu_isa.runnable_isas() == ["avx512", "avx2", "portable"]
    monkeypatch.setattr(cpu_isa, "machine", lambda: "aarch64")
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: frozenset({"fp", "asimd"}))
    assert cpu_isa.runnable_isas() == ["neon", "portable"]


@pytest.mark.parametrize("value, message", [
    ("sse9", "is not a kernel build of this"),
    ("NEON" if cpu_isa.machine() == "x86_64" else "avx2", "is not a kernel build of this"),
])
def test_a_bad_forced_isa_is_one_clear_error(monkeypatch, value, message):
    monkeypatch.setenv(cpu_isa.ISA_ENV, value)
    with pytest.raises(ValueError, match=message):
        cpu_isa.requested_isa()


def test_an_isa_the_cpu_lacks_is_refused_naming_the_flags(monkeypatch):
    monkeypatch.setattr(cpu_isa, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: cpu_isa.REQUIRED_CPU_FLAGS["avx2"])
    monkeypatch.setenv(cpu_isa.ISA_ENV, "avx512")
    with pytest.raises(ValueError, match="this CPU lacks avx512bw, avx512cd"):
        cpu_isa.requested_isa()


@pytest.mark.parametrize("isa", cpu_isa.built_isas())
def test_forced_isa_is_the_one_the_kernels_use(isa):
    code = ("from vllm.platforms.cpu_isa import kernel_ops, selected_isa;"
            "print(selected_isa(), kernel_ops().built_isa())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**_env(), cpu_isa.ISA_ENV: isa}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [isa, isa]
    assert f"CPU kernels: {isa}" in result.stdout  # the start-up log names the choice


def test_cli_refuses_a_bad_forced_isa_in_one_line():
    result = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", "x"],
                            capture_output=True, text=True, timeout=120,
                            env={**_env(), cpu_isa.ISA_ENV: "sse9"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "VLLM_CPU_ISA='sse9'" in result.stderr


def _env():
    return dict(os.environ)
