"""The pg_llm kernels (extension/src/kernels/, plain C) called through ctypes.

The one binding of the kernel library that the kernel tests and the
benchmarks share: `load()` compiles the kernels into a shared library
(`pg_llm_lab.build.build_kernel_library`), loads it and declares every
function's signature, read from extension/src/kernels/kernels.h and optim.h.

    from pg_llm_lab import kernels
    lib = kernels.load()                      # RuntimeError without a C compiler
    lib.llm_set_isa(kernels.ISA["avx2"])
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    c = np.empty((2, 4), np.float32)
    lib.llm_matmul(kernels.ptr(a), kernels.ptr(b), None, kernels.ptr(c), 2, 3, 4, 0, 0)
"""

from __future__ import annotations

import ctypes
import functools
import re
import shutil
import tempfile

import numpy as np

from .build import build_kernel_library, extension_dir

ISA = {"scalar": 0, "avx2": 1, "avx512": 2, "neon": 3}  # llm_isa
LLM_OK, LLM_INTERRUPTED, LLM_NOMEM = 0, 1, 2

float_p = ctypes.POINTER(ctypes.c_float)
int32_p = ctypes.POINTER(ctypes.c_int32)
double_p = ctypes.POINTER(ctypes.c_double)
int64_p = ctypes.POINTER(ctypes.c_int64)
bf16_p = ctypes.POINTER(ctypes.c_uint16)
_i64, _int, _float = ctypes.c_int64, ctypes.c_int, ctypes.c_float


# ---- optim.h's structs ------------------------------------------------------

class ParamRange(ctypes.Structure):
    """LlmParamRange: one tensor of a flat parameter arena."""
    _fields_ = [("offset", ctypes.c_int64), ("numel", ctypes.c_int64), ("decay", ctypes.c_int)]


class AdamW(ctypes.Structure):
    """LlmAdamW: the settings of one AdamW update (step: 1 for the first)."""
    _fields_ = [("lr", ctypes.c_double), ("beta1", ctypes.c_double), ("beta2", ctypes.c_double),
                ("eps", ctypes.c_double), ("weight_decay", ctypes.c_double), ("step", ctypes.c_int64)]


class LrSchedule(ctypes.Structure):
    """LlmLrSchedule: nanoGPT's warmup + cosine decay."""
    _fields_ = [("lr", ctypes.c_double), ("warmup_steps", ctypes.c_int64),
                ("decay_steps", ctypes.c_int64), ("min_lr", ctypes.c_double)]


range_p = ctypes.POINTER(ParamRange)

# C types of kernels.h and optim.h as ctypes ("const" dropped); a function
# with an argument of another type (a callback, LlmChunks) is not bound.
_CTYPES = {
    "void": None, "int": _int, "float": _float, "double": ctypes.c_double, "int64_t": _i64,
    "llm_isa": _int, "char *": ctypes.c_char_p, "float *": float_p, "int32_t *": int32_p,
    "llm_bf16 *": bf16_p,
    "double *": double_p, "int64_t *": int64_p, "float * *": ctypes.POINTER(float_p),
    "LlmParamRange *": range_p,
    "LlmAdamW *": ctypes.POINTER(AdamW), "LlmLrSchedule *": ctypes.POINTER(LrSchedule),
}
_PROTOTYPE = re.compile(r"^(?P<result>[A-Za-z_][\w ]*?\s*\**)\s*(?P<name>llm_\w+)\((?P<args>[^)]*)\);", re.M)


def _ctype(declaration: str):
    """The ctypes type of a C type, or of an argument with its name ('const float *x')."""
    words = re.sub(r"\bconst\b", "", declaration).replace("*", " * ").split()
    if len(words) > 1 and words[-1] != "*":
        words = words[:-1]                      # the argument's name
    return _CTYPES[" ".join(words)]


def prototypes(header: str) -> dict[str, tuple[str, list[str]]]:
    """name: (result type, argument declarations) of every llm_ function a header declares."""
    code = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    found = {}
    for m in _PROTOTYPE.finditer(code):
        args = [a.strip() for a in m["args"].split(",")]
        found[m["name"]] = (m["result"].strip(), [] if args == ["void"] else args)
    return found


def signatures(headers=("kernels.h", "optim.h")) -> dict[str, tuple]:
    """name: (restype, argtypes) of the kernel functions, read from the C headers
    in extension/src/kernels/ (the one source of the signatures)."""
    out = {}
    for header in headers:
        for name, (result, args) in prototypes((extension_dir() / "src" / "kernels" / header).read_text()).items():
            try:
                out[name] = (_ctype(result), [_ctype(a) for a in args])
            except KeyError:
                continue
    return out


SIGNATURES = signatures()


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give every kernel function of `lib` its restype and argtypes."""
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


@functools.lru_cache(maxsize=None)
def _load(extra_flags: tuple, name: str) -> ctypes.CDLL:
    tmp = tempfile.mkdtemp(prefix="pg_llm_kernels_")
    try:
        return declare(ctypes.CDLL(str(build_kernel_library(tmp, extra_flags, name))))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the loaded library stays mapped


def load(extra_flags=(), name: str = "libpg_llm_kernels.so") -> ctypes.CDLL:
    """The kernel library compiled with `extra_flags` (e.g. -DLLM_MATMUL_TEST_NO_MEMORY),
    loaded, every signature declared.  Built once per process and flags; the
    library's state (ISA, threads, interrupt hook) is shared by its callers.
    Raises RuntimeError if there is no C compiler or the build fails."""
    return _load(tuple(extra_flags), name)


def available_isas(lib: ctypes.CDLL) -> list[str]:
    """Names of the ISAs this CPU can run, scalar first (the current ISA is kept):
    llm_set_isa gives the best instead of an ISA the CPU lacks."""
    current = lib.llm_cpu_isa()
    found = []
    for name, code in ISA.items():
        lib.llm_set_isa(code)
        if lib.llm_cpu_isa() == code:
            found.append(name)
    lib.llm_set_isa(current)
    return found


def ptr(a: np.ndarray | None):
    """A C pointer to a contiguous float32, int32 or (bf16 bits) uint16 array (None for None)."""
    if a is None:
        return None
    if not a.flags.c_contiguous:
        raise ValueError("kernels.ptr: the array must be C-contiguous")
    if a.dtype == np.float32:
        return a.ctypes.data_as(float_p)
    if a.dtype == np.int32:
        return a.ctypes.data_as(int32_p)
    if a.dtype == np.uint16:
        return a.ctypes.data_as(bf16_p)
    raise TypeError(f"kernels.ptr: float32, int32 or uint16 arrays only, got {a.dtype}")


def strided(a: np.ndarray):
    """(pointer, row stride in floats) of a float32 matrix whose rows may lie
    apart, e.g. q = qkv[:, :C] of GPT-2's fused c_attn output."""
    if a.dtype != np.float32 or a.ndim != 2 or a.strides[1] != 4:
        raise ValueError("kernels.strided: a float32 matrix with contiguous rows")
    return ctypes.cast(a.ctypes.data, float_p), a.strides[0] // 4
