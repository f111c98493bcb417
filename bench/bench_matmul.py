#!/usr/bin/env python3
"""
bench_matmul.py -- pg_llm's llm_matmul against OpenBLAS (numpy) and PyTorch.

    . .venv/bin/activate
    python bench/bench_matmul.py                  # 2 threads, GPT-2 shapes
    python bench/bench_matmul.py --threads 1
    python bench/bench_matmul.py --shapes 64x768x768,1x768x50257t
    python bench/bench_matmul.py --isa avx2       # force the kernel's ISA
    python bench/bench_matmul.py --isa all        # a column per ISA the CPU runs
    python bench/bench_matmul.py --sql            # + SELECT llm_matmul(...)

Every library gets --threads threads: OpenBLAS reads its thread count when
numpy is imported, so OPENBLAS_NUM_THREADS / OMP_NUM_THREADS /
MKL_NUM_THREADS are set before the import (and threadpoolctl is applied on
top when installed); torch.set_num_threads; llm_pool_set_threads.  The
kernel library is compiled from extension/src/kernels/ and loaded with
ctypes by pg_llm_lab.kernels.

Timing: for each shape the libraries take turns, --rounds times, each turn
a warm-up call then --repeat calls (and at least 30 ms of calls); the best
call is reported (GFLOP/s = 2*M*K*N / best time).  Taking turns, with a short sleep before each (the
thread pools of all three libraries spin for a while after a call, and a
spinning pool steals a core from the next library on a small machine),
keeps a burst of load from another process from favouring one library.
Operands are stored the way the kernel gets them (transB: B is [N,K]);
numpy and torch multiply by the transposed view.
"""
import argparse
import os
import sys

SHAPE_HELP = ("comma list of MxKxN; suffix t = transB (B stored [N,K]), "
              "T = transA (A stored [K,M]); e.g. 64x768x50257t")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10, help="timed calls per turn")
    p.add_argument("--rounds", type=int, default=4, help="turns per library and shape")
    p.add_argument("--shapes", default=None, help=SHAPE_HELP + "; default: GPT-2's")
    p.add_argument("--isa", choices=["scalar", "avx2", "avx512", "neon", "all"], default=None,
                   help="force a lower ISA for the kernel (default: the best); "
                        "all: one pg_llm column per ISA this CPU runs")
    p.add_argument("--sql", action="store_true",
                   help="also time SELECT llm_matmul(...) through pg_llm_lab")
    p.add_argument("--no-check", action="store_true",
                   help="skip the accuracy check against float64 numpy")
    p.add_argument("--cc", default=os.environ.get("CC", "cc"))
    return p.parse_args()


ARGS = parse_args()

# Before numpy is imported: OpenBLAS sizes its thread pool at load time.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
os.environ["CC"] = ARGS.cc  # the compiler build_kernel_library uses

import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pg_llm_lab import kernels  # noqa: E402

try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None
try:
    import torch
except ImportError:
    torch = None
try:
    import pandas as pd
except ImportError:
    pd = None

SETTLE = 0.15  # s of sleep before each turn: OpenBLAS spins ~0.1 s after a call

# (M, K, N, transA, transB, what it is in GPT-2 small)
DEFAULT_SHAPES = [
    (64, 768, 768, 0, 0, "attn c_proj, T=64"),
    (64, 768, 2304, 0, 0, "attn c_attn, T=64"),
    (64, 768, 3072, 0, 0, "mlp c_fc, T=64"),
    (64, 3072, 768, 0, 0, "mlp c_proj, T=64"),
    (768, 768, 768, 0, 0, "square"),
    (64, 768, 50257, 0, 0, "lm_head, W as [K,N]"),
    (64, 768, 50257, 0, 1, "lm_head (wte [N,K])"),
    (64, 768, 768, 1, 0, "x^T @ dy (backward)"),
    (1, 768, 2304, 0, 0, "decode c_attn"),
    (1, 768, 3072, 0, 0, "decode c_fc"),
    (1, 3072, 768, 0, 0, "decode mlp c_proj"),
    (1, 768, 50257, 0, 1, "decode lm_head"),
]


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        item = item.strip()
        ta, tb = int("T" in item), int("t" in item)
        m, k, n = (int(x) for x in item.rstrip("tT").lower().split("x"))
        shapes.append((m, k, n, ta, tb, ""))
    return shapes


def shape_name(m, k, n, ta, tb):
    return f"{m}x{k}x{n}" + ("T" if ta else "") + ("t" if tb else "")


# ---- the kernel, through ctypes ---------------------------------------------

class Kernels:
    def __init__(self, lib):
        self.lib = lib

    def set_threads(self, n):
        self.lib.llm_pool_set_threads(n)

    def set_isa(self, name):
        self.lib.llm_set_isa(kernels.ISA[name])

    def isa(self):
        return self.lib.llm_isa_name(self.lib.llm_cpu_isa()).decode()

    def matmul_fn(self, a, b, c, M, K, N, ta, tb, isa=None):
        """A zero-argument closure; the ctypes conversions are done once.
        isa: the ISA it runs with (None: the one set)."""
        f, set_isa = self.lib.llm_matmul, self.lib.llm_set_isa
        pa, pb, pc = (kernels.ptr(x) for x in (a, b, c))

        def run():
            if isa is not None:
                set_isa(kernels.ISA[isa])
            if f(pa, pb, None, pc, M, K, N, ta, tb) != 0:
                raise RuntimeError("llm_matmul was interrupted")
        return run


# ---- timing -----------------------------------------------------------------

def race(fns, rounds, repeat, min_turn=0.03):
    """Best time of each function in `fns`, the functions taking turns.

    A turn is a warm-up call, then at least `repeat` timed calls and at
    least `min_turn` seconds of them: short kernels need a few ms of
    back-to-back calls before a freshly woken thread pool is spread over
    the cores again.
    """
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            time.sleep(SETTLE)
            fn()  # warm-up: caches, page faults, pool wake-up
            calls, t_end = 0, time.perf_counter() + min_turn
            while calls < repeat or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
                calls += 1
    return best


def operands(M, K, N, ta, tb, rng):
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    return a, b


# ---- SQL hook ---------------------------------------------------------------

def time_sql(conn, M, K, N, ta=0, tb=0, repeat=5):
    """Best time of `llm_matmul($1::tensor, $2::tensor, ta, tb)` run by the
    server, in seconds.

    The operands are sent once, into a temporary table; the timed query is
    SELECT pg_column_size(llm_matmul(a, b, ...)) FROM it, so the time is
    the server's: reading the stored tensors, the kernel, building the
    result -- not shipping megabytes over the socket.  Needs pg_llm_lab's
    numpy adapters (ndarray parameters are sent as `tensor`).
    """
    rng = np.random.default_rng(0)
    a, b = operands(M, K, N, ta, tb, rng)
    conn.execute("DROP TABLE IF EXISTS bench_matmul_operands")
    conn.execute("CREATE TEMP TABLE bench_matmul_operands (a tensor, b tensor)")
    conn.execute("INSERT INTO bench_matmul_operands VALUES (%s::tensor, %s::tensor)", (a, b))
    sql = ("SELECT pg_column_size(llm_matmul(a, b, %s, %s)) FROM bench_matmul_operands")
    best = float("inf")
    for i in range(repeat + 1):  # the first run warms up
        t0 = time.perf_counter()
        conn.execute(sql, (bool(ta), bool(tb))).fetchone()
        if i:
            best = min(best, time.perf_counter() - t0)
    conn.execute("DROP TABLE bench_matmul_operands")
    return best


def open_sql(threads):
    """(connection, None) or (None, why not)."""
    try:
        import pg_llm_lab
    except Exception as e:  # ImportError, or anything its import raises
        return None, f"pg_llm_lab is not importable: {e!r}"
    try:
        conn = pg_llm_lab.connect()
    except Exception as e:
        return None, f"pg_llm_lab.connect() failed: {e!r}"
    try:
        conn.execute(f"SET pg_llm.threads = {int(threads)}")
    except Exception as e:
        print(f"note: could not SET pg_llm.threads ({e!r}); the server's default is used")
    return conn, None


# ---- main -------------------------------------------------------------------

def blas_name():
    try:
        dep = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{dep['name']} {dep.get('version', '')}".strip()
    except Exception:
        return "unknown BLAS"


def main():
    shapes = parse_shapes(ARGS.shapes) if ARGS.shapes else DEFAULT_SHAPES
    threads = ARGS.threads

    try:
        kern = Kernels(kernels.load())
    except RuntimeError as err:
        sys.exit(str(err))
    kern.set_threads(threads)
    runnable = kernels.available_isas(kern.lib)
    if ARGS.isa and ARGS.isa != "all":
        if ARGS.isa not in runnable:  # llm_set_isa would fall back to the best: say so instead
            sys.exit(f"--isa {ARGS.isa}: this CPU ({platform.machine()}) runs only {', '.join(runnable)}")
        kern.set_isa(ARGS.isa)
    # more ISAs: each a pg_llm column of its own, GFLOP/s "pg_llm <isa>"
    extra_isas = [i for i in runnable if i != kern.isa()] if ARGS.isa == "all" else []
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(threads)
    if torch is not None:
        torch.set_num_threads(threads)

    conn = None
    if ARGS.sql:
        conn, why = open_sql(threads)
        if conn is None:
            print(f"SQL column skipped: {why}")

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; threads={threads}; "
          f"{ARGS.rounds} rounds x {ARGS.repeat} calls, best reported")
    print(f"pg_llm kernel ISA: {kern.isa()}" + (f" (and {', '.join(extra_isas)})" if extra_isas else ""))
    if ARGS.isa == "all":
        lacking = [i for i in kernels.ISA if i not in runnable]
        if lacking:
            print(f"not run: {', '.join(lacking)} (this CPU, {platform.machine()}, lacks them)")
    print(f"numpy {np.__version__} with {blas_name()}; torch "
          f"{torch.__version__ if torch else '(not installed: column skipped)'}; "
          f"thread limits via {'threadpoolctl + ' if threadpoolctl else ''}environment")

    rng = np.random.default_rng(0)
    rows = []
    for M, K, N, ta, tb, note in shapes:
        a, b = operands(M, K, N, ta, tb, rng)
        opa, opb = (a.T if ta else a), (b.T if tb else b)
        flop = 2.0 * M * K * N
        name = shape_name(M, K, N, ta, tb)
        row = {"shape": name, "what": note}

        out_np = np.empty((M, N), dtype=np.float32)
        out_k = np.empty((M, N), dtype=np.float32)
        best_isa = kern.isa()
        fns = [lambda: np.matmul(opa, opb, out=out_np),
               kern.matmul_fn(a, b, out_k, M, K, N, ta, tb, isa=best_isa if extra_isas else None)]
        if torch is not None:
            ta_t, tb_t = torch.from_numpy(opa), torch.from_numpy(opb)
            out_t = torch.empty((M, N), dtype=torch.float32)

            def torch_mm():
                with torch.no_grad():
                    torch.matmul(ta_t, tb_t, out=out_t)
            fns.append(torch_mm)
        out_x = np.empty((M, N), dtype=np.float32)
        fns += [kern.matmul_fn(a, b, out_x, M, K, N, ta, tb, isa=i) for i in extra_isas]

        best = race(fns, ARGS.rounds, ARGS.repeat)
        if extra_isas:
            kern.set_isa(best_isa)
        row["openblas"] = flop / best[0] / 1e9
        if torch is not None:
            row["torch"] = flop / best[2] / 1e9
        row["pg_llm"] = flop / best[1] / 1e9
        row["pg_llm/openblas"] = row["pg_llm"] / row["openblas"]
        row["pg_llm ms"] = best[1] * 1e3
        for i, isa in enumerate(extra_isas):
            row[f"pg_llm {isa}"] = flop / best[len(fns) - len(extra_isas) + i] / 1e9

        if not ARGS.no_check:
            ref = opa.astype(np.float64) @ opb.astype(np.float64)
            rel = np.linalg.norm(out_k - ref) / max(np.linalg.norm(ref), 1e-30)
            row["rel err"] = f"{rel:.1e}"

        if conn is not None:
            try:
                row["sql ms"] = time_sql(conn, M, K, N, ta, tb) * 1e3
            except Exception as e:
                row["sql ms"] = float("nan")
                print(f"  SQL timing of {name} failed: {e!r}")
        rows.append(row)
        print(f"  {name:16s} done", file=sys.stderr, flush=True)

    print()
    if pd is not None:
        df = pd.DataFrame(rows)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    else:
        keys = list(rows[0])
        print("  ".join(keys))
        for r in rows:
            print("  ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    print("\nGFLOP/s columns; 't' = transB (B stored [N,K]), 'T' = transA (A stored [K,M]); "
          "rel err = ||C - C_float64|| / ||C_float64||.")


if __name__ == "__main__":
    main()
