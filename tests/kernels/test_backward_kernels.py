"""
The backward kernels (llm_<op>_backward in extension/src/kernels/) against
torch.autograd in float32 -- what the extension has to match -- and against
float64 references (numpy closed forms, or torch.autograd in float64 for
attention).  Every ISA the CPU has; odd sizes; and the conventions every
backward keeps: it accumulates (+=) into each gradient, a NULL gradient is
skipped without changing the others, the bits are the same at 1, 2 and 3
threads, and the long ones stop when the interrupt hook asks.

Errors are measured against an error bound per element -- the float64 sum
of the absolute values of the terms that make the element (|dC| |B|^T for
a product, both terms of gelu' where they cancel, ...) -- and the
tolerances, in units of that bound, are about three times the worst error
measured on this suite (float32 rounding is 6e-8).

Run:  pytest tests/kernels/test_backward_kernels.py -q
"""
import ctypes

import numpy as np
import pytest

from pg_llm_lab import kernels
from pg_llm_lab.kernels import ISA, ptr, strided

torch = pytest.importorskip("torch")
F = torch.nn.functional

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512", 3: "neon"}
SIZES = [1, 7, 17, 33, 769]


@pytest.fixture(scope="module")
def lib():
    try:
        return kernels.load()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(params=[0, 1, 2, 3], ids=lambda i: ISA_NAMES[i])
def isa(request, lib):
    """Run the test once per ISA the CPU supports; restores the best ISA."""
    if ISA_NAMES[request.param] not in kernels.available_isas(lib):
        pytest.skip(f"CPU lacks {ISA_NAMES[request.param]}")
    lib.llm_set_isa(request.param)
    lib.llm_pool_set_threads(2)
    yield request.param
    lib.llm_set_isa(ISA["avx512"])


def randn(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def t32(a, grad=True):
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float32, requires_grad=grad)


def t64(a, grad=True):
    return torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, requires_grad=grad)


def worst(got, ref, scale):
    """Largest |got - ref| / scale (scale broadcasts: an error bound per element,
    or the largest |ref| for a tensor-wide relative error)."""
    got, ref = f64(got), f64(ref)
    assert np.isfinite(got).all()
    return float(np.max(np.abs(got - ref) / np.maximum(scale, 1e-30), initial=0.0))


def rel_to_max(got, ref):
    """max |got - ref| over max |ref|: the error relative to the tensor's size."""
    return worst(got, ref, np.max(np.abs(f64(ref)), initial=0.0))


def at_1_2_3_threads(lib, fn):
    """fn() returns a tuple of arrays; they must have the same bits at 1, 2
    and 3 threads.  Returns the 2-thread result."""
    results = {}
    for threads in (1, 2, 3):
        lib.llm_pool_set_threads(threads)
        results[threads] = fn()
    lib.llm_pool_set_threads(2)
    for threads in (1, 3):
        for a, b in zip(results[threads], results[2]):
            assert np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32)), threads
    return results[2]


def copies(*arrays):
    return [None if a is None else a.copy() for a in arrays]


# ---- callers: each takes the gradient buffers (arrays or None) and fills them in place ----

def call(status):
    assert status == kernels.LLM_OK
    return status


def matmul_backward(lib, dC, a, b, M, K, N, ta, tb, dA, dB, dbias):
    return lib.llm_matmul_backward(ptr(dC), ptr(a), ptr(b), ptr(dA), ptr(dB), ptr(dbias),
                                   M, K, N, ta, tb)


def attention_backward(lib, q, k, v, y, lse, dy, dq, dk, dv, n_head, causal):
    """q, k, v, dq, dk, dv may be column slices of wider arrays (strided rows)."""
    Tq, C = y.shape
    Tk = k.shape[0]
    (qp, ldq), (kp, ldk), (vp, ldv) = strided(q), strided(k), strided(v)
    grads = [strided(g) if g is not None else (None, 0) for g in (dq, dk, dv)]
    (dqp, ldqg), (dkp, ldkg), (dvp, ldvg) = grads
    return lib.llm_attention_backward(qp, ldq, kp, ldk, vp, ldv, ptr(y), ptr(lse), ptr(dy),
                                      dqp, ldqg, dkp, ldkg, dvp, ldvg,
                                      Tq, Tk, C, n_head, int(causal))


def attention_forward(lib, q, k, v, n_head, causal):
    Tq, C = q.shape
    y = np.empty((Tq, C), dtype=np.float32)
    lse = np.empty((n_head, Tq), dtype=np.float32)
    (qp, ldq), (kp, ldk), (vp, ldv) = strided(q), strided(k), strided(v)
    call(lib.llm_attention(qp, ldq, kp, ldk, vp, ldv, ptr(y), q.shape[0], k.shape[0], C,
                           n_head, int(causal), ptr(lse)))
    return y, lse


def layernorm_forward(lib, x, g, b):
    y = np.empty_like(x)
    mean = np.empty(x.shape[0], dtype=np.float32)
    rstd = np.empty(x.shape[0], dtype=np.float32)
    call(lib.llm_layernorm(ptr(x), ptr(g), ptr(b), ptr(y), x.shape[0], x.shape[1], 1e-5,
                           ptr(mean), ptr(rstd)))
    return y, mean, rstd


def softmax_forward(lib, x, causal_rows=0):
    y = np.empty_like(x)
    call(lib.llm_softmax(ptr(x), ptr(y), x.shape[0], x.shape[1], causal_rows))
    return y


def cross_entropy_lse(lib, logits, targets):
    loss, counted = ctypes.c_double(), ctypes.c_int64()
    lse = np.empty(logits.shape[0], dtype=np.float32)
    call(lib.llm_cross_entropy(ptr(logits), ptr(targets), logits.shape[0], logits.shape[1],
                               ctypes.byref(loss), ctypes.byref(counted), ptr(lse)))
    return lse, counted.value


def causal_keep(Tq, Tk):
    """[Tq, Tk]: query i sees keys 0 .. i + (Tk - Tq), as the kernels' mask."""
    return np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)


# ---- matmul --------------------------------------------------------------------

def matmul_refs(dC, a, b, ta, tb):
    """float64 dA, dB, dbias laid out as stored, and their error bounds
    sum |dC| |op(B)| etc."""
    opA, opB, d = (f64(a).T if ta else f64(a)), (f64(b).T if tb else f64(b)), f64(dC)
    dopA, dopB = d @ opB.T, opA.T @ d
    bound_a, bound_b = np.abs(d) @ np.abs(opB).T, np.abs(opA).T @ np.abs(d)
    if ta:
        dopA, bound_a = dopA.T, bound_a.T
    if tb:
        dopB, bound_b = dopB.T, bound_b.T
    return (dopA, dopB, d.sum(axis=0)), (bound_a, bound_b, np.abs(d).sum(axis=0))


MATMUL_SHAPES = [(1, 1, 1), (1, 7, 1), (7, 1, 5), (2, 3, 4), (17, 33, 7), (33, 17, 65),
                 (1, 769, 33), (3, 5, 769), (33, 65, 1), (70, 520, 33), (769, 7, 17),
                 (2, 33, 50257), (64, 300, 50)]


@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_matmul_backward(lib, isa, shape, ta, tb):
    M, K, N = shape
    seed = M * 10007 + K * 101 + N
    a = randn(*((K, M) if ta else (M, K)), seed=seed)
    b = randn(*((N, K) if tb else (K, N)), seed=seed + 1)
    dC = randn(M, N, seed=seed + 2)
    init = [randn(*a.shape, seed=seed + 3), randn(*b.shape, seed=seed + 4), randn(N, seed=seed + 5)]

    def run():
        grads = copies(*init)
        call(matmul_backward(lib, dC, a, b, M, K, N, ta, tb, *grads))
        return grads

    got = at_1_2_3_threads(lib, run)
    refs, bounds = matmul_refs(dC, a, b, ta, tb)
    for g, g0, ref, bound in zip(got, init, refs, bounds):
        assert worst(g, f64(g0) + ref, bound + np.abs(g0)) < 1e-6

    # what torch.autograd computes in float32
    ta_, tb_, tbias = t32(a), t32(b), t32(np.zeros(N, np.float32))
    out = (ta_.T if ta else ta_) @ (tb_.T if tb else tb_) + tbias
    out.backward(torch.from_numpy(dC))
    for g, g0, ref, bound in zip(got, init, (ta_.grad, tb_.grad, tbias.grad), bounds):
        assert worst(f64(g) - g0, ref.numpy(), bound + np.abs(g0)) < 1e-6


@pytest.mark.parametrize("shape", [(1, 1, 1), (17, 33, 7), (1, 769, 33), (33, 65, 1),
                                   (200, 40, 1100), (64, 768, 768), (5, 3072, 77)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_matmul_acc(lib, isa, shape, ta, tb):
    """C += op(A) op(B): into zeros it is llm_matmul exactly; into C0 it adds."""
    M, K, N = shape
    a = randn(*((K, M) if ta else (M, K)), seed=1)
    b = randn(*((N, K) if tb else (K, N)), seed=2)
    want = np.empty((M, N), dtype=np.float32)
    call(lib.llm_matmul(ptr(a), ptr(b), None, ptr(want), M, K, N, ta, tb))
    got = np.zeros((M, N), dtype=np.float32)
    call(lib.llm_matmul_acc(ptr(a), ptr(b), ptr(got), M, K, N, ta, tb))
    assert np.array_equal(got, want)

    c0 = randn(M, N, seed=3)

    def run():
        c = c0.copy()
        call(lib.llm_matmul_acc(ptr(a), ptr(b), ptr(c), M, K, N, ta, tb))
        return (c,)

    got, = at_1_2_3_threads(lib, run)
    opA, opB = (f64(a).T if ta else f64(a)), (f64(b).T if tb else f64(b))
    assert worst(got, c0 + opA @ opB, np.abs(opA) @ np.abs(opB) + np.abs(c0)) < 1e-6


def test_matmul_backward_lm_head(lib, isa):
    """GPT-2's tied lm_head at a reduced vocabulary: logits = x @ wte^T (transB):
    dx [rows, C] is a large-K product, dwte [vocab, C] a transA one."""
    rows, C, vocab = 64, 128, 5003
    x, wte = randn(rows, C, seed=1), randn(vocab, C, seed=2, scale=0.02)
    dlogits = randn(rows, vocab, seed=3, scale=1e-3)

    def run():
        dx, dwte = np.zeros_like(x), np.zeros_like(wte)
        call(matmul_backward(lib, dlogits, x, wte, rows, C, vocab, 0, 1, dx, dwte, None))
        return dx, dwte

    dx, dwte = at_1_2_3_threads(lib, run)
    (ref_dx, ref_dwte, _), (bound_dx, bound_dwte, _) = matmul_refs(dlogits, x, wte, 0, 1)
    assert worst(dx, ref_dx, bound_dx) < 1e-6
    assert worst(dwte, ref_dwte, bound_dwte) < 1e-6


# ---- elementwise -------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_add_mul_scale_backward(lib, n):
    """Elementwise gradients are exact (to the one rounding a multiply-add
    contracted into an FMA may save); broadcast ones sum over rows."""
    rows = 5
    a, b, dy = randn(rows, n, seed=1), randn(n, seed=2), randn(rows, n, seed=3)
    da0, db0 = randn(rows, n, seed=4), randn(n, seed=5)

    da, db = copies(da0, db0)
    lib.llm_add_backward(ptr(dy), ptr(da), ptr(db), dy.size, n)
    assert np.array_equal(da, da0 + dy)
    assert worst(db, f64(db0) + f64(dy).sum(axis=0), np.abs(db0) + np.abs(dy).sum(axis=0)) < 4e-7

    da, db = copies(da0, db0)
    lib.llm_mul_backward(ptr(dy), ptr(a), ptr(b), ptr(da), ptr(db), dy.size, n)
    assert worst(da, f64(da0) + f64(dy) * b, np.abs(da0) + np.abs(f64(dy) * b)) < 1.2e-7
    ref = f64(db0) + (f64(dy) * a).sum(axis=0)
    assert worst(db, ref, np.abs(db0) + np.abs(f64(dy) * a).sum(axis=0)) < 4e-7

    ta, tb = t32(a), t32(b)
    (ta * tb).backward(torch.from_numpy(dy))
    assert worst(da, da0 + ta.grad.numpy(), np.abs(da0) + np.abs(f64(dy) * b)) < 1.2e-7
    assert worst(db - db0, tb.grad.numpy(), np.abs(db0) + np.abs(f64(dy) * a).sum(axis=0)) < 4e-7

    # no broadcast: bn = n elements each
    full = randn(rows, n, seed=6)
    da, db = copies(da0, np.zeros_like(full))
    lib.llm_add_backward(ptr(dy), ptr(da), ptr(db), dy.size, dy.size)
    assert np.array_equal(db, dy) and np.array_equal(da, da0 + dy)
    da, db = np.zeros_like(a), np.zeros_like(full)
    lib.llm_mul_backward(ptr(dy), ptr(a), ptr(full), ptr(da), ptr(db), dy.size, dy.size)
    assert np.array_equal(da, dy * full) and np.array_equal(db, dy * a)

    dx = da0.copy()
    lib.llm_scale_backward(ptr(dy), 0.37, ptr(dx), dy.size)
    scaled = np.float64(np.float32(0.37)) * dy
    assert worst(dx, f64(da0) + scaled, np.abs(da0) + np.abs(scaled)) < 1.2e-7


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 7), (7, 1), (17, 33), (33, 769), (64, 64)])
def test_transpose_backward(lib, rows, cols):
    dy = randn(cols, rows, seed=1)          # the forward's y is [cols, rows]
    dx0 = randn(rows, cols, seed=2)
    dx = dx0.copy()
    lib.llm_transpose_backward(ptr(dy), ptr(dx), rows, cols)
    assert np.array_equal(dx, dx0 + dy.T)
    tx = t32(randn(rows, cols, seed=3))
    tx.T.backward(torch.from_numpy(dy))
    assert np.array_equal(dx, dx0 + tx.grad.numpy())


# ---- GELU --------------------------------------------------------------------------

def ref_gelu_grad(x):
    """d/dx of 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), in float64:
    0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) u', with 0.5 (1 + tanh(u)) = s =
    1 / (1 + exp(-2u)) and 0.5 (1 - tanh(u)^2) = 2 s (1 - s) written so that
    they keep their digits where tanh(u) ~ -1 (float64 tanh does not).
    Returns the gradient, an error bound for a float32 computation (its two
    terms, cancelling for x < 0, times exp's conditioning 1 + 2|u|) and one
    for torch's float32 formula (which loses ~1 ulp of 1 in 1 +- tanh(u),
    times 0.5 x u' in the second term)."""
    x = f64(x)
    k = np.sqrt(2.0 / np.pi)
    u = k * (x + 0.044715 * x ** 3)
    du = k * (1.0 + 3 * 0.044715 * x * x)
    with np.errstate(over="ignore"):
        s, one_minus_s = 1.0 / (1.0 + np.exp(-2.0 * u)), 1.0 / (1.0 + np.exp(2.0 * u))
    left, right = s, 2.0 * x * s * one_minus_s * du
    terms = (np.abs(left) + np.abs(right)) * (1.0 + 2.0 * np.abs(u))
    return left + right, terms, terms + 1.0 + np.abs(x * du)


@pytest.mark.parametrize("n", SIZES + [100_003])
def test_gelu_backward(lib, isa, n):
    x, dy = randn(n, seed=n, scale=3.0), randn(n, seed=n + 1)
    dx0 = randn(n, seed=n + 2)

    def run():
        dx = dx0.copy()
        call(lib.llm_gelu_backward(ptr(x), ptr(dy), ptr(dx), n))
        return (dx,)

    dx, = at_1_2_3_threads(lib, run)
    grad, bound, torch_bound = ref_gelu_grad(x)
    assert worst(dx, dx0 + dy * grad, np.abs(dy) * bound + np.abs(dx0)) < 4e-7
    tx = t32(x)
    F.gelu(tx, approximate="tanh").backward(torch.from_numpy(dy))
    assert worst(dx, dx0 + tx.grad.numpy(), np.abs(dy) * torch_bound + np.abs(dx0)) < 4e-7


def test_gelu_backward_extremes(lib, isa):
    """The tails: gelu' goes to 0 (x << 0) and 1 (x >> 0) without NaN, even
    where x^3 overflows (torch's float32 kernel gives NaN there; its float64
    one gives 0 and 1); NaN stays NaN."""
    x = np.concatenate([np.linspace(-40, 40, 4001, dtype=np.float32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 1e10, -1e10, 1e30, -1e30, np.inf,
                                  -np.inf, np.nan], np.float32)])
    dy = np.ones_like(x)
    dx = np.zeros_like(x)
    call(lib.llm_gelu_backward(ptr(x), ptr(dy), ptr(dx), x.size))
    grad, bound, _ = ref_gelu_grad(x[:4001 + 4])
    # where -2u > 80 (x < -9.6) the kernel's gradient is 0, the true one below 4e-33
    assert np.all(np.abs(dx[:4001 + 4] - grad) <= 4e-7 * bound + 4e-33)
    assert np.abs(dx[:500]).max() < 1e-30                   # x <= -35
    assert list(dx[-7:-1]) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0] and np.isnan(dx[-1])


# ---- softmax ---------------------------------------------------------------------

def ref_softmax_backward(y, dy, keep):
    y, dy = f64(y) * keep, f64(dy) * keep
    return y * (dy - (y * dy).sum(axis=1, keepdims=True)) * keep


@pytest.mark.parametrize("cols", SIZES)
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_backward(lib, isa, cols, causal):
    Tq = max(1, cols // 3) if causal else 0
    rows = 2 * Tq if causal else 9           # causal: two blocks of Tq query rows
    x = randn(rows, cols, seed=cols, scale=3.0)
    dy, dx0 = randn(rows, cols, seed=cols + 1), randn(rows, cols, seed=cols + 2)
    y = softmax_forward(lib, x, Tq)

    def run():
        dx = dx0.copy()
        call(lib.llm_softmax_backward(ptr(y), ptr(dy), ptr(dx), rows, cols, Tq))
        return (dx,)

    dx, = at_1_2_3_threads(lib, run)
    keep = np.tile(causal_keep(Tq, cols), (2, 1)) if causal else np.ones_like(x, dtype=bool)
    assert np.array_equal(dx[~keep], dx0[~keep])            # masked: left as they were
    ref = ref_softmax_backward(y, dy, keep)
    bound = f64(y) * (np.abs(dy) + np.abs(f64(y) * dy).sum(axis=1, keepdims=True)) + np.abs(dx0)
    assert worst(dx, dx0 + ref, bound) < 4e-7
    tx = t32(np.where(keep, x, -np.inf))
    torch.softmax(tx, -1).backward(torch.from_numpy(dy))
    assert worst(dx - dx0, tx.grad.numpy(), bound) < 1e-6


# ---- LayerNorm ---------------------------------------------------------------------

def ref_layernorm_backward(x, g, dy, eps=1e-5):
    """float64 dx, dg, db, and error bounds: the sums of the absolute terms
    (xhat taken as |xhat| + |mean| rstd, the rounding of mean showing there)."""
    x, g, dy = f64(x), f64(g), f64(dy)
    mean = x.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (x - mean) * rstd
    dn = g * dy
    dx = (dn - dn.mean(axis=1, keepdims=True) - xhat * (dn * xhat).mean(axis=1, keepdims=True)) * rstd
    xhat_abs = np.abs(xhat) + np.abs(mean) * rstd
    bound_dx = (np.abs(dn) + np.abs(dn).mean(axis=1, keepdims=True)
                + xhat_abs * np.abs(dn * xhat_abs).mean(axis=1, keepdims=True)) * rstd
    return ((dx, (xhat * dy).sum(axis=0), dy.sum(axis=0)),
            (bound_dx, (xhat_abs * np.abs(dy)).sum(axis=0), np.abs(dy).sum(axis=0)))


@pytest.mark.parametrize("cols", SIZES + [768])
@pytest.mark.parametrize("rows", [1, 7, 70])
def test_layernorm_backward(lib, isa, rows, cols):
    x = randn(rows, cols, seed=cols, scale=3.0) + np.float32(2.0)
    g, b = randn(cols, seed=cols + 1), randn(cols, seed=cols + 2)
    dy = randn(rows, cols, seed=cols + 3)
    init = [randn(rows, cols, seed=cols + 4), randn(cols, seed=cols + 5), randn(cols, seed=cols + 6)]
    _, mean, rstd = layernorm_forward(lib, x, g, b)

    def run():
        dx, dg, db = copies(*init)
        call(lib.llm_layernorm_backward(ptr(x), ptr(g), ptr(mean), ptr(rstd), ptr(dy),
                                        ptr(dx), ptr(dg), ptr(db), rows, cols))
        return dx, dg, db

    got = at_1_2_3_threads(lib, run)
    refs, bounds = ref_layernorm_backward(x, g, dy)
    tx, tg, tb = t32(x), t32(g), t32(b)
    F.layer_norm(tx, (cols,), tg, tb, 1e-5).backward(torch.from_numpy(dy))
    for got_g, g0, ref, bound, torch_g in zip(got, init, refs, bounds, (tx.grad, tg.grad, tb.grad)):
        assert worst(got_g, g0 + ref, bound + np.abs(g0)) < 4e-7
        assert worst(got_g, g0 + torch_g.numpy(), bound + np.abs(g0)) < 8e-7


# ---- embedding ---------------------------------------------------------------------

@pytest.mark.parametrize("dim", SIZES)
def test_embedding_backward(lib, dim):
    vocab = 50
    ids = np.array([0, 49, 7, 7, 3, 7, 49, 11], dtype=np.int32)   # 7 and 49 repeat
    dy, dw0 = randn(len(ids), dim, seed=dim), randn(vocab, dim, seed=dim + 1)
    dw = dw0.copy()
    lib.llm_embedding_backward(ptr(ids), ptr(dy), ptr(dw), len(ids), dim)
    ref = f64(dw0)
    np.add.at(ref, ids, f64(dy))
    bound = np.abs(dw0).astype(np.float64)
    np.add.at(bound, ids, np.abs(f64(dy)))
    assert worst(dw, ref, bound) < 4e-7
    untouched = np.setdiff1d(np.arange(vocab), ids)
    assert np.array_equal(dw[untouched], dw0[untouched])
    tw = t32(randn(vocab, dim, seed=dim + 2))
    F.embedding(torch.from_numpy(ids).long(), tw).backward(torch.from_numpy(dy))
    assert worst(dw - dw0, tw.grad.numpy(), bound) < 4e-7


# ---- cross-entropy -----------------------------------------------------------------

@pytest.mark.parametrize("vocab", SIZES + [50257])
@pytest.mark.parametrize("given_lse", [True, False])
def test_cross_entropy_backward(lib, isa, vocab, given_lse):
    rows = 37
    logits = randn(rows, vocab, seed=vocab, scale=5.0)
    targets = np.random.default_rng(vocab).integers(0, vocab, rows).astype(np.int32)
    targets[::5] = -100
    lse, counted = cross_entropy_lse(lib, logits, targets)
    scale = np.float32(0.7 / counted)                     # dL/dloss = 0.7, mean over counted
    d0 = randn(rows, vocab, seed=vocab + 1, scale=1e-3)

    def run():
        d = d0.copy()
        call(lib.llm_cross_entropy_backward(ptr(logits), ptr(targets),
                                            ptr(lse) if given_lse else None, rows, vocab,
                                            scale, ptr(d)))
        return (d,)

    dlogits, = at_1_2_3_threads(lib, run)
    ignored = targets < 0
    assert np.array_equal(dlogits[ignored], d0[ignored])
    x = f64(logits)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    counted_rows = np.nonzero(~ignored)[0]
    p[counted_rows, targets[counted_rows]] -= 1.0
    ref = f64(d0) + np.where(ignored[:, None], 0.0, float(scale) * p)
    # exp(x - lse) in float32 is as exact as x - lse: relative error ~ |x| + |lse| ulps
    softmax = np.abs(p + (np.arange(vocab)[None, :] == targets[:, None]))
    bound = (float(scale) * (softmax * (1.0 + np.abs(x) + 2.0 * np.abs(lse)[:, None])
                             + (np.arange(vocab)[None, :] == targets[:, None]))
             + np.abs(d0))
    assert worst(dlogits, ref, bound) < 2e-7
    tl = t32(logits)
    F.cross_entropy(tl, torch.from_numpy(targets).long(), ignore_index=-100).backward(
        torch.tensor(0.7))
    assert worst(dlogits, d0 + tl.grad.numpy(), bound) < 4e-7


def linear_cross_entropy(lib, x, w, targets, dx, dw):
    """(loss, counted) of llm_linear_cross_entropy; dx, dw (or None) get the gradient added."""
    loss, counted = ctypes.c_double(), ctypes.c_int64()
    status = lib.llm_linear_cross_entropy(ptr(x), ptr(w), ptr(targets), x.shape[0], x.shape[1],
                                          w.shape[0], 0, ctypes.byref(loss), ctypes.byref(counted),
                                          ptr(dx), ptr(dw))
    return status, loss.value, counted.value


# rows x vocab: one chunk of rows; 257 x 50257 floats are more than one chunk (32 MB),
# so two chunks of 129 and 128 rows, and 350 x 50257 three of 117, 117 and 116
LCE_SHAPES = [(1, 7), (37, 769), (257, 50257), (350, 50257)]


@pytest.mark.parametrize("rows,vocab", LCE_SHAPES, ids=lambda s: str(s))
def test_linear_cross_entropy(lib, isa, rows, vocab):
    """The fused lm_head + cross-entropy: the loss and both gradients of
    F.cross_entropy(x @ w.T, targets) against torch (float32) and float64."""
    dim = 40
    x, w = randn(rows, dim, seed=rows), randn(vocab, dim, seed=vocab, scale=0.5)
    targets = np.random.default_rng(vocab).integers(0, vocab, rows).astype(np.int32)
    targets[1::5] = -100
    dx0, dw0 = randn(rows, dim, seed=1, scale=1e-3), randn(vocab, dim, seed=2, scale=1e-3)

    def run():
        dx, dw = dx0.copy(), dw0.copy()
        status, loss, counted = linear_cross_entropy(lib, x, w, targets, dx, dw)
        call(status)
        return np.array([loss]), np.array([counted]), dx, dw

    (loss,), (counted,), dx, dw = at_1_2_3_threads(lib, run)
    keep = targets >= 0
    assert counted == keep.sum()
    # float64: the loss, and (softmax - onehot) / counted through the product's two gradients
    logits = f64(x) @ f64(w).T
    lse = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    rows_kept = np.nonzero(keep)[0]
    assert abs(loss - (lse[keep] - logits[rows_kept, targets[keep]]).mean()) < 1e-6 * abs(loss)
    p = np.exp(logits - lse[:, None])
    p[rows_kept, targets[keep]] -= 1.0
    p[~keep] = 0.0
    p /= keep.sum()
    # dx sums over the vocabulary: torch float32 is off by ~1e-5 of the largest at 50257,
    # the scalar kernels' plain chains by ~2e-5
    assert rel_to_max(dx - dx0, p @ f64(w)) < 5e-5
    assert rel_to_max(dw - dw0, p.T @ f64(x)) < 5e-5
    # torch, float32
    tx, tw = t32(x), t32(w)
    tl = F.cross_entropy(tx @ tw.T, torch.from_numpy(targets).long(), ignore_index=-100)
    tl.backward()
    assert abs(loss - tl.item()) < 1e-5 * abs(loss)
    assert rel_to_max(dx, dx0 + tx.grad.numpy()) < 5e-5
    assert rel_to_max(dw, dw0 + tw.grad.numpy()) < 5e-5


def test_linear_cross_entropy_without_gradients(lib):
    """NULL dx and dw: the loss alone, as llm_cross_entropy of the product; no target
    counted: a NaN loss and nothing counted."""
    x, w = randn(33, 24, seed=3), randn(517, 24, seed=4)
    targets = np.random.default_rng(5).integers(0, 517, 33).astype(np.int32)
    status, loss, counted = linear_cross_entropy(lib, x, w, targets, None, None)
    call(status)
    logits = np.ascontiguousarray(f64(x) @ f64(w).T, dtype=np.float32)
    want, want_counted = ctypes.c_double(), ctypes.c_int64()
    call(lib.llm_cross_entropy(ptr(logits), ptr(targets), 33, 517, ctypes.byref(want),
                               ctypes.byref(want_counted), None))
    assert counted == want_counted.value == 33
    assert abs(loss - want.value) < 1e-5 * abs(want.value)
    dx = np.zeros_like(x)
    status, loss, counted = linear_cross_entropy(lib, x, w, np.full(33, -100, np.int32), dx, None)
    call(status)
    assert np.isnan(loss) and counted == 0 and not dx.any()


# ---- attention -----------------------------------------------------------------------

ATTENTION_CASES = [
    # Tq, Tk, C, n_head, causal
    (1, 1, 64, 1, True),
    (7, 7, 128, 2, True),
    (17, 17, 64, 1, True),
    (33, 33, 192, 3, True),
    (33, 33, 192, 3, False),
    (1, 769, 128, 2, True),      # one query over a long cache
    (5, 40, 64, 1, True),        # ragged causal: Tq < Tk
    (70, 70, 96, 2, True),       # hd = 48
    (129, 129, 768, 12, True),   # GPT-2 heads, blocks plus one row
    (17, 33, 60, 3, True),       # hd = 20
    (65, 65, 66, 2, False),      # hd = 33
    (9, 9, 16, 4, True),         # hd = 4
    (100, 170, 128, 4, True),    # ragged, several key and query blocks
    (20, 50, 128, 2, False),     # Tq != Tk, no mask
    (20, 12, 64, 2, True),       # Tq > Tk: the first 8 queries see no key
]


def torch_attention(q, k, v, n_head, causal, dtype):
    """y of manual attention (the kernels' mask), as torch tensors that need grads."""
    Tq, C = q.shape
    Tk, hd = k.shape[0], C // n_head
    tq, tk, tv = (torch.tensor(np.ascontiguousarray(a), dtype=dtype, requires_grad=True)
                  for a in (q, k, v))
    s = tq.view(Tq, n_head, hd).transpose(0, 1) @ tk.view(Tk, n_head, hd).permute(1, 2, 0)
    s = s / np.sqrt(hd)
    if causal:
        s = s.masked_fill(~torch.from_numpy(causal_keep(Tq, Tk)), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)                # a query seeing no key: zeros
    y = (p @ tv.view(Tk, n_head, hd).transpose(0, 1)).transpose(0, 1).reshape(Tq, C)
    return y, (tq, tk, tv)


def attention_bounds(q, k, v, y, dy, n_head, causal):
    """float64 error bounds of dq, dk, dv: the products of the absolute terms,
    P taken as P (1 + |S scale| + |lse|) (exp's argument is rounded)."""
    Tq, C = y.shape
    Tk, hd = k.shape[0], C // n_head
    keep = causal_keep(Tq, Tk) if causal else np.ones((Tq, Tk), dtype=bool)
    bounds = [np.zeros((Tq, C)), np.zeros((Tk, C)), np.zeros((Tk, C))]
    for h in range(n_head):
        cols = slice(h * hd, (h + 1) * hd)
        qh, kh, vh, yh, dyh = (f64(a[:, cols]) for a in (q, k, v, y, dy))
        s = np.where(keep, qh @ kh.T / np.sqrt(hd), -np.inf)
        m = np.max(s, axis=1, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        e = np.exp(s - m)
        lse = m + np.log(np.maximum(e.sum(axis=1, keepdims=True), 1e-300))
        p = e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)
        p_abs = p * (1.0 + np.abs(np.where(keep, s, 0.0)) + np.abs(lse))
        ds_abs = p_abs * (np.abs(dyh) @ np.abs(vh).T + np.abs(dyh * yh).sum(axis=1, keepdims=True))
        bounds[0][:, cols] = ds_abs @ np.abs(kh) / np.sqrt(hd)
        bounds[1][:, cols] = ds_abs.T @ np.abs(qh) / np.sqrt(hd)
        bounds[2][:, cols] = p_abs.T @ np.abs(dyh)
    return bounds


def attention_grads(lib, Tq, Tk, C, n_head, causal, seed=0):
    """Inputs as GPT-2 has them (q, k, v column slices of a fused [T, 3C] array),
    gradients into slices of a fused [T, 3C] buffer that starts random."""
    qkv_q, qkv_kv = randn(Tq, 3 * C, seed=seed), randn(Tk, 3 * C, seed=seed + 1)
    q, k, v = qkv_q[:, :C], qkv_kv[:, C:2 * C], qkv_kv[:, 2 * C:]
    y, lse = attention_forward(lib, q, k, v, n_head, causal)
    dy = randn(Tq, C, seed=seed + 2)
    dq0, dkv0 = randn(Tq, 3 * C, seed=seed + 3), randn(Tk, 3 * C, seed=seed + 4)

    def run():
        dq_buf, dkv_buf = dq0.copy(), dkv0.copy()
        call(attention_backward(lib, q, k, v, y, lse, dy, dq_buf[:, :C], dkv_buf[:, C:2 * C],
                                dkv_buf[:, 2 * C:], n_head, causal))
        return dq_buf, dkv_buf

    dq_buf, dkv_buf = at_1_2_3_threads(lib, run)
    # columns that are not gradients of this call are untouched
    assert np.array_equal(dq_buf[:, C:], dq0[:, C:]) and np.array_equal(dkv_buf[:, :C], dkv0[:, :C])
    got = (dq_buf[:, :C], dkv_buf[:, C:2 * C], dkv_buf[:, 2 * C:])
    init = (dq0[:, :C], dkv0[:, C:2 * C], dkv0[:, 2 * C:])
    return (q, k, v, y, dy), got, init


@pytest.mark.parametrize("Tq,Tk,C,n_head,causal", ATTENTION_CASES)
def test_attention_backward(lib, isa, Tq, Tk, C, n_head, causal):
    (q, k, v, y, dy), got, init = attention_grads(lib, Tq, Tk, C, n_head, causal, seed=Tq + Tk)
    bounds = attention_bounds(q, k, v, y, dy, n_head, causal)
    for dtype in (torch.float64, torch.float32):
        out, leaves = torch_attention(q, k, v, n_head, causal, dtype)
        out.backward(torch.from_numpy(dy).to(dtype))
        for name, g, g0, leaf, bound in zip("qkv", got, init, leaves, bounds):
            assert worst(g, g0 + leaf.grad.double().numpy(), bound + np.abs(g0)) < 4e-7, (name, dtype)


def test_attention_backward_no_key(lib, isa):
    """Causal with Tq > Tk: queries that see no key get no gradient."""
    Tq, Tk, C = 20, 12, 64
    (q, k, v, y, dy), got, init = attention_grads(lib, Tq, Tk, C, 2, True, seed=5)
    assert np.array_equal(got[0][:Tq - Tk], init[0][:Tq - Tk])
    out, leaves = torch_attention(q, k, v, 2, True, torch.float64)
    out.backward(torch.from_numpy(dy).double())
    for g, g0, leaf, bound in zip(got, init, leaves, attention_bounds(q, k, v, y, dy, 2, True)):
        assert worst(g, g0 + leaf.grad.numpy(), bound + np.abs(g0)) < 4e-7


# ---- the conventions, for every backward ---------------------------------------------

def backward_cases(lib):
    """name -> (gradient buffers' shapes, run(bufs) -> status): one small but
    multi-task call of each backward; bufs maps a gradient name to an array or None."""
    cases = {}

    M, K, N = 70, 520, 33
    a, b, dC = randn(K, M, seed=1), randn(K, N, seed=2), randn(M, N, seed=3)
    cases["matmul"] = ({"dA": a.shape, "dB": b.shape, "dbias": (N,)},
                       lambda g: matmul_backward(lib, dC, a, b, M, K, N, 1, 0, g["dA"], g["dB"],
                                                 g["dbias"]))
    x, dy = randn(300, 700, seed=4), randn(300, 700, seed=5)
    cases["gelu"] = ({"dx": x.shape},
                     lambda g: lib.llm_gelu_backward(ptr(x), ptr(dy), ptr(g["dx"]), x.size))
    y = softmax_forward(lib, x, 100)
    cases["softmax"] = ({"dx": x.shape},
                        lambda g: lib.llm_softmax_backward(ptr(y), ptr(dy), ptr(g["dx"]), 300,
                                                           700, 100))
    gamma, beta = randn(700, seed=6), randn(700, seed=7)
    _, mean, rstd = layernorm_forward(lib, x, gamma, beta)
    cases["layernorm"] = ({"dx": x.shape, "dg": (700,), "db": (700,)},
                          lambda g: lib.llm_layernorm_backward(
                              ptr(x), ptr(gamma), ptr(mean), ptr(rstd), ptr(dy), ptr(g["dx"]),
                              ptr(g["dg"]), ptr(g["db"]), 300, 700))
    targets = np.random.default_rng(8).integers(-1, 700, 300).astype(np.int32)
    lse, counted = cross_entropy_lse(lib, x, targets)
    cases["cross_entropy"] = ({"dlogits": x.shape},
                              lambda g: lib.llm_cross_entropy_backward(
                                  ptr(x), ptr(targets), ptr(lse), 300, 700,
                                  np.float32(1.0 / counted), ptr(g["dlogits"])))
    # (a short vocabulary: C += 200 k-blocks of the 50257 wide dx product round too
    # often for test_accumulates' bound; test_linear_cross_entropy has the chunks)
    xl, wl = randn(90, 40, seed=14), randn(2053, 40, seed=15)
    tl = np.random.default_rng(16).integers(-1, 2053, 90).astype(np.int32)
    cases["linear_cross_entropy"] = ({"dx": xl.shape, "dw": wl.shape},
                                     lambda g: linear_cross_entropy(lib, xl, wl, tl, g["dx"],
                                                                    g["dw"])[0])
    T, C, H = 90, 96, 3
    qkv, dy_att = randn(T, 3 * C, seed=9), randn(T, C, seed=10)
    q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
    y_att, lse_att = attention_forward(lib, q, k, v, H, True)
    cases["attention"] = ({"dq": (T, C), "dk": (T, C), "dv": (T, C)},
                          lambda g: attention_backward(lib, q, k, v, y_att, lse_att, dy_att,
                                                       g["dq"], g["dk"], g["dv"], H, True))
    ids = np.random.default_rng(11).integers(0, 40, 300).astype(np.int32)
    cases["embedding"] = ({"dw": (40, 700)},
                          lambda g: lib.llm_embedding_backward(ptr(ids), ptr(dy), ptr(g["dw"]),
                                                               300, 700) or 0)
    a2, b2 = randn(300, 700, seed=12), randn(700, seed=13)
    cases["add"] = ({"da": a2.shape, "db": b2.shape},
                    lambda g: lib.llm_add_backward(ptr(dy), ptr(g["da"]), ptr(g["db"]),
                                                   dy.size, 700) or 0)
    cases["mul"] = ({"da": a2.shape, "db": b2.shape},
                    lambda g: lib.llm_mul_backward(ptr(dy), ptr(a2), ptr(b2), ptr(g["da"]),
                                                   ptr(g["db"]), dy.size, 700) or 0)
    cases["scale"] = ({"dx": dy.shape},
                      lambda g: lib.llm_scale_backward(ptr(dy), -1.5, ptr(g["dx"]), dy.size) or 0)
    cases["transpose"] = ({"dx": (700, 300)},
                          lambda g: lib.llm_transpose_backward(ptr(dy), ptr(g["dx"]), 700, 300)
                          or 0)
    return cases


BACKWARDS = ["matmul", "gelu", "softmax", "layernorm", "cross_entropy", "linear_cross_entropy",
             "attention", "embedding", "add", "mul", "scale", "transpose"]
LONG_RUNNING = ["matmul", "gelu", "softmax", "layernorm", "cross_entropy", "linear_cross_entropy",
                "attention"]


@pytest.fixture(scope="module")
def cases(lib):
    return backward_cases(lib)


def run_case(case, init):
    """Run a case on copies of init (name -> array or None); return the buffers."""
    bufs = {name: None if a is None else a.copy() for name, a in init.items()}
    call(case[1](bufs))
    return bufs


@pytest.mark.parametrize("name", BACKWARDS)
def test_accumulates(cases, name):
    """A call adds its gradient: from G0 it gives G0 + g, and a second call
    from zero doubles what the first gave."""
    shapes = cases[name][0]
    zeros = {g: np.zeros(s, dtype=np.float32) for g, s in shapes.items()}
    once = run_case(cases[name], zeros)
    twice = run_case(cases[name], once)
    for g in shapes:
        assert np.abs(once[g]).max() > 0, g
        assert rel_to_max(twice[g], 2.0 * f64(once[g])) < 6e-7, g
    start = {g: randn(*s, seed=20 + i) * np.abs(once[g]).max() for i, (g, s) in enumerate(shapes.items())}
    added = run_case(cases[name], start)
    for g in shapes:
        assert rel_to_max(f64(added[g]) - start[g], once[g]) < 2e-6, g


@pytest.mark.parametrize("name", BACKWARDS)
def test_null_gradient_skipped(cases, name):
    """Asking for one gradient alone (the others NULL) gives it bit for bit."""
    shapes = cases[name][0]
    zeros = {g: np.zeros(s, dtype=np.float32) for g, s in shapes.items()}
    every = run_case(cases[name], zeros)
    for g in shapes:
        alone = run_case(cases[name], {h: zeros[h] if h == g else None for h in shapes})
        assert np.array_equal(alone[g].view(np.uint32), every[g].view(np.uint32)), g


@pytest.mark.parametrize("name", BACKWARDS)
def test_same_bits_at_1_2_3_threads(lib, isa, cases, name):
    shapes = cases[name][0]
    zeros = {g: np.zeros(s, dtype=np.float32) for g, s in shapes.items()}
    at_1_2_3_threads(lib, lambda: tuple(run_case(cases[name], zeros).values()))


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_interrupt_is_reported(lib, cases, name):
    """With the interrupt hook raised, the long backwards return LLM_INTERRUPTED."""
    hook = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)
    slot = ctypes.c_void_p.in_dll(lib, "llm_interrupt_hook")
    shapes = cases[name][0]
    for threads in (1, 2):
        lib.llm_pool_set_threads(threads)
        slot.value = ctypes.cast(hook, ctypes.c_void_p).value
        try:
            bufs = {g: np.zeros(s, dtype=np.float32) for g, s in shapes.items()}
            assert cases[name][1](bufs) == kernels.LLM_INTERRUPTED, threads
        finally:
            slot.value = None
    lib.llm_pool_set_threads(2)
