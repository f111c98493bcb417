/*
 * kernel_check.c -- every SIMD kernel family against the scalar one, in
 * plain C: no Python, no PostgreSQL, so that it also runs where only a C
 * compiler is, e.g. cross-compiled for aarch64 and run under qemu-user
 * (.ci/arm64, tests/kernels/test_kernel_check.py).
 *
 *   cc -O2 -pthread -I extension/src tests/kernels/kernel_check.c \
 *      $(find extension/src/kernels -name '*.c') -lm -o kernel_check
 *   ./kernel_check            checks, exit status 1 on any failure
 *   ./kernel_check bench      GFLOP/s of llm_matmul per ISA (GPT-2 shapes)
 *
 * For each ISA this CPU runs (scalar, avx2, avx512 or neon), at 1 and 2
 * threads, on odd sizes:
 *   - llm_matmul and llm_matmul_acc (all four transpositions, with and
 *     without bias) against a double-precision product, within 2e-6 of
 *     sum |a||b| + |bias| per element, as tests/kernels/test_matmul.py;
 *   - llm_matmul_bf16 (GEMV and GEMM, transB or not, with and without
 *     bias) the same way, and bit-identical to llm_matmul over the
 *     widened B;
 *   - GELU, softmax, LayerNorm, cross-entropy, attention (forward and
 *     backward of each) against the scalar ISA, within twice the
 *     tolerances the Python kernel tests allow each against its reference
 *     (both variants are within those of the true value);
 *   - AdamW bit-identical to the scalar ISA (adamw.c: same IEEE operations);
 *   - every result at 2 threads bit-identical to the one at 1 thread.
 * The Python kernel tests (tests/kernels/) check the same kernels against
 * PyTorch and numpy on the machine that runs them; this driver is what
 * runs where they cannot.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "kernels/optim.h"

static int	failures;
static int	checks;
static const char *context = "";	/* "<isa> threads=<n>" of the run */

/* ---- data ---------------------------------------------------------------- */

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

/* uniform in [lo, hi) (xorshift64*) */
static float
uniform(float lo, float hi)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return lo + (hi - lo) * (float) ((rng_state * 2685821657736338717u) >> 40) / 16777216.0f;
}

static float *
random_floats(int64_t n, float lo, float hi)
{
	float	   *x = malloc((size_t) (n > 0 ? n : 1) * sizeof(float));

	for (int64_t i = 0; i < n; i++)
		x[i] = uniform(lo, hi);
	return x;
}

/* ---- comparisons ----------------------------------------------------------- */

/* |got - ref| <= atol + rtol * |ref| everywhere; NaN where, and only where, ref is */
static void
check_close(const char *what, const float *got, const float *ref, int64_t n,
			double rtol, double atol)
{
	int64_t		bad = 0,
				worst_i = 0;
	double		worst = 0.0;

	for (int64_t i = 0; i < n; i++)
	{
		/* in units of the tolerance; equal values (infinities, NaNs) are 0 off */
		double		excess = got[i] == ref[i] || (isnan(got[i]) && isnan(ref[i])) ? 0.0 :
			fabs((double) got[i] - ref[i]) / (atol + rtol * fabs(ref[i]));

		if (isnan(excess))
			excess = INFINITY;	/* a NaN or an infinity where ref has none */
		bad += excess > 1.0;
		if (excess > worst)
		{
			worst = excess;
			worst_i = i;
		}
	}
	checks++;
	if (bad)
	{
		failures++;
		printf("FAIL %s [%s]: %lld of %lld off, worst [%lld] %.9g vs %.9g\n", what, context,
			   (long long) bad, (long long) n, (long long) worst_i, got[worst_i], ref[worst_i]);
	}
}

static void
check_bits(const char *what, const void *got, const void *ref, size_t bytes)
{
	checks++;
	if (memcmp(got, ref, bytes) != 0)
	{
		failures++;
		printf("FAIL %s [%s]: not bit-identical\n", what, context);
	}
}

/* ---- the ISAs and thread counts ---------------------------------------------- */

static const llm_isa all_isas[] = {LLM_ISA_SCALAR, LLM_ISA_AVX2, LLM_ISA_AVX512, LLM_ISA_NEON};
static llm_isa isas[4];
static int	n_isas;

static void
find_isas(void)
{
	for (int i = 0; i < 4; i++)
	{
		llm_set_isa(all_isas[i]);
		if (llm_cpu_isa() == all_isas[i])
			isas[n_isas++] = all_isas[i];
	}
}

static char context_buf[64];

static void
use(llm_isa isa, int threads)
{
	llm_set_isa(isa);
	llm_pool_set_threads(threads);
	snprintf(context_buf, sizeof(context_buf), "%s threads=%d", llm_isa_name(isa), threads);
	context = context_buf;
}

/*
 * A family's check: run(out) fills outputs (nout floats) with the
 * kernel's results for the current ISA and threads.  The scalar ISA at 1
 * thread is the reference; every ISA at 2 threads must equal its 1-thread
 * result bit for bit; exact: bit-identical to scalar too.
 */
typedef void (*run_fn) (void *ctx, float *out);

static void
against_scalar(const char *what, run_fn run, void *ctx, int64_t nout,
			   double rtol, double atol, int exact)
{
	float	   *ref = malloc((size_t) nout * sizeof(float));
	float	   *one = malloc((size_t) nout * sizeof(float));
	float	   *two = malloc((size_t) nout * sizeof(float));

	use(LLM_ISA_SCALAR, 1);
	run(ctx, ref);
	for (int i = 0; i < n_isas; i++)
	{
		use(isas[i], 1);
		run(ctx, one);
		if (exact)
			check_bits(what, one, ref, (size_t) nout * sizeof(float));
		else
			check_close(what, one, ref, nout, rtol, atol);
		use(isas[i], 2);
		run(ctx, two);
		check_bits(what, two, one, (size_t) nout * sizeof(float));
	}
	free(ref);
	free(one);
	free(two);
}

/* ---- matmul -------------------------------------------------------------------- */

/*
 * The double-precision product the matmul checks compare with:
 * ref = op(a) @ op(b) (+ c0) (+ bias), op transposing when ta / tb, and
 * scale = sum |a||b| (+ |c0|) (+ |bias|) per element, the size that the
 * rounding errors of float sums are measured against.
 */
static void
double_product(const float *a, const float *b, const float *c0, const float *bias,
			   int64_t M, int64_t K, int64_t N, int ta, int tb, double *ref, double *scale)
{
	for (int64_t i = 0; i < M; i++)
		for (int64_t j = 0; j < N; j++)
		{
			double		s = 0.0,
						bound = 0.0;

			for (int64_t k = 0; k < K; k++)
			{
				double		x = ta ? a[k * M + i] : a[i * K + k];
				double		y = tb ? b[j * K + k] : b[k * N + j];

				s += x * y;
				bound += fabs(x * y);
			}
			if (c0)
			{
				s += c0[i * N + j];
				bound += fabs(c0[i * N + j]);
			}
			if (bias)
			{
				s += bias[j];
				bound += fabs(bias[j]);
			}
			ref[i * N + j] = s;
			scale[i * N + j] = bound + 1e-30;
		}
}

/* c (n floats) within 2e-6 of scale of ref everywhere, as tests/kernels/test_matmul.py */
static void
check_product(const char *what, const float *c, const double *ref, const double *scale, int64_t n)
{
	int64_t		bad = 0;
	double		worst = 0.0;

	for (int64_t i = 0; i < n; i++)
	{
		double		err = fabs(c[i] - ref[i]) / scale[i];

		bad += !(err < 2e-6);
		worst = err > worst ? err : worst;
	}
	checks++;
	if (bad)
	{
		failures++;
		printf("FAIL %s [%s]: %lld elements off, worst %.3g of sum|a||b|\n",
			   what, context, (long long) bad, worst);
	}
}

static void
check_matmul(int64_t M, int64_t K, int64_t N, int ta, int tb, int with_bias, int acc)
{
	float	   *a = random_floats(M * K, -1, 1);
	float	   *b = random_floats(K * N, -1, 1);
	float	   *bias = with_bias ? random_floats(N, -1, 1) : NULL;
	float	   *c0 = random_floats(M * N, -1, 1);
	float	   *c = malloc((size_t) (M * N) * sizeof(float));
	float	   *c1 = malloc((size_t) (M * N) * sizeof(float));
	double	   *ref = malloc((size_t) (M * N) * sizeof(double));
	double	   *scale = malloc((size_t) (M * N) * sizeof(double));
	char		what[96];

	snprintf(what, sizeof(what), "matmul%s %lldx%lldx%lld ta=%d tb=%d bias=%d",
			 acc ? "_acc" : "", (long long) M, (long long) K, (long long) N, ta, tb, with_bias);
	double_product(a, b, acc ? c0 : NULL, bias, M, K, N, ta, tb, ref, scale);

	for (int v = 0; v < n_isas; v++)
		for (int threads = 1; threads <= 2; threads++)
		{
			use(isas[v], threads);
			if (acc)
			{
				memcpy(c, c0, (size_t) (M * N) * sizeof(float));
				llm_matmul_acc(a, b, c, M, K, N, ta, tb);
			}
			else
				llm_matmul(a, b, bias, c, M, K, N, ta, tb);
			check_product(what, c, ref, scale, M * N);
			if (threads == 1)
				memcpy(c1, c, (size_t) (M * N) * sizeof(float));
			else
				check_bits(what, c, c1, (size_t) (M * N) * sizeof(float));
		}
	free(a);
	free(b);
	free(bias);
	free(c0);
	free(c);
	free(c1);
	free(ref);
	free(scale);
}

static void
matmul_checks(void)
{
	/* GEMV (M or N = 1), every micro-kernel row count, partial panels, k-blocks */
	static const int64_t shapes[][3] = {
		{1, 1, 1}, {1, 7, 1}, {7, 1, 5}, {2, 3, 4}, {17, 33, 7}, {33, 17, 65},
		{15, 16, 31}, {14, 256, 32}, {29, 257, 97}, {1, 769, 33}, {3, 5, 769},
		{70, 520, 33}, {1, 768, 130}, {5, 1, 1}, {33, 65, 1}, {9, 13, 13},
		{100, 40, 610}, {300, 401, 13}, {1, 37, 2053},
	};

	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
		for (int t = 0; t < 4; t++)
		{
			check_matmul(shapes[s][0], shapes[s][1], shapes[s][2], t & 1, t >> 1, 0, 0);
			check_matmul(shapes[s][0], shapes[s][1], shapes[s][2], t & 1, t >> 1, 1, 0);
			check_matmul(shapes[s][0], shapes[s][1], shapes[s][2], t & 1, t >> 1, 0, 1);
		}
}

/*
 * llm_matmul_bf16 (B stored as bf16, A not transposed) on B rounded to
 * bf16: within 2e-6 of sum |a||b| + |bias| of a double product over the
 * widened B, and bit-identical to llm_matmul over the widened B on the
 * same ISA at the same thread count.  Not the AVX2 and AVX-512 transposed
 * GEMVs (gemv_bf16.c): they widen a whole load of bf16 at once and so sum
 * each row in their own order (only the double check and thread counts
 * apply).
 */
static void
check_matmul_bf16(int64_t M, int64_t K, int64_t N, int tb, int with_bias)
{
	float	   *a = random_floats(M * K, -1, 1);
	float	   *bw = random_floats(K * N, -1, 1);
	llm_bf16   *b16 = malloc((size_t) (K * N) * sizeof(llm_bf16));
	float	   *bias = with_bias ? random_floats(N, -1, 1) : NULL;
	float	   *c = malloc((size_t) (M * N) * sizeof(float));
	float	   *c1 = malloc((size_t) (M * N) * sizeof(float));
	float	   *want = malloc((size_t) (M * N) * sizeof(float));
	double	   *ref = malloc((size_t) (M * N) * sizeof(double));
	double	   *scale = malloc((size_t) (M * N) * sizeof(double));
	char		what[96];

	snprintf(what, sizeof(what), "matmul_bf16 %lldx%lldx%lld tb=%d bias=%d",
			 (long long) M, (long long) K, (long long) N, tb, with_bias);
	for (int64_t i = 0; i < K * N; i++)
	{
		b16[i] = llm_float_to_bf16(bw[i]);
		bw[i] = llm_bf16_to_float(b16[i]);
	}
	double_product(a, bw, NULL, bias, M, K, N, 0, tb, ref, scale);

	for (int v = 0; v < n_isas; v++)
		for (int threads = 1; threads <= 2; threads++)
		{
			use(isas[v], threads);
			llm_matmul(a, bw, bias, want, M, K, N, 0, tb);
			use(isas[v], threads);
			llm_matmul_bf16(a, b16, bias, c, M, K, N, tb);
			check_product(what, c, ref, scale, M * N);
			if (!(M == 1 && tb && (isas[v] == LLM_ISA_AVX2 || isas[v] == LLM_ISA_AVX512)))
				check_bits(what, c, want, (size_t) (M * N) * sizeof(float));
			if (threads == 1)
				memcpy(c1, c, (size_t) (M * N) * sizeof(float));
			else
				check_bits(what, c, c1, (size_t) (M * N) * sizeof(float));
		}
	free(a);
	free(bw);
	free(b16);
	free(bias);
	free(c);
	free(c1);
	free(want);
	free(ref);
	free(scale);
}

static void
matmul_bf16_checks(void)
{
	/*
	 * GEMV (M = 1: plain rows in groups of 8 and a ragged group, ragged
	 * columns, more than one chunk of columns) and GEMM (M > 1: every
	 * micro-kernel row count, partial panels, k-blocks).  No N = 1 with
	 * M > 1: llm_matmul turns that into a GEMV over A, llm_matmul_bf16 not.
	 */
	static const int64_t shapes[][3] = {
		{1, 1, 1}, {1, 7, 5}, {1, 13, 13}, {1, 37, 2053}, {1, 769, 33}, {1, 768, 130},
		{2, 3, 4}, {17, 33, 7}, {33, 17, 65}, {29, 257, 97}, {70, 520, 33}, {9, 13, 13},
		{100, 40, 610},
	};

	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
		for (int tb = 0; tb <= 1; tb++)
			for (int with_bias = 0; with_bias <= 1; with_bias++)
				check_matmul_bf16(shapes[s][0], shapes[s][1], shapes[s][2], tb, with_bias);
}

/* ---- the other families ------------------------------------------------------- */

typedef struct
{
	int64_t		rows,
				cols,
				causal;
	int			bf16;			/* linear_cross_entropy's flag */
	float	   *x,
			   *dy,
			   *g,
			   *b,
			   *dx0;
	int32_t    *targets;
} rows_ctx;

static void
run_gelu(void *arg, float *out)
{
	rows_ctx   *c = arg;
	int64_t		n = c->rows * c->cols;

	llm_gelu(c->x, out, n);
	memcpy(out + n, c->dx0, (size_t) n * sizeof(float));
	llm_gelu_backward(c->x, c->dy, out + n, n);
}

static void
run_softmax(void *arg, float *out)
{
	rows_ctx   *c = arg;
	int64_t		n = c->rows * c->cols;

	llm_softmax(c->x, out, c->rows, c->cols, c->causal);
	memcpy(out + n, c->dx0, (size_t) n * sizeof(float));
	/* the backward of the scalar forward's y, so that only the backward differs */
	llm_softmax_backward(c->g, c->dy, out + n, c->rows, c->cols, c->causal);
}

static void
run_layernorm(void *arg, float *out)
{
	rows_ctx   *c = arg;
	int64_t		n = c->rows * c->cols;
	float	   *mean = out + n,
			   *rstd = mean + c->rows,
			   *dx = rstd + c->rows,
			   *dg = dx + n,
			   *db = dg + c->cols;

	llm_layernorm(c->x, c->g, c->b, out, c->rows, c->cols, 1e-5f, mean, rstd);
	memcpy(dx, c->dx0, (size_t) n * sizeof(float));
	memset(dg, 0, (size_t) (2 * c->cols) * sizeof(float));
	llm_layernorm_backward(c->x, c->g, mean, rstd, c->dy, dx, dg, db, c->rows, c->cols);
}

static void
run_cross_entropy(void *arg, float *out)
{
	rows_ctx   *c = arg;
	int64_t		n = c->rows * c->cols;
	double		loss;
	int64_t		counted;

	llm_cross_entropy(c->x, c->targets, c->rows, c->cols, &loss, &counted, out + n + 1);
	out[n] = (float) loss;
	memcpy(out, c->dx0, (size_t) n * sizeof(float));
	llm_cross_entropy_backward(c->x, c->targets, out + n + 1, c->rows, c->cols, 0.37f, out);
}

/*
 * The fused lm_head + cross-entropy: x [rows, cols] against w = dy read as
 * [rows, cols] (a vocabulary of `rows`), its gradients written over zeros;
 * in bf16 too (logits and their gradient rounded).
 */
static void
run_linear_cross_entropy(void *arg, float *out)
{
	rows_ctx   *c = arg;
	int64_t		n = c->rows * c->cols;
	int32_t    *targets = malloc((size_t) c->rows * sizeof(int32_t));
	double		loss;
	int64_t		counted;

	float	   *x = malloc((size_t) n * sizeof(float));

	/* x scaled to logits of order 1: a well-conditioned softmax and sums */
	for (int64_t i = 0; i < n; i++)
		x[i] = c->x[i] * 0.01f;
	for (int64_t r = 0; r < c->rows; r++)
		targets[r] = r % 5 == 4 ? -100 : (int32_t) ((r * 7) % c->rows);
	memset(out, 0, (size_t) (2 * n) * sizeof(float));
	llm_linear_cross_entropy(x, c->dy, targets, c->rows, c->cols, c->rows, c->bf16,
							 &loss, &counted, out, out + n);
	out[2 * n] = (float) loss;
	free(targets);
	free(x);
}

static void
row_checks(void)
{
	static const int64_t sizes[][2] = {{1, 1}, {3, 5}, {7, 33}, {5, 67}, {2, 1023}, {37, 3001}};

	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
	{
		rows_ctx	c = {.rows = sizes[s][0], .cols = sizes[s][1]};
		int64_t		n = c.rows * c.cols;
		char		what[64];

		c.x = random_floats(n, -6, 6);
		c.dy = random_floats(n, -1, 1);
		c.dx0 = random_floats(n, -1, 1);
		c.g = random_floats(n, 0, 1);
		c.b = random_floats(n, -1, 1);
		c.targets = malloc((size_t) c.rows * sizeof(int32_t));
		for (int64_t r = 0; r < c.rows; r++)
			c.targets[r] = r % 5 == 4 ? -100 : (int32_t) ((r * 7919) % c.cols);

		snprintf(what, sizeof(what), "gelu+backward n=%lld", (long long) n);
		against_scalar(what, run_gelu, &c, 2 * n, 2e-6, 4e-7, 0);

		snprintf(what, sizeof(what), "layernorm+backward %lldx%lld",
				 (long long) c.rows, (long long) c.cols);
		against_scalar(what, run_layernorm, &c, 2 * n + 2 * c.rows + 2 * c.cols, 4e-6, 4e-6, 0);

		snprintf(what, sizeof(what), "cross_entropy+backward %lldx%lld",
				 (long long) c.rows, (long long) c.cols);
		against_scalar(what, run_cross_entropy, &c, n + 1 + c.rows, 2e-6, 4e-7, 0);

		for (int bf16 = 0; bf16 <= 1 && c.rows > 4; bf16++)
		{
			c.bf16 = bf16;
			snprintf(what, sizeof(what), "linear_cross_entropy %lldx%lld bf16=%d",
					 (long long) c.rows, (long long) c.cols, bf16);
			/* bf16: a logit one ulp apart rounds one bf16 step (2^-8) apart */
			against_scalar(what, run_linear_cross_entropy, &c, 2 * n + 1,
						   bf16 ? 2e-2 : 2e-5, bf16 ? 1e-4 : 2e-6, 0);
		}

		for (int causal = 0; causal <= 1; causal++)
		{
			/* g: the scalar softmax of x, the y its backward reads */
			c.causal = causal ? c.rows : 0;
			use(LLM_ISA_SCALAR, 1);
			llm_softmax(c.x, c.g, c.rows, c.cols, c.causal);
			snprintf(what, sizeof(what), "softmax+backward %lldx%lld causal=%d",
					 (long long) c.rows, (long long) c.cols, causal);
			against_scalar(what, run_softmax, &c, 2 * n, 2e-6, 2e-7, 0);
		}
		free(c.x);
		free(c.dy);
		free(c.dx0);
		free(c.g);
		free(c.b);
		free(c.targets);
	}
	/* GELU on values where its tails and exp's clamps matter */
	{
		rows_ctx	c = {.rows = 1, .cols = 4099};

		c.x = random_floats(c.cols, -120, 120);
		c.dy = random_floats(c.cols, -1, 1);
		c.dx0 = random_floats(c.cols, -1, 1);
		c.x[5] = NAN;
		c.x[6] = INFINITY;
		c.x[7] = -INFINITY;
		c.x[8] = -9.7f;
		against_scalar("gelu+backward wide range", run_gelu, &c, 2 * c.cols, 2e-6, 4e-7, 0);
		free(c.x);
		free(c.dy);
		free(c.dx0);
	}
}

typedef struct
{
	int64_t		Tq,
				Tk,
				C,
				n_head;
	int			causal;
	float	   *qkv,			/* [Tk, 3C]: q is its last Tq rows */
			   *dy;
} attn_ctx;

static void
run_attention(void *arg, float *out)
{
	attn_ctx   *c = arg;
	int64_t		ld = 3 * c->C;
	const float *q = c->qkv + (c->Tk - c->Tq) * ld;
	float	   *y = out,
			   *lse = y + c->Tq * c->C,
			   *dqkv = lse + c->n_head * c->Tq;

	llm_attention(q, ld, c->qkv + c->C, ld, c->qkv + 2 * c->C, ld, y, c->Tq, c->Tk, c->C,
				  c->n_head, c->causal, lse);
	memset(dqkv, 0, (size_t) (c->Tk * ld) * sizeof(float));
	llm_attention_backward(q, ld, c->qkv + c->C, ld, c->qkv + 2 * c->C, ld, y, lse, c->dy,
						   dqkv + (c->Tk - c->Tq) * ld, ld, dqkv + c->C, ld, dqkv + 2 * c->C, ld,
						   c->Tq, c->Tk, c->C, c->n_head, c->causal);
}

static void
attention_checks(void)
{
	/* (Tq, Tk, C, n_head): prefill, decode (Tq = 1), a cached block, odd head sizes */
	static const int64_t shapes[][4] = {
		{1, 1, 4, 1}, {5, 5, 12, 3}, {17, 17, 39, 3}, {1, 23, 39, 3}, {7, 40, 48, 2},
		{70, 70, 64, 2}, {33, 33, 100, 4},
	};

	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
		for (int causal = 0; causal <= 1; causal++)
		{
			attn_ctx	c = {shapes[s][0], shapes[s][1], shapes[s][2], shapes[s][3], causal, NULL, NULL};
			int64_t		nout = c.Tq * c.C + c.n_head * c.Tq + c.Tk * 3 * c.C;
			char		what[80];

			c.qkv = random_floats(c.Tk * 3 * c.C, -2, 2);
			c.dy = random_floats(c.Tq * c.C, -1, 1);
			snprintf(what, sizeof(what), "attention+backward Tq=%lld Tk=%lld C=%lld heads=%lld causal=%d",
					 (long long) c.Tq, (long long) c.Tk, (long long) c.C, (long long) c.n_head, causal);
			against_scalar(what, run_attention, &c, nout, 2e-5, 4e-6, 0);
			free(c.qkv);
			free(c.dy);
		}
}

typedef struct
{
	int64_t		n;
	float	   *p,
			   *g,
			   *m,
			   *v;
} adamw_ctx;

static void
run_adamw(void *arg, float *out)
{
	adamw_ctx  *c = arg;
	LlmParamRange ranges[3] = {{0, 7, 1}, {7, c->n / 2 - 7, 0}, {c->n / 2, c->n - c->n / 2, 1}};
	LlmAdamW	hp = {6e-4, 0.9, 0.95, 1e-8, 0.1, 1};
	float	   *p = out,
			   *m = out + c->n,
			   *v = out + 2 * c->n;

	memcpy(p, c->p, (size_t) c->n * sizeof(float));
	memcpy(m, c->m, (size_t) c->n * sizeof(float));
	memcpy(v, c->v, (size_t) c->n * sizeof(float));
	for (hp.step = 1; hp.step <= 3; hp.step++)
		llm_adamw_update(p, c->g, m, v, ranges, 3, &hp, NULL);
}

static void
adamw_checks(void)
{
	adamw_ctx	c = {.n = 100003};

	c.p = random_floats(c.n, -1, 1);
	c.g = random_floats(c.n, -1, 1);
	c.m = random_floats(c.n, -0.1f, 0.1f);
	c.v = random_floats(c.n, 0, 0.01f);
	against_scalar("adamw 3 steps", run_adamw, &c, 3 * c.n, 0, 0, 1);
	free(c.p);
	free(c.g);
	free(c.m);
	free(c.v);
}

/* ---- bench: GFLOP/s of llm_matmul per ISA --------------------------------------- */

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static int
bench(int threads)
{
	/* GPT-2 small: c_fc of a 64-token batch, lm_head of one token (GEMV), attention's c_attn */
	static const int64_t shapes[][5] = {
		{64, 768, 3072, 0, 0}, {256, 768, 2304, 0, 0}, {1, 768, 3072, 0, 0},
		{1, 768, 50257, 0, 1},
	};

	printf("llm_matmul GFLOP/s, %d thread(s), median of 5 (M K N transB)\n", threads);
	printf("%-22s", "shape");
	for (int i = 0; i < n_isas; i++)
		printf(" %9s", llm_isa_name(isas[i]));
	printf("\n");
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
	{
		int64_t		M = shapes[s][0],
					K = shapes[s][1],
					N = shapes[s][2];
		float	   *a = random_floats(M * K, -1, 1);
		float	   *b = random_floats(K * N, -1, 1);
		float	   *c = malloc((size_t) (M * N) * sizeof(float));
		char		label[32];

		snprintf(label, sizeof(label), "%lld %lld %lld %lld", (long long) M, (long long) K,
				 (long long) N, (long long) shapes[s][4]);
		printf("%-22s", label);
		for (int i = 0; i < n_isas; i++)
		{
			double		t[5];

			use(isas[i], threads);
			llm_matmul(a, b, NULL, c, M, K, N, 0, (int) shapes[s][4]);	/* warm up */
			for (int r = 0; r < 5; r++)
			{
				double		t0 = now();

				llm_matmul(a, b, NULL, c, M, K, N, 0, (int) shapes[s][4]);
				t[r] = now() - t0;
			}
			for (int x = 0; x < 5; x++)	/* sort, for the median */
				for (int y = x + 1; y < 5; y++)
					if (t[y] < t[x])
					{
						double		tmp = t[x];

						t[x] = t[y];
						t[y] = tmp;
					}
			printf(" %9.2f", 2.0 * M * K * N / t[2] * 1e-9);
		}
		printf("\n");
		free(a);
		free(b);
		free(c);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	find_isas();
	if (argc > 1 && strcmp(argv[1], "bench") == 0)
		return bench(argc > 2 ? atoi(argv[2]) : 1);

	printf("ISAs:");
	for (int i = 0; i < n_isas; i++)
		printf(" %s", llm_isa_name(isas[i]));
	printf("\n");
	matmul_checks();
	matmul_bf16_checks();
	row_checks();
	attention_checks();
	adamw_checks();
	printf("%d checks, %d failed\n", checks, failures);
	return failures ? 1 : 0;
}
