"""Fuzz the ways a tensor gets in: text literals, binary input (tensor_recv,
through a binary parameter and binary COPY), llm_tensor(real[]|bytea, shape),
the real[] and bytea casts -- and back out: text output, llm_bytea,
real_array, llm_shape.

Each input gets its expected answer from a model of the rules written here
(text_reference.py for literals): an ERROR with a fitting SQLSTATE, or the
exact float32 bits.
"""
import base64
import math
import re
import struct

import numpy as np
import psycopg
import pytest
from fuzz_harness import Tally, same_bits, same_values
from generators import (EDGE_INTS, INT32_MAX, MAX_ELEMS, any_float, cases, f32_bits, good_shape,
                        int_array_literal, real_array_literal, shape_array, shape_errors, tensor_values)
from text_reference import C_SPACE, parse_literal

from pg_llm_lab.adapters import from_binary, from_text

# The extension's functions this file fuzzes (test_fuzz_coverage.py checks that every one is somewhere).
COVERS = {"tensor_in", "tensor_out", "tensor_recv", "tensor_send", "tensor", "real_array", "llm_bytea",
          "llm_tensor", "llm_shape"}

# -- text literals -------------------------------------------------------------------

SPECIAL_NUMBERS = [
    "nan", "NaN", "-nan", "+NAN", "nan()", "nan(0x1)", "NaN(abc_123)", "nan(", "inf", "-inf", "+Inf",
    "infinity", "-Infinity", "INFINITY", "infinit", "in", "1e-50", "-1e-50", "1e-45", "7e-46", "1.4e-45",
    "1e-38", "1.1754944e-38", "1e39", "-1e39", "3.4028235e38", "3.4028236e38", "3.402823567e38",
    "0x1p-149", "0x1p-150", "0x1.fffffep127", "0x1p128", "0x1.8p1", "0X.8P+1", "0x", "0x.p1", "-0", "+0",
    "0.0", "-0.0e-999", "1e", "1e+", "1.e5", ".5", "5.", "-.5e-3", "00001", "1_000", "1,5", "\u0661",
    "0e99999999", "1e99999999", "1e-99999999", "9" * 60, "0." + "0" * 60 + "1", "4.9406564584124654e-324",
]
SPACES = ["", "", "", "", " ", "  ", "\t", "\n", "\r\n", "\v", "\f", " \u00a0"]
MUTATION_CHARS = "[],.+-eExXpP0123456789 \t\n\vinfaINF()_;{}\"'\\\u00e9\u2212"


def number_text(rng) -> str:
    r = rng.random()
    if r < 0.08:
        return rng.choice(SPECIAL_NUMBERS)
    if r < 0.2:
        return str(rng.randint(-10**6, 10**6))
    if r < 0.35:   # decimal digits with an exponent, any size
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 14)))
        point = rng.randint(0, len(digits))
        return (rng.choice(["", "-", "+"]) + digits[:point] + "." + digits[point:]
                + rng.choice(["", f"e{rng.randint(-60, 60)}", f"E+{rng.randint(0, 45)}", f"e-{rng.randint(30, 50)}"]))
    x = any_float(rng)
    if math.isnan(x) or math.isinf(x):
        return rng.choice([repr(x), repr(x).upper(), "-" + repr(x)])
    return rng.choice([repr(x), f"{x:e}", f"{x:.3g}", x.hex(), f"{x:.2f}"])


def literal(rng) -> str:
    """Mostly well-formed nested lists, sometimes damaged a little."""
    if rng.random() < 0.1:
        shape = [1] * rng.randint(7, 10)
    else:
        shape = [rng.randint(1, 3) for _ in range(rng.randint(1, 4))]

    def build(dims):
        if not dims:
            return number_text(rng)
        sep = rng.choice(SPACES) + "," + rng.choice(SPACES)
        return "[" + rng.choice(SPACES) + sep.join(build(dims[1:]) for _ in range(dims[0])) + rng.choice(SPACES) + "]"

    text = rng.choice(SPACES) + build(shape) + rng.choice(SPACES)
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        if not text:
            break
        i = rng.randrange(len(text))
        kind = rng.choice(["delete", "insert", "replace", "duplicate", "drop a list"])
        if kind == "delete":
            text = text[:i] + text[i + 1:]
        elif kind == "insert":
            text = text[:i] + rng.choice(MUTATION_CHARS) + text[i:]
        elif kind == "replace":
            text = text[:i] + rng.choice(MUTATION_CHARS) + text[i + 1:]
        elif kind == "duplicate":
            j = rng.randint(i, min(len(text), i + 12))
            text = text[:j] + text[i:j] + text[j:]
        else:
            j = text.find("]", i)
            text = text[:i] + text[j + 1:] if j >= 0 else text[:i]
    return text


def random_string(rng) -> str:
    """Random strings over the literal's alphabet: the parser's corners."""
    alphabet = list("[[[]]],,,1.e-+ninfa0x") + list(C_SPACE)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))


@pytest.fixture
def canonical_nan(db):
    """NaN as the server stores '[NaN]': every stored NaN must have these bits."""
    return db.run("SELECT '[NaN]'::tensor").value


LITERAL_EXAMPLES = ["[1e-50]", "[nan(123)]", "[-nan]", " [ [1 , 2] ,[3,4] ] ", "[[[[[[[[1]]]]]]]]",
                    "[[[[[[[[[1]]]]]]]]]", "[]", "", "[1,]", "[[1,2],[3]]", "[1e39]", "[0x1p-150]"]


@pytest.mark.parametrize("source", ["literals", "random strings"])
def test_text_literals(db, canonical_nan, source):
    tally = Tally(f"tensor text input ({source})")
    inputs = ([literal(rng) for rng in cases(4000, seed=1)] + LITERAL_EXAMPLES if source == "literals"
              else [random_string(rng) for rng in cases(1500, seed=2)])
    for text in inputs:
        out = tally.record(db.run("SELECT t, t::text FROM (SELECT %s::tensor AS t) s", [text]), text)
        want = parse_literal(text)
        if want.errors:
            tally.expect_error(text, out, want.errors, want.reason)
            continue
        if not tally.expect_ok(text, out):
            continue
        stored, printed = out.rows[0]
        expected = np.where(np.isnan(want.values), canonical_nan[0], want.values).astype(np.float32)
        if not same_bits(stored, expected):
            what = "a NaN payload or sign kept" if same_values(stored, expected) else "wrong value"
            bits = [hex(b) for b in stored.view(np.uint32).ravel()[:4]]
            tally.violation(f"text input: {what}", text,
                            f"stored {stored.ravel()[:6]!r} (bits {bits}), expected {expected.ravel()[:6]!r}")
        elif not (same_bits(from_text(printed), stored) or same_values(from_text(printed), stored)):
            tally.violation("text output does not read back", text, f"{printed!r} for {stored!r}")
    tally.finish(db)


# -- base64 text (what tensor_out writes beyond 8,388,608 values; read at any size) ------

BASE64_MUTATIONS = "[],:0123456789+/=AQgw \t\n-_!\u00e9"


def base64_literal(rng) -> str:
    """'base64:[shape]:<payload>' of a small tensor, sometimes damaged a little."""
    shape = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]
    values = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(shape).astype("<f4")
    text = f"base64:[{','.join(map(str, shape))}]:" + base64.b64encode(values.tobytes()).decode()
    for _ in range(rng.choice([0, 0, 1, 2])):
        i = rng.randrange(len(text))
        kind = rng.choice(["delete", "insert", "replace"])
        if kind == "delete":
            text = text[:i] + text[i + 1:]
        elif kind == "insert":
            text = text[:i] + rng.choice(BASE64_MUTATIONS) + text[i:]
        else:
            text = text[:i] + rng.choice(BASE64_MUTATIONS) + text[i + 1:]
    return text


def expected_base64(text: str):
    """(None, float32 array) when the literal is well formed, else ({SQLSTATEs}, None)."""
    match = re.fullmatch(r"base64:\[([0-9]+(?:,[0-9]+)*)\]:([A-Za-z0-9+/=]*)", text)
    if match is None:
        return {"22P02"}, None
    dims = [int(d) for d in match[1].split(",")]
    if len(dims) > 8:
        return {"22P02"}, None
    if min(dims) < 1 or math.prod(dims) > MAX_ELEMS:
        return {"22023", "54000"}, None
    try:
        raw = base64.b64decode(match[2], validate=True)
    except ValueError:
        return {"22P02"}, None
    if len(raw) != 4 * math.prod(dims):
        return {"22P02"}, None
    return None, np.frombuffer(raw, "<f4").reshape(dims)


def test_base64_text(db):
    tally = Tally("tensor text input (base64)")
    for text in [base64_literal(rng) for rng in cases(2000, seed=7)]:
        out = tally.record(db.run("SELECT %s::tensor", [text]), text)
        errors, want = expected_base64(text)
        if errors:
            tally.expect_error(text, out, errors)
        elif tally.expect_ok(text, out) and not same_bits(out.value, want):
            tally.violation("base64 text input: wrong value", text, f"{out.value!r}, expected {want!r}")
    tally.finish(db)


# -- binary input --------------------------------------------------------------------

def expected_recv(payload: bytes):
    """tensor_recv's rules: (fitting SQLSTATEs, None) for an error, or (None, values)."""
    if len(payload) < 4:
        return {"08P01"}, None                   # PostgreSQL's own: insufficient data left in message
    ndim, dtype = struct.unpack_from(">HH", payload)
    if dtype != 0 or not 1 <= ndim <= 8:
        return {"22P03"}, None
    if len(payload) < 4 + 4 * ndim:
        return {"08P01"}, None
    dims = list(struct.unpack_from(f">{ndim}i", payload, 4))
    errors = shape_errors(dims)
    if errors:
        return errors, None
    data = payload[4 + 4 * ndim:]
    if len(data) != 4 * math.prod(dims):
        return {"22P03"}, None
    return None, np.frombuffer(data, ">f4").astype(np.float32).reshape(dims)


def header(ndim, dtype, dims) -> bytes:
    return struct.pack(">HH", ndim % 65536, dtype % 65536) + b"".join(struct.pack(">i", d) for d in dims)


def binary_payload(rng) -> bytes:
    shape = list(good_shape(rng))
    n = math.prod(shape)
    data = struct.pack(f">{n}f", *[any_float(rng) if rng.random() < 0.5 else f32_bits(rng.getrandbits(32))
                                   for _ in range(n)])
    ndim, dtype, dims = len(shape), 0, shape
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        kind = rng.choice(["ndim", "dtype", "dim", "truncate", "extend", "flip"])
        if kind == "ndim":      # the header keeps its dims: it lies about its own length
            ndim = rng.choice([0, 9, 65535, 32768, ndim + 1, max(ndim - 1, 0)])
        elif kind == "dtype":
            dtype = rng.choice([1, 2, 65535, 256])
        elif kind == "dim":
            i = rng.randrange(len(dims))
            dims[i] = rng.choice(EDGE_INTS + [MAX_ELEMS, MAX_ELEMS + 1, dims[i] + 1, dims[i] * 2])
        elif kind == "truncate":
            data = data[:rng.randint(0, max(len(data) - 1, 0))]
        elif kind == "extend":
            data += rng.randbytes(rng.randint(1, 9))
        elif data:
            blob = bytearray(data)
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
            data = bytes(blob)
    payload = header(ndim, dtype, dims) + data
    return payload[:rng.choice([0, 1, 2, 3, 5, 7])] if rng.random() < 0.05 else payload


BINARY_EXAMPLES = [header(1, 0, [3]) + struct.pack(">2f", 1, 2), header(2, 0, [65536, 65536]),
                   header(8, 0, [INT32_MAX] * 8), header(1, 0, [1]) + b"\x7f\x80\x00\x01", b"", b"\0\1"]


def check_recv_answer(tally, payload, out, got):
    states, want = expected_recv(payload)
    if states is not None:
        # COPY reports a short field as 22P03, a bind parameter as 08P01
        tally.expect_error(payload, out, states | {"22P03"} if "08P01" in states else states)
        return
    if not tally.expect_ok(payload, out):
        return
    nan = np.isnan(want)
    got = got(out)
    if not (got.shape == want.shape and same_bits(got[~nan], want[~nan]) and np.isnan(got[nan]).all()):
        tally.violation("binary input: wrong value", payload, f"got {got!r}, expected {want!r}")


def test_binary_input(db):
    """Binary parameters reach tensor_recv as sent; llm_bytea agrees with tensor_send."""
    tally = Tally("tensor binary input (tensor_recv)")
    oid = db.run("SELECT 'tensor'::regtype::oid").value
    for payload in [binary_payload(rng) for rng in cases(3000, seed=3)] + BINARY_EXAMPLES:
        out = tally.record(db.run_raw(b"SELECT $1, llm_bytea($1)", [payload], [oid], [1]), payload)
        check_recv_answer(tally, payload, out, lambda o: from_binary(o.rows[0][0]))
        if out.ok and bytes(out.rows[0][1]) != from_binary(out.rows[0][0]).astype("<f4").tobytes():
            tally.violation("llm_bytea differs from tensor_send", payload, repr(out.rows[0]))
    tally.finish(db)


def test_binary_copy(db):
    """COPY ... FROM STDIN (FORMAT binary) feeds tensor_recv too."""
    tally = Tally("tensor binary COPY")
    db.run("CREATE TEMP TABLE fuzz_copy (t tensor)")
    for payload in [binary_payload(rng) for rng in cases(300, seed=4)]:
        db.run("TRUNCATE fuzz_copy")
        try:
            with db.conn.cursor().copy("COPY fuzz_copy FROM STDIN (FORMAT binary)") as copy:
                copy.write(b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0)
                           + struct.pack(">hi", 1, len(payload)) + payload + struct.pack(">h", -1))
            out = db.run("SELECT t FROM fuzz_copy")
        except psycopg.Error as err:
            out = db.outcome_of(err)
        tally.record(out, payload)
        check_recv_answer(tally, payload, out, lambda o: o.value)
    tally.finish(db)


# -- constructors and casts ------------------------------------------------------------

def value_array(rng):
    """(real[] literal, its values or None when it holds a NULL or nothing)."""
    values = tensor_values(rng, good_shape(rng, 3, 3), special=0.3)
    kind = rng.choice(["plain"] * 6 + ["null", "empty"])
    if kind == "null":
        return real_array_literal(values, rng.randrange(values.size)), None
    if kind == "empty":
        return "{}", None
    return real_array_literal(values), values


def test_llm_tensor_from_real_array(db):
    tally = Tally("llm_tensor(real[], shape)")
    for rng in cases(2000, seed=5):
        (literal_, values), dims = value_array(rng), shape_array(rng)
        if values is not None and rng.random() < 0.5:
            dims = list(values.shape) if rng.random() < 0.5 else [values.size]
        what = (literal_, int_array_literal(dims))
        out = tally.record(db.run("SELECT llm_tensor(%s::real[], %s::int[])", list(what)), what)
        errors = shape_errors(dims)
        if values is None:
            errors |= {"22004"} if "NULL" in literal_ else {"22023"}
        elif not errors and values.size != math.prod(dims):
            errors = {"22000"}
        if errors:
            tally.expect_error(what, out, errors)
        elif tally.expect_ok(what, out) and not same_values(out.value, values.reshape(dims)):
            tally.violation("llm_tensor(real[]): wrong value", what, f"got {out.value!r}")
    tally.finish(db)


def test_real_array_casts(db):
    """real[] -> tensor keeps the array's dimensions; tensor -> real[] gives them back."""
    tally = Tally("real[] <-> tensor casts")
    for rng in cases(1000, seed=6):
        literal_, values = value_array(rng)
        out = tally.record(db.run("SELECT t, real_array(t), llm_shape(t) "
                                  "FROM (SELECT %s::real[]::tensor AS t) s", [literal_]), literal_)
        if values is None:
            tally.expect_error(literal_, out, {"22004"} if "NULL" in literal_ else {"22023"})
        elif tally.expect_ok(literal_, out):
            tensor, back, shape = out.rows[0]
            if not same_values(tensor, values) or list(shape) != list(values.shape):
                tally.violation("real[]::tensor: wrong value", literal_, f"got {tensor!r} {shape}")
            elif not same_values(np.array(back, np.float32), values):
                tally.violation("tensor::real[] differs", literal_, repr(back))
    tally.finish(db)


def byte_string(rng) -> bytes:
    n = rng.randint(0, 6)
    data = struct.pack(f"<{n}f", *[any_float(rng) for _ in range(n)])
    cut = rng.choice([0] * 6 + [1, 2, 3])
    return data[:-cut] if cut and len(data) >= cut else data + b"\0" * cut


def test_bytea_constructors_and_casts(db):
    tally = Tally("llm_tensor(bytea, shape), bytea casts")
    for rng in cases(2000, seed=7):
        data, dims = byte_string(rng), shape_array(rng)
        if rng.random() < 0.4 and len(data) >= 4:
            dims = [len(data) // 4] if rng.random() < 0.5 else [1, len(data) // 4]
        what = (data, int_array_literal(dims))
        out = tally.record(db.run("SELECT llm_tensor(%s::bytea, %s::int[])", list(what)), what)
        errors = shape_errors(dims) | ({"22P03"} if len(data) % 4 else set())
        flat = [d for row in dims for d in (row if isinstance(row, list) else [row])]
        if not errors or errors == {"22P03"} or all(isinstance(d, list) for d in dims):
            if None not in flat and flat and len(data) // 4 != math.prod(flat):
                errors.add("22000")
        if errors:
            tally.expect_error(what, out, errors)
        elif tally.expect_ok(what, out) and not same_values(out.value, np.frombuffer(data, "<f4").reshape(dims)):
            tally.violation("llm_tensor(bytea): wrong value", what, f"got {out.value!r}")

        out = tally.record(db.run("SELECT t, t::bytea FROM (SELECT %s::bytea::tensor AS t) s", [data]), data)
        if len(data) % 4 or not data:
            tally.expect_error(data, out, {"22P03"} if len(data) % 4 else {"22023"})
        elif tally.expect_ok(data, out):
            tensor, back = out.rows[0]
            want = np.frombuffer(data, "<f4")
            nan = np.isnan(want)
            if not (same_bits(tensor[~nan], want[~nan]) and np.isnan(tensor[nan]).all()):
                tally.violation("bytea::tensor: wrong value", data, f"got {tensor!r}")
            elif bytes(back) != tensor.astype("<f4").tobytes():
                tally.violation("tensor::bytea differs from the tensor", data, repr(bytes(back)))
    tally.finish(db)
