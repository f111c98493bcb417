"""The machinery every fuzz test shares.

A fuzz test sends many generated inputs to the server and judges each answer
with an oracle: an ERROR whose SQLSTATE fits the input, or the right result.
It never stops at the first bad answer: every violation is recorded under a
kind ("crash", "wrong SQLSTATE 22P01 for ...", "wrong result"), and the test
fails at the end listing each kind once, with how often it happened and the
shortest input that showed it (a cheap stand-in for shrinking).

    db = FuzzDB(url)                        # one connection, re-made after a crash
    tally = Tally("tensor text input")      # counts and violations of one target
    out = db.run("SELECT %s::tensor", [literal])
    tally.record(out)                       # counts inputs and outcomes
    tally.expect_error(literal, out, {"22P02"}) / tally.violation(kind, input, detail)
    tally.finish(db)                        # the server still answers; no violations

Inputs are deterministic: seeded random.Random generators (generators.py),
a fixed number per target (times $PG_LLM_FUZZ_SCALE).  REPORT collects, per
fuzz target, how many inputs it tried and what came back; conftest.py prints
it at the end of the run.
"""
from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field

import numpy as np
import psycopg
import pg_llm_lab

# Every statement gets this long; a slower one is a hang (a violation), not a stuck suite.
STATEMENT_TIMEOUT = "20s"

# SQLSTATEs of a backend that died (its own crash, or another backend's).
CRASH_STATES = {"57P01", "57P02", "57P03", "08006", "08003", "08000"}

# target name -> {"inputs": n, "seconds": s, "outcomes": Counter, "violations": n}
REPORT: dict[str, dict] = {}


def scale(n: int) -> int:
    """Inputs for a target: n, times $PG_LLM_FUZZ_SCALE (default 1) for longer runs."""
    return max(1, int(n * float(os.environ.get("PG_LLM_FUZZ_SCALE", "1"))))


@dataclass
class Outcome:
    """What one statement gave: its rows, or an ERROR's SQLSTATE and message."""
    rows: list | None = None
    sqlstate: str | None = None
    message: str = ""
    crashed: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.sqlstate is None and not self.crashed

    @property
    def value(self):
        """The first column of the only row."""
        return self.rows[0][0]

    @property
    def label(self) -> str:
        return "crash" if self.crashed else (self.sqlstate or "ok")


class FuzzDB:
    """One autocommit connection with the tensor adapters, results in binary
    (bit-exact floats).  A statement that takes the backend down is an Outcome
    with crashed=True, and the connection is made again (the server may be in
    crash recovery for a moment)."""

    def __init__(self, url: str):
        self.url = url
        self.conn = None
        self.crashes = 0
        self.connect()

    def connect(self, wait: float = 30.0):
        deadline = time.monotonic() + wait
        while True:
            try:
                self.conn = pg_llm_lab.connect(self.url)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
        self.pid = self.conn.info.backend_pid

    def close(self):
        if self.conn is not None:
            self.conn.close()

    def run(self, sql: str, params=None, *, binary: bool = True) -> Outcome:
        start = time.monotonic()
        try:
            cur = self.conn.cursor(binary=binary)
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            return Outcome(rows=rows, seconds=time.monotonic() - start)
        except psycopg.Error as err:
            return self.outcome_of(err, start)

    def run_raw(self, sql: bytes, values: list, oids: list, formats: list) -> Outcome:
        """A statement through libpq directly: parameters sent as given bytes
        (binary ones reach the type's receive function as they are)."""
        start = time.monotonic()
        result = self.conn.pgconn.exec_params(sql, values, oids, formats, result_format=1)
        status = result.status
        if status == psycopg.pq.ExecStatus.TUPLES_OK:
            rows = [tuple(result.get_value(r, c) for c in range(result.nfields))
                    for r in range(result.ntuples)]
            return Outcome(rows=rows, seconds=time.monotonic() - start)
        sqlstate = result.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
        message = (result.error_message or b"").decode(errors="replace")
        if sqlstate is None or sqlstate.decode() in CRASH_STATES or self.conn.pgconn.status != 0:
            return self._crashed(message, start)
        return Outcome(sqlstate=sqlstate.decode(), message=message, seconds=time.monotonic() - start)

    def outcome_of(self, err: psycopg.Error, start: float | None = None) -> Outcome:
        """The Outcome of an error raised by a statement on this connection."""
        start = time.monotonic() if start is None else start
        if err.sqlstate is None or err.sqlstate in CRASH_STATES or self.conn.closed or self.conn.broken:
            return self._crashed(str(err), start)
        return Outcome(sqlstate=err.sqlstate, message=str(err).strip(), seconds=time.monotonic() - start)

    def _crashed(self, message: str, start: float) -> Outcome:
        self.crashes += 1
        try:
            self.conn.close()
        finally:
            self.connect()
        return Outcome(crashed=True, message=message.strip(), seconds=time.monotonic() - start)

    def alive(self) -> bool:
        """SELECT 1 answers on this connection, and on a new one."""
        try:
            same = self.conn.execute("SELECT 1").fetchone()[0] == 1
            with psycopg.connect(self.url, autocommit=True) as fresh:
                new = fresh.execute("SELECT 1").fetchone()[0] == 1
            return same and new
        except psycopg.Error:
            return False


@dataclass
class Violation:
    count: int = 0
    example: str = ""
    detail: str = ""


@dataclass
class Tally:
    """Inputs tried, outcomes seen and violations found for one fuzz target."""
    name: str
    inputs: int = 0
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    violations: dict = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def record(self, out: Outcome, what=None) -> Outcome:
        """Count one input and its outcome; a crash or a timeout is a violation at once."""
        self.inputs += 1
        self.outcomes[out.label] += 1
        if out.crashed:
            self.violation("the backend crashed", what, out.message)
        elif out.sqlstate == "57014":
            self.violation("the statement hung (statement_timeout)", what, out.message)
        elif out.sqlstate == "XX000":
            self.violation("an internal error (XX000)", what, out.message)
        return out

    def violation(self, kind: str, what, detail: str = ""):
        text = what if isinstance(what, str) else repr(what)
        v = self.violations.setdefault(kind, Violation())
        v.count += 1
        if not v.example or len(text) < len(v.example):
            v.example, v.detail = text, str(detail)[:600]

    def expect_error(self, what, out: Outcome, states: set[str], why: str = "") -> bool:
        """out must be an ERROR with one of `states`; True if it is."""
        if out.crashed or out.sqlstate in ("57014", "XX000"):
            return False  # already a violation
        because = f" (expected because: {why})" if why else ""
        if out.ok:
            self.violation(f"accepted, expected an ERROR {sorted(states)}", what,
                           f"answer: {_short(out.rows)}{because}")
            return False
        if out.sqlstate not in states:
            self.violation(f"SQLSTATE {out.sqlstate}, expected {sorted(states)}", what, out.message + because)
            return False
        return True

    def expect_ok(self, what, out: Outcome, why: str = "") -> bool:
        """out must be a result; True if it is."""
        if out.crashed or out.sqlstate in ("57014", "XX000"):
            return False
        if not out.ok:
            self.violation(f"ERROR {out.sqlstate}, expected a result", what,
                           out.message + (f" (expected because: {why})" if why else ""))
            return False
        return True

    def expect_outcome(self, what, out: Outcome, expected) -> bool:
        """expected is a set of SQLSTATEs (an error must come), or "ok" (a
        result must come); True if the answer has that form."""
        if expected == "ok":
            return self.expect_ok(what, out)
        return self.expect_error(what, out, expected)

    def finish(self, db: FuzzDB | None = None):
        """Record the report; fail if the server is down or any violation was seen."""
        if db is not None and not db.alive():
            self.violation("the server does not answer SELECT 1 afterwards", self.name)
        REPORT[self.name] = {"inputs": self.inputs, "seconds": time.monotonic() - self.started,
                             "outcomes": dict(self.outcomes),
                             "violations": sum(v.count for v in self.violations.values())}
        assert self.inputs > 0, f"{self.name}: no input was tried"
        if self.violations:
            lines = [f"{self.name}: {sum(v.count for v in self.violations.values())} violations "
                     f"in {self.inputs} inputs"]
            for kind, v in sorted(self.violations.items(), key=lambda kv: -kv[1].count):
                lines.append(f"  - {kind}: {v.count}x, e.g. {v.example[:400]}")
                if v.detail:
                    lines.append(f"      {v.detail[:400]}")
            raise AssertionError("\n".join(lines))


def _short(value, limit=200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- comparing floats ---------------------------------------------------------------

def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Identical shapes and float32 bit patterns (NaN == NaN, -0 != 0)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Identical shapes and values, any NaN equal to any NaN, -0 == 0."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


def close(got, want, rtol: float, atol: float) -> tuple[bool, str]:
    """Same shape, same NaN and infinity positions, finite values within
    rtol/atol of the reference; (ok, why not)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return False, f"shape {list(got.shape)}, expected {list(want.shape)}"
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    if not np.array_equal(nan_g, nan_w):
        i = np.argwhere(nan_g != nan_w)[0]
        return False, f"NaN at {tuple(i)}: got {got[tuple(i)]}, expected {want[tuple(i)]}"
    inf_g, inf_w = np.isinf(got), np.isinf(want)
    if not np.array_equal(inf_g, inf_w) or not np.array_equal(got[inf_g], want[inf_w]):
        i = np.argwhere((inf_g != inf_w) | (inf_g & (got != want)))[0]
        return False, f"infinity at {tuple(i)}: got {got[tuple(i)]}, expected {want[tuple(i)]}"
    with np.errstate(invalid="ignore", over="ignore"):
        bad = ~(nan_g | inf_g) & ~(np.abs(got - want) <= atol + rtol * np.abs(want))
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        return False, f"at {i}: got {got[i]!r}, expected {want[i]!r}"
    return True, ""


def f32(x: float) -> float:
    """x rounded to float32 (inf beyond the range), as a Python float."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))
