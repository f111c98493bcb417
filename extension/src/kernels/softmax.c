/*
 * softmax.c -- softmax over the last axis, optionally causal, the row
 * kernel attention/forward.c shares, and the backward.
 *
 * y = exp(x - max) / sum(exp(x - max)): subtracting the row maximum keeps
 * every exp <= 1.  The final division is a multiply by the reciprocal, as
 * PyTorch does.  The row kernels return the max and the sum they used,
 * so a caller gets the row's logsumexp, max + log(sum), for free
 * (attention hands it to its backward).
 *
 * Backward, per row: dx += y * (dy - sum(y * dy)), over the columns the
 * forward kept (the masked ones have y = 0 and get nothing).
 *
 * Work is cut into tasks of whole rows, fixed by the sizes alone, so
 * results never depend on the thread count.
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#include "dispatch.h"
#include "simd.h"

static softmax_stats
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
	return (softmax_stats) {max, sum};
}

static void
softmax_row_backward_scalar(const float *y, const float *dy, float *dx, int64_t n)
{
	double		dot = 0.0;
	float		d;

	for (int64_t i = 0; i < n; i++)
		dot += (double) y[i] * dy[i];
	d = (float) dot;
	for (int64_t i = 0; i < n; i++)
		dx[i] += y[i] * (dy[i] - d);
}

const softmax_kernels softmax_scalar_kernels = {
	softmax_row_scalar, softmax_row_backward_scalar
};

#if LLM_X86

TARGET_AVX512 static softmax_stats
softmax_row_avx512(const float *x, float *y, int64_t n)
{
	__m512		vmax,
				vsum = _mm512_setzero_ps(),
				vinv;
	__mmask16	m = mask16(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;
	float		max = max_avx512(x, n),
				sum;

	vmax = _mm512_set1_ps(max);

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

	sum = _mm512_reduce_add_ps(vsum);
	vinv = _mm512_set1_ps(1.0f / sum);
	for (i = 0; i < full; i += 16)
		_mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), vinv));
	if (m)
		_mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + i), vinv));
	return (softmax_stats) {max, sum};
}

TARGET_AVX2 static softmax_stats
softmax_row_avx2(const float *x, float *y, int64_t n)
{
	__m256		vmax,
				vsum = _mm256_setzero_ps(),
				vinv;
	float		max = max_avx2(x, n),
				sum,
				inv;
	int64_t		full = n - n % 8;
	int64_t		i;

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
	return (softmax_stats) {max, sum};
}

TARGET_AVX512 static void
softmax_row_backward_avx512(const float *y, const float *dy, float *dx, int64_t n)
{
	__m512		vdot = _mm512_setzero_ps(),
				d;
	__mmask16	m = mask16(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;

	for (i = 0; i < full; i += 16)
		vdot = _mm512_fmadd_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(dy + i), vdot);
	if (m)
		vdot = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, y + i),
							   _mm512_maskz_loadu_ps(m, dy + i), vdot);
	d = _mm512_set1_ps(_mm512_reduce_add_ps(vdot));
	for (i = 0; i < full; i += 16)
		_mm512_storeu_ps(dx + i, _mm512_fmadd_ps(_mm512_loadu_ps(y + i),
												 _mm512_sub_ps(_mm512_loadu_ps(dy + i), d),
												 _mm512_loadu_ps(dx + i)));
	if (m)
		_mm512_mask_storeu_ps(dx + i, m,
							  _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, y + i),
											  _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dy + i), d),
											  _mm512_maskz_loadu_ps(m, dx + i)));
}

TARGET_AVX2 static void
softmax_row_backward_avx2(const float *y, const float *dy, float *dx, int64_t n)
{
	__m256		vdot = _mm256_setzero_ps(),
				vd;
	int64_t		full = n - n % 8;
	int64_t		i;
	float		d;

	for (i = 0; i < full; i += 8)
		vdot = _mm256_fmadd_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(dy + i), vdot);
	d = hsum_avx2(vdot);
	for (; i < n; i++)
		d += y[i] * dy[i];
	vd = _mm256_set1_ps(d);
	for (i = 0; i < full; i += 8)
		_mm256_storeu_ps(dx + i, _mm256_fmadd_ps(_mm256_loadu_ps(y + i),
												 _mm256_sub_ps(_mm256_loadu_ps(dy + i), vd),
												 _mm256_loadu_ps(dx + i)));
	for (; i < n; i++)
		dx[i] += y[i] * (dy[i] - d);
}

const softmax_kernels softmax_avx2_kernels = {
	softmax_row_avx2, softmax_row_backward_avx2
};
const softmax_kernels softmax_avx512_kernels = {
	softmax_row_avx512, softmax_row_backward_avx512
};

#endif							/* LLM_X86 */

#if LLM_NEON

/* NEON: the AVX2 rows with 4-float vectors */
static softmax_stats
softmax_row_neon(const float *x, float *y, int64_t n)
{
	float32x4_t vmax,
				vsum = vdupq_n_f32(0.0f),
				vinv;
	float		max = max_neon(x, n),
				sum,
				inv;
	int64_t		full = n - n % 4;
	int64_t		i;

	vmax = vdupq_n_f32(max);
	for (i = 0; i < full; i += 4)
	{
		float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(x + i), vmax));

		vst1q_f32(y + i, e);
		vsum = vaddq_f32(vsum, e);
	}
	sum = vaddvq_f32(vsum);
	for (; i < n; i++)
	{
		y[i] = expf(x[i] - max);
		sum += y[i];
	}

	inv = 1.0f / sum;
	vinv = vdupq_n_f32(inv);
	for (i = 0; i < full; i += 4)
		vst1q_f32(y + i, vmulq_f32(vld1q_f32(y + i), vinv));
	for (; i < n; i++)
		y[i] *= inv;
	return (softmax_stats) {max, sum};
}

static void
softmax_row_backward_neon(const float *y, const float *dy, float *dx, int64_t n)
{
	float32x4_t vdot = vdupq_n_f32(0.0f),
				vd;
	int64_t		full = n - n % 4;
	int64_t		i;
	float		d;

	for (i = 0; i < full; i += 4)
		vdot = vfmaq_f32(vdot, vld1q_f32(y + i), vld1q_f32(dy + i));
	d = vaddvq_f32(vdot);
	for (; i < n; i++)
		d += y[i] * dy[i];
	vd = vdupq_n_f32(d);
	for (i = 0; i < full; i += 4)
		vst1q_f32(dx + i, vfmaq_f32(vld1q_f32(dx + i), vld1q_f32(y + i),
									vsubq_f32(vld1q_f32(dy + i), vd)));
	for (; i < n; i++)
		dx[i] += y[i] * (dy[i] - d);
}

const softmax_kernels softmax_neon_kernels = {
	softmax_row_neon, softmax_row_backward_neon
};

#endif							/* LLM_NEON */

typedef struct
{
	const float *x;				/* x, or y for the backward */
	const float *dy;			/* backward only */
	float	   *y;				/* y, or dx for the backward */
	int64_t		cols;
	int64_t		causal_rows;
	const softmax_kernels *k;
} softmax_ctx;

/* How many leading columns of row r (query r % Tq) the mask keeps. */
static int64_t
kept_columns(const softmax_ctx *c, int64_t r)
{
	if (c->causal_rows <= 0)
		return c->cols;
	return causal_keys(r % c->causal_rows, c->causal_rows, c->cols);
}

static void
softmax_task(void *arg, int64_t begin, int64_t end)
{
	const softmax_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
	{
		const float *x = c->x + r * c->cols;
		float	   *y = c->y + r * c->cols;
		int64_t		kept = kept_columns(c, r);

		if (kept > 0)
			c->k->row(x, y, kept);
		memset(y + kept, 0, (size_t) (c->cols - kept) * sizeof(float));
	}
}

int
llm_softmax(const float *x, float *y, int64_t rows, int64_t cols,
			int64_t causal_rows)
{
	softmax_ctx c = {x, NULL, y, cols, causal_rows, llm_kernels->softmax};

	return llm_parallel_for(rows, rows_per_task(cols), softmax_task, &c);
}

static void
softmax_backward_task(void *arg, int64_t begin, int64_t end)
{
	const softmax_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
	{
		int64_t		kept = kept_columns(c, r);

		if (kept > 0)
			c->k->row_backward(c->x + r * c->cols, c->dy + r * c->cols,
							   c->y + r * c->cols, kept);
	}
}

int
llm_softmax_backward(const float *y, const float *dy, float *dx,
					 int64_t rows, int64_t cols, int64_t causal_rows)
{
	softmax_ctx c = {y, dy, dx, cols, causal_rows, llm_kernels->softmax};

	return llm_parallel_for(rows, rows_per_task(cols), softmax_backward_task, &c);
}
