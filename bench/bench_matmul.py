#!/usr/bin/env python3
"""
bench_matmul.py -- pg_llm's llm_matmul against OpenBLAS (numpy) and PyTorch.

    . /work/venv/bin/activate
    python bench/bench_matmul.py                 # 2 threads, default shapes
    python bench/bench_matmul.py --threads 1 --repeat 50
    python bench/bench_matmul.py --sql           # + SELECT llm_matmul(...) column
    python bench/bench_matmul.py --shapes 64x768x768,1x768x50257t

Every library is limited to --threads threads.  OpenBLAS reads its thread
count when numpy is imported, so the script sets OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS / MKL_NUM_THREADS before importing numpy (threadpoolctl is
used on top when it is installed).  The kernel is built from
extension/src/kernels/*.c into a temporary shared library and called
through ctypes.

GFLOP/s = 2*M*K*N / best time over --repeat runs (after warm-up).  Operands
are the same float32 arrays for all three libraries, stored the way the
kernel gets them (transB: B stored [N,K]; numpy and torch multiply by the
transposed view, which is what they see in practice too).
"""
import argparse
import os
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=20,
                   help="timed runs per shape and library (best is reported)")
    p.add_argument("--shapes", default=None,
                   help="comma list of MxKxN, suffix t for transB, T for transA "
                        "(e.g. 64x768x50257t); default: GPT-2's shapes")
    p.add_argument("--sql", action="store_true",
                   help="also time SELECT llm_matmul(...) through pg_llm_lab")
    p.add_argument("--no-check", action="store_true",
                   help="skip the correctness check against numpy")
    p.add_argument("--cc", default=os.environ.get("CC", "cc"))
    return p.parse_args()


ARGS = parse_args()

# Before numpy is imported: OpenBLAS sizes its pool at load time.
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import ctypes  # noqa: E402
import glob  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

try:
    import threadpoolctl  # noqa: E402
except ImportError:
    threadpoolctl = None

try:
    import torch  # noqa: E402
except ImportError:
    torch = None

try:
    import pandas as pd  # noqa: E402
except ImportError:
    pd = None

ROOT = pathlib.Path(__file__).resolve().parents[1]
KDIR = ROOT / "extension" / "src" / "kernels"

# (M, K, N, transA, transB, note)
DEFAULT_SHAPES = [
    (64, 768, 768, 0, 0, "attn c_proj, T=64"),
    (64, 768, 3072, 0, 0, "mlp c_fc, T=64"),
    (64, 3072, 768, 0, 0, "mlp c_proj, T=64"),
    (64, 768, 2304, 0, 0, "attn c_attn, T=64"),
    (768, 768, 768, 0, 0, "square"),
    (64, 768, 50257, 0, 0, "lm_head as [K,N]"),
    (64, 768, 50257, 0, 1, "lm_head (wte [N,K])"),
    (64, 768, 768, 1, 0, "transA (backward dW)"),
    (1, 768, 2304, 0, 0, "decode c_attn"),
    (1, 768, 3072, 0, 0, "decode c_fc"),
    (1, 3072, 768, 0, 0, "decode mlp c_proj"),
    (1, 768, 50257, 0, 1, "decode lm_head"),
]


def parse_shapes(text):
    shapes = []
    for item in text.split(","):
        item = item.strip()
        ta = tb = 0
        while item and item[-1] in "tT":
            if item[-1] == "t":
                tb = 1
            else:
                ta = 1
            item = item[:-1]
        m, k, n = (int(x) for x in item.lower().split("x"))
        shapes.append((m, k, n, ta, tb, ""))
    return shapes


# ---- the kernel, through ctypes ---------------------------------------------

def build_kernels(outdir, cc):
    """cc -O2 -fPIC -shared -pthread extension/src/kernels/*.c -lm.

    Other kernel files are written concurrently and may not compile at any
    given moment; llm_matmul only needs cpu.c, pool.c and matmul.c, so fall
    back to those.
    """
    out = os.path.join(outdir, "libpg_llm_kernels.so")
    base = [cc, "-O2", "-fPIC", "-shared", "-pthread"]
    everything = sorted(glob.glob(str(KDIR / "*.c")))
    needed = [str(KDIR / f) for f in ("cpu.c", "pool.c", "matmul.c")]
    err = ""
    for srcs in (everything, needed):
        r = subprocess.run(base + srcs + ["-o", out, "-lm"],
                           capture_output=True, text=True)
        if r.returncode == 0:
            return out, srcs
        err = r.stderr
    sys.exit("building the kernels failed:\n" + err)


class Kernels:
    def __init__(self, path):
        lib = ctypes.CDLL(path)
        fp = ctypes.POINTER(ctypes.c_float)
        lib.llm_matmul.argtypes = [fp, fp, fp, fp, ctypes.c_int64, ctypes.c_int64,
                                   ctypes.c_int64, ctypes.c_int, ctypes.c_int]
        lib.llm_matmul.restype = ctypes.c_int
        lib.llm_pool_set_threads.argtypes = [ctypes.c_int]
        lib.llm_cpu_isa.restype = ctypes.c_int
        lib.llm_isa_name.argtypes = [ctypes.c_int]
        lib.llm_isa_name.restype = ctypes.c_char_p
        self.lib = lib
        self.fp = fp

    def set_threads(self, n):
        self.lib.llm_pool_set_threads(n)

    def isa(self):
        return self.lib.llm_isa_name(self.lib.llm_cpu_isa()).decode()

    def matmul_fn(self, a, b, c, M, K, N, ta, tb):
        """A zero-argument closure: ctypes conversions done once, up front."""
        f = self.lib.llm_matmul
        pa, pb, pc = (x.ctypes.data_as(self.fp) for x in (a, b, c))
        return lambda: f(pa, pb, None, pc, M, K, N, ta, tb)


# ---- timing -----------------------------------------------------------------

def best_time(fn, repeat, min_warm=0.05, settle=0.2):
    """Warm up (at least 2 calls and ~min_warm s), then best of `repeat`.

    Sleeps `settle` seconds first: OpenBLAS, torch's OpenMP and pg_llm's
    pool all spin-wait for a while after a call, and on a small machine a
    spinning pool of the library timed just before steals whole cores.
    """
    time.sleep(settle)
    t_end = time.perf_counter() + min_warm
    fn()
    fn()
    while time.perf_counter() < t_end:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def operands(M, K, N, ta, tb, rng):
    a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
    return a, b


# ---- SQL hook ---------------------------------------------------------------

def time_sql(conn, M, K, N, repeat=5, ta=0, tb=0):
    """Seconds for one `SELECT llm_matmul($1::tensor, $2::tensor)`, best of
    `repeat`, including transfer and (de)serialisation of the tensors.

    Relies on pg_llm_lab registering psycopg adapters for numpy arrays.  The
    SQL function takes op(A) and op(B) as given, so only plain layouts are
    timed here (ta/tb are accepted for symmetry and must be 0).
    """
    if ta or tb:
        raise NotImplementedError("SQL timing covers plain layouts only")
    rng = np.random.default_rng(0)
    a, b = operands(M, K, N, 0, 0, rng)
    sql = "SELECT llm_matmul(%s::tensor, %s::tensor)"
    with conn.cursor() as cur:
        def once():
            cur.execute(sql, (a, b))
            cur.fetchone()
        return best_time(once, repeat, min_warm=0.0, settle=0.0)


def open_sql():
    """Connection for the SQL column, or (None, reason)."""
    try:
        import pg_llm_lab
    except Exception as e:  # ImportError and anything it raises on import
        return None, f"pg_llm_lab not importable: {e!r}"
    try:
        return pg_llm_lab.connect(), None
    except Exception as e:
        return None, f"pg_llm_lab.connect() failed: {e!r}"


# ---- main -------------------------------------------------------------------

def main():
    shapes = parse_shapes(ARGS.shapes) if ARGS.shapes else DEFAULT_SHAPES
    threads = ARGS.threads

    tmp = tempfile.mkdtemp(prefix="pg_llm_bench_")
    path, srcs = build_kernels(tmp, ARGS.cc)
    kern = Kernels(path)
    kern.set_threads(threads)

    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(threads)
    if torch is not None:
        torch.set_num_threads(threads)

    conn, sql_reason = (None, None)
    if ARGS.sql:
        conn, sql_reason = open_sql()

    print(f"cpu: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus; threads={threads}; repeat={ARGS.repeat}")
    print(f"pg_llm kernel ISA: {kern.isa()}  (built from "
          f"{', '.join(os.path.basename(s) for s in srcs)})")
    blas = "?"
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]["name"] + " " + \
            cfg["Build Dependencies"]["blas"]["version"]
    except Exception:
        pass
    print(f"numpy {np.__version__} ({blas}); "
          f"torch {torch.__version__ if torch else 'not installed'}; "
          f"threadpoolctl {'yes' if threadpoolctl else 'no (env vars)'}")
    if ARGS.sql and conn is None:
        print(f"SQL column skipped: {sql_reason}")

    rng = np.random.default_rng(0)
    rows = []
    for M, K, N, ta, tb, note in shapes:
        a, b = operands(M, K, N, ta, tb, rng)
        opa = a.T if ta else a
        opb = b.T if tb else b
        flop = 2.0 * M * K * N
        row = {"shape": f"{M}x{K}x{N}" + ("T" if ta else "") + ("t" if tb else ""),
               "note": note}

        out = np.empty((M, N), dtype=np.float32)
        t_np = best_time(lambda: np.matmul(opa, opb, out=out), ARGS.repeat)
        row["openblas"] = flop / t_np / 1e9

        if torch is not None:
            ta_t, tb_t = torch.from_numpy(opa), torch.from_numpy(opb)
            out_t = torch.empty((M, N), dtype=torch.float32)
            with torch.no_grad():
                t_t = best_time(lambda: torch.matmul(ta_t, tb_t, out=out_t), ARGS.repeat)
            row["torch"] = flop / t_t / 1e9

        c = np.empty((M, N), dtype=np.float32)
        fn = kern.matmul_fn(a, b, c, M, K, N, ta, tb)
        t_k = best_time(fn, ARGS.repeat)
        row["pg_llm"] = flop / t_k / 1e9
        row["pg_llm/openblas"] = row["pg_llm"] / row["openblas"]
        row["pg_llm ms"] = t_k * 1e3

        if not ARGS.no_check:
            ref = opa.astype(np.float64) @ opb.astype(np.float64)
            rel = np.linalg.norm(c - ref) / max(np.linalg.norm(ref), 1e-30)
            row["rel err"] = f"{rel:.1e}"

        if conn is not None:
            try:
                t_s = time_sql(conn, M, K, N, ta=ta, tb=tb)
                row["sql ms"] = t_s * 1e3
            except Exception as e:
                row["sql ms"] = float("nan")
                print(f"  SQL {row['shape']}: {e!r}")
                try:
                    conn.rollback()
                except Exception:
                    pass
        rows.append(row)
        print(f"  done {row['shape']}", file=sys.stderr, flush=True)

    print()
    if pd is not None:
        df = pd.DataFrame(rows)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    else:
        keys = list(rows[0])
        print("  ".join(keys))
        for r in rows:
            print("  ".join(f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k])
                            for k in keys))
    print("\nGFLOP/s = 2*M*K*N / best time; 't' = transB (B stored [N,K]), "
          "'T' = transA (A stored [K,M]).")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
