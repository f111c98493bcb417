"""
Correctness of the elementwise, normalisation and attention kernels
(extension/src/kernels/: elementwise.c, gelu.c, softmax.c, layernorm.c,
cross_entropy.c, embedding.c, attention/forward.c).

The kernel library is compiled and loaded through pg_llm_lab.kernels.
References are computed in float64 with numpy (the exact answer, rounded
once) and, when torch is installed, also compared with torch's float32
functions, which is what the extension has to match.  Every ISA the CPU has
is tried, and 1 vs 2 threads must agree bit for bit.  Skipped when no C
compiler is available or the build fails.

Run:  pytest tests/kernels/test_ops_kernels.py -q
"""
import ctypes

import numpy as np
import pytest

from pg_llm_lab import kernels
from pg_llm_lab.kernels import ptr, strided

try:
    import torch
except ImportError:  # the float64 references still run
    torch = None

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512", 3: "neon"}
SIZES = [1, 7, 17, 33, 769]


@pytest.fixture(scope="module")
def lib():
    try:
        return kernels.load()
    except RuntimeError as e:
        pytest.skip(str(e))


def cpu_isas(lib):
    return [kernels.ISA[name] for name in kernels.available_isas(lib)]


@pytest.fixture(params=[0, 1, 2, 3], ids=lambda i: ISA_NAMES[i])
def isa(request, lib):
    """Run the test once per ISA the CPU supports; restores the best ISA."""
    if request.param not in cpu_isas(lib):
        pytest.skip(f"CPU lacks {ISA_NAMES[request.param]}")
    lib.llm_set_isa(request.param)
    lib.llm_pool_set_threads(2)
    yield request.param
    lib.llm_set_isa(2)


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(*shape, seed=0, scale=1.0):
    return (rng(seed).standard_normal(shape) * scale).astype(np.float32)


# ---- float64 references ------------------------------------------------------

def ref_gelu(x):
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def ref_softmax(x, causal_rows=0):
    x = x.astype(np.float64).copy()
    rows, cols = x.shape
    keep = np.ones_like(x, dtype=bool)
    if causal_rows:
        i = np.arange(rows)[:, None] % causal_rows
        keep = np.arange(cols)[None, :] <= i + (cols - causal_rows)
    x[~keep] = -np.inf
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), keep


def ref_layernorm(x, g, b, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def ref_cross_entropy(logits, targets):
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    rows = np.nonzero(targets >= 0)[0]
    if len(rows) == 0:
        return float("nan"), 0
    return float(np.mean(lse[rows] - x[rows, targets[rows]])), len(rows)


def ref_attention(q, k, v, n_head, causal):
    Tq, C = q.shape
    Tk = k.shape[0]
    hd = C // n_head
    y = np.zeros((Tq, C))
    keep = np.ones((Tq, Tk), dtype=bool)
    if causal:
        keep = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)
    for h in range(n_head):
        cols = slice(h * hd, (h + 1) * hd)
        s = q[:, cols].astype(np.float64) @ k[:, cols].astype(np.float64).T / np.sqrt(hd)
        s[~keep] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        y[:, cols] = (p / p.sum(axis=1, keepdims=True)) @ v[:, cols].astype(np.float64)
    return y


def ref_layernorm_stats(x, eps):
    """Per-row mean and rstd = 1/sqrt(var + eps), float64."""
    x = x.astype(np.float64)
    mean = x.mean(axis=1)
    return mean, 1.0 / np.sqrt(((x - mean[:, None]) ** 2).mean(axis=1) + eps)


def ref_logsumexp(x):
    """Per-row log(sum(exp(x))), float64 (-inf for a row of -inf)."""
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (m + np.log(np.exp(x - np.where(np.isfinite(m), m, 0)).sum(axis=1, keepdims=True)))
    return out[:, 0]


def ref_attention_lse(q, k, n_head, causal):
    """[n_head, Tq]: logsumexp of each query's scaled, masked scores (float64)."""
    Tq, C = q.shape
    Tk = k.shape[0]
    hd = C // n_head
    keep = np.ones((Tq, Tk), dtype=bool)
    if causal:
        keep = np.arange(Tk)[None, :] <= np.arange(Tq)[:, None] + (Tk - Tq)
    lse = np.empty((n_head, Tq))
    for h in range(n_head):
        cols = slice(h * hd, (h + 1) * hd)
        s = q[:, cols].astype(np.float64) @ k[:, cols].astype(np.float64).T / np.sqrt(hd)
        s[~keep] = -np.inf
        lse[h] = ref_logsumexp(s)
    return lse


# ---- callers -------------------------------------------------------------------

def gelu(lib, x):
    y = np.full_like(x, np.nan)
    assert lib.llm_gelu(ptr(x), ptr(y), x.size) == 0
    return y


def softmax(lib, x, causal_rows=0):
    y = np.full_like(x, np.nan)
    assert lib.llm_softmax(ptr(x), ptr(y), x.shape[0], x.shape[1], causal_rows) == 0
    return y


def layernorm(lib, x, g, b, eps=1e-5, stats=False):
    """y, or (y, mean, rstd) with stats: the per-row values a backward needs."""
    y = np.full_like(x, np.nan)
    mean = np.full(x.shape[0], np.nan, dtype=np.float32) if stats else None
    rstd = np.full(x.shape[0], np.nan, dtype=np.float32) if stats else None
    assert lib.llm_layernorm(ptr(x), ptr(g), ptr(b), ptr(y), x.shape[0], x.shape[1],
                             eps, ptr(mean), ptr(rstd)) == 0
    return (y, mean, rstd) if stats else y


def cross_entropy(lib, logits, targets, want_lse=False):
    """(loss, counted), or (loss, counted, lse) with want_lse: per-row logsumexp."""
    loss, counted = ctypes.c_double(), ctypes.c_int64()
    lse = np.full(logits.shape[0], np.nan, dtype=np.float32) if want_lse else None
    assert lib.llm_cross_entropy(ptr(logits), ptr(targets), logits.shape[0],
                                 logits.shape[1], ctypes.byref(loss),
                                 ctypes.byref(counted), ptr(lse)) == 0
    return (loss.value, counted.value, lse) if want_lse else (loss.value, counted.value)


def attention(lib, q, k, v, n_head, causal, C, want_lse=False):
    """y, or (y, lse [n_head, Tq]) with want_lse.  q, k, v may be column
    slices of wider row-major arrays (strided rows)."""
    Tq, Tk = q.shape[0], k.shape[0]
    y = np.full((Tq, C), np.nan, dtype=np.float32)
    lse = np.full((n_head, Tq), np.nan, dtype=np.float32) if want_lse else None
    (qp, ldq), (kp, ldk), (vp, ldv) = strided(q), strided(k), strided(v)
    assert lib.llm_attention(qp, ldq, kp, ldk, vp, ldv, ptr(y), Tq, Tk, C,
                             n_head, int(causal), ptr(lse)) == 0
    return (y, lse) if want_lse else y


def fused_qkv(T, C, seed):
    """GPT-2's c_attn output [T, 3C]; q, k, v are strided views into it."""
    qkv = randn(T, 3 * C, seed=seed)
    return qkv, qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]


def same_at_1_and_2_threads(lib, fn):
    lib.llm_pool_set_threads(1)
    one = fn()
    lib.llm_pool_set_threads(2)
    two = fn()
    assert np.array_equal(np.asarray(one), np.asarray(two), equal_nan=True)
    return two


def each_same_at_1_and_2_threads(lib, fn):
    """fn() returns a tuple of arrays/values; each must have the same bits
    at 1 and 2 threads."""
    lib.llm_pool_set_threads(1)
    one = fn()
    lib.llm_pool_set_threads(2)
    two = fn()
    for a, b in zip(one, two):
        assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    return two


# ---- simple maps ---------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_add_mul_scale(lib, n):
    a, b = randn(3, n, seed=1), randn(n, seed=2)
    y = np.empty_like(a)
    lib.llm_add(ptr(a), ptr(b), ptr(y), a.size, n)
    assert np.array_equal(y, a + b)
    lib.llm_mul(ptr(a), ptr(b), ptr(y), a.size, n)
    assert np.array_equal(y, a * b)
    full = randn(3, n, seed=3)
    lib.llm_add(ptr(a), ptr(full), ptr(y), a.size, a.size)
    assert np.array_equal(y, a + full)
    lib.llm_scale(ptr(a), 0.37, ptr(y), a.size)
    assert np.array_equal(y, np.float32(0.37) * a)
    # in place, as the residual connections do
    expected = a + b
    lib.llm_add(ptr(a), ptr(b), ptr(a), a.size, n)
    assert np.array_equal(a, expected)


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 7), (7, 1), (17, 33), (33, 769), (64, 64)])
def test_transpose(lib, rows, cols):
    x = randn(rows, cols, seed=4)
    y = np.empty((cols, rows), dtype=np.float32)
    lib.llm_transpose(ptr(x), ptr(y), rows, cols)
    assert np.array_equal(y, x.T)


@pytest.mark.parametrize("n", SIZES)
def test_round_bf16_is_torchs_bfloat16(lib, isa, n):
    """llm_round_bf16_array == x.to(torch.bfloat16).float() bit for bit: round to
    nearest, ties to even (exact ties built on purpose), subnormals, overflow
    to infinity, signed zeros; a NaN stays a NaN."""
    if torch is None:
        pytest.skip("torch's bfloat16 is the reference")
    ulp = np.float32(2.0 ** -7)                      # of bf16 at [1, 2)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2),
                        1e-40, -3e-39, 3.3961e38, -3.3961e38, 3.4e38, np.finfo(np.float32).max],
                       dtype=np.float32)
    x = np.concatenate([special, randn(n, seed=n, scale=100.0)])
    x[len(special) // 2] = np.nan
    y = np.empty_like(x)
    lib.llm_round_bf16_array(ptr(x), ptr(y), len(x))
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(y), nan)
    assert np.array_equal(y[~nan].view(np.uint32), want[~nan].view(np.uint32))
    # in place, the same
    lib.llm_round_bf16_array(ptr(x), ptr(x), len(x))
    assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


def test_embedding(lib):
    w = randn(50, 33, seed=5)
    ids = np.array([0, 49, 7, 7, 3], dtype=np.int32)
    y = np.empty((len(ids), 33), dtype=np.float32)
    lib.llm_embedding(ptr(w), ptr(ids), ptr(y), len(ids), 33)
    assert np.array_equal(y, w[ids])


# ---- GELU ------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES + [100_003])
def test_gelu(lib, isa, n):
    x = randn(n, seed=n, scale=3.0)
    y = same_at_1_and_2_threads(lib, lambda: gelu(lib, x))
    np.testing.assert_allclose(y, ref_gelu(x), rtol=1e-6, atol=2e-7)


def test_gelu_extremes(lib, isa):
    x = np.concatenate([np.linspace(-40, 40, 4001, dtype=np.float32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30,
                                  np.inf, -np.inf, np.nan], dtype=np.float32)])
    y = gelu(lib, x)
    finite = np.isfinite(x) & (np.abs(x) < 1e20)
    np.testing.assert_allclose(y[finite], ref_gelu(x[finite]), rtol=1e-6, atol=2e-7)
    # 1e30, -1e30, inf, -inf (-inf * 0, as torch), nan
    assert y[-5] == np.float32(1e30) and y[-4] == 0.0 and y[-3] == np.inf
    assert np.isnan(y[-2]) and np.isnan(y[-1])


# ---- softmax --------------------------------------------------------------------

@pytest.mark.parametrize("cols", SIZES)
def test_softmax(lib, isa, cols):
    x = randn(9, cols, seed=cols, scale=4.0)
    y = same_at_1_and_2_threads(lib, lambda: softmax(lib, x))
    ref, _ = ref_softmax(x)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (7, 7), (17, 17), (1, 33), (5, 33), (33, 769)])
def test_softmax_causal(lib, isa, Tq, Tk):
    x = randn(2 * Tq, Tk, seed=Tk)  # two blocks of Tq query rows
    y = same_at_1_and_2_threads(lib, lambda: softmax(lib, x, Tq))
    ref, keep = ref_softmax(x, Tq)
    assert np.all(y[~keep] == 0.0)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-7)


def test_softmax_wide_range(lib, isa):
    """Huge logits, exp underflow to subnormals and to exactly 0, -inf entries."""
    x = np.array([[0.0, -87.0, -88.0, -100.0, -104.0, -110.0, -200.0, -np.inf] * 3,
                  [1e4, 1e4 - 1, -1e4, 0.0, 1e4 - 20, 3.0, 2.0, 1e4] * 3],
                 dtype=np.float32)
    y = softmax(lib, x)
    ref, _ = ref_softmax(x)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-37)
    assert np.all(y[0, 7::8] == 0.0)


# ---- LayerNorm --------------------------------------------------------------------

@pytest.mark.parametrize("cols", SIZES + [768])
def test_layernorm(lib, isa, cols):
    # an offset mean checks the variance does not cancel
    x = randn(70, cols, seed=cols, scale=3.0) + 100.0
    g, b = randn(cols, seed=11), randn(cols, seed=12)
    y = same_at_1_and_2_threads(lib, lambda: layernorm(lib, x, g, b))
    np.testing.assert_allclose(y, ref_layernorm(x, g, b, 1e-5), rtol=2e-5, atol=2e-5)
    x = randn(70, cols, seed=cols + 1)
    y = layernorm(lib, x, g, b)
    np.testing.assert_allclose(y, ref_layernorm(x, g, b, 1e-5), rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("cols", SIZES + [768])
def test_layernorm_mean_rstd(lib, isa, cols):
    """The per-row mean and rstd handed back for the backward: the float64
    values, and the very ones y was computed with; asking for them does not
    change y."""
    x = randn(70, cols, seed=cols + 2, scale=3.0) + np.float32(100.0)
    g, b = randn(cols, seed=13), randn(cols, seed=14)
    y, mean, rstd = each_same_at_1_and_2_threads(lib, lambda: layernorm(lib, x, g, b, stats=True))
    assert np.array_equal(y, layernorm(lib, x, g, b))
    ref_mean, ref_rstd = ref_layernorm_stats(x, 1e-5)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=1e-6)
    recomputed = (x.astype(np.float64) - mean[:, None]) * rstd[:, None] * g + b
    np.testing.assert_allclose(y, recomputed, rtol=1e-6, atol=1e-6)


# ---- cross-entropy ---------------------------------------------------------------

@pytest.mark.parametrize("vocab", SIZES + [50257])
def test_cross_entropy(lib, isa, vocab):
    rows = 37
    logits = randn(rows, vocab, seed=vocab, scale=5.0)
    targets = rng(vocab).integers(0, vocab, rows).astype(np.int32)
    targets[::5] = -100
    loss, counted = same_at_1_and_2_threads(lib, lambda: cross_entropy(lib, logits, targets))
    ref, ref_counted = ref_cross_entropy(logits, targets)
    assert counted == ref_counted
    assert abs(loss - ref) <= 1e-6 * max(1.0, abs(ref))


def test_cross_entropy_large_and_ignored(lib, isa):
    logits = np.array([[1e4, -1e4, 0.0, 1e4 - 3]], dtype=np.float32)
    loss, counted = cross_entropy(lib, logits, np.array([3], dtype=np.int32))
    assert counted == 1 and abs(loss - ref_cross_entropy(logits, np.array([3]))[0]) < 1e-6
    loss, counted = cross_entropy(lib, logits, np.array([-100], dtype=np.int32))
    assert counted == 0 and np.isnan(loss)
    # many rows: more than the task cap, so tasks hold several rows
    logits = randn(1000, 17, seed=3)
    targets = rng(3).integers(-1, 17, 1000).astype(np.int32)
    loss, counted = same_at_1_and_2_threads(lib, lambda: cross_entropy(lib, logits, targets))
    ref, ref_counted = ref_cross_entropy(logits, targets)
    assert counted == ref_counted and abs(loss - ref) < 1e-6


@pytest.mark.parametrize("vocab", SIZES + [50257])
def test_cross_entropy_lse(lib, isa, vocab):
    """Per-row logsumexp for the backward, ignored rows included; asking for
    it does not change the loss."""
    rows = 37
    logits = randn(rows, vocab, seed=vocab + 5, scale=5.0)
    targets = rng(vocab + 5).integers(0, vocab, rows).astype(np.int32)
    targets[::5] = -100
    loss, counted, lse = each_same_at_1_and_2_threads(
        lib, lambda: cross_entropy(lib, logits, targets, want_lse=True))
    assert (loss, counted) == cross_entropy(lib, logits, targets)
    np.testing.assert_allclose(lse, ref_logsumexp(logits), rtol=1e-6, atol=1e-6)
    # what the backward does with it: softmax = exp(logits - lse), rows sum to 1
    p = np.exp(logits.astype(np.float64) - lse[:, None])
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


# ---- attention ------------------------------------------------------------------

ATTENTION_CASES = [
    # Tq, Tk, C, n_head, causal
    (1, 1, 64, 1, True),
    (7, 7, 128, 2, True),
    (17, 17, 64, 1, True),
    (33, 33, 192, 3, True),
    (33, 33, 192, 3, False),
    (1, 769, 128, 2, True),      # decode step with a long cache
    (5, 40, 64, 1, True),        # a few new tokens on top of a cache
    (12, 100, 64, 1, True),
    (70, 70, 96, 2, True),       # hd = 48: V is packed
    (129, 129, 768, 12, True),   # two chunks plus one row, GPT-2 heads
    (17, 33, 60, 3, True),       # hd = 20
    (65, 65, 66, 2, False),      # hd = 33
    (9, 9, 16, 4, True),         # hd = 4
    (8, 8, 64, 1, True),         # exactly one tile
    (20, 50, 128, 2, False),     # tiled, Tq != Tk, no mask
]


@pytest.mark.parametrize("Tq,Tk,C,n_head,causal", ATTENTION_CASES)
def test_attention(lib, isa, Tq, Tk, C, n_head, causal):
    _, q, _, _ = fused_qkv(Tq, C, seed=Tq)
    _, _, k, v = fused_qkv(Tk, C, seed=Tk + 1000)
    y = same_at_1_and_2_threads(lib, lambda: attention(lib, q, k, v, n_head, causal, C))
    ref = ref_attention(q, k, v, n_head, causal)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-6)


def test_attention_more_queries_than_keys(lib, isa):
    """Causal with Tq > Tk: the first Tq - Tk queries see no key and get zeros."""
    Tq, Tk, C = 20, 12, 64
    _, q, _, _ = fused_qkv(Tq, C, seed=1)
    _, _, k, v = fused_qkv(Tk, C, seed=2)
    y = attention(lib, q, k, v, 1, True, C)
    assert np.all(y[:Tq - Tk] == 0.0)
    ref = ref_attention(q[Tq - Tk:], k, v, 1, True)
    np.testing.assert_allclose(y[Tq - Tk:], ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("Tq,Tk,C,n_head,causal", ATTENTION_CASES)
def test_attention_lse(lib, isa, Tq, Tk, C, n_head, causal):
    """lse [n_head, Tq]: the logsumexp of each query's scaled, masked scores,
    both on the row-by-row and the tiled path; asking for it does not change y."""
    _, q, _, _ = fused_qkv(Tq, C, seed=Tq)
    _, _, k, v = fused_qkv(Tk, C, seed=Tk + 1000)
    y, lse = each_same_at_1_and_2_threads(
        lib, lambda: attention(lib, q, k, v, n_head, causal, C, want_lse=True))
    assert np.array_equal(y, attention(lib, q, k, v, n_head, causal, C))
    np.testing.assert_allclose(lse, ref_attention_lse(q, k, n_head, causal), rtol=1e-6, atol=2e-6)


def test_attention_lse_no_key(lib, isa):
    """Causal with Tq > Tk: a query that sees no key has lse = -inf."""
    Tq, Tk, C, H = 20, 12, 64, 2
    _, q, _, _ = fused_qkv(Tq, C, seed=1)
    _, _, k, v = fused_qkv(Tk, C, seed=2)
    _, lse = attention(lib, q, k, v, H, True, C, want_lse=True)
    assert np.all(lse[:, :Tq - Tk] == -np.inf)
    np.testing.assert_allclose(lse[:, Tq - Tk:], ref_attention_lse(q, k, H, True)[:, Tq - Tk:],
                               rtol=1e-6, atol=2e-6)


def test_interrupt_is_reported(lib):
    """With the interrupt hook raised, multi-task kernels return LLM_INTERRUPTED."""
    hook_type = ctypes.CFUNCTYPE(ctypes.c_int)
    hook = hook_type(lambda: 1)
    slot = ctypes.c_void_p.in_dll(lib, "llm_interrupt_hook")
    slot.value = ctypes.cast(hook, ctypes.c_void_p).value
    try:
        x = randn(512, 1024, seed=1)
        y = np.empty_like(x)
        assert lib.llm_gelu(ptr(x), ptr(y), x.size) == 1
        assert lib.llm_softmax(ptr(x), ptr(y), 512, 1024, 0) == 1
        g, b = randn(1024, seed=2), randn(1024, seed=3)
        assert lib.llm_layernorm(ptr(x), ptr(g), ptr(b), ptr(y), 512, 1024, 1e-5,
                                 None, None) == 1
        targets = np.zeros(512, dtype=np.int32)
        loss, counted = ctypes.c_double(), ctypes.c_int64()
        assert lib.llm_cross_entropy(ptr(x), ptr(targets), 512, 1024, ctypes.byref(loss),
                                     ctypes.byref(counted), None) == 1
        _, q, k, v = fused_qkv(128, 128, seed=4)
        out = np.empty((128, 128), dtype=np.float32)
        (qp, _), (kp, _), (vp, _) = strided(q), strided(k), strided(v)
        assert lib.llm_attention(qp, 384, kp, 384, vp, 384, ptr(out), 128, 128, 128, 2, 1,
                                 None) == 1
    finally:
        slot.value = None


def test_attention_contiguous_and_fused_agree(lib, isa):
    """Strided (fused c_attn output) and contiguous q/k/v give the same bits."""
    T, C = 40, 128
    _, q, k, v = fused_qkv(T, C, seed=7)
    strided = attention(lib, q, k, v, 2, True, C)
    contiguous = attention(lib, np.ascontiguousarray(q), np.ascontiguousarray(k),
                           np.ascontiguousarray(v), 2, True, C)
    assert np.array_equal(strided, contiguous)


def test_attention_decode_matches_prefill(lib, isa):
    """The last row of a causal prefill is what a one-token decode computes."""
    T, C = 50, 128
    _, q, k, v = fused_qkv(T, C, seed=8)
    full = attention(lib, q, k, v, 2, True, C)
    step = attention(lib, q[-1:], k, v, 2, True, C)
    np.testing.assert_allclose(step[0], full[-1], rtol=1e-6, atol=1e-7)


# ---- against torch (float32), the numbers the extension must match ------------------

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@needs_torch
def test_against_torch(lib, isa):
    t = torch.from_numpy
    x = randn(64, 769, seed=21, scale=3.0)
    # HF's NewGELUActivation ("gelu_new"), written out as HF does
    tx = t(x)
    hf = 0.5 * tx * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (tx + 0.044715 * torch.pow(tx, 3.0))))
    assert np.abs(gelu(lib, x) - hf.numpy()).max() <= 1e-6
    assert np.abs(gelu(lib, x) -
                  torch.nn.functional.gelu(tx, approximate="tanh").numpy()).max() <= 1e-6

    assert np.abs(softmax(lib, x) - torch.softmax(tx, -1).numpy()).max() <= 2e-6

    g, b = randn(769, seed=22), randn(769, seed=23)
    ln = torch.nn.functional.layer_norm(tx, (769,), t(g), t(b), 1e-5)
    assert np.abs(layernorm(lib, x, g, b) - ln.numpy()).max() <= 2e-6

    targets = rng(24).integers(0, 769, 64).astype(np.int32)
    targets[3] = -100
    ce = torch.nn.functional.cross_entropy(tx.double(), t(targets).long(), ignore_index=-100)
    assert abs(cross_entropy(lib, x, targets)[0] - ce.item()) <= 1e-6

    T, C, H = 200, 768, 12
    _, q, k, v = fused_qkv(T, C, seed=25)

    def heads(a):
        return t(np.ascontiguousarray(a)).view(T, H, C // H).transpose(0, 1)

    sdpa = torch.nn.functional.scaled_dot_product_attention(
        heads(q), heads(k), heads(v), is_causal=True)
    ref = sdpa.transpose(0, 1).reshape(T, C).numpy()
    assert np.abs(attention(lib, q, k, v, H, True, C) - ref).max() <= 2e-6


@needs_torch
def test_backward_outputs_against_torch(lib, isa):
    """mean/rstd as torch.native_layer_norm returns them; logsumexp as
    torch.logsumexp, for cross-entropy and for attention's masked scores."""
    t = torch.from_numpy
    x = randn(64, 769, seed=31, scale=3.0)
    g, b = randn(769, seed=32), randn(769, seed=33)
    _, mean, rstd = layernorm(lib, x, g, b, stats=True)
    _, t_mean, t_rstd = torch.native_layer_norm(t(x), (769,), t(g), t(b), 1e-5)
    assert np.abs(mean - t_mean.numpy()[:, 0]).max() <= 1e-6
    assert np.abs(rstd - t_rstd.numpy()[:, 0]).max() <= 1e-6

    targets = rng(34).integers(0, 769, 64).astype(np.int32)
    targets[3] = -100
    *_, lse = cross_entropy(lib, x, targets, want_lse=True)
    assert np.abs(lse - torch.logsumexp(t(x), -1).numpy()).max() <= 2e-6

    T, C, H = 200, 768, 12
    hd = C // H
    _, q, k, v = fused_qkv(T, C, seed=35)

    def heads(a):
        return t(np.ascontiguousarray(a)).view(T, H, hd).transpose(0, 1)

    scores = heads(q) @ heads(k).transpose(1, 2) / np.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    ref = torch.logsumexp(scores.masked_fill(~mask, float("-inf")), -1).numpy()
    _, lse = attention(lib, q, k, v, H, True, C, want_lse=True)
    assert np.abs(lse - ref).max() <= 2e-6
