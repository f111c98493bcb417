"""
The optimizer kernels (extension/src/kernels/adamw.c and optim.c) against
PyTorch: torch.optim.AdamW with two parameter groups, clip_grad_norm_ and a
LambdaLR warmup + cosine schedule.

The kernels are called through pg_llm_lab.kernels (ctypes) on a flat arena
of several tensors with gaps between them (the training state's layout).
References:
  - torch itself: m and v must match bit for bit (torch's lerp_ and addcmul_
    are fused multiply-adds, and so are ours); p within a few ulps, because
    torch's float32 sqrt (MKL) is not always correctly rounded;
  - a numpy transcription of torch's operations with an exact sqrt: p must
    match it bit for bit;
and every ISA the CPU has, at 1 and 2 threads, gives the same bits.

Run:  pytest tests/kernels/test_adamw.py -q
"""
import ctypes
import math

import numpy as np
import pytest

from pg_llm_lab import kernels
from pg_llm_lab.kernels import AdamW, LrSchedule, ParamRange

torch = pytest.importorskip("torch", reason="the optimizer is compared with PyTorch")

f32 = np.float32
c_float_p = ctypes.POINTER(ctypes.c_float)
c_double_p = ctypes.POINTER(ctypes.c_double)
CHUNK = 32768  # LLM_OPTIM_CHUNK


@pytest.fixture(scope="module")
def lib():
    try:
        lib = kernels.load()
    except RuntimeError as e:
        pytest.skip(str(e))
    yield lib
    lib.llm_pool_set_threads(1)
    lib.llm_set_isa(kernels.ISA["avx512"])


def isas(lib):
    return [kernels.ISA[name] for name in kernels.available_isas(lib)]


def fp(a):
    return a.ctypes.data_as(c_float_p)


# ---- an arena of tensors -------------------------------------------------------

class Arena:
    """Tensors of the given sizes one after another, 16-float aligned with
    gaps (as the weight cache lays them out); decay[i] says which decay."""

    def __init__(self, sizes, decay):
        self.sizes, self.decay = sizes, decay
        self.offsets, at = [], 3  # a gap before the first tensor too
        for n in sizes:
            self.offsets.append(at)
            at = (at + n + 15) // 16 * 16 + 5
        self.n_floats = at
        self.ranges = (ParamRange * len(sizes))(
            *[ParamRange(o, n, int(d)) for o, n, d in zip(self.offsets, sizes, decay)])

    def empty(self, fill=np.nan):
        """An arena whose gaps hold `fill` (NaN: any read of a gap shows)."""
        return np.full(self.n_floats, fill, f32)

    def put(self, arena, tensors):
        for o, t in zip(self.offsets, tensors):
            arena[o:o + t.size] = t.ravel()
        return arena

    def get(self, arena):
        return [arena[o:o + n].copy() for o, n in zip(self.offsets, self.sizes)]

    def gaps_untouched(self, arena, fill=np.nan):
        mask = np.ones(self.n_floats, bool)
        for o, n in zip(self.offsets, self.sizes):
            mask[o:o + n] = False
        return np.array_equal(arena[mask], np.full(mask.sum(), fill, f32), equal_nan=True)


SIZES = [1, 7, 33, CHUNK + 1, 2 * CHUNK, 1000, 50003]  # odd sizes, chunk boundaries
DECAY = [False, True, False, True, True, False, True]


def random_state(sizes, seed, step):
    rng = np.random.default_rng(seed)
    p = [rng.standard_normal(n).astype(f32) for n in sizes]
    g = [(rng.standard_normal(n) * 0.01).astype(f32) for n in sizes]
    if step == 1:
        m = [np.zeros(n, f32) for n in sizes]
        v = [np.zeros(n, f32) for n in sizes]
    else:
        m = [(rng.standard_normal(n) * 0.01).astype(f32) for n in sizes]
        v = [(rng.random(n) * 1e-4).astype(f32) for n in sizes]
    return p, g, m, v


def run_adamw(lib, arena, p, g, m, v, hp, with_update_sq=False):
    P, G, M, V = (arena.put(arena.empty(), t) for t in (p, g, m, v))
    sq = np.zeros(len(arena.sizes), np.float64) if with_update_sq else None
    status = lib.llm_adamw_update(fp(P), fp(G), fp(M), fp(V), arena.ranges, len(arena.sizes),
                                  ctypes.byref(hp), sq.ctypes.data_as(c_double_p) if sq is not None else None)
    assert status == 0
    for a in (P, G, M, V):
        assert arena.gaps_untouched(a), "a gap of the arena was written"
    return arena.get(P), arena.get(M), arena.get(V), sq


def fma32(a, b, c):
    """float32 fused multiply-add: a*b is exact in float64, one rounding to float64
    then one to float32 (the double rounding never bites at these magnitudes)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(f32)


def numpy_adamw(p, g, m, v, lr, beta1, beta2, eps, wd, step, decay):
    """torch's _single_tensor_adam on float32, transcribed; sqrt correctly rounded."""
    if decay and wd != 0:
        p = p * f32(1 - lr * wd)
    w = f32(1 - beta1)
    m = fma32(np.full_like(m, w), g - m, m) if abs(w) < 0.5 else fma32(np.full_like(m, w - f32(1)), g - m, g)
    v = fma32(f32(1 - beta2) * g, g, v * f32(beta2))
    bc1 = 1 - beta1 ** float(step)
    bc2 = 1 - beta2 ** float(step)
    denom = np.sqrt(v) / f32(bc2 ** 0.5) + f32(eps)
    p = p + (f32(-(lr / bc1)) * m) / denom
    return p, m, v


def torch_adamw(p, g, m, v, lr, beta1, beta2, eps, wd, step, decay):
    """One torch.optim.AdamW step with nanoGPT's two groups (decay / no decay)."""
    params = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in p]
    for param, grad in zip(params, g):
        param.grad = torch.from_numpy(grad.copy())
    groups = [{"params": [q for q, d in zip(params, decay) if d], "weight_decay": wd},
              {"params": [q for q, d in zip(params, decay) if not d], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps)
    for param, mi, vi in zip(params, m, v):
        opt.state[param] = {"step": torch.tensor(float(step - 1)),
                            "exp_avg": torch.from_numpy(mi.copy()),
                            "exp_avg_sq": torch.from_numpy(vi.copy())}
    opt.step()
    return ([q.detach().numpy() for q in params],
            [opt.state[q]["exp_avg"].numpy() for q in params],
            [opt.state[q]["exp_avg_sq"].numpy() for q in params])


def assert_p_close(got, want, before, what):
    """got and torch's want agree but for torch's sqrt: within one ulp of p plus
    a few float32 ulps (relative) of the step itself (want - before)."""
    step = np.abs(want.astype(np.float64) - before.astype(np.float64))
    tol = np.spacing(np.abs(want)).astype(np.float64) + 4 * 2.0 ** -23 * step
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert np.all(err <= tol), f"{what}: worst error {(err / tol).max():.2f} x tolerance"


# ---- AdamW ---------------------------------------------------------------------

@pytest.mark.parametrize("step", [1, 2, 10, 1000])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.9, 0.95), (0.3, 0.99)])  # 0.3: lerp's other branch
def test_adamw_matches_torch(lib, step, betas):
    lr, eps, wd = 6e-4, 1e-8, 0.1
    arena = Arena(SIZES, DECAY)
    p, g, m, v = random_state(SIZES, seed=step, step=step)
    hp = AdamW(lr, betas[0], betas[1], eps, wd, step)
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)
    got_p, got_m, got_v, _ = run_adamw(lib, arena, p, g, m, v, hp)

    want_p, want_m, want_v = torch_adamw(p, g, m, v, lr, betas[0], betas[1], eps, wd, step, DECAY)
    for i in range(len(SIZES)):
        assert np.array_equal(got_m[i], want_m[i]), f"m of tensor {i} differs from torch"
        assert np.array_equal(got_v[i], want_v[i]), f"v of tensor {i} differs from torch"
        assert_p_close(got_p[i], want_p[i], p[i], f"p of tensor {i}")

    for i in range(len(SIZES)):
        ref_p, ref_m, ref_v = numpy_adamw(p[i], g[i], m[i], v[i], lr, *betas, eps, wd, step, DECAY[i])
        assert np.array_equal(got_p[i], ref_p), f"p of tensor {i} differs from the transcription"
        assert np.array_equal(got_m[i], ref_m) and np.array_equal(got_v[i], ref_v)


def test_adamw_weight_decay_only_where_flagged(lib):
    """With g = m = v = 0 the step is 0: decayed tensors shrink by 1 - lr*wd, the others stay."""
    sizes = [5, 40]
    arena = Arena(sizes, [True, False])
    p = [np.linspace(-1, 1, n).astype(f32) for n in sizes]
    zeros = [np.zeros(n, f32) for n in sizes]
    got_p, _, _, _ = run_adamw(lib, arena, p, zeros, zeros, zeros, AdamW(0.5, 0.9, 0.999, 1e-8, 0.2, 1))
    assert np.array_equal(got_p[0], p[0] * f32(1 - 0.5 * 0.2))
    assert np.array_equal(got_p[1], p[1])


def test_adamw_same_bits_every_isa_and_thread_count(lib):
    arena = Arena(SIZES, DECAY)
    p, g, m, v = random_state(SIZES, seed=5, step=3)
    hp = AdamW(1e-3, 0.9, 0.95, 1e-8, 0.1, 3)
    results = {}
    for isa in isas(lib):
        for threads in (1, 2):
            lib.llm_set_isa(isa)
            lib.llm_pool_set_threads(threads)
            results[isa, threads] = run_adamw(lib, arena, p, g, m, v, hp, with_update_sq=True)
    lib.llm_set_isa(2)
    lib.llm_pool_set_threads(1)
    first = next(iter(results.values()))
    for key, res in results.items():
        for a, b in zip(first[:3], res[:3]):
            assert all(np.array_equal(x, y) for x, y in zip(a, b)), f"isa/threads {key} differ"
        assert np.array_equal(first[3], res[3]), f"update norms at isa/threads {key} differ"


def test_adamw_update_sq_is_the_change_of_p(lib):
    arena = Arena(SIZES, DECAY)
    p, g, m, v = random_state(SIZES, seed=9, step=4)
    got_p, _, _, sq = run_adamw(lib, arena, p, g, m, v, AdamW(1e-3, 0.9, 0.95, 1e-8, 0.1, 4),
                                with_update_sq=True)
    for i in range(len(SIZES)):
        want = np.sum((got_p[i].astype(np.float64) - p[i].astype(np.float64)) ** 2)
        assert sq[i] == pytest.approx(want, rel=1e-12)
        assert sq[i] > 0


def test_adamw_trajectory_matches_torch(lib):
    """Ten steps with two groups and a schedule: m and v stay bit-identical to torch,
    p within a few ulps (torch's sqrt)."""
    sizes, decay = [300, 17, 4000], [True, False, True]
    arena = Arena(sizes, decay)
    rng = np.random.default_rng(3)
    p0 = [rng.standard_normal(n).astype(f32) for n in sizes]
    grads = [[(rng.standard_normal(n) * 0.1).astype(f32) for n in sizes] for _ in range(10)]
    lr, wd = 1e-2, 0.1

    params = [torch.nn.Parameter(torch.from_numpy(t.copy())) for t in p0]
    opt = torch.optim.AdamW([{"params": [q for q, d in zip(params, decay) if d], "weight_decay": wd},
                             {"params": [q for q, d in zip(params, decay) if not d], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    schedule = LrSchedule(lr, 3, 8, lr / 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: nanogpt_lr(it, lr, 3, 8, lr / 10) / lr)

    P, M, V = arena.put(arena.empty(), p0), arena.empty(0.0), arena.empty(0.0)
    for step, g in enumerate(grads, start=1):
        for q, gi in zip(params, g):
            q.grad = torch.from_numpy(gi.copy())
        assert lib.llm_lr_at(ctypes.byref(schedule), step - 1) == opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        G = arena.put(arena.empty(), g)
        hp = AdamW(lib.llm_lr_at(ctypes.byref(schedule), step - 1), 0.9, 0.95, 1e-8, wd, step)
        assert lib.llm_adamw_update(fp(P), fp(G), fp(M), fp(V), arena.ranges, 3, ctypes.byref(hp), None) == 0
    for i, q in enumerate(params):
        assert np.array_equal(arena.get(M)[i], opt.state[q]["exp_avg"].numpy())
        assert np.array_equal(arena.get(V)[i], opt.state[q]["exp_avg_sq"].numpy())
        want = q.detach().numpy()
        err = np.abs(arena.get(P)[i].astype(np.float64) - want)
        # an ulp of p per step, and a little of the distance travelled
        tol = len(grads) * np.spacing(np.abs(want)) + 1e-6 * np.abs(want - p0[i])
        assert np.all(err <= tol), f"p of tensor {i} drifted from torch's: {(err / tol).max():.2f} x tolerance"


# ---- norms and clipping ----------------------------------------------------------

def test_sum_squares(lib):
    arena = Arena(SIZES, DECAY)
    rng = np.random.default_rng(1)
    x = [rng.standard_normal(n).astype(f32) for n in SIZES]
    sums = {}
    for threads in (1, 2):
        lib.llm_pool_set_threads(threads)
        sq = np.zeros(len(SIZES))
        assert lib.llm_sum_squares(fp(arena.put(arena.empty(), x)), arena.ranges, len(SIZES),
                                   sq.ctypes.data_as(c_double_p)) == 0
        sums[threads] = sq
    lib.llm_pool_set_threads(1)
    assert np.array_equal(sums[1], sums[2])
    for i in range(len(SIZES)):
        exact = math.fsum(float(t) * float(t) for t in x[i])
        assert sums[1][i] == pytest.approx(exact, rel=1e-13)


def torch_clip(g, max_norm):
    params = [torch.nn.Parameter(torch.zeros(len(t))) for t in g]
    for q, t in zip(params, g):
        q.grad = torch.from_numpy(t.copy())
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(total), [q.grad.numpy() for q in params]


@pytest.mark.parametrize("max_norm", [0.5, 1.0, 1e6])
def test_clip_grad_norm_matches_torch(lib, max_norm):
    arena = Arena(SIZES, DECAY)
    rng = np.random.default_rng(2)
    g = [(rng.standard_normal(n) * 0.01).astype(f32) for n in SIZES]
    G = arena.put(arena.empty(), g)
    norms = np.zeros(len(SIZES), f32)
    total = ctypes.c_float()
    assert lib.llm_clip_grad_norm(fp(G), arena.ranges, len(SIZES), max_norm, fp(norms),
                                  ctypes.byref(total)) == 0
    assert arena.gaps_untouched(G)

    want_total, want_g = torch_clip(g, max_norm)
    assert total.value == pytest.approx(want_total, rel=2e-6)
    for i, t in enumerate(g):
        assert norms[i] == pytest.approx(float(torch.linalg.vector_norm(torch.from_numpy(t))), rel=2e-6)
    coef = f32(lib.llm_clip_coef(total.value, max_norm))
    for got, orig, want in zip(arena.get(G), g, want_g):
        assert np.array_equal(got, orig * coef)  # every gradient times the one coefficient
        np.testing.assert_allclose(got, want, rtol=4e-6, atol=0)
    if max_norm == 1e6:
        assert coef == 1.0 and all(np.array_equal(a, b) for a, b in zip(arena.get(G), g))
    else:
        assert total.value > max_norm and coef < 1.0


def test_clip_coef_rounds_as_torch(lib):
    for total in (0.0, 1e-7, 0.3, 0.999999, 1.0, 2.5, 1234.5, float("inf")):
        for max_norm in (0.1, 1.0, 3.0):
            t = torch.tensor(total, dtype=torch.float32)
            want = torch.clamp(max_norm / (t + 1e-6), max=1.0).item()
            assert lib.llm_clip_coef(float(np.float32(total)), max_norm) == want, (total, max_norm)


def test_clip_with_max_norm_zero_only_measures(lib):
    arena = Arena([10, 3], [True, False])
    g = [np.arange(10, dtype=f32), np.ones(3, f32)]
    G = arena.put(arena.empty(), g)
    total = ctypes.c_float()
    assert lib.llm_clip_grad_norm(fp(G), arena.ranges, 2, 0.0, None, ctypes.byref(total)) == 0
    assert total.value == pytest.approx(math.sqrt(sum(i * i for i in range(10)) + 3), rel=1e-7)
    assert all(np.array_equal(a, b) for a, b in zip(arena.get(G), g))


# ---- the learning rate ---------------------------------------------------------------

def nanogpt_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT's get_lr (train.py), verbatim."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("lr,warmup,decay,min_lr", [(6e-4, 10, 100, 6e-5), (1e-3, 0, 50, 0.0),
                                                    (0.1, 7, 8, 0.1 / 3)])
def test_lr_schedule_is_lambdalr_of_nanogpt(lib, lr, warmup, decay, min_lr):
    schedule = LrSchedule(lr, warmup, decay, min_lr)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: nanogpt_lr(it, lr, warmup, decay, min_lr) / lr)
    for it in range(decay + 20):
        got = lib.llm_lr_at(ctypes.byref(schedule), it)
        assert got == sched.get_last_lr()[0], it  # the same double, bit for bit
        assert got == pytest.approx(nanogpt_lr(it, lr, warmup, decay, min_lr), rel=1e-15)
        opt.step()
        sched.step()
