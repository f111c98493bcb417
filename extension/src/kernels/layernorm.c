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
 * them).
 *
 * Backward (as llm.c's layernorm_backward), with xhat = (x - mean) * rstd
 * and dn = g * dy:
 *
 *   dx += (dn - mean(dn) - xhat * mean(dn * xhat)) * rstd     per row
 *   dg += sum over rows of xhat * dy,   db += sum over rows of dy
 *
 * dx is a pass over rows; dg and db, sums over rows, are a second pass
 * split over columns, each column summed in row order.  Work is cut into
 * tasks of whole rows (columns), fixed by the sizes alone, so results
 * never depend on the thread count.
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

static void
layernorm_row_backward_scalar(const float *x, const float *g, const float *dy,
							  float *dx, int64_t n, float mean, float rstd)
{
	double		sum_dn = 0.0,
				sum_dn_xhat = 0.0;
	float		mean_dn,
				mean_dn_xhat;

	for (int64_t i = 0; i < n; i++)
	{
		float		dn = g[i] * dy[i];

		sum_dn += dn;
		sum_dn_xhat += (double) dn * ((x[i] - mean) * rstd);
	}
	mean_dn = (float) (sum_dn / n);
	mean_dn_xhat = (float) (sum_dn_xhat / n);
	for (int64_t i = 0; i < n; i++)
	{
		float		xhat = (x[i] - mean) * rstd;

		dx[i] += (g[i] * dy[i] - mean_dn - xhat * mean_dn_xhat) * rstd;
	}
}

/* columns [c0, c1) of dg and db (either may be NULL), LN_STRIP at a time */
#define LN_STRIP 64

static void
layernorm_param_grads_scalar(const float *x, const float *dy, const float *mean,
							 const float *rstd, float *dg, float *db,
							 int64_t rows, int64_t cols, int64_t c0, int64_t c1)
{
	for (int64_t j0 = c0; j0 < c1; j0 += LN_STRIP)
	{
		int64_t		width = MIN(LN_STRIP, c1 - j0);
		double		sum_g[LN_STRIP] = {0},
					sum_b[LN_STRIP] = {0};

		for (int64_t r = 0; r < rows; r++)
		{
			const float *xr = x + r * cols + j0;
			const float *dyr = dy + r * cols + j0;

			for (int64_t j = 0; j < width; j++)
			{
				sum_g[j] += (double) ((xr[j] - mean[r]) * rstd[r]) * dyr[j];
				sum_b[j] += dyr[j];
			}
		}
		for (int64_t j = 0; j < width; j++)
		{
			if (dg)
				dg[j0 + j] += (float) sum_g[j];
			if (db)
				db[j0 + j] += (float) sum_b[j];
		}
	}
}

const layernorm_kernels layernorm_scalar_kernels = {
	layernorm_row_scalar, layernorm_row_backward_scalar, layernorm_param_grads_scalar
};

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

TARGET_AVX512 static void
layernorm_row_backward_avx512(const float *x, const float *g, const float *dy,
							  float *dx, int64_t n, float mean, float rstd)
{
	__m512		vmean = _mm512_set1_ps(mean),
				vrstd = _mm512_set1_ps(rstd),
				sum_dn = _mm512_setzero_ps(),
				sum_dn_xhat = _mm512_setzero_ps(),
				mean_dn,
				mean_dn_xhat;
	int64_t		i;

	for (i = 0; i < n; i += 16)
	{
		__mmask16	m = mask16(n - i);
		__m512		xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmean),
										 vrstd);
		__m512		dn = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i),
									   _mm512_maskz_loadu_ps(m, dy + i));

		sum_dn = _mm512_add_ps(sum_dn, dn);
		sum_dn_xhat = _mm512_fmadd_ps(dn, xhat, sum_dn_xhat);	/* dn = 0 past n */
	}
	mean_dn = _mm512_set1_ps(_mm512_reduce_add_ps(sum_dn) / (float) n);
	mean_dn_xhat = _mm512_set1_ps(_mm512_reduce_add_ps(sum_dn_xhat) / (float) n);
	for (i = 0; i < n; i += 16)
	{
		__mmask16	m = mask16(n - i);
		__m512		xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vmean),
										 vrstd);
		__m512		dn = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i),
									   _mm512_maskz_loadu_ps(m, dy + i));
		__m512		d = _mm512_fnmadd_ps(xhat, mean_dn_xhat, _mm512_sub_ps(dn, mean_dn));

		_mm512_mask_storeu_ps(dx + i, m, _mm512_fmadd_ps(d, vrstd,
														 _mm512_maskz_loadu_ps(m, dx + i)));
	}
}

/* 64 columns at a time: 4 vectors each of dg and db stay in registers */
TARGET_AVX512 static void
layernorm_param_grads_avx512(const float *x, const float *dy, const float *mean,
							 const float *rstd, float *dg, float *db,
							 int64_t rows, int64_t cols, int64_t c0, int64_t c1)
{
	for (int64_t j0 = c0; j0 < c1; j0 += 64)
	{
		__m512		sum_g[4],
					sum_b[4];
		__mmask16	m[4];
		int			v;

		for (v = 0; v < 4; v++)
		{
			sum_g[v] = sum_b[v] = _mm512_setzero_ps();
			m[v] = mask16(c1 - j0 - 16 * v);
		}
		for (int64_t r = 0; r < rows; r++)
		{
			const float *xr = x + r * cols + j0;
			const float *dyr = dy + r * cols + j0;
			__m512		vmean = _mm512_set1_ps(mean[r]),
						vrstd = _mm512_set1_ps(rstd[r]);

#pragma GCC unroll 4
			for (v = 0; v < 4; v++)
			{
				__m512		dyv = _mm512_maskz_loadu_ps(m[v], dyr + 16 * v);
				__m512		xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m[v], xr + 16 * v),
															   vmean), vrstd);

				sum_g[v] = _mm512_fmadd_ps(xhat, dyv, sum_g[v]);
				sum_b[v] = _mm512_add_ps(sum_b[v], dyv);
			}
		}
		for (v = 0; v < 4; v++)
		{
			if (dg)
				_mm512_mask_storeu_ps(dg + j0 + 16 * v, m[v],
									  _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], dg + j0 + 16 * v),
													sum_g[v]));
			if (db)
				_mm512_mask_storeu_ps(db + j0 + 16 * v, m[v],
									  _mm512_add_ps(_mm512_maskz_loadu_ps(m[v], db + j0 + 16 * v),
													sum_b[v]));
		}
	}
}

TARGET_AVX2 static void
layernorm_row_backward_avx2(const float *x, const float *g, const float *dy,
							float *dx, int64_t n, float mean, float rstd)
{
	__m256		vmean = _mm256_set1_ps(mean),
				vrstd = _mm256_set1_ps(rstd),
				sum_dn = _mm256_setzero_ps(),
				sum_dn_xhat = _mm256_setzero_ps(),
				vmean_dn,
				vmean_dn_xhat;
	float		mean_dn,
				mean_dn_xhat;
	int64_t		i;

	for (i = 0; i < n; i += 8)
	{
		__m256i		m = mask8(n - i);
		__m256		xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), vmean),
										 vrstd);
		__m256		dn = _mm256_mul_ps(_mm256_maskload_ps(g + i, m),
									   _mm256_maskload_ps(dy + i, m));

		sum_dn = _mm256_add_ps(sum_dn, dn);
		sum_dn_xhat = _mm256_fmadd_ps(dn, xhat, sum_dn_xhat);
	}
	mean_dn = hsum_avx2(sum_dn) / (float) n;
	mean_dn_xhat = hsum_avx2(sum_dn_xhat) / (float) n;
	vmean_dn = _mm256_set1_ps(mean_dn);
	vmean_dn_xhat = _mm256_set1_ps(mean_dn_xhat);
	for (i = 0; i < n; i += 8)
	{
		__m256i		m = mask8(n - i);
		__m256		xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, m), vmean),
										 vrstd);
		__m256		dn = _mm256_mul_ps(_mm256_maskload_ps(g + i, m),
									   _mm256_maskload_ps(dy + i, m));
		__m256		d = _mm256_fnmadd_ps(xhat, vmean_dn_xhat, _mm256_sub_ps(dn, vmean_dn));

		_mm256_maskstore_ps(dx + i, m, _mm256_fmadd_ps(d, vrstd, _mm256_maskload_ps(dx + i, m)));
	}
}

/* 32 columns at a time: 4 vectors each of dg and db stay in registers */
TARGET_AVX2 static void
layernorm_param_grads_avx2(const float *x, const float *dy, const float *mean,
						   const float *rstd, float *dg, float *db,
						   int64_t rows, int64_t cols, int64_t c0, int64_t c1)
{
	for (int64_t j0 = c0; j0 < c1; j0 += 32)
	{
		__m256		sum_g[4],
					sum_b[4];
		__m256i		m[4];
		int			v;

		for (v = 0; v < 4; v++)
		{
			sum_g[v] = sum_b[v] = _mm256_setzero_ps();
			m[v] = mask8(c1 - j0 - 8 * v);
		}
		for (int64_t r = 0; r < rows; r++)
		{
			const float *xr = x + r * cols + j0;
			const float *dyr = dy + r * cols + j0;
			__m256		vmean = _mm256_set1_ps(mean[r]),
						vrstd = _mm256_set1_ps(rstd[r]);

#pragma GCC unroll 4
			for (v = 0; v < 4; v++)
			{
				__m256		dyv = _mm256_maskload_ps(dyr + 8 * v, m[v]);
				__m256		xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(xr + 8 * v, m[v]),
															   vmean), vrstd);

				sum_g[v] = _mm256_fmadd_ps(xhat, dyv, sum_g[v]);
				sum_b[v] = _mm256_add_ps(sum_b[v], dyv);
			}
		}
		for (v = 0; v < 4; v++)
		{
			if (dg)
				_mm256_maskstore_ps(dg + j0 + 8 * v, m[v],
									_mm256_add_ps(_mm256_maskload_ps(dg + j0 + 8 * v, m[v]),
												  sum_g[v]));
			if (db)
				_mm256_maskstore_ps(db + j0 + 8 * v, m[v],
									_mm256_add_ps(_mm256_maskload_ps(db + j0 + 8 * v, m[v]),
												  sum_b[v]));
		}
	}
}

const layernorm_kernels layernorm_avx2_kernels = {
	layernorm_row_avx2, layernorm_row_backward_avx2, layernorm_param_grads_avx2
};
const layernorm_kernels layernorm_avx512_kernels = {
	layernorm_row_avx512, layernorm_row_backward_avx512, layernorm_param_grads_avx512
};

#endif							/* LLM_X86 */

#if LLM_NEON

/* NEON: the AVX2 rows with 4-float vectors, the last n % 4 in scalar code */
static layernorm_stats
layernorm_row_neon(const float *x, const float *g, const float *b, float *y,
				   int64_t n, float eps)
{
	float32x4_t s0 = vdupq_n_f32(0.0f),
				s1 = vdupq_n_f32(0.0f),
				vmean,
				vrstd;
	float		sum,
				sq,
				mean,
				rstd;
	int64_t		i;

	for (i = 0; i + 8 <= n; i += 8)
	{
		s0 = vaddq_f32(s0, vld1q_f32(x + i));
		s1 = vaddq_f32(s1, vld1q_f32(x + i + 4));
	}
	sum = vaddvq_f32(vaddq_f32(s0, s1));
	for (; i < n; i++)
		sum += x[i];
	mean = sum / (float) n;

	vmean = vdupq_n_f32(mean);
	s0 = s1 = vdupq_n_f32(0.0f);
	for (i = 0; i + 8 <= n; i += 8)
	{
		float32x4_t d0 = vsubq_f32(vld1q_f32(x + i), vmean);
		float32x4_t d1 = vsubq_f32(vld1q_f32(x + i + 4), vmean);

		s0 = vfmaq_f32(s0, d0, d0);
		s1 = vfmaq_f32(s1, d1, d1);
	}
	sq = vaddvq_f32(vaddq_f32(s0, s1));
	for (; i < n; i++)
		sq += (x[i] - mean) * (x[i] - mean);
	rstd = 1.0f / sqrtf(sq / (float) n + eps);

	vrstd = vdupq_n_f32(rstd);
	for (i = 0; i + 4 <= n; i += 4)
	{
		float32x4_t d = vsubq_f32(vld1q_f32(x + i), vmean);

		vst1q_f32(y + i, vfmaq_f32(vld1q_f32(b + i), vmulq_f32(d, vrstd), vld1q_f32(g + i)));
	}
	for (; i < n; i++)
		y[i] = (x[i] - mean) * rstd * g[i] + b[i];
	return (layernorm_stats) {mean, rstd};
}

static void
layernorm_row_backward_neon(const float *x, const float *g, const float *dy,
							float *dx, int64_t n, float mean, float rstd)
{
	float32x4_t vmean = vdupq_n_f32(mean),
				vrstd = vdupq_n_f32(rstd),
				sum_dn = vdupq_n_f32(0.0f),
				sum_dn_xhat = vdupq_n_f32(0.0f),
				vmean_dn,
				vmean_dn_xhat;
	float		s_dn,
				s_dn_xhat,
				mean_dn,
				mean_dn_xhat;
	int64_t		full = n - n % 4;
	int64_t		i;

	for (i = 0; i < full; i += 4)
	{
		float32x4_t xhat = vmulq_f32(vsubq_f32(vld1q_f32(x + i), vmean), vrstd);
		float32x4_t dn = vmulq_f32(vld1q_f32(g + i), vld1q_f32(dy + i));

		sum_dn = vaddq_f32(sum_dn, dn);
		sum_dn_xhat = vfmaq_f32(sum_dn_xhat, dn, xhat);
	}
	s_dn = vaddvq_f32(sum_dn);
	s_dn_xhat = vaddvq_f32(sum_dn_xhat);
	for (; i < n; i++)
	{
		float		dn = g[i] * dy[i];

		s_dn += dn;
		s_dn_xhat += dn * ((x[i] - mean) * rstd);
	}
	mean_dn = s_dn / (float) n;
	mean_dn_xhat = s_dn_xhat / (float) n;
	vmean_dn = vdupq_n_f32(mean_dn);
	vmean_dn_xhat = vdupq_n_f32(mean_dn_xhat);
	for (i = 0; i < full; i += 4)
	{
		float32x4_t xhat = vmulq_f32(vsubq_f32(vld1q_f32(x + i), vmean), vrstd);
		float32x4_t dn = vmulq_f32(vld1q_f32(g + i), vld1q_f32(dy + i));
		float32x4_t d = vfmsq_f32(vsubq_f32(dn, vmean_dn), xhat, vmean_dn_xhat);

		vst1q_f32(dx + i, vfmaq_f32(vld1q_f32(dx + i), d, vrstd));
	}
	for (; i < n; i++)
	{
		float		xhat = (x[i] - mean) * rstd;

		dx[i] += (g[i] * dy[i] - mean_dn - xhat * mean_dn_xhat) * rstd;
	}
}

/*
 * 16 columns at a time (4 vectors each of dg and db in registers); the
 * last c1 - c0 % 16 columns do each lane's chain in scalar FMAs, so a
 * column gets the same bits wherever it falls.
 */
static void
layernorm_param_grads_neon(const float *x, const float *dy, const float *mean,
						   const float *rstd, float *dg, float *db,
						   int64_t rows, int64_t cols, int64_t c0, int64_t c1)
{
	int64_t		j0 = c0;

	for (; j0 + 16 <= c1; j0 += 16)
	{
		float32x4_t sum_g[4],
					sum_b[4];
		int			v;

		for (v = 0; v < 4; v++)
			sum_g[v] = sum_b[v] = vdupq_n_f32(0.0f);
		for (int64_t r = 0; r < rows; r++)
		{
			const float *xr = x + r * cols + j0;
			const float *dyr = dy + r * cols + j0;
			float32x4_t vmean = vdupq_n_f32(mean[r]),
						vrstd = vdupq_n_f32(rstd[r]);

#pragma GCC unroll 4
			for (v = 0; v < 4; v++)
			{
				float32x4_t dyv = vld1q_f32(dyr + 4 * v);
				float32x4_t xhat = vmulq_f32(vsubq_f32(vld1q_f32(xr + 4 * v), vmean), vrstd);

				sum_g[v] = vfmaq_f32(sum_g[v], xhat, dyv);
				sum_b[v] = vaddq_f32(sum_b[v], dyv);
			}
		}
		for (v = 0; v < 4; v++)
		{
			if (dg)
				vst1q_f32(dg + j0 + 4 * v, vaddq_f32(vld1q_f32(dg + j0 + 4 * v), sum_g[v]));
			if (db)
				vst1q_f32(db + j0 + 4 * v, vaddq_f32(vld1q_f32(db + j0 + 4 * v), sum_b[v]));
		}
	}
	for (; j0 < c1; j0++)
	{
		float		sum_g = 0.0f,
					sum_b = 0.0f;

		for (int64_t r = 0; r < rows; r++)
		{
			float		xhat = (x[r * cols + j0] - mean[r]) * rstd[r];

			sum_g = __builtin_fmaf(xhat, dy[r * cols + j0], sum_g);
			sum_b += dy[r * cols + j0];
		}
		if (dg)
			dg[j0] += sum_g;
		if (db)
			db[j0] += sum_b;
	}
}

const layernorm_kernels layernorm_neon_kernels = {
	layernorm_row_neon, layernorm_row_backward_neon, layernorm_param_grads_neon
};

#endif							/* LLM_NEON */

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

typedef struct
{
	const float *x,
			   *g,
			   *mean,
			   *rstd,
			   *dy;
	float	   *dx,
			   *dg,
			   *db;
	int64_t		rows,
				cols;
	const layernorm_kernels *k;
} layernorm_backward_ctx;

static void
layernorm_dx_task(void *arg, int64_t begin, int64_t end)
{
	const layernorm_backward_ctx *c = arg;

	for (int64_t r = begin; r < end; r++)
		c->k->row_backward(c->x + r * c->cols, c->g, c->dy + r * c->cols,
						   c->dx + r * c->cols, c->cols, c->mean[r], c->rstd[r]);
}

static void
layernorm_param_grads_task(void *arg, int64_t begin, int64_t end)
{
	const layernorm_backward_ctx *c = arg;

	c->k->param_grads(c->x, c->dy, c->mean, c->rstd, c->dg, c->db, c->rows, c->cols,
					  begin, end);
}

int
llm_layernorm_backward(const float *x, const float *g, const float *mean,
					   const float *rstd, const float *dy, float *dx, float *dg,
					   float *db, int64_t rows, int64_t cols)
{
	layernorm_backward_ctx c = {x, g, mean, rstd, dy, dx, dg, db, rows, cols,
	llm_kernels->layernorm};
	int			status = LLM_OK;

	if (rows <= 0 || cols <= 0)
		return LLM_OK;
	if (dx)
		status = llm_parallel_for(rows, rows_per_task(cols), layernorm_dx_task, &c);
	if (status == LLM_OK && (dg || db))
		status = llm_parallel_for(cols, LN_STRIP, layernorm_param_grads_task, &c);
	return status;
}
