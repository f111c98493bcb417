"""Fuzz every tensor op with good and bad arguments: wrong shapes, NULLs,
NaN and infinities, empty and 2-D arrays, huge and negative sizes.

Each generated call carries its expectation: the SQLSTATEs that fit (any of
them, when the arguments have several faults), NULL (the functions are
STRICT), or a check of the result against a float64 reference
(op_reference.py) or numpy's exact float32 arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import op_reference as ref
from fuzz_harness import Tally, close, f32, same_values
from generators import (EDGE_INTS, FLT_MAX, INT32_MAX, MAX_ELEMS, NON_FINITE, any_float, cases, good_shape,
                        int_array_literal, shape_array, shape_errors, tensor_values)

# An input with a NaN or an infinity where the op refuses them.
NON_FINITE_INPUT = {"22P01", "22023", "22000"}

# The extension's functions this file fuzzes (test_fuzz_coverage.py checks that every one is somewhere).
COVERS = {"llm_matmul", "llm_add", "llm_mul", "llm_scale", "llm_transpose", "llm_reshape", "llm_slice", "llm_gelu",
          "llm_softmax", "llm_layernorm", "llm_embedding", "llm_cross_entropy", "llm_attention", "pg_llm_matmul",
          "pg_llm_add", "pg_llm_gelu", "pg_llm_softmax", "pg_llm_layernorm", "pg_llm_cross_entropy", "llm_randn",
          "llm_fill"}


@dataclass
class Call:
    sql: str                      # one statement, %s placeholders
    params: list
    expect: object                # set of SQLSTATEs | "null" | check(value) -> (ok, why)


def exact(want) -> Callable:
    """The result must equal `want` (float32, any NaN for NaN)."""
    def check(got):
        return same_values(got, want), f"got {got!r}, expected {want!r}"
    return check


def near(want, rtol, atol) -> Callable:
    def check(got):
        ok, why = close(got, want, rtol, atol)
        return ok, why
    return check


def non_finite(*arrays) -> bool:
    return any(not np.isfinite(a).all() for a in arrays)


def values(rng, shape, special=0.15):
    return tensor_values(rng, shape, special)


def finite_edges(rng, shape, special=0.1):
    """Tame values, sometimes NaN, infinities or subnormals -- but no huge finite
    values, so that float32 sums (whose order is the kernel's) cannot overflow."""
    x = tensor_values(rng, shape)
    mask = np.array([rng.random() < special for _ in range(x.size)]).reshape(shape)
    picks = np.array([rng.choice(NON_FINITE + [0.0, -0.0, 1e-45, 1e-38]) for _ in range(x.size)],
                     dtype=np.float32).reshape(shape)
    return np.where(mask, picks, x).astype(np.float32)


def some_shape(rng, like=None, ndim=None):
    """Usually `like` or a fresh good shape of `ndim` dims; sometimes any shape."""
    if like is not None and rng.random() < 0.75:
        return tuple(like)
    if ndim is not None and rng.random() < 0.8:
        return tuple(rng.randint(1, 6) for _ in range(ndim))
    return good_shape(rng)


def with_null(rng, call: Call, positions) -> Call:
    """Now and then, one argument NULL: a STRICT function answers NULL."""
    if rng.random() < 0.05:
        params = list(call.params)
        params[rng.choice(positions)] = None
        return Call(call.sql, params, "null")
    return call


# -- the ops --------------------------------------------------------------------------

def matmul(rng):
    ta, tb = rng.random() < 0.3, rng.random() < 0.3
    M, K, N = (rng.choice([1, 2, 3, 5, 8, 9, 17, 33]) for _ in range(3))
    sa = (K, M) if ta else (M, K)
    sb = (N, K) if tb else (K, N)
    if rng.random() < 0.2:
        sa = some_shape(rng)
    if rng.random() < 0.2:
        sb = some_shape(rng)
    # mostly values whose float32 sums cannot overflow; sometimes any values
    huge = rng.random() < 0.15
    a, b = (values(rng, s, 0.15) if huge else finite_edges(rng, s) for s in (sa, sb))
    sql = "SELECT llm_matmul(%s, %s, %s, %s)"
    if len(sa) != 2 or len(sb) != 2:
        return Call(sql, [a, b, ta, tb], {"22000"})
    if (sa[0] if ta else sa[1]) != (sb[1] if tb else sb[0]):
        return Call(sql, [a, b, ta, tb], {"22000"})
    want, bound = ref.matmul(a, b, ta, tb), ref.matmul_bound(a, b, ta, tb)
    # where sum |a_ik b_kj| passes float32's range, the order of the kernel's
    # sums decides between a finite value, infinity and NaN: any is right
    free = (bound > 1e38) | ~np.isfinite(ref.matmul(np.abs(a), np.abs(b), ta, tb))

    def check(got):
        if got.shape != want.shape:
            return False, f"shape {got.shape}, expected {want.shape}"
        return close_with_bound(np.where(free, want, got), want, 2e-6 * bound + 1e-37)
    return with_null(rng, Call(sql, [a, b, ta, tb], check), [0, 1, 2, 3])


def close_with_bound(got, want, tol):
    got64, want64 = np.asarray(got, np.float64), np.asarray(want, np.float64)
    ok, why = close(got64, want64, 0, np.inf)        # NaN and infinity positions
    if not ok:
        return ok, why
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(want64) & ~(np.abs(got64 - want64) <= tol)     # (an infinite tol allows anything)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        return False, f"at {i}: got {got64[i]!r}, expected {want64[i]!r} (tolerance {tol[i]:.3g})"
    return True, ""


def suffix_shape(rng, shape):
    if rng.random() < 0.75:
        return shape[rng.randint(0, len(shape) - 1):]
    return some_shape(rng)


def elementwise(name, fn):
    def make(rng):
        sa = good_shape(rng)
        sb = suffix_shape(rng, sa)
        a, b = values(rng, sa, 0.2), values(rng, sb, 0.2)
        sql = f"SELECT {name}(%s, %s)"
        if len(sb) > len(sa) or tuple(sa[len(sa) - len(sb):]) != tuple(sb):
            return Call(sql, [a, b], {"22000"})
        with np.errstate(all="ignore"):
            want = fn(a, b).astype(np.float32)
        return with_null(rng, Call(sql, [a, b], exact(want)), [0, 1])
    return make


SCALE_FACTORS = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 1e-50, -1e-50, 1e-45, 1e-46, 3.5e38, -3.5e38, FLT_MAX,
                 3.4028235677973366e38, 3.40282357e38, 1e300, -1e300, math.inf, -math.inf, math.nan, 1e20]


def scale(rng):
    x = values(rng, good_shape(rng), 0.2)
    s = rng.choice(SCALE_FACTORS) if rng.random() < 0.5 else rng.uniform(-10, 10)
    sql = "SELECT llm_scale(%s, %s)"
    if not math.isfinite(s):
        return Call(sql, [x, s], {"22P01", "22023", "22003"})
    if not math.isfinite(f32(s)):
        return Call(sql, [x, s], {"22003"})      # a factor beyond float32's range
    with np.errstate(all="ignore"):
        want = (np.float32(s) * x).astype(np.float32)
    # a factor that rounds to 0, or a product that overflows, may be refused as out of range
    lenient = (f32(s) == 0 and s != 0) or abs(s) > FLT_MAX or (np.isinf(want) & np.isfinite(x)).any()
    return with_null(rng, Call(sql, [x, s], (exact(want), {"22003"}) if lenient else exact(want)), [0, 1])


def transpose(rng):
    x = values(rng, some_shape(rng, ndim=2), 0.2)
    sql = "SELECT llm_transpose(%s)"
    if x.ndim != 2:
        return Call(sql, [x], {"22000"})
    return with_null(rng, Call(sql, [x], exact(x.T)), [0])


def reshape_target(rng, shape):
    """A shape for llm_reshape: a valid one (maybe with a -1), or a bad one."""
    n = math.prod(shape)
    r = rng.random()
    if r < 0.5:
        dims, left = [], n
        while left > 1 and len(dims) < 7:
            d = rng.choice([f for f in range(1, left + 1) if left % f == 0])
            dims.append(d)
            left //= d
        dims.append(left)
        rng.shuffle(dims)
        if rng.random() < 0.4:
            dims[rng.randrange(len(dims))] = -1
        return dims
    if r < 0.65:
        return [rng.choice([-1, 65536, 2**31 - 1, 2**16, 3, 0, -2]) for _ in range(rng.randint(1, 8))]
    if r < 0.75:
        return [-1, 65536, 65536, 65536, 65536][:rng.randint(2, 5)]
    return shape_array(rng, good=[n])


def reshape_errors(dims, n) -> tuple[set, list | None]:
    """llm_reshape's rules: (SQLSTATEs that fit, None) or (set(), the new shape)."""
    if any(isinstance(d, list) for d in dims):
        flat = [d for row in dims for d in row]
        errors, shape = reshape_errors(flat, n)
        return errors | {"22023", "2202E", "22000"}, shape      # refused, or read flattened
    if any(d is None for d in dims):
        return {"22004"}, None
    errors = set()
    if not 1 <= len(dims) <= 8:
        errors.add("22023")
    infer = dims.index(-1) if -1 in dims else None
    if any(d < 1 for i, d in enumerate(dims) if i != infer):
        errors.add("22023")
    known = math.prod(d for i, d in enumerate(dims) if i != infer and d >= 1)
    if known > MAX_ELEMS or known >= 2**63:
        errors |= {"22003", "22000"}
    if infer is not None:
        if n % known:
            errors.add("22000")
        shape = [n // known if i == infer else d for i, d in enumerate(dims)]
    else:
        if known != n:
            errors.add("22000")
        shape = list(dims)
    return errors, (None if errors else shape)


def reshape(rng):
    x = values(rng, good_shape(rng), 0.1)
    dims = reshape_target(rng, x.shape)
    lit = int_array_literal(dims)
    sql = "SELECT llm_reshape(%s, %s::int[])"
    errors, shape = reshape_errors(dims, x.size)
    if any(isinstance(d, list) for d in dims) and shape is not None:   # 2-D: flattened or refused
        return Call(sql, [x, lit], (exact(x.reshape(shape)), errors))
    if errors:
        return Call(sql, [x, lit], errors)
    return with_null(rng, Call(sql, [x, lit], exact(x.reshape(shape))), [0, 1])


def slice_(rng):
    x = values(rng, good_shape(rng), 0.1)
    d0 = x.shape[0]
    start = rng.choice([rng.randint(-2, d0 + 2), rng.choice(EDGE_INTS)])
    stop = rng.choice([rng.randint(-2, d0 + 2), rng.choice(EDGE_INTS), start + 1])
    stop = max(min(stop, INT32_MAX), -2**31)
    sql = "SELECT llm_slice(%s, %s, %s)"
    if not 0 <= start < stop <= d0:
        return Call(sql, [x, start, stop], {"2202E", "22023"})
    return with_null(rng, Call(sql, [x, start, stop], exact(x[start:stop])), [0, 1, 2])


def gelu(rng):
    x = values(rng, good_shape(rng), 0.3)
    return with_null(rng, Call("SELECT llm_gelu(%s)", [x], near(ref.gelu(x), 1e-5, 1e-6)), [0])


def softmax(rng):
    causal = rng.random() < 0.4
    shape = good_shape(rng)
    if causal and rng.random() < 0.7 and len(shape) >= 2 and shape[-2] > shape[-1]:
        shape = shape[:-2] + (shape[-1], shape[-2])
    x = values(rng, shape, 0.1)
    sql = "SELECT llm_softmax(%s, %s)"
    errors = NON_FINITE_INPUT.copy() if non_finite(x) else set()
    if causal and (x.ndim < 2 or shape[-2] > shape[-1]):
        errors.add("22000")
    if errors:
        return Call(sql, [x, causal], errors)
    want = ref.softmax(x, shape[-2] if causal else 0)
    return with_null(rng, Call(sql, [x, causal], near(want, 1e-5, 1e-7)), [0, 1])


EPSILONS = [1e-5, 1e-5, 1e-5, 1e-3, 0.5, 0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e-45, 1e-38, 3e38]


def layernorm(rng):
    x = values(rng, good_shape(rng), 0.1)
    C = x.shape[-1]
    g = values(rng, some_shape(rng, (C,)), 0.05)
    b = values(rng, some_shape(rng, (C,)), 0.05)
    eps = rng.choice(EPSILONS)
    sql = "SELECT llm_layernorm(%s, %s, %s, %s::real)"
    errors = set()
    if not (eps > 0 and math.isfinite(eps)):
        errors.add("22023")
    if g.shape != (C,) or b.shape != (C,):
        errors.add("22000")
    if non_finite(x):
        errors |= NON_FINITE_INPUT
    if errors:
        return Call(sql, [x, g, b, eps], errors)
    want, tol = ref.layernorm(x, g, b, float(np.float32(eps)))
    return with_null(rng, Call(sql, [x, g, b, eps], lambda got: close_with_bound(got, want, tol)), [0, 1, 2, 3])


def id_array(rng, vocab, length):
    """Token ids as an int[] literal: in range, -100, out of range, NULL, empty, 2-D."""
    kind = rng.choice(["good"] * 6 + ["edge", "null", "empty", "2-D"])
    if kind == "empty":
        return [], "{}"
    ids = [rng.randrange(vocab) for _ in range(length)]
    if kind == "edge":
        ids[rng.randrange(length)] = rng.choice(EDGE_INTS + [vocab, -101, vocab - 1])
    if kind == "null":
        ids[rng.randrange(length)] = None
    if kind == "2-D":
        return ids, "{" + ",".join("{%d}" % i for i in ids) + "}"
    return ids, int_array_literal(ids)


def embedding(rng):
    w = values(rng, some_shape(rng, ndim=2), 0.1)
    V = w.shape[0]
    ids, lit = id_array(rng, V, rng.randint(1, 6))
    sql = "SELECT llm_embedding(%s, %s::int[])"
    errors = set()
    if None in ids:
        errors.add("22004")
    if w.ndim != 2:
        errors.add("22000")
    if not ids:
        errors.add("22023")
    if any(i is not None and not 0 <= i < V for i in ids):
        errors.add("22023")
    if "{{" in lit:      # a 2-D id array is refused
        errors.add("22023")
    if errors:
        return Call(sql, [w, lit], errors)
    want = w[ids]
    return with_null(rng, Call(sql, [w, lit], exact(want)), [0, 1])


def cross_entropy(rng):
    logits = values(rng, some_shape(rng, ndim=2), 0.05)
    T = logits.shape[0]
    V = logits.shape[-1]
    targets, lit = id_array(rng, V, T if rng.random() < 0.85 else rng.randint(1, 6))
    if targets and rng.random() < 0.3:
        targets = [-100 if (t is not None and rng.random() < 0.5) else t for t in targets]
        lit = int_array_literal(targets)
    sql = "SELECT llm_cross_entropy(%s, %s::int[])"
    errors = set()
    if None in targets:
        errors.add("22004")
    if logits.ndim != 2 or len(targets) != T:
        errors.add("22000")
    if any(t is not None and t != -100 and not 0 <= t < V for t in targets):
        errors.add("22023")
    if non_finite(logits):
        errors |= NON_FINITE_INPUT
    if not errors and all(t == -100 for t in targets):
        errors.add("22023")
    if "{{" in lit:      # a 2-D target array is refused
        errors.add("22023")
    if errors:
        return Call(sql, [logits, lit], errors)
    want = ref.cross_entropy(logits, targets)
    return with_null(rng, Call(sql, [logits, lit], near(np.float32(want), 1e-5, 1e-6)), [0, 1])


def attention(rng):
    n_head = rng.choice([1, 1, 2, 3, 4])
    hd = rng.randint(1, 4)
    C = n_head * hd
    Tq, Tk = rng.randint(1, 6), rng.randint(1, 6)
    causal = rng.random() < 0.6
    sq, sk, sv = (Tq, C), (Tk, C), (Tk, C)
    if rng.random() < 0.2:
        sq, sk, sv = (some_shape(rng, s) for s in (sq, sk, sv))
    q, k = values(rng, sq, 0.05), values(rng, sk, 0.05)
    v = tensor_values(rng, sv)
    heads = n_head if rng.random() < 0.85 else rng.choice(EDGE_INTS)
    sql = "SELECT llm_attention(%s, %s, %s, %s, %s)"
    args = [q, k, v, heads, causal]
    errors = set()
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2:
        return Call(sql, args, {"22000"})
    if k.shape != v.shape or k.shape[1] != q.shape[1]:
        errors.add("22000")
    if heads < 1 or q.shape[1] % heads:
        errors.add("22023")
    if causal and q.shape[0] > k.shape[0]:
        errors.add("22000")
    if non_finite(q, k):
        errors |= NON_FINITE_INPUT
    if errors:
        return Call(sql, args, errors)
    want = ref.attention(q, k, v, heads, causal)
    if ref.attention_score_bound(q, k, heads) > 1e38:     # q k^T overflows float32: 22003
        return Call(sql, args, (near(want, 1e-4, 1e-5), {"22003"}))
    return with_null(rng, Call(sql, args, near(want, 1e-4, 1e-5)), [0, 1, 2, 3, 4])


# -- the BYTEA API ----------------------------------------------------------------------

def raw(rng, n, special=0.1) -> bytes:
    """n float32 values as little-endian bytes; sometimes a few bytes more or less."""
    data = values(rng, (max(n, 1),), special).astype("<f4").tobytes()[:4 * n]
    cut = rng.choice([0] * 8 + [1, 2, 3, 4])
    return data[:-cut] if cut and rng.random() < 0.5 else data + b"\0" * cut


def floats_of(data: bytes) -> np.ndarray:
    return np.frombuffer(data, "<f4").astype(np.float32)


def bytea_errors(*datas) -> set:
    errors = set()
    for d in datas:
        if len(d) % 4:
            errors.add("22P03")
        elif not d:
            errors.add("22023")
    return errors


def bytes_check(want):
    def check(got):
        return same_values(floats_of(bytes(got)), want), f"got {floats_of(bytes(got))!r}, expected {want!r}"
    return check


def pg_llm_matmul(rng):
    m, k, n = (rng.choice([1, 2, 3, 5]) if rng.random() < 0.9 else rng.choice(EDGE_INTS) for _ in range(3))
    a = raw(rng, m * k if 0 < m * k < 64 else 4)
    b = raw(rng, k * n if 0 < k * n < 64 else 4)
    sql = "SELECT pg_llm_matmul(%s, %s, %s, %s, %s)"
    errors = shape_errors([m, k]) | shape_errors([k, n])
    errors |= {"22P03"} if len(a) % 4 or len(b) % 4 else set()
    errors |= {"22000"} if len(a) != 4 * m * k or len(b) != 4 * k * n else set()
    if errors:
        return Call(sql, [a, b, m, k, n], errors)
    with np.errstate(over="ignore"):
        want = ref.matmul(floats_of(a).reshape(m, k), floats_of(b).reshape(k, n)).astype(np.float32)
    return with_null(rng, Call(sql, [a, b, m, k, n], lambda got: close(
        floats_of(bytes(got)).reshape(m, n), want, 1e-5, 1e-4)), [0, 1, 2, 3, 4])


def pg_llm_add(rng):
    n = rng.randint(0, 6)
    a = raw(rng, n, 0.2)
    b = raw(rng, n if rng.random() < 0.8 else rng.randint(0, 6), 0.2)
    sql = "SELECT pg_llm_add(%s, %s)"
    errors = bytea_errors(a, b)
    if not errors and len(a) != len(b):
        errors.add("22000")
    if errors:
        return Call(sql, [a, b], errors)
    with np.errstate(all="ignore"):
        want = floats_of(a) + floats_of(b)
    return with_null(rng, Call(sql, [a, b], bytes_check(want)), [0, 1])


def pg_llm_gelu(rng):
    x = raw(rng, rng.randint(0, 8), 0.3)
    sql = "SELECT pg_llm_gelu(%s)"
    if bytea_errors(x):
        return Call(sql, [x], bytea_errors(x))
    want = ref.gelu(floats_of(x))
    return with_null(rng, Call(sql, [x], lambda got: close(floats_of(bytes(got)), want, 1e-5, 1e-6)), [0])


def pg_llm_softmax(rng):
    x = raw(rng, rng.randint(0, 8), 0.1)
    sql = "SELECT pg_llm_softmax(%s)"
    errors = bytea_errors(x)
    if not errors and non_finite(floats_of(x)):
        errors = NON_FINITE_INPUT
    if errors:
        return Call(sql, [x], errors)
    want = ref.softmax(floats_of(x))
    return with_null(rng, Call(sql, [x], lambda got: close(floats_of(bytes(got)), want, 1e-5, 1e-7)), [0])


def pg_llm_layernorm(rng):
    """x is read as rows of length(gamma) / 4 values: llm_reshape(x, [-1, C])."""
    C = rng.randint(0, 5)
    rows = rng.randint(1, 3)
    x = raw(rng, rows * C if rng.random() < 0.85 else rng.randint(0, 9), 0.05)
    g, b = raw(rng, C, 0.02), raw(rng, C if rng.random() < 0.9 else rng.randint(0, 6), 0.02)
    eps = rng.choice(EPSILONS)
    sql = "SELECT pg_llm_layernorm(%s, %s, %s, %s::real)"
    args = [x, g, b, eps]
    C = len(g) // 4
    errors = bytea_errors(x, g, b)
    if C == 0:
        errors.add("22023")                       # reshape to [-1, 0]
    elif len(x) % 4 == 0 and (len(x) // 4) % C:
        errors.add("22000")
    if len(b) // 4 != C:
        errors.add("22000")
    if not (eps > 0 and math.isfinite(eps)):
        errors.add("22023")
    if len(x) % 4 == 0 and non_finite(floats_of(x)):
        errors |= NON_FINITE_INPUT
    if errors:
        return Call(sql, args, errors)
    want, tol = ref.layernorm(floats_of(x).reshape(-1, C), floats_of(g), floats_of(b), float(np.float32(eps)))
    return with_null(rng, Call(sql, args, lambda got: close_with_bound(
        floats_of(bytes(got)).reshape(-1, C), want, tol)), [0, 1, 2, 3])


def pg_llm_cross_entropy(rng):
    V = rng.randint(0, 6)
    logits = raw(rng, V, 0.05)
    target = rng.randrange(V) if V and rng.random() < 0.8 else rng.choice(EDGE_INTS + [V])
    sql = "SELECT pg_llm_cross_entropy(%s, %s)"
    errors = bytea_errors(logits)
    if not errors and not (0 <= target < len(logits) // 4):
        errors.add("22023")
    if not errors and non_finite(floats_of(logits)):
        errors |= NON_FINITE_INPUT
    if errors:
        return Call(sql, [logits, target], errors)
    want = ref.cross_entropy(floats_of(logits).reshape(1, -1), [target])
    return with_null(rng, Call(sql, [logits, target], near(np.float32(want), 1e-5, 1e-6)), [0, 1])


# -- constructors ------------------------------------------------------------------------

STDS = [0.02, 1.0, 0.0, -0.0, -1.0, math.nan, math.inf, -math.inf, 1e300, 1e38, 3e38, 1e-320, 5e-324]


def randn(rng):
    """Two draws in one statement: the same seed at twice the std must give twice the values."""
    dims = shape_array(rng)
    std = rng.choice(STDS)
    seed = rng.choice([0, 1, -1, 42, 2**63 - 1, -2**63, rng.getrandbits(63)])
    lit = int_array_literal(dims)
    sql = "SELECT llm_randn(%s::int[], %s, %s), llm_randn(%s::int[], %s, %s)"
    errors = shape_errors(dims)
    if not (std >= 0 and math.isfinite(std)):
        errors.add("22023")
    # |z| of Box-Muller stays below 8.6: a larger std may draw samples beyond float32
    overflow = {"22003"} if 2 * std * 8.6 > FLT_MAX else set()
    flat = f"{{{math.prod(dims)}}}" if not errors else lit
    args = [lit, std, seed, flat, 2 * std, seed]
    if errors:
        return Call(sql, args, errors | overflow)
    if rng.random() < 0.05:
        i = rng.randrange(3)
        args[i] = args[i + 3] = None
        return Call(sql, args, "null")

    def check(got):
        first, flat_double = got
        if first.shape != tuple(dims):
            return False, f"shape {first.shape}, expected {dims}"
        if not np.isfinite(first).all():
            return False, f"non-finite values for std {std}: {first.ravel()[:4]!r}"
        with np.errstate(over="ignore"):
            return same_values(flat_double, 2 * first.ravel()), "values do not scale with std"
    return Call(sql, args, (check, overflow) if overflow else check)


FILL_VALUES = [0.0, -0.0, 1.0, -2.5, 0.1, 1e-50, 1e-45, FLT_MAX, 3.5e38, 1e300, -1e300, math.inf, -math.inf,
               math.nan, 1e-320]


def fill(rng):
    dims = shape_array(rng)
    value = rng.choice(FILL_VALUES) if rng.random() < 0.6 else any_float(rng)
    sql = "SELECT llm_fill(%s::int[], %s)"
    errors = shape_errors(dims)
    if not math.isfinite(f32(value)):
        errors |= {"22023", "22003"}
    if errors:
        return Call(sql, [int_array_literal(dims), value], errors)
    want = np.full(dims, np.float32(value))
    expect = exact(want)
    if f32(value) == 0 and value != 0:     # underflows float32: zeros, or refused as real would
        expect = (expect, {"22003"})
    return with_null(rng, Call(sql, [int_array_literal(dims), value], expect), [0, 1])


OPS = {
    "llm_matmul": matmul,
    "llm_add": elementwise("llm_add", np.add),
    "llm_mul": elementwise("llm_mul", np.multiply),
    "llm_scale": scale,
    "llm_transpose": transpose,
    "llm_reshape": reshape,
    "llm_slice": slice_,
    "llm_gelu": gelu,
    "llm_softmax": softmax,
    "llm_layernorm": layernorm,
    "llm_embedding": embedding,
    "llm_cross_entropy": cross_entropy,
    "llm_attention": attention,
    "pg_llm_matmul": pg_llm_matmul,
    "pg_llm_add": pg_llm_add,
    "pg_llm_gelu": pg_llm_gelu,
    "pg_llm_softmax": pg_llm_softmax,
    "pg_llm_layernorm": pg_llm_layernorm,
    "pg_llm_cross_entropy": pg_llm_cross_entropy,
    "llm_randn": randn,
    "llm_fill": fill,
}
INPUTS_PER_OP = 800


def judge(tally: Tally, call: Call, out):
    expect = call.expect
    what = (call.sql, call.params)
    if isinstance(expect, tuple):           # (check, SQLSTATEs): either is right
        check, states = expect
        if not out.ok:
            tally.expect_error(what, out, states)
            return
        expect = check
    if isinstance(expect, set):
        tally.expect_error(what, out, expect)
    elif expect == "null":
        if tally.expect_ok(what, out) and out.rows[0][0] is not None:
            tally.violation("a NULL argument gave a value (the function is STRICT)", what, repr(out.rows[0]))
    elif tally.expect_ok(what, out):
        got = out.rows[0] if len(out.rows[0]) > 1 else out.value
        ok, why = expect(got)
        if not ok:
            tally.violation("wrong result", what, why)


@pytest.mark.parametrize("op", list(OPS))
def test_op(db, op):
    """Every ISA the kernels have (capped at the CPU's), at 1 and 2 threads."""
    tally = Tally(f"op {op}")
    for i, rng in enumerate(cases(INPUTS_PER_OP, seed=hash_seed(op))):
        if i % 50 == 0:
            db.run(f"SET pg_llm.simd = {rng.choice(['auto', 'scalar', 'avx2', 'avx512'])}")
            db.run(f"SET pg_llm.threads = {rng.choice([1, 2])}")
        call = OPS[op](rng)
        judge(tally, call, tally.record(db.run(call.sql, call.params), (call.sql, call.params)))
    tally.finish(db)


def hash_seed(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % 2**31
