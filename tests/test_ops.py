"""Every tensor op, called through SQL, against numpy / PyTorch on random inputs.

Sizes include 1, 7, 17, 33 and 769 so that no SIMD width divides them, and
each op runs under every SIMD level the CPU has (pg_llm.simd) and at one and
two threads, where results must be bit-identical.
"""
import numpy as np
import psycopg
import pytest

torch = pytest.importorskip("torch", reason="the parity tests compare with PyTorch")
F = torch.nn.functional

SIZES = [1, 7, 17, 33, 769]
rng = np.random.default_rng(1234)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def q(conn, sql, *params):
    return conn.execute(sql, params).fetchone()[0]


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.fixture(params=["scalar", "avx2", "avx512", "neon"])
def simd(request, conn):
    """Run a test at one SIMD level; skip levels this CPU lacks."""
    conn.execute("SELECT set_config('pg_llm.simd', %s, false)", (request.param,))
    got = q(conn, "SELECT llm_info()->>'simd'")
    conn.execute("RESET pg_llm.simd")
    if got != request.param:
        pytest.skip(f"this CPU does not support {request.param}")
    conn.execute("SELECT set_config('pg_llm.simd', %s, false)", (request.param,))
    yield request.param
    conn.execute("RESET pg_llm.simd")


def assert_close(got, want, rtol=1e-5, atol=1e-5):
    want = np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("m", SIZES)
@pytest.mark.parametrize("k", [1, 17, 769])
@pytest.mark.parametrize("n", [1, 33, 769])
def test_matmul(conn, m, k, n):
    a, b = randn(m, k), randn(k, n)
    want = a.astype(np.float64) @ b.astype(np.float64)
    got = q(conn, "SELECT llm_matmul(%s, %s)", a, b)
    assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ta,tb", [(False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,k,n", [(7, 33, 17), (64, 769, 33), (1, 768, 50)])
def test_matmul_transposes(conn, simd, ta, tb, m, k, n):
    a, b = randn(m, k), randn(k, n)
    a_arg = np.ascontiguousarray(a.T) if ta else a
    b_arg = np.ascontiguousarray(b.T) if tb else b
    got = q(conn, "SELECT llm_matmul(%s, %s, %s, %s)", a_arg, b_arg, ta, tb)
    assert_close(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1,), (7,), (17, 33), (3, 769)])
def test_elementwise(conn, simd, shape):
    a, b = randn(*shape), randn(*shape)
    row = randn(shape[-1])
    assert_close(q(conn, "SELECT llm_add(%s, %s)", a, b), a + b, rtol=0, atol=0)
    assert_close(q(conn, "SELECT llm_add(%s, %s)", a, row), a + row, rtol=0, atol=0)
    assert_close(q(conn, "SELECT llm_mul(%s, %s)", a, b), a * b, rtol=0, atol=0)
    assert_close(q(conn, "SELECT llm_mul(%s, %s)", a, row), a * row, rtol=0, atol=0)
    assert_close(q(conn, "SELECT llm_scale(%s, 0.37)", a), a * np.float32(0.37), rtol=0, atol=0)


@pytest.mark.parametrize("n", SIZES + [100003])
def test_gelu(conn, simd, n):
    x = randn(n, scale=4.0)
    want = F.gelu(t(x), approximate="tanh").numpy()
    assert_close(q(conn, "SELECT llm_gelu(%s)", x), want, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("cols", SIZES)
def test_softmax(conn, simd, rows, cols):
    x = randn(rows, cols, scale=5.0)
    assert_close(q(conn, "SELECT llm_softmax(%s)", x), F.softmax(t(x), -1).numpy(),
                 rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("tq,tk", [(1, 1), (7, 7), (33, 33), (1, 17), (5, 33)])
def test_softmax_causal(conn, simd, tq, tk):
    x = randn(2, tq, tk)
    mask = np.tril(np.ones((tq, tk), dtype=bool), k=tk - tq)
    want = F.softmax(t(x).masked_fill(~t(mask), float("-inf")), -1).numpy()
    assert_close(q(conn, "SELECT llm_softmax(%s, true)", x), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("cols", SIZES)
def test_layernorm(conn, simd, rows, cols):
    x, g, b = randn(rows, cols, scale=3.0) + 2.0, randn(cols), randn(cols)
    want = F.layer_norm(t(x), (cols,), t(g), t(b), eps=1e-5).numpy()
    assert_close(q(conn, "SELECT llm_layernorm(%s, %s, %s)", x, g, b), want,
                 rtol=1e-5, atol=1e-5)


def test_embedding(conn):
    w = randn(769, 33)
    ids = [0, 768, 5, 5, 17]
    got = q(conn, "SELECT llm_embedding(%s, %s::int[])", w, ids)
    assert np.array_equal(got, w[ids])


@pytest.mark.parametrize("rows,vocab", [(1, 1), (7, 17), (33, 769), (5, 50257)])
def test_cross_entropy(conn, simd, rows, vocab):
    logits = randn(rows, vocab, scale=3.0)
    targets = rng.integers(0, vocab, rows).tolist()
    want = F.cross_entropy(t(logits), torch.tensor(targets)).item()
    got = q(conn, "SELECT llm_cross_entropy(%s, %s::int[])", logits, targets)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_cross_entropy_ignore_index(conn):
    logits = randn(6, 11)
    targets = [1, -100, 3, -100, 10, 0]
    want = F.cross_entropy(t(logits), torch.tensor(targets), ignore_index=-100).item()
    got = q(conn, "SELECT llm_cross_entropy(%s, %s::int[])", logits, targets)
    assert got == pytest.approx(want, rel=1e-5)


def torch_attention(q_, k_, v_, n_head, causal):
    tq, c = q_.shape
    tk = k_.shape[0]
    hd = c // n_head
    heads = lambda x, n: t(x).view(n, n_head, hd).transpose(0, 1)  # noqa: E731
    mask = torch.from_numpy(np.tril(np.ones((tq, tk), dtype=bool), k=tk - tq)) if causal else None
    y = F.scaled_dot_product_attention(heads(q_, tq), heads(k_, tk), heads(v_, tk), attn_mask=mask)
    return y.transpose(0, 1).reshape(tq, c).numpy()


@pytest.mark.parametrize("tq,tk,c,n_head", [(1, 1, 1, 1), (7, 7, 12, 3), (17, 17, 64, 1),
                                             (1, 33, 96, 3), (33, 33, 768, 12), (5, 769, 64, 4)])
@pytest.mark.parametrize("causal", [True, False])
def test_attention(conn, simd, tq, tk, c, n_head, causal):
    q_, k_, v_ = randn(tq, c), randn(tk, c), randn(tk, c)
    got = q(conn, "SELECT llm_attention(%s, %s, %s, %s, %s)", q_, k_, v_, n_head, causal)
    assert_close(got, torch_attention(q_, k_, v_, n_head, causal), rtol=1e-4, atol=1e-5)


def test_shapes(conn):
    x = randn(6, 7)
    assert np.array_equal(q(conn, "SELECT llm_transpose(%s)", x), x.T)
    assert np.array_equal(q(conn, "SELECT llm_reshape(%s, '{7,-1}')", x), x.reshape(7, 6))
    assert np.array_equal(q(conn, "SELECT llm_slice(%s, 2, 5)", x), x[2:5])
    big = randn(769, 33)
    assert np.array_equal(q(conn, "SELECT llm_transpose(%s)", big), big.T)


OPS_FOR_DETERMINISM = [
    ("SELECT llm_matmul(%s, %s)", lambda: (randn(65, 769), randn(769, 300))),
    ("SELECT llm_matmul(%s, %s, false, true)", lambda: (randn(1, 768), randn(2000, 768))),
    ("SELECT llm_gelu(%s)", lambda: (randn(100003),)),
    ("SELECT llm_softmax(%s, true)", lambda: (randn(300, 300),)),
    ("SELECT llm_layernorm(%s, %s, %s)", lambda: (randn(300, 769), randn(769), randn(769))),
    ("SELECT llm_attention(%s, %s, %s, 12)", lambda: (randn(200, 768), randn(200, 768), randn(200, 768))),
    ("SELECT llm_cross_entropy(%s, %s::int[])",
     lambda: (randn(64, 5000), rng.integers(0, 5000, 64).tolist())),
]


@pytest.mark.parametrize("sql,make", OPS_FOR_DETERMINISM, ids=[s.split("(")[0][7:] + str(i) for i, (s, _) in enumerate(OPS_FOR_DETERMINISM)])
def test_bit_identical_across_threads(conn, sql, make):
    args = make()
    results = []
    for threads in (1, 2, 3):
        conn.execute(f"SET pg_llm.threads = {threads}")
        results.append(q(conn, sql, *args))
    conn.execute("RESET pg_llm.threads")
    for r in results[1:]:
        assert np.array_equal(np.asarray(results[0]), np.asarray(r))


def test_errors_keep_the_backend(conn):
    with pytest.raises(psycopg.errors.DataException, match=r"shapes \[2,3\] and \[2,2\] do not align"):
        q(conn, "SELECT llm_matmul(%s, %s)", randn(2, 3), randn(2, 2))
    assert q(conn, "SELECT 1") == 1
