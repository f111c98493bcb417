/*
 * softmax.c -- softmax over the last axis, optionally causal, and the row
 * kernel attention.c shares.
 *
 * y = exp(x - max) / sum(exp(x - max)): subtracting the row maximum keeps
 * every exp <= 1.  The final division is a multiply by the reciprocal, as
 * PyTorch does.  The row kernels return the max and the sum they used,
 * so a caller gets the row's logsumexp, max + log(sum), for free
 * (attention hands it to its backward).  Work is cut into tasks of whole rows, fixed by the sizes alone, so
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

const softmax_kernels softmax_scalar_kernels = {softmax_row_scalar};

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

const softmax_kernels softmax_avx2_kernels = {softmax_row_avx2};
const softmax_kernels softmax_avx512_kernels = {softmax_row_avx512};

#endif							/* LLM_X86 */

void
llm_softmax_row(const float *x, float *y, int64_t n)
{
	llm_kernels->softmax->row(x, y, n);
}

typedef struct
{
	const float *x;
	float	   *y;
	int64_t		cols;
	int64_t		causal_rows;
	const softmax_kernels *k;
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
			c->k->row(x, y, kept);
		memset(y + kept, 0, (size_t) (c->cols - kept) * sizeof(float));
	}
}

int
llm_softmax(const float *x, float *y, int64_t rows, int64_t cols,
			int64_t causal_rows)
{
	softmax_ctx c = {x, y, cols, causal_rows, llm_kernels->softmax};

	return llm_parallel_for(rows, rows_per_task(cols), softmax_task, &c);
}
