"""
The kernels' own C test driver, tests/kernels/kernel_check.c: every SIMD
kernel family against the scalar one (GEMM against a double-precision
product; the matmul over bf16 weights bit for bit against the fp32 one over
the widened weights, but for the AVX2 transposed GEMV), odd sizes, 1 and 2 threads, bit-identical across thread
counts.

  - natively: the SIMD variants of this machine (AVX2, AVX-512 or NEON);
  - for aarch64, when Debian's gcc-aarch64-linux-gnu and qemu-user are
    installed (.ci/arm64 installs them): the driver and the kernels
    cross-compiled -static with -Werror (not a warning allowed) and run
    under qemu-aarch64 as a Cortex-A53 (plain ARMv8.0-A), which checks the NEON kernels' results -- not their
    speed: an emulator runs every instruction at its own pace.

Run:  pytest tests/kernels/test_kernel_check.py -q -rs
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pg_llm_lab.build import arch_cflags

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "extension" / "src"
DRIVER = Path(__file__).with_name("kernel_check.c")
CROSS_CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"
WARNINGS = ["-Wall", "-Wextra", "-Wno-unused-parameter"]


def kernel_sources():
    return sorted(str(p) for p in (SRC / "kernels").rglob("*.c"))


def build(cc, out, *flags):
    cmd = [cc, "-O2", "-pthread", *WARNINGS, *arch_cflags(cc), *flags, "-I", str(SRC), str(DRIVER),
           *kernel_sources(), "-lm", "-o", str(out)]
    # The compiler runs without an LD_PRELOAD, as in pg_llm_lab.build.build_kernel_library
    # (.ci/sanitize preloads the sanitizer runtimes into the tests, which slow it down);
    # the driver itself runs with them.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def run_driver(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith(" 0 failed"), result.stdout
    return result.stdout


def test_kernels_include_no_postgresql_header():
    found = [str(p.relative_to(SRC)) for p in (SRC / "kernels").rglob("*.[ch]")
             if any(h in p.read_text() for h in ('"postgres.h"', '"fmgr.h"', "<postgres.h>"))]
    assert found == []


def test_native(tmp_path):
    cc = shutil.which("cc") or pytest.skip("no C compiler (cc)")
    build(cc, tmp_path / "kernel_check")
    out = run_driver([str(tmp_path / "kernel_check")])
    assert out.startswith("ISAs: scalar")


def need_cross_tools():
    missing = [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt install gcc-aarch64-linux-gnu "
                    "qemu-user; .ci/arm64 does)")


def test_aarch64_neon_under_qemu(tmp_path):
    need_cross_tools()
    build(CROSS_CC, tmp_path / "kernel_check", "-static", "-Werror")
    # a Cortex-A53 (ARMv8.0-A, the Raspberry Pi 3's core): nothing newer is needed
    out = run_driver([QEMU, "-cpu", "cortex-a53", str(tmp_path / "kernel_check")])
    assert out.startswith("ISAs: scalar neon\n"), out
