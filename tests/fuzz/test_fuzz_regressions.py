"""Defects the fuzz suite found, each pinned by its smallest input."""
import numpy as np
import psycopg
import pytest

FLT_MAX = float(np.finfo(np.float32).max)


def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert conn.execute("SELECT 1").fetchone()[0] == 1
    return info.value


def test_attention_scores_that_overflow_are_an_error(conn):
    """q k^T of finite values beyond float32's range made NaN rows, silently."""
    q = np.array([[1.0, 74.0]], np.float32)
    k = np.array([[FLT_MAX, FLT_MAX]], np.float32)
    v = np.array([[1.0, 2.0]], np.float32)
    err = error_of(conn, "SELECT llm_attention(%s, %s, %s, 1, false)", [q, k, v])
    assert err.sqlstate == "22003" and "overflow" in str(err)
    # a NaN in v is the caller's: it goes through, as in torch
    y = conn.execute("SELECT llm_attention(%s, %s, %s, 1, false)",
                     [q, np.ones((1, 2), np.float32), np.array([[np.nan, 1.0]], np.float32)]).fetchone()[0]
    assert np.isnan(y[0, 0]) and y[0, 1] == 1.0


def test_randn_with_a_std_beyond_float32_is_an_error(conn):
    """A std near FLT_MAX drew infinities into the tensor, silently."""
    err = error_of(conn, "SELECT llm_randn('{64}', 3e38, 1)")
    assert err.sqlstate == "22003" and "3e+38" in str(err)
    assert np.isfinite(conn.execute("SELECT llm_randn('{64}', 1e30, 1)").fetchone()[0]).all()


@pytest.mark.parametrize("sql", [
    "SELECT llm_register_hf_config('fuzz_no_heads', '{\"n_head\": 0}')",
    "INSERT INTO llm_model_config (model, n_layer, n_head, n_embd, n_positions, vocab_size) "
    "VALUES ('fuzz_no_heads', 1, 0, 8, 8, 16)"])
def test_config_with_no_heads_is_a_check_violation(conn, sql):
    """n_head 0 failed with 'division by zero' (the heads_divide_width check ran first)."""
    err = error_of(conn, sql)
    assert err.sqlstate == "23514" and "n_head" in str(err)
    assert conn.execute("SELECT count(*) FROM llm_model_config WHERE model = 'fuzz_no_heads'").fetchone()[0] == 0


@pytest.mark.parametrize("simd", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("width", [3, 17, 40])
def test_layernorm_of_huge_values_at_every_isa(conn, simd, width):
    """The SIMD rows summed in float: |x| ~ 1e20 overflowed them (AVX-512 gave b, AVX2 NaN)."""
    isa = conn.execute("SELECT llm_info()::jsonb ->> 'simd'").fetchone()[0]
    if ["scalar", "avx2", "avx512"].index(simd) > ["scalar", "avx2", "avx512"].index(isa):
        pytest.skip(f"this CPU has no {simd}")
    x = (np.arange(1, width + 1, dtype=np.float64) * 1e20 * (-1) ** np.arange(width)).astype(np.float32)
    g = np.linspace(0.5, 1.5, width).astype(np.float32)
    b = np.linspace(-1, 1, width).astype(np.float32)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5) * g + b
    conn.execute(f"SET pg_llm.simd = {simd}")
    got = conn.execute("SELECT llm_layernorm(%s, %s, %s)", [x[None], g, b]).fetchone()[0][0]
    conn.execute("RESET pg_llm.simd")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_leaf_of_null_is_null(conn):
    """llm_tensor_rt_leaf(NULL::tensor, 'x') read the NULL as a tensor: a segfault, and the postmaster
    restarted every backend (test_fuzz_null_args.py calls every function so)."""
    conn.execute("SELECT llm_autograd_mode('full')")
    try:
        assert conn.execute("SELECT llm_tensor_rt_leaf(NULL::tensor, 'x')").fetchone()[0] is None
    finally:
        conn.execute("SELECT llm_autograd_mode('off')")
