#!/usr/bin/env python3
"""
bench_backward.py -- pg_llm's backward kernels against torch.autograd, op by
op, at the shapes of a GPT-2 training step (B*T = 256 rows).

    . .venv/bin/activate
    python bench/bench_backward.py                  # 2 threads, the lab model and gpt2-small
    python bench/bench_backward.py --model lab
    python bench/bench_backward.py --threads 1 --rounds 6
    python bench/bench_backward.py --only matmul,attention
    python bench/bench_backward.py --isa avx2       # force the kernels' ISA

For every op, pg_llm's backward (through pg_llm_lab.kernels, the one ctypes
binding of extension/src/kernels/) and torch.autograd's backward of the same
op on the same data take turns, --rounds times, each turn a warm-up call then
--repeat calls (and at least 30 ms of them); the best call of each is kept.
torch's side is `out.backward(dy, retain_graph=True)` on a graph built once:
what a PyTorch training step pays for that op; its .grad accumulates, as
pg_llm's gradients do.  ratio = pg_llm / torch (below 1: pg_llm is faster).
`err` is max |pg_llm - torch| / max |torch| over the op's gradients, from one
call on zeroed buffers.

The products of the matmul backwards (dx = dy W^T, dW = x^T dy) are also
timed alone against torch.matmul.  Last, the sum over one backward pass of
the ops that dominate it (per layer: four linears, two LayerNorms, GELU,
attention; then ln_f, the tied lm_head, cross-entropy, the embedding).

Every library gets --threads threads (torch.set_num_threads,
llm_pool_set_threads; OMP/MKL variables are set before torch is imported).
Don't run it next to a build or a test suite: the machine must be quiet.
"""
import argparse
import os
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=10, help="timed calls per turn")
    p.add_argument("--rounds", type=int, default=4, help="turns per library and op")
    p.add_argument("--model", choices=["lab", "small", "both"], default="both")
    p.add_argument("--only", default=None,
                   help="comma list of op families: matmul, products, gelu, layernorm, "
                        "softmax, attention, cross_entropy, embedding, add")
    p.add_argument("--isa", choices=["scalar", "avx2", "avx512", "neon"], default=None)
    return p.parse_args()


ARGS = parse_args()
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import ctypes  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pg_llm_lab import kernels  # noqa: E402
from pg_llm_lab.kernels import ptr, strided  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit("bench_backward.py compares with torch.autograd: pip install -e '.[test]'")

SETTLE = 0.15  # s of sleep before each turn: thread pools spin for a while after a call

# GPT-2 shapes, B*T = 256 rows
MODELS = {
    "lab": dict(name="lab (4 layers, 4 heads, n_embd 128)", n_layer=4, C=128, H=4,
                V=50257, B=2, T=128),
    "small": dict(name="gpt2-small (12 layers, 12 heads, n_embd 768)", n_layer=12, C=768,
                  H=12, V=50257, B=1, T=256),
}


def race(fns, rounds, repeat, min_turn=0.03):
    """Best time of each function, the functions taking turns (see bench_matmul.py)."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            time.sleep(SETTLE)
            fn()
            calls, t_end = 0, time.perf_counter() + min_turn
            while calls < repeat or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
                calls += 1
    return best


def randn(*shape, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def checked(status, name):
    if status != kernels.LLM_OK:
        raise RuntimeError(f"{name} returned {status}")


def leaf(a):
    return torch.from_numpy(a).requires_grad_()


class Op:
    """One op: `ours()` runs pg_llm's backward into `grads` (numpy buffers),
    `theirs()` torch's into `leaves`' .grad; both accumulate."""

    def __init__(self, family, name, shape, ours, grads, out, dy, leaves):
        self.family, self.name, self.shape = family, name, shape
        self.ours, self.grads = ours, grads
        self.out, self.dy, self.leaves = out, dy, leaves

    def theirs(self):
        self.out.backward(self.dy, retain_graph=True)

    def error(self):
        """max |ours - torch| / max |torch| after one call of each on zeros."""
        for g in self.grads:
            g[...] = 0
        for t in self.leaves:
            t.grad = None
        self.ours()
        self.theirs()
        worst = 0.0
        for g, t in zip(self.grads, self.leaves):
            ref = t.grad.numpy()
            worst = max(worst, float(np.abs(g - ref).max() / max(np.abs(ref).max(), 1e-30)))
        return worst


# ---- the ops ------------------------------------------------------------------

def linear(lib, name, rows, n_in, n_out, tied=False):
    """y = x W + b (Conv1D, W [in, out]), or the tied lm_head y = x wte^T."""
    x = randn(rows, n_in, seed=1)
    w = randn(n_out, n_in, scale=0.02, seed=2) if tied else randn(n_in, n_out, scale=0.02, seed=2)
    dy = randn(rows, n_out, scale=1e-3, seed=3)
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    db = None if tied else np.zeros(n_out, dtype=np.float32)
    args = [ptr(a) for a in (dy, x, w, dx, dw, db)] + [rows, n_in, n_out, 0, int(tied)]
    f = lib.llm_matmul_backward

    tx, tw = leaf(x), leaf(w)
    if tied:
        out, leaves = tx @ tw.T, [tx, tw]
    else:
        tb = leaf(np.zeros(n_out, dtype=np.float32))
        out, leaves = tx @ tw + tb, [tx, tw, tb]
    grads = [dx, dw] + ([] if tied else [db])
    shape = f"[{rows},{n_in}] @ " + (f"[{n_out},{n_in}]^T" if tied else f"[{n_in},{n_out}] + b")
    return Op("matmul", name, shape, lambda: checked(f(*args), name), grads, out,
              torch.from_numpy(dy), leaves)


def products(lib, name, rows, n_in, n_out, tied=False):
    """The two products of a linear's backward, alone: (label, ours, torch's)."""
    x, dy = randn(rows, n_in, seed=1), randn(rows, n_out, seed=3)
    w = randn(n_out, n_in, seed=2) if tied else randn(n_in, n_out, seed=2)
    out = []
    # dx [rows, in] = dy [rows, out] @ W^T
    dx = np.zeros_like(x)
    a_dx = (ptr(dy), ptr(w), ptr(dx), rows, n_out, n_in, 0, 0 if tied else 1)
    t_dx = (torch.from_numpy(dy), torch.from_numpy(w) if tied else torch.from_numpy(w).T,
            torch.empty(rows, n_in))
    out.append((f"{name} dx", f"{rows}x{n_out}x{n_in}" + ("" if tied else "t"), a_dx, t_dx))
    # dW = x^T dy ([in, out]) or, tied, dy^T x ([vocab, in])
    dw = np.zeros_like(w)
    if tied:
        a_dw = (ptr(dy), ptr(x), ptr(dw), n_out, rows, n_in, 1, 0)
        t_dw = (torch.from_numpy(dy).T, torch.from_numpy(x), torch.empty(n_out, n_in))
        label = f"{n_out}x{rows}x{n_in}T"
    else:
        a_dw = (ptr(x), ptr(dy), ptr(dw), n_in, rows, n_out, 1, 0)
        t_dw = (torch.from_numpy(x).T, torch.from_numpy(dy), torch.empty(n_in, n_out))
        label = f"{n_in}x{rows}x{n_out}T"
    out.append((f"{name} dW", label, a_dw, t_dw))
    return out


def gelu(lib, rows, cols):
    x, dy = randn(rows, cols, seed=4), randn(rows, cols, seed=5)
    dx = np.zeros_like(x)
    px, pdy, pdx, n = ptr(x), ptr(dy), ptr(dx), x.size
    tx = leaf(x)
    return Op("gelu", "gelu (tanh)", f"[{rows},{cols}]",
              lambda: checked(lib.llm_gelu_backward(px, pdy, pdx, n), "gelu"), [dx],
              F.gelu(tx, approximate="tanh"), torch.from_numpy(dy), [tx])


def layernorm(lib, rows, cols):
    x, g, b, dy = randn(rows, cols, seed=6), randn(cols, seed=7), randn(cols, seed=8), randn(rows, cols, seed=9)
    y, mean, rstd = np.empty_like(x), np.empty(rows, np.float32), np.empty(rows, np.float32)
    checked(lib.llm_layernorm(ptr(x), ptr(g), ptr(b), ptr(y), rows, cols, 1e-5, ptr(mean),
                              ptr(rstd)), "layernorm")
    dx, dg, db = np.zeros_like(x), np.zeros_like(g), np.zeros_like(b)
    args = [ptr(a) for a in (x, g, mean, rstd, dy, dx, dg, db)] + [rows, cols]
    tx, tg, tb = leaf(x), leaf(g), leaf(b)
    return Op("layernorm", "layernorm", f"[{rows},{cols}]",
              lambda: checked(lib.llm_layernorm_backward(*args), "layernorm"), [dx, dg, db],
              F.layer_norm(tx, (cols,), tg, tb, 1e-5), torch.from_numpy(dy), [tx, tg, tb])


def softmax(lib, H, T):
    """The attention probabilities' softmax: [H*T, T], causal."""
    rows = H * T
    x, dy = randn(rows, T, seed=10), randn(rows, T, seed=11)
    y, dx = np.empty_like(x), np.zeros_like(x)
    checked(lib.llm_softmax(ptr(x), ptr(y), rows, T, T), "softmax")
    args = (ptr(y), ptr(dy), ptr(dx), rows, T, T)
    mask = torch.ones(T, T, dtype=torch.bool).tril().repeat(H, 1)
    tx = leaf(x)
    return Op("softmax", "softmax (causal)", f"[{rows},{T}]",
              lambda: checked(lib.llm_softmax_backward(*args), "softmax"), [dx],
              torch.softmax(tx.masked_fill(~mask, float("-inf")), -1), torch.from_numpy(dy), [tx])


def attention(lib, B, T, C, H):
    """Causal attention of B sequences from the fused qkv [B, T, 3C] to y [B, T, C]:
    pg_llm's backward per sequence (strided, in place); torch's through
    split/view/transpose and scaled_dot_product_attention, as GPT-2 does."""
    qkv = randn(B, T, 3 * C, seed=12)
    y, lse = np.empty((B, T, C), np.float32), np.empty((B, H, T), np.float32)
    dy, dqkv = randn(B, T, C, seed=13), np.zeros_like(qkv)
    calls = []
    for b in range(B):
        (qp, ld), (kp, _), (vp, _) = (strided(qkv[b][:, i * C:(i + 1) * C]) for i in range(3))
        (dqp, _), (dkp, _), (dvp, _) = (strided(dqkv[b][:, i * C:(i + 1) * C]) for i in range(3))
        checked(lib.llm_attention(qp, ld, kp, ld, vp, ld, ptr(y[b]), T, T, C, H, 1, ptr(lse[b])),
                "attention")
        calls.append((qp, ld, kp, ld, vp, ld, ptr(y[b]), ptr(lse[b]), ptr(dy[b]),
                      dqp, ld, dkp, ld, dvp, ld, T, T, C, H, 1))

    def ours():
        for a in calls:
            checked(lib.llm_attention_backward(*a), "attention")

    tqkv = leaf(qkv)
    q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in tqkv.split(C, dim=2))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    return Op("attention", "attention (causal)", f"{B} x [{T},3*{C}], {H} heads", ours, [dqkv],
              out, torch.from_numpy(dy), [tqkv])


def cross_entropy(lib, rows, V):
    logits = randn(rows, V, scale=2.0, seed=14)
    targets = np.random.default_rng(15).integers(0, V, rows).astype(np.int32)
    loss, counted = ctypes.c_double(), ctypes.c_int64()
    lse, d = np.empty(rows, np.float32), np.zeros_like(logits)
    checked(lib.llm_cross_entropy(ptr(logits), ptr(targets), rows, V, ctypes.byref(loss),
                                  ctypes.byref(counted), ptr(lse)), "cross_entropy")
    args = (ptr(logits), ptr(targets), ptr(lse), rows, V, np.float32(1.0 / counted.value), ptr(d))
    tl = leaf(logits)
    return Op("cross_entropy", "cross-entropy (mean)", f"[{rows},{V}]",
              lambda: checked(lib.llm_cross_entropy_backward(*args), "cross_entropy"), [d],
              F.cross_entropy(tl, torch.from_numpy(targets).long()), torch.tensor(1.0), [tl])


def embedding(lib, rows, V, C):
    ids = np.random.default_rng(16).integers(0, V, rows).astype(np.int32)
    w, dy = randn(V, C, seed=17), randn(rows, C, seed=18)
    dw = np.zeros_like(w)
    args = (ptr(ids), ptr(dy), ptr(dw), rows, C)
    tw = leaf(w)
    return Op("embedding", "embedding (wte)", f"{rows} ids of [{V},{C}]",
              lambda: lib.llm_embedding_backward(*args), [dw],
              F.embedding(torch.from_numpy(ids).long(), tw), torch.from_numpy(dy), [tw])


def add_bias(lib, rows, C):
    a, b, dy = randn(rows, C, seed=19), randn(C, seed=20), randn(rows, C, seed=21)
    da, db = np.zeros_like(a), np.zeros_like(b)
    args = (ptr(dy), ptr(da), ptr(db), dy.size, C)
    ta, tb = leaf(a), leaf(b)
    return Op("add", "add, broadcast (bias)", f"[{rows},{C}] + [{C}]",
              lambda: lib.llm_add_backward(*args), [da, db], ta + tb, torch.from_numpy(dy),
              [ta, tb])


# ---- main -----------------------------------------------------------------------

def model_ops(lib, m):
    rows, C, H, V = m["B"] * m["T"], m["C"], m["H"], m["V"]
    # (op, how many times one backward pass runs it)
    return [
        (linear(lib, "attn.c_attn", rows, C, 3 * C), m["n_layer"]),
        (linear(lib, "attn.c_proj", rows, C, C), m["n_layer"]),
        (linear(lib, "mlp.c_fc", rows, C, 4 * C), m["n_layer"]),
        (linear(lib, "mlp.c_proj", rows, 4 * C, C), m["n_layer"]),
        (linear(lib, "lm_head (tied)", rows, C, V, tied=True), 1),
        (gelu(lib, rows, 4 * C), m["n_layer"]),
        (layernorm(lib, rows, C), 2 * m["n_layer"] + 1),
        (attention(lib, m["B"], m["T"], C, H), m["n_layer"]),
        (softmax(lib, H, m["T"]), 0),
        (cross_entropy(lib, rows, V), 1),
        (embedding(lib, rows, V, C), 1),
        (add_bias(lib, rows, C), 0),
    ]


def wanted(family):
    return ARGS.only is None or family in ARGS.only.split(",")


def run_model(lib, key):
    m = MODELS[key]
    print(f"\n== {m['name']}, B={m['B']} T={m['T']} ({m['B'] * m['T']} rows), vocab {m['V']}")
    print(f"{'op':24s} {'shape':30s} {'pg_llm ms':>10s} {'torch ms':>10s} {'ratio':>6s} {'err':>8s}")
    ours_total = theirs_total = 0.0
    for op, count in model_ops(lib, m):
        if not wanted(op.family):
            continue
        err = op.error()
        ours, theirs = race([op.ours, op.theirs], ARGS.rounds, ARGS.repeat)
        ours_total += count * ours
        theirs_total += count * theirs
        print(f"{op.name:24s} {op.shape:30s} {ours * 1e3:10.3f} {theirs * 1e3:10.3f} "
              f"{ours / theirs:6.2f} {err:8.1e}", flush=True)
    if ARGS.only is None:
        print(f"{'one backward pass (sum)':55s} {ours_total * 1e3:10.1f} {theirs_total * 1e3:10.1f} "
              f"{ours_total / theirs_total:6.2f}")

    if wanted("products"):
        rows, C, V = m["B"] * m["T"], m["C"], m["V"]
        print(f"\n{'product':24s} {'MxKxN':30s} {'pg_llm ms':>10s} {'torch ms':>10s} {'ratio':>6s} "
              f"{'GFLOP/s':>8s}")
        for name, n_in, n_out, tied in (("attn.c_attn", C, 3 * C, False),
                                        ("attn.c_proj", C, C, False),
                                        ("mlp.c_fc", C, 4 * C, False),
                                        ("mlp.c_proj", 4 * C, C, False),
                                        ("lm_head", C, V, True)):
            for label, shape, a, (ta, tb, tout) in products(lib, name, rows, n_in, n_out, tied):
                M, K, N = a[3:6]

                def ours(a=a):
                    checked(lib.llm_matmul_acc(*a), "matmul_acc")

                def theirs(ta=ta, tb=tb, tout=tout):
                    with torch.no_grad():
                        torch.matmul(ta, tb, out=tout)
                best = race([ours, theirs], ARGS.rounds, ARGS.repeat)
                print(f"{label:24s} {shape:30s} {best[0] * 1e3:10.3f} {best[1] * 1e3:10.3f} "
                      f"{best[0] / best[1]:6.2f} {2.0 * M * K * N / best[0] / 1e9:8.1f}", flush=True)


def main():
    try:
        lib = kernels.load()
    except RuntimeError as err:
        sys.exit(str(err))
    lib.llm_pool_set_threads(ARGS.threads)
    if ARGS.isa:
        lib.llm_set_isa(kernels.ISA[ARGS.isa])
    torch.set_num_threads(ARGS.threads)
    isa = lib.llm_isa_name(lib.llm_cpu_isa()).decode()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus; threads={ARGS.threads}; "
          f"{ARGS.rounds} rounds x {ARGS.repeat} calls, best reported")
    print(f"pg_llm kernel ISA: {isa}; torch {torch.__version__}")
    print("ratio = pg_llm / torch (below 1: pg_llm faster); err = max |pg_llm - torch| / max |torch|")
    for key in (["lab", "small"] if ARGS.model == "both" else [ARGS.model]):
        run_model(lib, key)


if __name__ == "__main__":
    main()
