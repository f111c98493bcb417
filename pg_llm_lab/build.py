"""Build the pg_llm C extension and install it into a PostgreSQL.

The extension is an ordinary PGXS project in the repository's `extension/`
directory (its SQL comes from `sql/`).  Which PostgreSQL gets it is decided by
`pg_config`: an explicit path, else $PG_CONFIG, else the embedded
PostgreSQL's own `pg_config`.  Building is just

    make -C extension PG_CONFIG=<pg_config> -j2 install

and `ensure_installed()` runs that only when the installed copy is missing or
older than the sources.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import server

REPO = Path(__file__).resolve().parent.parent


def find_pg_config(explicit: str | os.PathLike | None = None) -> Path:
    """Path of the pg_config to use: `explicit`, else $PG_CONFIG, else the embedded one."""
    candidate = explicit or os.environ.get("PG_CONFIG") or server.embedded_bin("pg_config")
    found = shutil.which(str(candidate))  # accepts a path or a bare name on $PATH
    if found is None:
        raise FileNotFoundError(f"pg_config not found or not executable: {candidate}")
    return Path(found)


def pg_config_value(pg_config: str | os.PathLike, option: str) -> str:
    """`pg_config --<option>`, e.g. pg_config_value(p, "sharedir")."""
    result = subprocess.run([str(pg_config), f"--{option}"], capture_output=True, text=True, check=True)
    return result.stdout.strip()


def extension_dir() -> Path:
    """The extension's sources: `extension/` next to the `pg_llm_lab` package."""
    path = REPO / "extension"
    if not (path / "Makefile").exists():
        raise FileNotFoundError(
            f"pg_llm sources not found at {path}: pg_llm_lab must be installed from a "
            "checkout of the repository (pip install -e .), which has extension/ and sql/")
    return path


def installed_files(pg_config: str | os.PathLike | None = None) -> tuple[Path, Path, list[Path]]:
    """Where `make install` puts pg_llm: (control file, library, SQL scripts)."""
    pg_config = find_pg_config(pg_config)
    ext = Path(pg_config_value(pg_config, "sharedir")) / "extension"
    lib = Path(pg_config_value(pg_config, "pkglibdir"))
    return ext / "pg_llm.control", module_file(lib), sorted(ext.glob("pg_llm--*.sql"))


def module_file(libdir: Path) -> Path:
    """pg_llm's loadable module in `libdir`, named as PGXS names it (its DLSUFFIX):
    pg_llm.so, or on macOS pg_llm.dylib -- or pg_llm.so there too, if that is
    what is installed (older PostgreSQL).  The macOS path is untested."""
    if sys.platform == "darwin":
        so = libdir / "pg_llm.so"
        return so if so.exists() else libdir / "pg_llm.dylib"
    return libdir / "pg_llm.so"


def arch_cflags(cc: str = "cc") -> list[str]:
    """The compiler flags of the architecture `cc` builds for, as extension/Makefile
    picks them: -ffp-contract=off on aarch64/arm64 (gcc and clang there fuse
    a * b + c by default, so the scalar kernels would round differently from
    x86's); none on x86-64, whose SIMD kernels carry their own target attributes."""
    try:
        target = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return ["-ffp-contract=off"] if target.startswith(("aarch64", "arm64")) else []


def source_files() -> list[Path]:
    """Everything the installed extension is built from."""
    ext = extension_dir()
    sources = [p for p in (ext / "src").rglob("*") if p.suffix in (".c", ".h")]
    releases = sorted((ext / "releases").glob("*.sql"))  # earlier releases and upgrade scripts
    return sources + sorted((REPO / "sql").glob("*.sql")) + releases + [ext / "Makefile", ext / "pg_llm.control"]


def is_installed(pg_config: str | os.PathLike | None = None) -> bool:
    """Is pg_llm installed for this pg_config, and newer than every source file?"""
    control, library, scripts = installed_files(pg_config)
    if not (control.exists() and library.exists() and scripts):
        return False
    newest_script = max(s.stat().st_mtime for s in scripts)  # older versions' scripts may linger
    installed_at = min(control.stat().st_mtime, library.stat().st_mtime, newest_script)
    changed_at = max(f.stat().st_mtime for f in source_files() if f.exists())
    return installed_at >= changed_at


def install_extension(pg_config: str | os.PathLike | None = None, quiet: bool = True) -> None:
    """Run `make install` for pg_llm.

    quiet: capture the output; on failure the error shows the log from its first error.
    """
    pg_config = find_pg_config(pg_config)
    if shutil.which("make") is None:
        raise RuntimeError("`make` not found: install make and a C compiler (e.g. apt install build-essential)")
    command = ["make", "-C", str(extension_dir()), f"PG_CONFIG={pg_config}", "-j2", "install"]
    result = subprocess.run(command, text=True, stdout=subprocess.PIPE if quiet else None,
                            stderr=subprocess.STDOUT if quiet else None)
    if result.returncode != 0:
        raise RuntimeError(f"building pg_llm failed: {' '.join(command)}\n{_excerpt(result.stdout or '')}".rstrip())


def _excerpt(build_log: str, lines: int = 40) -> str:
    """The build log from its first compiler error on (the one to fix first), else its tail."""
    log = build_log.splitlines()
    errors = [i for i, line in enumerate(log) if "error:" in line]
    # (the line before an error often names the function)
    start = max(errors[0] - 1, 0) if errors else max(len(log) - lines, 0)
    return "\n".join(log[start:start + lines])


def ensure_installed(pg_config: str | os.PathLike | None = None, quiet: bool = True) -> bool:
    """Build and install pg_llm if it is missing or stale; return True if it built.

    A lock file keeps two processes (a notebook and the tests, say) from
    running make in the same directory at once.
    """
    if is_installed(pg_config):
        return False
    with _build_lock():
        if is_installed(pg_config):  # another process built it while we waited
            return False
        install_extension(pg_config, quiet=quiet)
    return True


@contextlib.contextmanager
def _build_lock():
    import fcntl

    with open(extension_dir() / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_kernel_library(outdir, extra_flags=(), name: str = "libpg_llm_kernels.so") -> Path:
    """The kernels alone (extension/src/kernels/**/*.c: plain C, no PostgreSQL) as a
    shared library in `outdir`, for ctypes tests and benchmarks
    (`pg_llm_lab.kernels` loads it).  Raises RuntimeError if there is no C
    compiler or the build fails.

    $PG_LLM_KERNEL_CFLAGS adds compiler flags to every build, e.g. the
    sanitizers .ci/sanitize runs the kernel tests with.  The compiler never
    runs with an LD_PRELOAD (a sanitizer runtime preloaded into the tests).
    """
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc})")
    out = Path(outdir) / name
    sources = sorted(str(p) for p in (extension_dir() / "src" / "kernels").rglob("*.c"))
    env_flags = shlex.split(os.environ.get("PG_LLM_KERNEL_CFLAGS", ""))
    command = [cc, "-O2", "-fPIC", "-shared", "-pthread", "-Wall", "-fno-strict-aliasing",
               "-fwrapv", *arch_cflags(cc), *env_flags, *extra_flags, *sources, "-o", str(out), "-lm"]
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError("building the kernel library failed:\n" + result.stderr[-2000:])
    return out
