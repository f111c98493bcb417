"""What the server should answer for a tensor text literal, computed in
Python without the server: the oracle of test_fuzz_tensor_io.py.

The grammar is tensor_in's (extension/src/tensor/tensor_io.c): nested
bracketed lists, 1 to 8 deep, all lists at one depth equally long, numbers
read by C's strtof, whitespace as PostgreSQL's scanner_isspace.  Values
follow `real`'s rules: a number beyond float32's range, or a nonzero number
that rounds to 0, is out of range (22003); NaN is stored as the one
canonical NaN.

    parse_literal("[[1,2],[3,4]]") -> Parsed(values=array([[1,2],[3,4]]))
    parse_literal("[1e99]")        -> Parsed(errors={"22003"})

A literal with several faults fits each of their SQLSTATEs: "[1e99 2]" may
be refused for the range (22003) or the syntax (22P02).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

MAX_NDIM = 8
C_SPACE = " \t\n\r\f\v"

# strtof's longest valid prefix, as glibc reads it in the C locale.
NUMBER = re.compile(r"""
    (?P<sign>[+-]?)
    (?: (?P<inf>inf(?:inity)?)
      | (?P<nan>nan(?:\([0-9a-z_]*\))?)
      | 0x(?P<hex>[0-9a-f]+(?:\.[0-9a-f]*)?|\.[0-9a-f]+)(?:p(?P<hexp>[+-]?[0-9]+))?
      | (?P<dec>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e(?P<decexp>[+-]?[0-9]+))?
    )""", re.IGNORECASE | re.VERBOSE)

# Beyond these decimal magnitudes the value surely over- or underflows float32.
OVERFLOW_BOUND = 2 ** 128 - 2 ** 103        # halfway from FLT_MAX to 2^128: rounds to 2^128
MIN_SUBNORMAL_EXP = -149


@dataclass
class Parsed:
    values: np.ndarray | None = None    # float32, the tensor's shape
    errors: set | None = None           # the SQLSTATEs that fit, if it is refused
    reason: str = ""


class _Error(Exception):
    def __init__(self, sqlstate, reason, end=None):
        self.sqlstate, self.reason, self.end = sqlstate, reason, end


def round_to_float32(x: Fraction) -> float:
    """x rounded to the nearest float32 (ties to even); +-inf past the range."""
    if x == 0:
        return 0.0
    sign = -1.0 if x < 0 else 1.0
    x = abs(x)
    if x >= OVERFLOW_BOUND:
        return sign * float("inf")
    e = x.numerator.bit_length() - x.denominator.bit_length()   # 2^e <= x < 2^(e+2)
    if Fraction(2) ** e > x:
        e -= 1
    if Fraction(2) ** (e + 1) <= x:
        e += 1
    quantum = Fraction(2) ** (max(e, -126) - 23)
    n = x / quantum
    whole = n.numerator // n.denominator
    rest = n - whole
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and whole % 2 == 1):
        whole += 1
    return sign * float(whole * quantum)


def _exact(m: re.Match) -> Fraction | None:
    """The exact value of a decimal or hex match; None when it is surely out of range."""
    if m["hex"] is not None:
        whole, _, frac = m["hex"].partition(".")
        digits = (whole + frac) or "0"
        exp = int(m["hexp"] or 0) - 4 * len(frac)
        mantissa = int(digits, 16)
        if mantissa == 0:
            return Fraction(0)
        magnitude = mantissa.bit_length() + exp        # 2^(magnitude-1) <= value < 2^magnitude
        if magnitude > 130 or magnitude < MIN_SUBNORMAL_EXP - 2:
            return None
        return mantissa * Fraction(2) ** exp
    whole, _, frac = m["dec"].partition(".")
    digits = (whole + frac).lstrip("0")
    if not digits:
        return Fraction(0)
    exp = int(m["decexp"] or 0) - len(frac)
    magnitude = len(digits) + exp                      # 10^(magnitude-1) <= value < 10^magnitude
    if magnitude > 40 or magnitude < -47:
        return None
    return int(digits) * Fraction(10) ** exp


def read_number(text: str, pos: int) -> tuple[float, int]:
    """strtof at pos: (value as float32 in a Python float, end position); errors raised."""
    start = pos
    while pos < len(text) and text[pos] in C_SPACE:
        pos += 1
    m = NUMBER.match(text, pos)
    if m is None:
        raise _Error("22P02", f"expected a number at {start}")
    negative = m["sign"] == "-"
    if m["inf"] is not None:
        return (-np.inf if negative else np.inf), m.end()
    if m["nan"] is not None:
        return np.nan, m.end()
    exact = _exact(m)
    if exact is None:        # a magnitude far outside float32: overflow, or underflow to 0
        value = float("inf") if _is_huge(m) else 0.0
        nonzero = True
    else:
        value = round_to_float32(exact)
        nonzero = exact != 0
    if value in (float("inf"), float("-inf")) or (value == 0.0 and nonzero):
        raise _Error("22003", f"{m.group(0)!r} is out of range for type real", m.end())
    return (-value if negative else value), m.end()


def _is_huge(m: re.Match) -> bool:
    if m["hex"] is not None:
        whole, _, frac = m["hex"].partition(".")
        return int((whole + frac) or "0", 16).bit_length() + int(m["hexp"] or 0) - 4 * len(frac) > 0
    whole, _, frac = m["dec"].partition(".")
    return len((whole + frac).lstrip("0")) + int(m["decexp"] or 0) - len(frac) > 0


class _Parser:
    def __init__(self, text):
        self.text, self.pos = text, 0
        self.range_error = None             # the first out-of-range number (parsing goes on)
        self.ndim = 0
        self.dims = [None] * MAX_NDIM
        self.values = []

    def peek(self):
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self):
        while self.peek() and self.peek() in C_SPACE:
            self.pos += 1

    def syntax(self, why):
        raise _Error("22P02", f"{why} at {self.pos}")

    def parse_list(self, depth):
        if depth >= MAX_NDIM:
            self.syntax("too many dimensions")
        self.skip_space()
        if self.peek() != "[":
            self.syntax('expected "["')
        self.pos += 1
        self.skip_space()
        if self.peek() == "]":
            self.syntax("empty list")
        numbers = self.peek() != "["
        if numbers and self.ndim == 0:
            self.ndim = depth + 1
        if numbers != (depth + 1 == self.ndim):
            self.syntax("nesting depth differs")
        count = 0
        while True:
            if numbers:
                try:
                    value, self.pos = read_number(self.text, self.pos)
                except _Error as err:
                    if err.sqlstate != "22003":
                        raise
                    self.range_error = self.range_error or err
                    value, self.pos = 0.0, err.end
                self.values.append(value)
            else:
                self.parse_list(depth + 1)
            count += 1
            self.skip_space()
            if self.peek() == ",":
                self.pos += 1
                self.skip_space()
                continue
            if self.peek() == "]":
                self.pos += 1
                break
            self.syntax('expected "," or "]"')
        if self.dims[depth] is None:
            self.dims[depth] = count
        elif self.dims[depth] != count:
            self.syntax("ragged")


def parse_literal(text: str) -> Parsed:
    """What tensor_in should make of `text`."""
    p = _Parser(text)
    try:
        p.parse_list(0)
        p.skip_space()
        if p.pos != len(text):
            p.syntax("junk after the closing bracket")
    except _Error as err:
        errors = {err.sqlstate} | ({"22003"} if p.range_error else set())
        return Parsed(errors=errors, reason=(p.range_error or err).reason)
    if p.range_error:
        return Parsed(errors={"22003"}, reason=p.range_error.reason)
    shape = tuple(p.dims[:p.ndim])
    return Parsed(values=np.array(p.values, dtype=np.float32).reshape(shape))
