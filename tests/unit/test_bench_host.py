"""The host record. nvidia-smi is faked by a script on PATH: there is no GPU on these machines."""

from __future__ import annotations

import os
import stat

from llmctl.bench.host import default_threads, host_info, simd_features


def test_simd_features_from_system_info():
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | AVX2 = 1 | OPENMP = 1 | REPACK = 1 | "
    assert simd_features(info) == ("SSE3", "AVX", "AVX2", "OPENMP", "REPACK")
    assert simd_features(None) == ()


def test_host_record_without_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    h = host_info("CPU : AVX2 = 1 |")
    assert h.gpus == ()
    assert h.cpu_model and h.cpu_cores_logical >= 1 and h.ram_bytes > 0
    assert h.os and h.python and h.llmctl_version
    assert h.simd == ("AVX2",)
    assert 1 <= default_threads() <= (os.cpu_count() or 1)


def test_host_record_reads_nvidia_smi(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *--query-gpu=name,memory.total,driver_version*) ;; *) exit 9;; esac\n'
        "echo 'NVIDIA H100 80GB HBM3, 81559, 550.54.15'\n"
        "echo 'NVIDIA L4, 23034, 550.54.15'\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = host_info().to_dict()["gpus"]
    assert gpus == [
        {"name": "NVIDIA H100 80GB HBM3", "vram_bytes": 81559 * 1024 * 1024, "driver": "550.54.15"},
        {"name": "NVIDIA L4", "vram_bytes": 23034 * 1024 * 1024, "driver": "550.54.15"},
    ]


def test_failing_nvidia_smi_is_no_gpu(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert host_info().gpus == ()
