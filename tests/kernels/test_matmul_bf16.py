"""
llm_matmul_bf16 (extension/src/kernels/matmul/: gemv_bf16.c, gemm.c's
widening pack): C = A @ op(B) with B stored as bfloat16.

Its meaning is fp32 arithmetic over the floats B's values stand for.  B is
rounded to bf16 by PyTorch (.to(torch.bfloat16), round-to-nearest-even), the
reference is float64 over the widened B, per ISA and thread count, odd
sizes; and on every ISA the product has the very bits of llm_matmul over
the widened B -- except the AVX2 and AVX-512 transposed GEMVs (decode's
lm_head), which widen 16 or 32 bf16 per load and so sum each row in another
order: only the float64 check applies to them.
Run:  pytest tests/kernels/test_matmul_bf16.py -q
"""
import numpy as np
import pytest

from pg_llm_lab import kernels
from pg_llm_lab.kernels import ISA, ptr
from test_matmul import lib, lib_no_memory  # noqa: F401 (the kernel library fixtures)

torch = pytest.importorskip("torch", reason="bf16 rounding is PyTorch's")

ISA_NAMES = {code: name for name, code in ISA.items()}


@pytest.fixture(params=[0, 1, 2], ids=["scalar", "avx2", "avx512"])
def isa(request, lib):
    """Each ISA the CPU runs; the others skip (AVX-512 cannot run everywhere)."""
    if ISA_NAMES[request.param] not in kernels.available_isas(lib):
        pytest.skip(f"CPU lacks {ISA_NAMES[request.param]}")
    lib.llm_set_isa(request.param)
    yield ISA_NAMES[request.param]
    lib.llm_set_isa(ISA["avx512"])
    lib.llm_pool_set_threads(1)


def to_bf16(x: np.ndarray):
    """(bf16 bits as uint16, the floats they stand for) of float32 x, rounded by torch."""
    t = torch.from_numpy(x).to(torch.bfloat16)
    bits = t.view(torch.int16).numpy().view(np.uint16).copy()
    return bits, t.to(torch.float32).numpy()


def operands(rng, M, K, N, tb):
    a = rng.standard_normal((M, K)).astype(np.float32)
    b16, bw = to_bf16(rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32))
    bias = rng.standard_normal(N).astype(np.float32)
    return a, b16, bw, bias


def run_bf16(lib, a, b16, bias, M, K, N, tb):
    c = np.full((M, N), np.nan, dtype=np.float32)
    assert lib.llm_matmul_bf16(ptr(a), ptr(b16), ptr(bias), ptr(c), M, K, N, tb) == 0
    return c


def run_fp32(lib, a, b, bias, M, K, N, tb):
    c = np.full((M, N), np.nan, dtype=np.float32)
    assert lib.llm_matmul(ptr(a), ptr(b), ptr(bias), ptr(c), M, K, N, 0, tb) == 0
    return c


SHAPES = [(1, 1, 1), (1, 7, 5), (1, 9, 17), (1, 29, 47), (1, 768, 2304), (1, 3072, 768), (1, 769, 33),
          (1, 17, 50257), (2, 3, 4), (17, 33, 7), (33, 65, 1), (15, 16, 31), (29, 257, 97),
          (64, 768, 700), (200, 40, 1100), (300, 520, 97), (3, 5, 769)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tb", [0, 1])
def test_matches_float64_over_rounded_b(lib, isa, shape, tb):
    M, K, N = shape
    rng = np.random.default_rng(M * 7919 + K * 31 + N + tb)
    a, b16, bw, bias = operands(rng, M, K, N, tb)
    bref = (bw.T if tb else bw).astype(np.float64)
    ref = a.astype(np.float64) @ bref + bias
    scale = np.abs(a).astype(np.float64) @ np.abs(bref) + np.abs(bias)
    for with_bias in (False, True):
        for threads in (1, 2):
            lib.llm_pool_set_threads(threads)
            c = run_bf16(lib, a, b16, bias if with_bias else None, M, K, N, tb)
            want = ref if with_bias else ref - bias
            err = np.abs(c - want) / (scale + 1e-30)
            assert np.isfinite(c).all(), (isa, threads)
            assert err.max() < 2e-6, (isa, threads, with_bias, err.max())


@pytest.mark.parametrize("shape", [(1, 768, 2304), (1, 9, 17), (1, 13, 29), (1, 17, 50257), (64, 768, 700),
                                   (17, 33, 7), (300, 520, 97)])
@pytest.mark.parametrize("tb", [0, 1])
def test_same_bits_as_fp32_over_widened_b(lib, isa, shape, tb):
    """GEMM packs the widened B into the fp32 panels, and the plain GEMVs are
    the fp32 loops (per column one FMA chain down k) with a widening load:
    the same bits.  (The AVX2 and AVX-512 transposed GEMVs pair other lanes
    than fp32's: only close.)"""
    M, K, N = shape
    if isa in ("avx2", "avx512") and M == 1 and tb:
        pytest.skip(f"the {isa} transposed bf16 GEMV sums each row in its own order")
    rng = np.random.default_rng(5)
    a, b16, bw, bias = operands(rng, M, K, N, tb)
    for threads in (1, 2):
        lib.llm_pool_set_threads(threads)
        got = run_bf16(lib, a, b16, bias, M, K, N, tb)
        want = run_fp32(lib, a, bw, bias, M, K, N, tb)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (isa, threads)


@pytest.mark.parametrize("shape", [(1, 768, 2304), (1, 3072, 768), (1, 768, 5003), (64, 768, 1000),
                                   (5, 3072, 77)])
@pytest.mark.parametrize("tb", [0, 1])
def test_bit_identical_across_threads(lib, isa, shape, tb):
    M, K, N = shape
    rng = np.random.default_rng(6)
    a, b16, _, bias = operands(rng, M, K, N, tb)
    outs = []
    for threads in (1, 2, 3, 8):
        lib.llm_pool_set_threads(threads)
        outs.append(run_bf16(lib, a, b16, bias, M, K, N, tb))
    for o in outs[1:]:
        assert np.array_equal(o.view(np.uint32), outs[0].view(np.uint32)), isa


@pytest.mark.parametrize("shape", [(64, 768, 700), (17, 33, 65), (300, 520, 97)])
@pytest.mark.parametrize("tb", [0, 1])
def test_allocation_failure_same_bits(lib, lib_no_memory, isa, shape, tb):
    """Without scratch memory GEMM widens B micro-panel by micro-panel on the stack."""
    M, K, N = shape
    rng = np.random.default_rng(7)
    a, b16, _, bias = operands(rng, M, K, N, tb)
    lib_no_memory.llm_set_isa(ISA[isa])
    lib_no_memory.llm_pool_set_threads(2)
    want = run_bf16(lib, a, b16, bias, M, K, N, tb)
    got = run_bf16(lib_no_memory, a, b16, bias, M, K, N, tb)
    assert np.array_equal(want.view(np.uint32), got.view(np.uint32)), isa
