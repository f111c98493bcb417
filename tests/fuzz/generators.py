"""Seeded generators of fuzz inputs: float32 values with their edge cases,
shapes (good, empty, negative, huge, NULL, 2-D), arrays and literals.

Everything draws from a random.Random the test seeds, so a run is the same
inputs every time:

    for rng in cases(2000, seed=1):     # 2000 x $PG_LLM_FUZZ_SCALE inputs
        shape = good_shape(rng)
        x = tensor_values(rng, shape)
"""
from __future__ import annotations

import math
import random
import struct

import numpy as np
from fuzz_harness import scale

MAX_ELEMS = (0x3FFFFFFF - 64) // 4      # LLM_MAX_ELEMS: a tensor stays under 1 GB
INT32_MAX = 2**31 - 1
INT32_MIN = -2**31
FLT_MAX = float(np.finfo(np.float32).max)

# float32 values where bugs live.
EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 0.1, -2.5, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38, 1e-30,
               FLT_MAX, -FLT_MAX, 1e30, -1e30, 65504.0, 3.0e38, math.inf, -math.inf, math.nan, 88.7, -88.7,
               104.0, -104.0, 1e-7, 16777217.0]
NON_FINITE = [math.inf, -math.inf, math.nan]
# int32 values where bugs live.
EDGE_INTS = [INT32_MIN, INT32_MIN + 1, -100, -2, -1, 0, 1, 2, 3, 7, 16384, 65536, 2**30, INT32_MAX - 1, INT32_MAX]


def cases(n: int, seed: int):
    """n (scaled) fresh generators, each seeded from (seed, i): input i is the
    same whatever the other inputs did."""
    for i in range(scale(n)):
        yield random.Random(seed * 1_000_003 + i)


def f32_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def any_float(rng: random.Random) -> float:
    """Any float32: an edge case, a random bit pattern (NaN payloads too), or a tame value."""
    r = rng.random()
    if r < 0.25:
        return rng.choice(EDGE_FLOATS)
    if r < 0.4:
        return f32_bits(rng.getrandbits(32))
    return tame_float(rng)


def tame_float(rng: random.Random, limit: float = 100.0) -> float:
    """A finite value of moderate size (sums of a few of them cannot overflow)."""
    return float(np.float32(rng.uniform(-limit, limit) * 10.0 ** rng.randint(-3, 0)))


def tensor_values(rng: random.Random, shape, special: float = 0.0) -> np.ndarray:
    """Tame float32 values of `shape`; each is an edge case with probability `special`."""
    n = math.prod(shape)
    values = [any_float(rng) if special and rng.random() < special else tame_float(rng) for _ in range(n)]
    return np.array(values, dtype=np.float32).reshape(shape)


def good_shape(rng: random.Random, max_ndim: int = 4, max_dim: int = 5) -> tuple:
    return tuple(rng.randint(1, max_dim) for _ in range(rng.randint(1, max_ndim)))


def shape_array(rng: random.Random, good=None):
    """An int[] shape argument as nested Python lists: usually good (or `good`),
    sometimes empty, too long, NULL-holding, 2-D, or with bad dimensions."""
    kind = rng.choice(["good"] * 8 + ["random", "null", "2-D", "empty", "long", "huge"])
    if kind == "good":
        return list(good) if good is not None else list(good_shape(rng))
    if kind == "random":
        return [rng.choice(EDGE_INTS) for _ in range(rng.randint(1, 8))]
    if kind == "null":
        dims = list(good_shape(rng, 3, 3))
        dims[rng.randrange(len(dims))] = None
        return dims
    if kind == "2-D":
        return [[d] for d in good_shape(rng, 3, 3)]
    if kind == "empty":
        return []
    if kind == "long":
        return [1] * rng.randint(9, 12)
    return rng.choice([[MAX_ELEMS + 1], [16384, 16385], [65536, 65536], [INT32_MAX, INT32_MAX], [2**16] * 4,
                       [INT32_MAX] * 8, [2**30], [MAX_ELEMS // 2 + 1, 2], [3, MAX_ELEMS // 3 + 1],
                       [INT32_MAX, INT32_MAX, -1], [-1, INT32_MAX, INT32_MAX]])


def shape_errors(dims) -> set[str]:
    """The SQLSTATEs that fit a bad shape argument; empty if the shape is good.
    When a shape has several faults, any of their SQLSTATEs fits."""
    if any(isinstance(d, list) for d in dims):
        return {"22023", "2202E", "22000"}          # a 2-D shape array is refused, not flattened
    errors = set()
    if any(d is None for d in dims):
        return {"22004"}
    if not 1 <= len(dims) <= 8:
        errors.add("22023")
    if any(d < 1 for d in dims):
        errors.add("22023")
    if math.prod(d for d in dims if d >= 1) > MAX_ELEMS:
        errors |= {"22003", "54000"}
    return errors


def int_array_literal(items) -> str:
    """'{1,NULL,{2}}' from nested lists (None is NULL)."""
    if isinstance(items, list):
        return "{" + ",".join(int_array_literal(x) for x in items) + "}"
    return "NULL" if items is None else str(items)


def float_text(v: float) -> str:
    """v as PostgreSQL reads a real: exact, with NaN and Infinity spelled out."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(float(v))


def real_array_literal(values: np.ndarray, null_at: int | None = None) -> str:
    """A real[] literal of an ndarray (its dimensions kept), exact; the value
    at flat index null_at is NULL."""
    items = iter("NULL" if i == null_at else float_text(float(v)) for i, v in enumerate(values.ravel()))

    def build(dims):
        if not dims:
            return next(items)
        return "{" + ",".join(build(dims[1:]) for _ in range(dims[0])) + "}"
    return build(list(values.shape))
