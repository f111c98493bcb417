/*
 * ops.c -- elementwise maps, GELU, softmax, LayerNorm, embedding lookup and
 * cross-entropy.
 *
 * The kernels that can be large (GELU, softmax, LayerNorm, cross-entropy)
 * are cut into tasks of whole rows, or fixed blocks of elements, with
 * llm_parallel_for.  Every output is computed by exactly one task, in an
 * order fixed by the sizes alone, so results never depend on the thread
 * count.  The cheap memory-bound maps (add, mul, scale, transpose,
 * embedding) run on the calling thread.
 *
 * The row kernels come in three flavours, picked at run time from
 * llm_cpu_isa(): plain C, AVX2+FMA and AVX-512F.  They differ only in
 * rounding (summation order, fused multiply-add), a few ulps at most.
 *
 * Numerics, and why:
 *   - exp is computed by exp_avx2/exp_avx512 below (range reduction plus the
 *     Cephes polynomial, within 1.3 ulp of the true value) or libm's expf;
 *   - GELU uses 0.5*x*(1 + tanh(u)) = x * sigmoid(2u) = x / (1 + exp(-2u)),
 *     which needs one exp and does not lose precision where tanh(u) ~ -1;
 *   - softmax and log-sum-exp subtract the row maximum before exp;
 *   - LayerNorm takes the variance in a second pass, as mean((x - mean)^2),
 *     which does not cancel catastrophically as E[x^2] - mean^2 can;
 *   - cross-entropy accumulates in double.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#include "simd.h"

/*
 * Work per task, in floats: big enough that a task dwarfs the cost of
 * handing it out, small enough that two threads get several tasks each.
 */
#define TASK_FLOATS 65536

/* Rows per task so that a task handles about TASK_FLOATS floats. */
static int64_t
rows_per_task(int64_t cols)
{
	return cols >= TASK_FLOATS ? 1 : TASK_FLOATS / (cols > 0 ? cols : 1);
}


/* ---- simple maps ---------------------------------------------------------- */

void
llm_add(const float *a, const float *b, float *y, int64_t n, int64_t bn)
{
	if (bn <= 0)
		bn = n;
	for (int64_t row = 0; row < n; row += bn)
		for (int64_t i = 0; i < bn; i++)
			y[row + i] = a[row + i] + b[i];
}

void
llm_mul(const float *a, const float *b, float *y, int64_t n, int64_t bn)
{
	if (bn <= 0)
		bn = n;
	for (int64_t row = 0; row < n; row += bn)
		for (int64_t i = 0; i < bn; i++)
			y[row + i] = a[row + i] * b[i];
}

void
llm_scale(const float *x, float s, float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		y[i] = s * x[i];
}

/*
 * Transpose in square tiles: a TRANSPOSE_TILE^2 tile of x and of y both fit
 * in L1, so every cache line read or written is used whole.
 */
#define TRANSPOSE_TILE 32

void
llm_transpose(const float *x, float *y, int64_t rows, int64_t cols)
{
	for (int64_t i0 = 0; i0 < rows; i0 += TRANSPOSE_TILE)
	{
		int64_t		i1 = i0 + TRANSPOSE_TILE < rows ? i0 + TRANSPOSE_TILE : rows;

		for (int64_t j0 = 0; j0 < cols; j0 += TRANSPOSE_TILE)
		{
			int64_t		j1 = j0 + TRANSPOSE_TILE < cols ? j0 + TRANSPOSE_TILE : cols;

			for (int64_t i = i0; i < i1; i++)
				for (int64_t j = j0; j < j1; j++)
					y[j * rows + i] = x[i * cols + j];
		}
	}
}

void
llm_embedding(const float *w, const int32_t *ids, float *y,
			  int64_t n_ids, int64_t dim)
{
	for (int64_t t = 0; t < n_ids; t++)
		memcpy(y + t * dim, w + (int64_t) ids[t] * dim, (size_t) dim * sizeof(float));
}


/* ---- vector exp and horizontal reductions ------------------------------------ */

/*
 * exp(x) = 2^n * exp(r) with n = round(x / ln 2) and |r| <= ln(2)/2.
 * r = x - n*ln2 is taken in two steps (ln2 = LN2_HI + LN2_LO, LN2_HI with
 * few mantissa bits so n*LN2_HI is exact); exp(r) is the Cephes
 * polynomial 1 + r + r^2 * P(r).  Inputs are clamped to [EXP_MIN, EXP_MAX],
 * far enough out that the result still rounds to 0 or overflows to +inf;
 * NaN passes through (max/min return their second operand on NaN).
 */
#define EXP_MIN		-110.0f
#define EXP_MAX		100.0f
#define LOG2E		1.44269504088896341f
#define LN2_HI		0.693359375f
#define LN2_LO		-2.12194440e-4f
#define EXP_P0		1.9875691500e-4f
#define EXP_P1		1.3981999507e-3f
#define EXP_P2		8.3334519073e-3f
#define EXP_P3		4.1665795894e-2f
#define EXP_P4		1.6666665459e-1f
#define EXP_P5		5.0000001201e-1f

#ifdef LLM_X86

TARGET_AVX512 static inline __m512
exp_avx512(__m512 x)
{
	__m512		n,
				r,
				p;

	x = _mm512_min_ps(_mm512_set1_ps(EXP_MAX), _mm512_max_ps(_mm512_set1_ps(EXP_MIN), x));
	n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
							 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
	p = _mm512_set1_ps(EXP_P0);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
	p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	/* p * 2^n, with correct overflow to inf and gradual underflow */
	return _mm512_scalef_ps(p, n);
}

TARGET_AVX2 static inline __m256
exp_avx2(__m256 x)
{
	__m256		n,
				r,
				p;
	__m256i		ni,
				half1,
				half2;

	x = _mm256_min_ps(_mm256_set1_ps(EXP_MAX), _mm256_max_ps(_mm256_set1_ps(EXP_MIN), x));
	n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
						_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
	p = _mm256_set1_ps(EXP_P0);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));

	/*
	 * Multiply by 2^n as 2^(n/2) * 2^(n - n/2): n runs from -159 to 145,
	 * too wide for one float exponent, but each half is a normal float, and
	 * the last multiply rounds once to inf, a subnormal or 0 as it should.
	 */
	ni = _mm256_cvtps_epi32(n);
	half1 = _mm256_srai_epi32(ni, 1);
	half2 = _mm256_sub_epi32(ni, half1);
	half1 = _mm256_slli_epi32(_mm256_add_epi32(half1, _mm256_set1_epi32(127)), 23);
	half2 = _mm256_slli_epi32(_mm256_add_epi32(half2, _mm256_set1_epi32(127)), 23);
	p = _mm256_mul_ps(p, _mm256_castsi256_ps(half1));
	return _mm256_mul_ps(p, _mm256_castsi256_ps(half2));
}

TARGET_AVX2 static inline float
hmax_avx2(__m256 v)
{
	__m128		s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

TARGET_AVX2 static inline double
hsum_pd_avx2(__m256d v)
{
	__m128d		s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));

	return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

/* Lanes 0 .. count-1 set, for the last partial vector of a row. */
static inline __mmask16
tail_mask(int64_t count)
{
	return (__mmask16) ((1u << count) - 1);
}

#endif							/* LLM_X86 */


/* ---- GELU ------------------------------------------------------------------ */

/*
 * gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 *         = x / (1 + exp(-2u))
 */
#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_COEF 0.044715f

static void
gelu_scalar(const float *x, float *y, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
	{
		float		u = GELU_SQRT_2_OVER_PI * (x[i] + GELU_COEF * (x[i] * x[i] * x[i]));

		y[i] = x[i] / (1.0f + expf(-2.0f * u));
	}
}

#ifdef LLM_X86

TARGET_AVX512 static inline __m512
gelu16(__m512 x)
{
	__m512		x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
	__m512		u = _mm512_mul_ps(_mm512_set1_ps(GELU_SQRT_2_OVER_PI),
								  _mm512_fmadd_ps(_mm512_set1_ps(GELU_COEF), x3, x));
	__m512		e = exp_avx512(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));

	return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

TARGET_AVX512 static void
gelu_avx512(const float *x, float *y, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 16 <= n; i += 16)
		_mm512_storeu_ps(y + i, gelu16(_mm512_loadu_ps(x + i)));
	if (i < n)
	{
		__mmask16	m = tail_mask(n - i);

		_mm512_mask_storeu_ps(y + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
	}
}

TARGET_AVX2 static void
gelu_avx2(const float *x, float *y, int64_t n)
{
	int64_t		i;

	for (i = 0; i + 8 <= n; i += 8)
	{
		__m256		v = _mm256_loadu_ps(x + i);
		__m256		x3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
		__m256		u = _mm256_mul_ps(_mm256_set1_ps(GELU_SQRT_2_OVER_PI),
									  _mm256_fmadd_ps(_mm256_set1_ps(GELU_COEF), x3, v));
		__m256		e = exp_avx2(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));

		_mm256_storeu_ps(y + i, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
	}
	gelu_scalar(x + i, y + i, n - i);
}

#endif							/* LLM_X86 */

typedef struct
{
	const float *x;
	float	   *y;
	llm_isa		isa;
} map_ctx;

static void
gelu_task(void *arg, int64_t begin, int64_t end)
{
	const map_ctx *c = arg;

#ifdef LLM_X86
	if (c->isa == LLM_ISA_AVX512)
		gelu_avx512(c->x + begin, c->y + begin, end - begin);
	else if (c->isa == LLM_ISA_AVX2)
		gelu_avx2(c->x + begin, c->y + begin, end - begin);
	else
#endif
		gelu_scalar(c->x + begin, c->y + begin, end - begin);
}

int
llm_gelu(const float *x, float *y, int64_t n)
{
	map_ctx		c = {x, y, llm_cpu_isa()};

	return llm_parallel_for(n, TASK_FLOATS, gelu_task, &c);
}


/* ---- softmax ----------------------------------------------------------------- */

/*
 * One row: y = exp(x - max) / sum(exp(x - max)).  x == y is allowed.
 * (The final division is a multiply by the reciprocal, as PyTorch does.)
 */
static void
softmax_row_scalar(const float *x, float *y, int64_t n)
{
	float		max = -INFINITY,
				inv;
	double		sum = 0.0;		/* one float accumulator would lose ~n ulps */

	for (int64_t i = 0; i < n; i++)
		max = x[i] > max ? x[i] : max;
	for (int64_t i = 0; i < n; i++)
	{
		y[i] = expf(x[i] - max);
		sum += y[i];
	}
	inv = (float) (1.0 / sum);
	for (int64_t i = 0; i < n; i++)
		y[i] *= inv;
}

#ifdef LLM_X86

TARGET_AVX512 static void
softmax_row_avx512(const float *x, float *y, int64_t n)
{
	const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
	__m512		vmax = neg_inf,
				vsum = _mm512_setzero_ps(),
				vinv;
	__mmask16	m = tail_mask(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;

	for (i = 0; i < full; i += 16)
		vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
	if (m)
		vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(neg_inf, m, x + i));
	vmax = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));

	for (i = 0; i < full; i += 16)
	{
		__m512		e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax));

		_mm512_storeu_ps(y + i, e);
		vsum = _mm512_add_ps(vsum, e);
	}
	if (m)
	{
		__m512		e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));

		e = _mm512_maskz_mov_ps(m, e);
		_mm512_mask_storeu_ps(y + i, m, e);
		vsum = _mm512_add_ps(vsum, e);
	}

	vinv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
	for (i = 0; i < full; i += 16)
		_mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), vinv));
	if (m)
		_mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), vinv));
}

TARGET_AVX2 static void
softmax_row_avx2(const float *x, float *y, int64_t n)
{
	__m256		vmax = _mm256_set1_ps(-INFINITY),
				vsum = _mm256_setzero_ps(),
				vinv;
	float		max,
				sum,
				inv;
	int64_t		full = n - n % 8;
	int64_t		i;

	for (i = 0; i < full; i += 8)
		vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
	max = hmax_avx2(vmax);
	for (; i < n; i++)
		max = x[i] > max ? x[i] : max;

	vmax = _mm256_set1_ps(max);
	for (i = 0; i < full; i += 8)
	{
		__m256		e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));

		_mm256_storeu_ps(y + i, e);
		vsum = _mm256_add_ps(vsum, e);
	}
	sum = hsum_avx2(vsum);
	for (; i < n; i++)
	{
		y[i] = expf(x[i] - max);
		sum += y[i];
	}

	inv = 1.0f / sum;
	vinv = _mm256_set1_ps(inv);
	for (i = 0; i < full; i += 8)
		_mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), vinv));
	for (; i < n; i++)
		y[i] *= inv;
}

#endif							/* LLM_X86 */

/* Softmax of one row of n > 0 floats, for attention.c too. */
void
llm_softmax_row(const float *x, float *y, int64_t n)
{
#ifdef LLM_X86
	llm_isa		isa = llm_cpu_isa();

	if (isa == LLM_ISA_AVX512)
		softmax_row_avx512(x, y, n);
	else if (isa == LLM_ISA_AVX2)
		softmax_row_avx2(x, y, n);
	else
#endif
		softmax_row_scalar(x, y, n);
}

typedef struct
{
	const float *x;
	float	   *y;
	int64_t		cols;
	int64_t		causal_rows;
} softmax_ctx;

static void
softmax_task(void *arg, int64_t begin, int64_t end)
{
	const softmax_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
	{
		const float *x = c->x + r * c->cols;
		float	   *y = c->y + r * c->cols;
		int64_t		kept = c->cols;

		if (c->causal_rows > 0)
		{
			/* query i = r % Tq sits at position i + (Tk - Tq) */
			kept = r % c->causal_rows + (c->cols - c->causal_rows) + 1;
			kept = kept < 0 ? 0 : kept > c->cols ? c->cols : kept;
		}
		if (kept > 0)
			llm_softmax_row(x, y, kept);
		memset(y + kept, 0, (size_t) (c->cols - kept) * sizeof(float));
	}
}

int
llm_softmax(const float *x, float *y, int64_t rows, int64_t cols,
			int64_t causal_rows)
{
	softmax_ctx c = {x, y, cols, causal_rows};

	return llm_parallel_for(rows, rows_per_task(cols), softmax_task, &c);
}


/* ---- LayerNorm ----------------------------------------------------------- */

/*
 * One row: y = (x - mean) * rstd * g + b with rstd = 1/sqrt(var + eps) and
 * var the biased variance, as torch.nn.LayerNorm.  The scalar version
 * accumulates in double; the SIMD ones in float over 8 or 16 independent
 * lanes, which keeps the rounding error well under 1e-6 for GPT-2 widths.
 */
static void
layernorm_row_scalar(const float *x, const float *g, const float *b, float *y,
					 int64_t n, float eps)
{
	double		sum = 0.0,
				sq = 0.0;
	float		mean,
				rstd;

	for (int64_t i = 0; i < n; i++)
		sum += x[i];
	mean = (float) (sum / n);
	for (int64_t i = 0; i < n; i++)
	{
		double		d = (double) x[i] - mean;

		sq += d * d;
	}
	rstd = (float) (1.0 / sqrt(sq / n + eps));
	for (int64_t i = 0; i < n; i++)
		y[i] = (x[i] - mean) * rstd * g[i] + b[i];
}

#ifdef LLM_X86

TARGET_AVX512 static void
layernorm_row_avx512(const float *x, const float *g, const float *b, float *y,
					 int64_t n, float eps)
{
	__m512		vsum = _mm512_setzero_ps(),
				vsq = _mm512_setzero_ps(),
				vmean,
				vrstd;
	__mmask16	m = tail_mask(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;

	for (i = 0; i < full; i += 16)
		vsum = _mm512_add_ps(vsum, _mm512_loadu_ps(x + i));
	if (m)
		vsum = _mm512_add_ps(vsum, _mm512_maskz_loadu_ps(m, x + i));
	vmean = _mm512_set1_ps(_mm512_reduce_add_ps(vsum) / (float) n);

	for (i = 0; i < full; i += 16)
	{
		__m512		d = _mm512_sub_ps(_mm512_loadu_ps(x + i), vmean);

		vsq = _mm512_fmadd_ps(d, d, vsq);
	}
	if (m)
	{
		__m512		d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + i), vmean);

		vsq = _mm512_fmadd_ps(d, d, vsq);
	}
	vrstd = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(vsq) / (float) n + eps));

	for (i = 0; i < full; i += 16)
	{
		__m512		d = _mm512_sub_ps(_mm512_loadu_ps(x + i), vmean);

		_mm512_storeu_ps(y + i, _mm512_fmadd_ps(_mm512_mul_ps(d, vrstd),
												_mm512_loadu_ps(g + i),
												_mm512_loadu_ps(b + i)));
	}
	if (m)
	{
		__m512		d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmean);

		_mm512_mask_storeu_ps(y + i, m,
							  _mm512_fmadd_ps(_mm512_mul_ps(d, vrstd),
											  _mm512_maskz_loadu_ps(m, g + i),
											  _mm512_maskz_loadu_ps(m, b + i)));
	}
}

TARGET_AVX2 static void
layernorm_row_avx2(const float *x, const float *g, const float *b, float *y,
				   int64_t n, float eps)
{
	/* two accumulators: 16 lanes, like the AVX-512 version */
	__m256		s0 = _mm256_setzero_ps(),
				s1 = _mm256_setzero_ps(),
				vmean,
				vrstd;
	float		sum,
				sq,
				mean,
				rstd;
	int64_t		i;

	for (i = 0; i + 16 <= n; i += 16)
	{
		s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
		s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
	}
	sum = hsum_avx2(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		sum += x[i];
	mean = sum / (float) n;

	vmean = _mm256_set1_ps(mean);
	s0 = s1 = _mm256_setzero_ps();
	for (i = 0; i + 16 <= n; i += 16)
	{
		__m256		d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmean);
		__m256		d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vmean);

		s0 = _mm256_fmadd_ps(d0, d0, s0);
		s1 = _mm256_fmadd_ps(d1, d1, s1);
	}
	sq = hsum_avx2(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		sq += (x[i] - mean) * (x[i] - mean);
	rstd = 1.0f / sqrtf(sq / (float) n + eps);

	vrstd = _mm256_set1_ps(rstd);
	for (i = 0; i + 8 <= n; i += 8)
	{
		__m256		d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmean);

		_mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_mul_ps(d, vrstd),
												_mm256_loadu_ps(g + i),
												_mm256_loadu_ps(b + i)));
	}
	for (; i < n; i++)
		y[i] = (x[i] - mean) * rstd * g[i] + b[i];
}

#endif							/* LLM_X86 */

typedef struct
{
	const float *x,
			   *g,
			   *b;
	float	   *y;
	int64_t		cols;
	float		eps;
	llm_isa		isa;
} layernorm_ctx;

static void
layernorm_task(void *arg, int64_t begin, int64_t end)
{
	const layernorm_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
	{
		const float *x = c->x + r * c->cols;
		float	   *y = c->y + r * c->cols;

#ifdef LLM_X86
		if (c->isa == LLM_ISA_AVX512)
			layernorm_row_avx512(x, c->g, c->b, y, c->cols, c->eps);
		else if (c->isa == LLM_ISA_AVX2)
			layernorm_row_avx2(x, c->g, c->b, y, c->cols, c->eps);
		else
#endif
			layernorm_row_scalar(x, c->g, c->b, y, c->cols, c->eps);
	}
}

int
llm_layernorm(const float *x, const float *g, const float *b, float *y,
			  int64_t rows, int64_t cols, float eps)
{
	layernorm_ctx c = {x, g, b, y, cols, eps, llm_cpu_isa()};

	if (cols <= 0)
		return LLM_OK;
	return llm_parallel_for(rows, rows_per_task(cols), layernorm_task, &c);
}


/* ---- cross-entropy ----------------------------------------------------------- */

/*
 * log(sum(exp(x))) of one row, as max + log(sum(exp(x - max))): every
 * exp is at most 1, so nothing overflows, and the sum is kept in double.
 */
static double
logsumexp_scalar(const float *x, int64_t n)
{
	float		max = -INFINITY;
	double		sum = 0.0;

	for (int64_t i = 0; i < n; i++)
		max = x[i] > max ? x[i] : max;
	for (int64_t i = 0; i < n; i++)
		sum += expf(x[i] - max);
	return max + log(sum);
}

#ifdef LLM_X86

/* sum += e, with the 16 floats of e widened to two vectors of 8 doubles */
TARGET_AVX512 static inline void
add_widened_avx512(__m512 e, __m512d *sum_lo, __m512d *sum_hi)
{
	__m256		e_lo = _mm512_castps512_ps256(e);
	__m256		e_hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1));

	*sum_lo = _mm512_add_pd(*sum_lo, _mm512_cvtps_pd(e_lo));
	*sum_hi = _mm512_add_pd(*sum_hi, _mm512_cvtps_pd(e_hi));
}

TARGET_AVX512 static double
logsumexp_avx512(const float *x, int64_t n)
{
	const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
	__m512		vmax = neg_inf;
	__m512d		sum_lo = _mm512_setzero_pd(),
				sum_hi = _mm512_setzero_pd();
	__mmask16	m = tail_mask(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;
	float		max;

	for (i = 0; i < full; i += 16)
		vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
	if (m)
		vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(neg_inf, m, x + i));
	max = _mm512_reduce_max_ps(vmax);
	vmax = _mm512_set1_ps(max);

	for (i = 0; i < full; i += 16)
		add_widened_avx512(exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmax)),
						   &sum_lo, &sum_hi);
	if (m)
	{
		__m512		e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmax));

		add_widened_avx512(_mm512_maskz_mov_ps(m, e), &sum_lo, &sum_hi);
	}
	return max + log(_mm512_reduce_add_pd(_mm512_add_pd(sum_lo, sum_hi)));
}

TARGET_AVX2 static double
logsumexp_avx2(const float *x, int64_t n)
{
	__m256		vmax = _mm256_set1_ps(-INFINITY);
	__m256d		sum_lo = _mm256_setzero_pd(),
				sum_hi = _mm256_setzero_pd();
	int64_t		full = n - n % 8;
	int64_t		i;
	float		max;
	double		sum;

	for (i = 0; i < full; i += 8)
		vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
	max = hmax_avx2(vmax);
	for (; i < n; i++)
		max = x[i] > max ? x[i] : max;

	vmax = _mm256_set1_ps(max);
	for (i = 0; i < full; i += 8)
	{
		__m256		e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmax));

		sum_lo = _mm256_add_pd(sum_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
		sum_hi = _mm256_add_pd(sum_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
	}
	sum = hsum_pd_avx2(_mm256_add_pd(sum_lo, sum_hi));
	for (; i < n; i++)
		sum += expf(x[i] - max);
	return max + log(sum);
}

#endif							/* LLM_X86 */

/*
 * Each task writes its own partial sum; the caller adds them in task order,
 * so the total is the same at any thread count.  The number of tasks is
 * capped so the partials fit in the context without a malloc.
 */
#define CE_MAX_TASKS 256

typedef struct
{
	const float *logits;
	const int32_t *targets;
	int64_t		vocab;
	int64_t		grain;
	llm_isa		isa;
	double		loss_sum[CE_MAX_TASKS];
	int64_t		counted[CE_MAX_TASKS];
} cross_entropy_ctx;

static void
cross_entropy_task(void *arg, int64_t begin, int64_t end)
{
	cross_entropy_ctx *c = arg;
	int64_t		task = begin / c->grain;
	double		loss_sum = 0.0;
	int64_t		counted = 0;

	for (int64_t r = begin; r < end; r++)
	{
		const float *x = c->logits + r * c->vocab;
		double		lse;

		if (c->targets[r] < 0)
			continue;			/* ignore_index */
#ifdef LLM_X86
		if (c->isa == LLM_ISA_AVX512)
			lse = logsumexp_avx512(x, c->vocab);
		else if (c->isa == LLM_ISA_AVX2)
			lse = logsumexp_avx2(x, c->vocab);
		else
#endif
			lse = logsumexp_scalar(x, c->vocab);
		/* -log softmax(x)[target] = logsumexp(x) - x[target] */
		loss_sum += lse - x[c->targets[r]];
		counted++;
	}
	c->loss_sum[task] = loss_sum;
	c->counted[task] = counted;
}

int
llm_cross_entropy(const float *logits, const int32_t *targets,
				  int64_t rows, int64_t vocab, double *loss, int64_t *counted)
{
	cross_entropy_ctx c;		/* 4 KB of partials: fine on the stack */
	int64_t		grain = rows_per_task(vocab);
	int64_t		ntasks;
	double		loss_sum = 0.0;
	int64_t		total = 0;
	int			status;

	*loss = NAN;
	*counted = 0;
	if (rows <= 0)
		return LLM_OK;
	if (grain * CE_MAX_TASKS < rows)
		grain = (rows + CE_MAX_TASKS - 1) / CE_MAX_TASKS;
	ntasks = (rows + grain - 1) / grain;

	c.logits = logits;
	c.targets = targets;
	c.vocab = vocab;
	c.grain = grain;
	c.isa = llm_cpu_isa();
	status = llm_parallel_for(rows, grain, cross_entropy_task, &c);
	if (status != LLM_OK)
		return status;

	for (int64_t t = 0; t < ntasks; t++)
	{
		loss_sum += c.loss_sum[t];
		total += c.counted[t];
	}
	*counted = total;
	if (total > 0)
		*loss = loss_sum / (double) total;
	return LLM_OK;
}
