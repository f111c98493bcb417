"""The pg_llm kernels (extension/src/kernels/, plain C) called through ctypes.

The one binding of the kernel library that the kernel tests and the
benchmarks share: `load()` compiles the kernels into a shared library
(`pg_llm_lab.build.build_kernel_library`), loads it and declares every
function's signature, as extension/src/kernels/kernels.h has it.

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
import shutil
import tempfile

import numpy as np

from .build import build_kernel_library

ISA = {"scalar": 0, "avx2": 1, "avx512": 2}  # llm_isa
LLM_OK, LLM_INTERRUPTED, LLM_NOMEM = 0, 1, 2

float_p = ctypes.POINTER(ctypes.c_float)
int32_p = ctypes.POINTER(ctypes.c_int32)
double_p = ctypes.POINTER(ctypes.c_double)
int64_p = ctypes.POINTER(ctypes.c_int64)
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

# name: (restype, argtypes), in kernels.h's (then optim.h's) order
SIGNATURES = {
    "llm_pool_set_threads": (None, [_int]),
    "llm_pool_threads": (_int, []),
    "llm_cpu_count": (_int, []),
    "llm_cpu_isa": (_int, []),
    "llm_isa_name": (ctypes.c_char_p, [_int]),
    "llm_set_isa": (None, [_int]),
    # A, B, bias, C, M, K, N, transA, transB
    "llm_matmul": (_int, [float_p, float_p, float_p, float_p, _i64, _i64, _i64, _int, _int]),
    # A, B, C (+=), M, K, N, transA, transB
    "llm_matmul_acc": (_int, [float_p, float_p, float_p, _i64, _i64, _i64, _int, _int]),
    # dC, A, B, dA, dB, dbias (each gradient or None), M, K, N, transA, transB
    "llm_matmul_backward": (_int, [float_p, float_p, float_p, float_p, float_p, float_p,
                                   _i64, _i64, _i64, _int, _int]),
    "llm_add": (None, [float_p, float_p, float_p, _i64, _i64]),
    "llm_mul": (None, [float_p, float_p, float_p, _i64, _i64]),
    "llm_scale": (None, [float_p, _float, float_p, _i64]),
    "llm_transpose": (None, [float_p, float_p, _i64, _i64]),
    # dy, da, db, n, bn
    "llm_add_backward": (None, [float_p, float_p, float_p, _i64, _i64]),
    # dy, a, b, da, db, n, bn
    "llm_mul_backward": (None, [float_p, float_p, float_p, float_p, float_p, _i64, _i64]),
    # dy, s, dx, n
    "llm_scale_backward": (None, [float_p, _float, float_p, _i64]),
    # dy [cols, rows], dx [rows, cols], rows, cols
    "llm_transpose_backward": (None, [float_p, float_p, _i64, _i64]),
    "llm_gelu": (_int, [float_p, float_p, _i64]),
    # x, dy, dx, n
    "llm_gelu_backward": (_int, [float_p, float_p, float_p, _i64]),
    # x, y, rows, cols, causal_rows
    "llm_softmax": (_int, [float_p, float_p, _i64, _i64, _i64]),
    # y, dy, dx, rows, cols, causal_rows
    "llm_softmax_backward": (_int, [float_p, float_p, float_p, _i64, _i64, _i64]),
    # x, g, b, y, rows, cols, eps, mean (or None), rstd (or None)
    "llm_layernorm": (_int, [float_p, float_p, float_p, float_p, _i64, _i64, _float,
                             float_p, float_p]),
    # x, g, mean, rstd, dy, dx, dg, db (each gradient or None), rows, cols
    "llm_layernorm_backward": (_int, [float_p, float_p, float_p, float_p, float_p,
                                      float_p, float_p, float_p, _i64, _i64]),
    "llm_embedding": (None, [float_p, int32_p, float_p, _i64, _i64]),
    # ids, dy, dw, n_ids, dim
    "llm_embedding_backward": (None, [int32_p, float_p, float_p, _i64, _i64]),
    # logits, targets, rows, vocab, &loss, &counted, lse (or None)
    "llm_cross_entropy": (_int, [float_p, int32_p, _i64, _i64, double_p, int64_p, float_p]),
    # logits, targets, lse (or None), rows, vocab, scale, dlogits
    "llm_cross_entropy_backward": (_int, [float_p, int32_p, float_p, _i64, _i64, _float,
                                          float_p]),
    # q, ldq, k, ldk, v, ldv, y, Tq, Tk, C, n_head, causal, lse (or None)
    "llm_attention": (_int, [float_p, _i64, float_p, _i64, float_p, _i64, float_p,
                             _i64, _i64, _i64, _i64, _int, float_p]),
    # optim.h: x, ranges, n_ranges, sq[n_ranges]
    "llm_sum_squares": (_int, [float_p, range_p, _int, double_p]),
    # grads, ranges, n_ranges, max_norm, norms[n_ranges] (or None), &total
    "llm_clip_grad_norm": (_int, [float_p, range_p, _int, ctypes.c_double, float_p, float_p]),
    "llm_clip_coef": (_float, [_float, ctypes.c_double]),
    "llm_scale_ranges": (_int, [float_p, range_p, _int, _float]),
    "llm_lr_at": (ctypes.c_double, [ctypes.POINTER(LrSchedule), _i64]),
    # params, grads, m, v, ranges, n_ranges, &settings, update_sq[n_ranges] (or None)
    "llm_adamw_update": (_int, [float_p, float_p, float_p, float_p, range_p, _int,
                                ctypes.POINTER(AdamW), double_p]),
    # q, ldq, k, ldk, v, ldv, y, lse, dy, dq, ldq_grad, dk, ldk_grad, dv, ldv_grad,
    # Tq, Tk, C, n_head, causal
    "llm_attention_backward": (_int, [float_p, _i64, float_p, _i64, float_p, _i64,
                                      float_p, float_p, float_p,
                                      float_p, _i64, float_p, _i64, float_p, _i64,
                                      _i64, _i64, _i64, _i64, _int]),
}


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
    """Names of the ISAs this CPU can run, lowest first (the current ISA is kept)."""
    current = lib.llm_cpu_isa()
    lib.llm_set_isa(ISA["avx512"])  # capped to the CPU's best
    best = lib.llm_cpu_isa()
    lib.llm_set_isa(current)
    return [name for name, code in ISA.items() if code <= best]


def ptr(a: np.ndarray | None):
    """A C pointer to a contiguous float32 or int32 array (None for None)."""
    if a is None:
        return None
    if not a.flags.c_contiguous:
        raise ValueError("kernels.ptr: the array must be C-contiguous")
    if a.dtype == np.float32:
        return a.ctypes.data_as(float_p)
    if a.dtype == np.int32:
        return a.ctypes.data_as(int32_p)
    raise TypeError(f"kernels.ptr: float32 or int32 arrays only, got {a.dtype}")


def strided(a: np.ndarray):
    """(pointer, row stride in floats) of a float32 matrix whose rows may lie
    apart, e.g. q = qkv[:, :C] of GPT-2's fused c_attn output."""
    if a.dtype != np.float32 or a.ndim != 2 or a.strides[1] != 4:
        raise ValueError("kernels.strided: a float32 matrix with contiguous rows")
    return ctypes.cast(a.ctypes.data, float_p), a.strides[0] // 4
