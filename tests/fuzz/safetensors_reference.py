"""safetensors files for the fuzz tests: a writer, structure-aware and blind
mutators, and the reference reader that says what llm_read_safetensors must
answer.

The reference follows the format's rules as the `safetensors` library
enforces them (https://github.com/huggingface/safetensors, Metadata::validate):
an 8-byte little-endian header length N (at most 100 MB), N bytes of UTF-8
JSON, then a byte buffer that the tensors' data_offsets cover exactly --
sorted by offset, each [begin, end) starting where the previous ended,
end - begin = numel * dtype size, the last ending at the end of the file.
pg_llm reads the float dtypes (F32, F16, BF16, F64) into float32 and refuses
with 0A000 what is valid but unsupported: other dtypes, empty tensors,
more than 8 dimensions.
"""
from __future__ import annotations

import json
import math
import random
import struct
from dataclasses import dataclass, field

import numpy as np

SPEC_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
READ_DTYPES = {"F32", "F16", "BF16", "F64"}
MAX_HEADER = 100 * 1024 * 1024
INT32_MAX = 2**31 - 1
MAX_ELEMS = (0x3FFFFFFF - 64) // 4
BROKEN = {"22P03", "XX001"}           # breaks the format / damaged: which one is the reader's call


@dataclass
class Expect:
    """What reading a file must give: `errors` (fitting SQLSTATEs) or `tensors`
    (name -> float32 array); with `either`, a fitting error or those tensors."""
    errors: set = field(default_factory=set)
    tensors: dict | None = None
    either: bool = False
    why: str = ""


# -- writing ----------------------------------------------------------------------------

def encode(array: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return array.astype("<f4").tobytes()
    if dtype == "F16":
        return array.astype("<f2").tobytes()
    if dtype == "F64":
        return array.astype("<f8").tobytes()
    if dtype == "BF16":
        return (array.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    if dtype == "I32":
        return array.astype("<i4").tobytes()
    raise ValueError(dtype)


def build(tensors: dict, order=None, pad=True, metadata=True) -> tuple[dict, bytes]:
    """(header, data) for {name: (dtype, shape, bytes)}: tensors laid out back to back."""
    header = {"__metadata__": {"format": "pt"}} if metadata else {}
    data = b""
    for name in order or tensors:
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return header, data


def join(header, data: bytes, header_len=None, pad=" ") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:
        raw += pad.encode() * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if header_len is None else header_len % 2**64) + raw + data


def base_tensors(rng: random.Random) -> dict:
    """A few small tensors of every read dtype (a 0-d one too), random values."""
    out = {}
    for i, (dtype, shape) in enumerate(rng.sample([("F32", (2, 3)), ("F16", (5,)), ("F64", (2, 2)),
                                                   ("BF16", (3,)), ("F32", ()), ("F32", (1, 1, 2))],
                                                  rng.randint(1, 4))):
        values = np.array([rng.choice([rng.uniform(-3, 3), 0.0, -0.0, math.inf, math.nan, 1e-30, 65504.0])
                           for _ in range(max(1, math.prod(shape)))], dtype=np.float64).reshape(shape)
        out[rng.choice(["wte.weight", "h.0.ln_1.bias", f"t{i}", "a.b.c", "\u00e9t\u00e9", "x" * 40])
            + f".{i}"] = (dtype, shape, encode(values, dtype))
    return out


# -- mutating ---------------------------------------------------------------------------

STRUCTURED = ["header length -k", "header length +k", "header length wild", "offsets shift", "offsets swap",
              "offsets gap", "offsets overlap", "offsets beyond", "offsets not ints", "shape change",
              "shape bad", "dtype change", "entry drop key", "entry extra key", "entry not object",
              "metadata odd", "root not object", "names odd", "duplicate key", "padding odd",
              "data append", "data cut", "data change", "no metadata", "reorder"]


def mutate(rng: random.Random, tensors: dict) -> tuple[bytes, str]:
    """A damaged (or harmlessly changed) file and the name of what was done."""
    kind = rng.choice(STRUCTURED + ["blind"] * 6 + ["none"])
    names = list(tensors)
    header, data = build(tensors, rng.sample(names, len(names)))
    name = rng.choice(names)
    entry = header[name]
    raw_header = None
    header_len = None
    pad = " "
    k = rng.randint(1, 16)
    if kind == "header length -k":
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        header_len = len(raw) - rng.randint(1, 7)
    elif kind == "header length +k":
        raw = json.dumps(header).encode()
        header_len = len(raw) + (-len(raw) % 8) + k
    elif kind == "header length wild":
        header_len = rng.choice([0, 1, 2, 7, 8, 2**31, 2**32, MAX_HEADER, MAX_HEADER + 1, 2**63, 2**64 - 1])
    elif kind == "offsets shift":
        entry["data_offsets"] = [o + rng.choice([-k, k]) for o in entry["data_offsets"]]
    elif kind == "offsets swap":
        entry["data_offsets"] = entry["data_offsets"][::-1]
    elif kind == "offsets gap":      # k unused bytes after one tensor
        end = entry["data_offsets"][1]
        for e in (v for n, v in header.items() if n != "__metadata__"):
            if e["data_offsets"][0] >= end:
                e["data_offsets"] = [e["data_offsets"][0] + k, e["data_offsets"][1] + k]
        data = data[:end] + b"\0" * k + data[end:]
    elif kind == "offsets overlap":
        entry["data_offsets"] = [0, entry["data_offsets"][1] - entry["data_offsets"][0]]
    elif kind == "offsets beyond":
        entry["data_offsets"] = [len(data) + k, len(data) + k + entry["data_offsets"][1] - entry["data_offsets"][0]]
    elif kind == "offsets not ints":
        entry["data_offsets"] = rng.choice([[0.5, 4], ["0", "4"], [0], [0, 4, 8], None, [-4, 0], [0, 2**64],
                                            [0, 10**19], {"a": 1}, [True, 4]])
    elif kind == "shape change":
        entry["shape"] = rng.choice([list(entry["shape"]) + [1], [1] + list(entry["shape"]), list(entry["shape"])[1:],
                                     list(reversed(entry["shape"])), [math.prod(entry["shape"])], [1] * 9 +
                                     list(entry["shape"]), [0], [0] + list(entry["shape"])])
    elif kind == "shape bad":
        entry["shape"] = rng.choice([[-1], [2.5], ["2"], None, 3, [[2]], [2**31], [2**32, 2**32], [10**19], [True],
                                     [2**62, 2**62]])
    elif kind == "dtype change":
        entry["dtype"] = rng.choice(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "I64", "f32", "F36", "",
                                     None, 32, ["F32"]])
    elif kind == "entry drop key":
        del entry[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == "entry extra key":
        entry[rng.choice(["x", "dtype2", "__metadata__"])] = rng.choice([1, "F32", None, [1]])
    elif kind == "entry not object":
        header[name] = rng.choice([[1], "F32", 1, None, True])
    elif kind == "metadata odd":
        header["__metadata__"] = rng.choice([{"format": 1}, [], "pt", None, {"a": {"b": "c"}}, {"\u0000": "x"}])
    elif kind == "root not object":
        raw_header = rng.choice([b"[1, 2]", b"1", b"null", b'"x"', b"true"])
    elif kind == "names odd":
        new = rng.choice(["", " ", "a\u0000b", "\ud800", "\\", "\u2028", "__metadata__x", "x" * 300,
                          "\U0001f600", "'; DROP TABLE llm_param; --"])
        header[new] = header.pop(name)
    elif kind == "duplicate key":
        text = json.dumps(header)
        dup = json.dumps({name: entry})[1:-1]
        raw_header = (text[:-1] + ", " + dup + "}").encode()
    elif kind == "padding odd":
        pad = rng.choice(["\t", "\n", "\0", "x", ""])
        if rng.random() < 0.3:
            raw_header = (" " * k + json.dumps(header)).encode()
    elif kind == "data append":
        data += rng.randbytes(k)
    elif kind == "data cut":
        data = data[:-rng.randint(1, max(1, len(data)))]
    elif kind == "data change":
        blob = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
        data = bytes(blob)
    elif kind == "no metadata":
        header.pop("__metadata__")
    if raw_header is None:      # (surrogatepass: a lone surrogate becomes bytes that are not UTF-8)
        raw_header = json.dumps(header, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    file = join(raw_header, data, header_len, pad)
    if kind == "blind":
        file = damage(rng, file)
    return file, kind


def damage(rng: random.Random, blob: bytes) -> bytes:
    """Truncate, flip bits, insert or delete bytes, or overwrite 8 bytes with a wild integer."""
    kind = rng.choice(["truncate", "flip", "int", "insert", "delete"])
    if kind == "truncate" or len(blob) < 9:
        return blob[:rng.randrange(max(len(blob), 1))]
    blob = bytearray(blob)
    at = rng.randrange(len(blob) - 8)
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    elif kind == "int":
        wild = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, 0x7FFFFFFF, len(blob), 1 << 62, 2**64 - 1])
        blob[at:at + 8] = struct.pack("<Q", wild)
    elif kind == "insert":
        blob[at:at] = rng.randbytes(rng.randint(1, 8))
    else:
        del blob[at:at + rng.randint(1, 8)]
    return bytes(blob)


# -- the reference reader -------------------------------------------------------------------

class _Invalid(Exception):
    def __init__(self, errors, why):
        self.errors, self.why = errors, why


def _reject_constant(name):
    raise ValueError(f"JSON has no {name}")


def _pairs(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        _pairs.duplicates = True
    return dict(pairs)


def _check_strings(value):
    """Lone surrogates (\\ud800) are not UTF-8; PostgreSQL's JSON parser refuses them."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read(blob: bytes, coverage: bool = True) -> Expect:
    """What llm_read_safetensors must answer for `blob`.  coverage=False: as if
    gaps and bytes after the last tensor were allowed (what a reader that
    misses those faults goes on to return)."""
    try:
        return _read(blob, coverage)
    except _Invalid as err:
        return Expect(errors=err.errors, why=err.why)


def _read(blob: bytes, coverage: bool = True) -> Expect:
    if len(blob) < 8:
        raise _Invalid(BROKEN, "shorter than the header length")
    n = struct.unpack_from("<Q", blob)[0]
    if n > MAX_HEADER:
        raise _Invalid(BROKEN, "header length over 100 MB")
    if 8 + n > len(blob):
        raise _Invalid(BROKEN, "header length beyond the file")
    raw = blob[8:8 + n]
    if b"\0" in raw:
        raise _Invalid({"22P03"}, "NUL in the header")
    try:
        text = raw.decode("utf-8")
        _pairs.duplicates = False
        header = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_pairs)
        _check_strings(header)
    except (UnicodeError, ValueError) as err:
        raise _Invalid({"22P03"}, f"header not JSON: {err}") from None
    if "\0" in json.dumps(header, ensure_ascii=False).replace("\\u0000", "\0"):
        raise _Invalid({"22P03", "0A000"}, "a string holds \\u0000, which PostgreSQL text cannot")
    either = _pairs.duplicates or text[:1] != "{"   # the library refuses these; PostgreSQL's JSON reads them
    if not isinstance(header, dict):
        raise _Invalid({"22P03"}, "header not an object")
    data = blob[8 + n:]
    # Every fault of every entry: the reader may report any of them first.
    errors, unsupported, entries, whys = set(), set(), [], []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            errors.add("22P03")
            whys.append(f"entry {name!r} not an object")
            continue
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        good = True
        if not isinstance(dtype, str) or dtype not in SPEC_DTYPES:
            errors |= {"22P03", "0A000"} if isinstance(dtype, str) else {"22P03"}
            whys.append(f"{name!r}: dtype {dtype!r}")
            good = False
        elif dtype not in READ_DTYPES:
            unsupported.add("0A000")
        if not isinstance(shape, list) or not all(_int(d) and d >= 0 for d in shape):
            errors.add("22P03")
            whys.append(f"{name!r}: shape {shape!r}")
            good = False
        else:
            if len(shape) > 8 or 0 in shape:
                unsupported.add("0A000")
            if any(d > INT32_MAX for d in shape) or math.prod(shape) >= 2**63:
                errors |= {"22P03", "22003", "54000"}
                whys.append(f"{name!r}: shape {shape!r} too large")
                good = False
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_int(o) and 0 <= o < 10**18 for o in offsets)):
            errors.add("22P03")
            whys.append(f"{name!r}: data_offsets {offsets!r}")
            good = False
        if good:
            entries.append((offsets[0], offsets[1], name, dtype, shape, math.prod(shape)))
    if len(entries) == len([k for k in header if k != "__metadata__"]):
        entries.sort()
        start = 0
        for begin, end, name, dtype, shape, numel in entries:
            if end - begin != numel * SPEC_DTYPES[dtype]:
                errors.add("22P03")
                whys.append(f"{name!r}: [{begin}, {end}) is not {numel} x {dtype}")
            if (begin != start and coverage) or begin < start or end < begin or end > len(data):
                errors |= BROKEN
                whys.append(f"{name!r}: [{begin}, {end}) leaves a gap or overlaps (expected to start at {start})")
            start = max(start, end)
        if start != len(data) and coverage:
            errors |= BROKEN
            whys.append(f"the tensors cover {start} of the {len(data)} data bytes")
    if errors or unsupported:
        raise _Invalid(errors | unsupported, "; ".join(whys) or "valid, but not read by pg_llm")
    tensors = {}
    for begin, end, name, dtype, shape, numel in entries:
        tensors[name] = decode(data[begin:end], dtype).reshape(shape if shape else (1,))
    return Expect(tensors=tensors, either=either, errors={"22P03"} if either else set(),
                  why="duplicate keys or leading whitespace" if either else "")


def decode(raw: bytes, dtype: str) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "F32":
            return np.frombuffer(raw, "<f4").astype(np.float32)
        if dtype == "F16":
            return np.frombuffer(raw, "<f2").astype(np.float32)
        if dtype == "F64":
            return np.frombuffer(raw, "<f8").astype(np.float32)
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
