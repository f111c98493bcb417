/*
 * layernorm.c -- LayerNorm over the last axis, as torch.nn.LayerNorm:
 *
 *   y = (x - mean) * rstd * g + b,   rstd = 1 / sqrt(var + eps)
 *
 * with var the biased variance, taken in a second pass as
 * mean((x - mean)^2), which does not cancel catastrophically as
 * E[x^2] - mean^2 can.  The scalar row accumulates in double; the SIMD ones
 * in float over 16 independent lanes, which keeps the rounding error well
 * under 1e-6 for GPT-2 widths; a row whose float sums overflow is done
 * again by the scalar row.  The row kernels return the mean and rstd
 * they used, which llm_layernorm hands back when asked (the backward needs
 * them).  Work is cut into tasks of whole rows, fixed by the sizes alone,
 * so results never depend on the thread count.
 */
#include "kernels.h"

#include <math.h>

#include "dispatch.h"
#include "simd.h"

static layernorm_stats
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
	return (layernorm_stats) {mean, rstd};
}

const layernorm_kernels layernorm_scalar_kernels = {layernorm_row_scalar};

#if LLM_X86

TARGET_AVX512 static layernorm_stats
layernorm_row_avx512(const float *x, const float *g, const float *b, float *y,
					 int64_t n, float eps)
{
	__m512		vsum = _mm512_setzero_ps(),
				vsq = _mm512_setzero_ps(),
				vmean,
				vrstd;
	__mmask16	m = mask16(n % 16);
	int64_t		full = n - n % 16;
	int64_t		i;
	float		mean,
				rstd;

	for (i = 0; i < full; i += 16)
		vsum = _mm512_add_ps(vsum, _mm512_loadu_ps(x + i));
	if (m)
		vsum = _mm512_add_ps(vsum, _mm512_maskz_loadu_ps(m, x + i));
	mean = _mm512_reduce_add_ps(vsum) / (float) n;
	vmean = _mm512_set1_ps(mean);

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
	rstd = 1.0f / sqrtf(_mm512_reduce_add_ps(vsq) / (float) n + eps);
	vrstd = _mm512_set1_ps(rstd);

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
	return (layernorm_stats) {mean, rstd};
}

TARGET_AVX2 static layernorm_stats
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
	return (layernorm_stats) {mean, rstd};
}

const layernorm_kernels layernorm_avx2_kernels = {layernorm_row_avx2};
const layernorm_kernels layernorm_avx512_kernels = {layernorm_row_avx512};

#endif							/* LLM_X86 */

typedef struct
{
	const float *x,
			   *g,
			   *b;
	float	   *y;
	int64_t		cols;
	float		eps;
	float	   *mean,
			   *rstd;
	const layernorm_kernels *k;
} layernorm_ctx;

static void
layernorm_task(void *arg, int64_t begin, int64_t end)
{
	const layernorm_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
	{
		layernorm_stats st = c->k->row(c->x + r * c->cols, c->g, c->b,
									   c->y + r * c->cols, c->cols, c->eps);

		/*
		 * The SIMD rows sum in float: beyond |x| ~ 1e19 their sums overflow
		 * (mean infinite, or rstd 0).  The scalar row sums in double.
		 */
		if (!(isfinite(st.mean) && st.rstd > 0 && isfinite(st.rstd)))
			st = layernorm_row_scalar(c->x + r * c->cols, c->g, c->b,
									  c->y + r * c->cols, c->cols, c->eps);

		if (c->mean)
			c->mean[r] = st.mean;
		if (c->rstd)
			c->rstd[r] = st.rstd;
	}
}

int
llm_layernorm(const float *x, const float *g, const float *b, float *y,
			  int64_t rows, int64_t cols, float eps, float *mean, float *rstd)
{
	layernorm_ctx c = {x, g, b, y, cols, eps, mean, rstd, llm_kernels->layernorm};

	if (cols <= 0)
		return LLM_OK;
	return llm_parallel_for(rows, rows_per_task(cols), layernorm_task, &c);
}
