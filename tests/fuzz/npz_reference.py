"""npz files for the fuzz tests: numpy's own archives (to damage blindly) and
crafted .npy members whose header is assembled from parts, each part good or
bad, so that the expected answer of llm_read_npz is known by construction.

A .npy member (numpy/lib/format.py): magic "\\x93NUMPY", version, header
length (2 bytes in 1.0, 4 in 2.0 and 3.0), a Python dict literal
{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with
spaces and a newline, then the values.  pg_llm reads float16/32/64 in either
byte order, C order, 1 to 8 dimensions, nothing empty: anything else valid
is 0A000; a broken header or magic 22P03; missing bytes XX001 (truncated);
bytes after the array 22P03.
"""
from __future__ import annotations

import io
import math
import random
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

FLOAT_DESCRS = {"<f2": "<f2", "<f4": "<f4", "<f8": "<f8", ">f2": ">f2", ">f4": ">f4", ">f8": ">f8"}
OTHER_DESCRS = ["<i4", "|u1", "|b1", "<c8", "<U3", "|S3", "<M8[s]", "=f4", "|f4", "<f16", "<f5", "f4"]
INT32_MAX = 2**31 - 1


@dataclass
class Member:
    name: str
    blob: bytes          # the .npy bytes
    errors: set          # fitting SQLSTATEs if the member must be refused
    values: np.ndarray | None = None   # float32, when it must be read


def npz_bytes(arrays: dict, compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def zip_of(members: list[Member], compressed: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as z:
        for m in members:
            z.writestr(m.name, m.blob)
    return buf.getvalue()


def crafted_member(rng: random.Random, index: int) -> Member:
    """One .npy member, each part of it good or (now and then) bad."""
    errors = set()
    # dtype
    if rng.random() < 0.85:
        descr = rng.choice(list(FLOAT_DESCRS))
        descr_text = repr(descr)
    elif rng.random() < 0.8:
        descr = rng.choice(OTHER_DESCRS)
        descr_text = repr(descr)
        errors.add("0A000")
    else:
        descr = None
        descr_text = rng.choice(["[('a', '<f4')]", "<f4", "'<f4", "4", "'<f4' '<f4'"])
        errors |= {"0A000"} if descr_text.startswith("[") else {"22P03", "0A000"}
    # shape
    r = rng.random()
    if r < 0.8:
        shape = tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 3)))
    elif r < 0.9:
        shape = rng.choice([(0,), (2, 0), (1,) * 9, (INT32_MAX + 1,), (2**40,), (65536, 65536)])
        errors |= {"0A000"} if (0 in shape or len(shape) > 8 or math.prod(shape) > 2**28) else {"22P03"}
        if any(d > INT32_MAX for d in shape):
            errors |= {"22P03", "0A000"}
    else:
        shape = None
        errors.add("22P03")
    shape_text = (rng.choice(["(-1,)", "(1.5,)", "[2, 3]", "(2 3)", "(,)", "(2,,)", "2", "(0x2,)", "(1_0,)"])
                  if shape is None else
                  "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 or (shape and rng.random() < 0.3) else "")
                  + ")")
    # order
    fortran = rng.random() < 0.08
    if fortran:
        errors.add("0A000")
    # the dict: key order, quotes, a key missing or extra, spacing
    items = [("descr", descr_text), ("fortran_order", str(fortran)), ("shape", shape_text)]
    rng.shuffle(items)
    quote = rng.choice(["'", "'", '"'])
    if rng.random() < 0.05:
        items.pop(rng.randrange(3))
        errors.add("22P03")
    if rng.random() < 0.05:     # an unknown key, or one of them twice
        items.insert(rng.randrange(len(items) + 1), rng.choice([("oops", "1"), rng.choice(items)]))
        errors.add("22P03")
    sep = rng.choice([", ", ",", " , ", ",\t"])
    text = "{" + sep.join(f"{quote}{k}{quote}: {v}" for k, v in items) + rng.choice([", }", "}", ",}", " }"])
    if rng.random() < 0.04:
        text += rng.choice([" x", "}", "\0", "'"])
        errors.add("22P03")
    text = text.ljust(rng.choice([0, len(text) + 1, 118, 246]), " ") + rng.choice(["\n", "\n", "", "\t\n"])
    raw_header = text.encode("latin-1")
    # version and header length
    version = rng.choice([1] * 6 + [2, 3] + ([4, 0] if rng.random() < 0.3 else []))
    if version not in (1, 2, 3):
        errors.add("0A000")
    header_len = len(raw_header)
    if rng.random() < 0.05:
        header_len += rng.choice([-3, -1, 1, 5, 70000, 2**31])
        errors |= {"22P03", "XX001", "0A000"} if version in (1, 2, 3) else set()
    if version == 1 and header_len > 65535:
        header_len %= 65536
    len_bytes = struct.pack("<H", header_len % 65536) if version == 1 else struct.pack("<I", header_len % 2**32)
    magic = b"\x93NUMPY"
    if rng.random() < 0.03:
        magic = rng.choice([b"\x93NUMPX", b"PK\x03\x04NU", b"\x93numpy"])
        errors = {"22P03"}
    # values
    n = math.prod(shape) if shape is not None and math.prod(shape) <= 64 else 3
    dtype = FLOAT_DESCRS.get(descr, "<f4")
    values = np.array([rng.choice([rng.uniform(-5, 5), 0.0, -0.0, math.inf, math.nan, 1e-40, 65504.0, 1e300])
                       for _ in range(n)], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        data = values.astype(dtype).tobytes()
    r = rng.random()
    if r < 0.05:
        data = data[:-rng.randint(1, max(1, len(data)))]
        errors.add("XX001")
    elif r < 0.1:
        data += b"\0" * rng.randint(1, 9)
        errors.add("22P03")
    blob = magic + bytes([version, 0]) + len_bytes + raw_header + data
    name = rng.choice([f"a{index}.npy", f"h.{index}.weight.npy", f"\u00e9{index}.npy", f"x{index}.NPY",
                       f"x{index}", f"dir/y{index}.npy"])
    if not name.endswith(".npy"):
        errors.add("22P03")
    if errors:
        return Member(name, blob, errors)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.frombuffer(data, dtype).astype(np.float32).reshape(shape if shape else (1,))
    return Member(name, blob, set(), want)


def blind_arrays(rng: random.Random) -> dict:
    arrays = {"a": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "b.c": np.ones(5, np.float16),
              "d": np.linspace(-1, 1, 7), "e": np.array(rng.uniform(-1, 1), dtype=np.float32)}
    return {k: v for k, v in arrays.items() if rng.random() < 0.8} or arrays
