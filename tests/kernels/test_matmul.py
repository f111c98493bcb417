"""
Correctness of llm_matmul (extension/src/kernels/matmul/) against numpy.

The kernel library is compiled and loaded through pg_llm_lab.kernels;
every test is skipped when no C compiler is available or the build fails.
Run:  pytest tests/kernels/test_matmul.py -q
"""
import numpy as np
import pytest

from pg_llm_lab import kernels
from pg_llm_lab.kernels import ISA, ptr


def run_matmul(lib, a, b, bias, M, K, N, ta, tb):
    c = np.full((M, N), np.nan, dtype=np.float32)
    rc = lib.llm_matmul(ptr(a), ptr(b), ptr(bias), ptr(c), M, K, N, ta, tb)
    assert rc == 0
    return c


def _load(extra=(), name="libpg_llm_kernels.so"):
    try:
        return kernels.load(extra, name)
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def lib():
    return _load()


@pytest.fixture(scope="module")
def lib_no_memory():
    """The same kernels with every scratch allocation failing."""
    return _load(["-DLLM_MATMUL_TEST_NO_MEMORY"], "libpg_llm_kernels_nomem.so")


def isas(lib):
    return kernels.available_isas(lib)


def operands(rng, M, K, N, ta, tb, with_bias):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    ref = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    if with_bias:
        ref += bias
    # error bound scale: sum_k |a||b|
    scale = np.abs(a.T if ta else a).astype(np.float64) @ np.abs(b.T if tb else b).astype(np.float64)
    return a, b, bias, ref, scale


SHAPES = [(1, 1, 1), (1, 7, 1), (7, 1, 5), (2, 3, 4), (17, 33, 7), (33, 17, 65),
          (15, 16, 31), (14, 256, 32), (29, 257, 97), (64, 300, 50), (1, 769, 33),
          (3, 5, 769), (70, 520, 33), (1, 768, 130), (5, 1, 1), (33, 65, 1),
          (200, 40, 1100), (2, 33, 50257), (1, 17, 50257), (769, 7, 17)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_matches_numpy(lib, shape, ta, tb):
    M, K, N = shape
    rng = np.random.default_rng(M * 10007 + K * 101 + N + 7 * ta + 13 * tb)
    for with_bias in (False, True):
        a, b, bias, ref, scale = operands(rng, M, K, N, ta, tb, with_bias)
        for name in isas(lib):
            lib.llm_set_isa(ISA[name])
            for threads in (1, 2):
                lib.llm_pool_set_threads(threads)
                c = run_matmul(lib, a, b, bias, M, K, N, ta, tb)
                err = np.abs(c - ref) / (scale + (np.abs(bias) if with_bias else 0) + 1e-30)
                assert np.isfinite(c).all(), (name, threads)
                assert err.max() < 2e-6, (name, threads, err.max())
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)


@pytest.mark.parametrize("shape", [(64, 768, 768), (1, 3072, 768), (1, 768, 2304),
                                   (100, 3072, 200), (37, 500, 1500)])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0)])
def test_gpt2_sizes_relative_1e5(lib, shape, ta, tb):
    """Relative error vs float64 at GPT-2 sizes (K up to 3072)."""
    M, K, N = shape
    rng = np.random.default_rng(1)
    a, b, bias, ref, _ = operands(rng, M, K, N, ta, tb, True)
    for name in isas(lib):
        lib.llm_set_isa(ISA[name])
        c = run_matmul(lib, a, b, bias, M, K, N, ta, tb)
        rel = np.linalg.norm(c - ref) / np.linalg.norm(ref)
        assert rel < 1e-5, (name, rel)
    lib.llm_set_isa(2)


@pytest.mark.parametrize("shape", [(64, 768, 1000), (1, 768, 2304), (300, 700, 300), (5, 3072, 77)])
@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 1)])
def test_bit_identical_across_threads(lib, shape, ta, tb):
    M, K, N = shape
    rng = np.random.default_rng(2)
    a, b, bias, _, _ = operands(rng, M, K, N, ta, tb, True)
    for name in isas(lib):
        lib.llm_set_isa(ISA[name])
        outs = []
        for threads in (1, 2, 3, 8):
            lib.llm_pool_set_threads(threads)
            outs.append(run_matmul(lib, a, b, bias, M, K, N, ta, tb))
        for o in outs[1:]:
            assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32)), name
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)


@pytest.mark.parametrize("shape", [(64, 768, 700), (300, 520, 97), (17, 33, 65)])
@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_allocation_failure_same_bits(lib, lib_no_memory, shape, ta, tb):
    """Without scratch memory GEMM packs micro-panels on the stack: slower,
    but the very same arithmetic."""
    M, K, N = shape
    rng = np.random.default_rng(3)
    a, b, bias, _, _ = operands(rng, M, K, N, ta, tb, True)
    for name in isas(lib):
        lib.llm_set_isa(ISA[name])
        lib_no_memory.llm_set_isa(ISA[name])
        lib_no_memory.llm_pool_set_threads(2)
        want = run_matmul(lib, a, b, bias, M, K, N, ta, tb)
        got = run_matmul(lib_no_memory, a, b, bias, M, K, N, ta, tb)
        assert np.array_equal(want.view(np.uint32), got.view(np.uint32)), name
    lib.llm_set_isa(2)


@pytest.mark.parametrize("shape,ta,tb", [
    ((160, 60000, 40), 0, 0),     # large K, A 38 MB: tiles pack their own A blocks
    ((160, 60000, 40), 1, 1),
    ((60000, 160, 40), 1, 0),     # the lm_head's dwte: transA, A 38 MB
    ((256, 5003, 128), 0, 1),     # large K, narrow N: rows split too
    ((128, 50257, 128), 0, 0),    # the lab model's lm_head dx = dlogits @ wte: a 2 x 2 tile grid
])
def test_large_k_and_huge_a(lib, lib_no_memory, shape, ta, tb):
    """Operands too big to pack up front (tiles pack and prefetch their own
    blocks) and K large enough for the few-wide-tiles layout: the product,
    the same bits at 1, 2 and 3 threads, and without scratch memory."""
    M, K, N = shape
    rng = np.random.default_rng(4)
    a, b, bias, ref, scale = operands(rng, M, K, N, ta, tb, True)
    for name in isas(lib):
        lib.llm_set_isa(ISA[name])
        outs = []
        for threads in (1, 2, 3):
            lib.llm_pool_set_threads(threads)
            outs.append(run_matmul(lib, a, b, bias, M, K, N, ta, tb))
        for o in outs[1:]:
            assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32)), name
        err = np.abs(outs[0] - ref) / (scale + np.abs(bias))
        assert err.max() < 2e-6, (name, err.max())
        if name != "scalar":
            lib_no_memory.llm_set_isa(ISA[name])
            lib_no_memory.llm_pool_set_threads(2)
            got = run_matmul(lib_no_memory, a, b, bias, M, K, N, ta, tb)
            assert np.array_equal(got.view(np.uint32), outs[0].view(np.uint32)), name
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)


def test_large_k_is_its_k_blocks_added(lib):
    """The large-K tiling (large_k_tiles in gemm.c) changes which thread
    computes what, never the bits: AVX2's product of 128 rows with K = 5003
    is matmul.c's chain of k-blocks -- 20 blocks of 251 (K cut into
    ceil(K/256) nearly equal blocks), each a product from zero added into C
    in increasing k -- which the small-K path computes one block at a time."""
    if "avx2" not in isas(lib):
        pytest.skip("no AVX2")
    M, K, N = 128, 5003, 128
    rng = np.random.default_rng(5)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    lib.llm_set_isa(ISA["avx2"])
    for threads in (1, 2):
        lib.llm_pool_set_threads(threads)
        got = run_matmul(lib, a, b, None, M, K, N, 0, 0)
        want = np.zeros((M, N), np.float32)
        for k0 in range(0, K, 251):
            ak, bk = np.ascontiguousarray(a[:, k0:k0 + 251]), np.ascontiguousarray(b[k0:k0 + 251])
            assert lib.llm_matmul_acc(ptr(ak), ptr(bk), ptr(want), M, ak.shape[1], N, 0, 0) == 0
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), threads
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)


# ---- llm_matmul_rows: the batch-invariant product of decode batching ---------

def row_pointers(rows):
    return (kernels.float_p * len(rows))(*[ptr(r) for r in rows])


ROWS_SHAPES = [(2, 1, 1), (3, 7, 5), (5, 33, 17), (8, 64, 130), (30, 96, 300),
               (4, 768, 2304), (7, 301, 50), (12, 40, 1031), (3, 3, 16), (30, 3072, 768),
               (13, 768, 3001)]


@pytest.mark.parametrize("shape", ROWS_SHAPES)
@pytest.mark.parametrize("tb", [0, 1])
def test_rows_are_each_row_alone(lib, shape, tb):
    """Row i of llm_matmul_rows is bit-identical to llm_matmul of row i alone,
    for every ISA, 1 and 2 threads, any number of rows; and close to numpy."""
    M, K, N = shape
    rng = np.random.default_rng(M * 7919 + K * 31 + N + tb)
    for with_bias in (False, True):
        a, b, bias, ref, scale = operands(rng, M, K, N, 0, tb, with_bias)
        for name in isas(lib):
            lib.llm_set_isa(ISA[name])
            alone = np.stack([run_matmul(lib, a[i:i + 1].copy(), b, bias, 1, K, N, 0, tb)[0]
                              for i in range(M)])
            for threads in (1, 2):
                lib.llm_pool_set_threads(threads)
                for rows in (M, 1, M // 2 + 1):
                    # rows anywhere in memory, given by pointers, in reverse order
                    ins = [a[i].copy() for i in range(rows)][::-1]
                    outs = [np.full(N, np.nan, dtype=np.float32) for _ in range(rows)]
                    assert lib.llm_matmul_rows(row_pointers(ins), ptr(b), ptr(bias), row_pointers(outs),
                                               rows, K, N, tb) == 0
                    got = np.stack(outs[::-1])
                    assert np.array_equal(got.view(np.uint32), alone[:rows].view(np.uint32)), \
                        (name, threads, rows)
            err = np.abs(alone - ref) / (scale + (np.abs(bias) if with_bias else 0) + 1e-30)
            assert err.max() < 2e-6, (name, err.max())
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)


@pytest.mark.parametrize("K,N", [(37, 83), (64, 200), (129, 47), (8, 16), (300, 161)])
@pytest.mark.parametrize("tb", [0, 1])
def test_rows_any_row_count(lib, K, N, tb):
    """Every row count from 1 to 40 (register tiles of several rows, their
    ragged last groups) and odd widths (ragged columns, ragged k): each row of
    llm_matmul_rows is bit-identical to llm_matmul of that row alone, at 1, 2
    and 3 threads."""
    rng = np.random.default_rng(K * 1009 + N + tb)
    a, b, bias, _, _ = operands(rng, 40, K, N, 0, tb, True)
    for name in isas(lib):
        lib.llm_set_isa(ISA[name])
        alone = np.stack([run_matmul(lib, a[i:i + 1].copy(), b, bias, 1, K, N, 0, tb)[0]
                          for i in range(40)])
        for threads in (1, 2, 3):
            lib.llm_pool_set_threads(threads)
            for rows in range(1, 41):
                outs = [np.full(N, np.nan, dtype=np.float32) for _ in range(rows)]
                assert lib.llm_matmul_rows(row_pointers(a[:rows]), ptr(b), ptr(bias),
                                           row_pointers(outs), rows, K, N, tb) == 0
                assert np.array_equal(np.stack(outs).view(np.uint32), alone[:rows].view(np.uint32)), \
                    (name, threads, rows)
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)
