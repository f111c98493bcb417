/*
 * inner_kernels.c -- the inner loops of attention (forward.c) and its
 * backward (backward.c), in scalar, AVX2, AVX-512 and NEON variants, chosen
 * through attention_kernels (dispatch.h):
 *
 *   scores_row, weighted_sum   one query at a time against strided k and
 *                              v rows (the decode path: nothing packed)
 *   tile                       a TILE_ROWS x TILE_COLS register tile of a
 *                              small matrix product (every other product)
 *   probs_row                  the backward's P and dS of one row
 */
#include "attention_internal.h"

#include <math.h>
#include <string.h>

/* ---- row by row --------------------------------------------------------------- */

/*
 * The rows of K and V lie ldk (ldv) floats apart, 9 KB for GPT-2 small's
 * [T, 3C] layout: every row is on another page, where the hardware
 * prefetchers stop, so a decode step would wait on memory row after row.
 * The loops below ask for the row PREFETCH_ROWS ahead of the one they use.
 */
#define PREFETCH_ROWS 8

static inline void
prefetch_row(const float *row, int64_t n)
{
	for (int64_t i = 0; i < n; i += 16)	/* one cache line is 16 floats */
		__builtin_prefetch(row + i);
}

/*
 * scores[j] = scale * (q . k_j) for j < nk, where k_j = k + j*ldk;
 * out = sum_j p[j] * v_j for j < nk, where v_j = v + j*ldv.
 */
static void
scores_row_scalar(const float *q, const float *k, int64_t ldk, int64_t nk,
				  int64_t hd, float scale, float *scores)
{
	for (int64_t j = 0; j < nk; j++)
	{
		const float *kj = k + j * ldk;
		float		dot = 0.0f;

		for (int64_t d = 0; d < hd; d++)
			dot += q[d] * kj[d];
		scores[j] = dot * scale;
	}
}

static void
weighted_sum_scalar(const float *p, const float *v, int64_t ldv, int64_t nk,
					int64_t hd, float *out)
{
	memset(out, 0, (size_t) hd * sizeof(float));
	for (int64_t j = 0; j < nk; j++)
	{
		const float *vj = v + j * ldv;

		for (int64_t d = 0; d < hd; d++)
			out[d] += p[j] * vj[d];
	}
}

#if LLM_X86

TARGET_AVX512 static void
scores_row_avx512(const float *q, const float *k, int64_t ldk, int64_t nk,
				  int64_t hd, float scale, float *scores)
{
	for (int64_t j = 0; j < nk; j++)
	{
		const float *kj = k + j * ldk;
		__m512		acc = _mm512_setzero_ps();

		if (j + PREFETCH_ROWS < nk)
			prefetch_row(kj + PREFETCH_ROWS * ldk, hd);
		for (int64_t d = 0; d < hd; d += 16)
		{
			__mmask16	m = mask16(hd - d);

			acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d),
								  _mm512_maskz_loadu_ps(m, kj + d), acc);
		}
		scores[j] = _mm512_reduce_add_ps(acc) * scale;
	}
}

TARGET_AVX512 static void
weighted_sum_avx512(const float *p, const float *v, int64_t ldv, int64_t nk,
					int64_t hd, float *out)
{
	int64_t		d = 0;

	/* 64 columns at a time: four accumulators stay in registers over j */
	for (; d + 64 <= hd; d += 64)
	{
		__m512		a0 = _mm512_setzero_ps(),
					a1 = _mm512_setzero_ps(),
					a2 = _mm512_setzero_ps(),
					a3 = _mm512_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
		{
			const float *vj = v + j * ldv + d;
			__m512		pj = _mm512_set1_ps(p[j]);

			if (j + PREFETCH_ROWS < nk)
				prefetch_row(vj + PREFETCH_ROWS * ldv, 64);
			a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj), a0);
			a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16), a1);
			a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 32), a2);
			a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 48), a3);
		}
		_mm512_storeu_ps(out + d, a0);
		_mm512_storeu_ps(out + d + 16, a1);
		_mm512_storeu_ps(out + d + 32, a2);
		_mm512_storeu_ps(out + d + 48, a3);
	}
	/* the rest, 16 (or fewer) at a time */
	for (; d < hd; d += 16)
	{
		__mmask16	m = mask16(hd - d);
		__m512		acc = _mm512_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
			acc = _mm512_fmadd_ps(_mm512_set1_ps(p[j]),
								  _mm512_maskz_loadu_ps(m, v + j * ldv + d), acc);
		_mm512_mask_storeu_ps(out + d, m, acc);
	}
}

TARGET_AVX2 static void
scores_row_avx2(const float *q, const float *k, int64_t ldk, int64_t nk,
				int64_t hd, float scale, float *scores)
{
	for (int64_t j = 0; j < nk; j++)
	{
		const float *kj = k + j * ldk;
		__m256		acc = _mm256_setzero_ps();
		float		dot;
		int64_t		d;

		if (j + PREFETCH_ROWS < nk)
			prefetch_row(kj + PREFETCH_ROWS * ldk, hd);
		for (d = 0; d + 8 <= hd; d += 8)
			acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kj + d), acc);
		dot = hsum_avx2(acc);
		for (; d < hd; d++)
			dot += q[d] * kj[d];
		scores[j] = dot * scale;
	}
}

TARGET_AVX2 static void
weighted_sum_avx2(const float *p, const float *v, int64_t ldv, int64_t nk,
				  int64_t hd, float *out)
{
	int64_t		d = 0;

	for (; d + 32 <= hd; d += 32)
	{
		__m256		a0 = _mm256_setzero_ps(),
					a1 = _mm256_setzero_ps(),
					a2 = _mm256_setzero_ps(),
					a3 = _mm256_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
		{
			const float *vj = v + j * ldv + d;
			__m256		pj = _mm256_set1_ps(p[j]);

			if (j + PREFETCH_ROWS < nk)
				prefetch_row(vj + PREFETCH_ROWS * ldv, 32);
			a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
			a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
			a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
			a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
		}
		_mm256_storeu_ps(out + d, a0);
		_mm256_storeu_ps(out + d + 8, a1);
		_mm256_storeu_ps(out + d + 16, a2);
		_mm256_storeu_ps(out + d + 24, a3);
	}
	for (; d + 8 <= hd; d += 8)
	{
		__m256		acc = _mm256_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
			acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + j * ldv + d), acc);
		_mm256_storeu_ps(out + d, acc);
	}
	for (; d < hd; d++)
	{
		float		acc = 0.0f;

		for (int64_t j = 0; j < nk; j++)
			acc += p[j] * v[j * ldv + d];
		out[d] = acc;
	}
}

#endif							/* LLM_X86 */

/* ---- the register tile ------------------------------------------------------------ */

/*
 * c[r][0..32) = scale * sum_{t<n} a[r*ars + t*ats] * b[t*ldb + 0..32), r < 8,
 * or with accumulate c[r][0..32) += sum ... (scale is then 1): one
 * multiply-add chain per element, in increasing t, from 0 (or from c).
 *
 * The left matrix is read with any row and column stride (ars, ats), so
 * a transposed operand needs no copy; the right one is TILE_COLS
 * contiguous floats a row.  Each step broadcasts one float of the left
 * matrix and multiply-adds it into a row of vectors of the right one.
 * With AVX-512 the 8 x 32 tile is 16 zmm accumulators; AVX2 has only 16
 * ymm registers, so it does the tile as four 4 x 16 quarters of 8.  The
 * plain C version has no reduction in its inner loop over 32 contiguous
 * floats, so the compiler vectorises it for the baseline target.
 *
 * The forward's products:   S = Q Kt (scaled), O = P V
 * the backward's:           S = Q Kt, dP = dY Vt, dV += P^T dY,
 *                           dK += dS^T Q, dQ += dS K
 */
static void
tile_scalar(const float *a, int64_t ars, int64_t ats, const float *b, int64_t ldb,
			int64_t n, float *c, int64_t ldc, float scale, int accumulate)
{
	float		acc[TILE_ROWS][TILE_COLS];

	for (int r = 0; r < TILE_ROWS; r++)
		for (int col = 0; col < TILE_COLS; col++)
			acc[r][col] = accumulate ? c[r * ldc + col] : 0.0f;
	for (int64_t t = 0; t < n; t++)
		for (int r = 0; r < TILE_ROWS; r++)
		{
			float		ar = a[r * ars + t * ats];

			for (int col = 0; col < TILE_COLS; col++)
				acc[r][col] += ar * b[t * ldb + col];
		}
	for (int r = 0; r < TILE_ROWS; r++)
		for (int col = 0; col < TILE_COLS; col++)
			c[r * ldc + col] = accumulate ? acc[r][col] : acc[r][col] * scale;
}

/*
 * One row of a block: s holds raw scores, dp = dY V^T; the first n (of w)
 * columns are visible.  Leaves P in s and dS (scale folded in) in dp,
 * zeros past n.
 */
static void
probs_row_scalar(float *s, float *dp, int64_t n, int64_t w, float scale,
				 float lse, float d)
{
	for (int64_t j = 0; j < n; j++)
	{
		float		p = expf(s[j] * scale - lse);

		s[j] = p;
		dp[j] = scale * p * (dp[j] - d);
	}
	for (int64_t j = n; j < w; j++)
		s[j] = dp[j] = 0.0f;
}

const attention_kernels attention_scalar_kernels = {
	scores_row_scalar, weighted_sum_scalar, tile_scalar, probs_row_scalar
};

#if LLM_X86

TARGET_AVX512 static void
tile_avx512(const float *a, int64_t ars, int64_t ats, const float *b, int64_t ldb,
			int64_t n, float *c, int64_t ldc, float scale, int accumulate)
{
	__m512		acc[TILE_ROWS][2];
	__m512		vscale = _mm512_set1_ps(accumulate ? 1.0f : scale);

#pragma GCC unroll 8
	for (int r = 0; r < TILE_ROWS; r++)
	{
		acc[r][0] = accumulate ? _mm512_loadu_ps(c + r * ldc) : _mm512_setzero_ps();
		acc[r][1] = accumulate ? _mm512_loadu_ps(c + r * ldc + 16) : _mm512_setzero_ps();
	}
	for (int64_t t = 0; t < n; t++)
	{
		const float *at = a + t * ats;
		__m512		b0 = _mm512_loadu_ps(b + t * ldb);
		__m512		b1 = _mm512_loadu_ps(b + t * ldb + 16);

#pragma GCC unroll 8
		for (int r = 0; r < TILE_ROWS; r++)
		{
			__m512		ar = _mm512_set1_ps(at[r * ars]);

			acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
			acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
		}
	}
#pragma GCC unroll 8
	for (int r = 0; r < TILE_ROWS; r++)
	{
		_mm512_storeu_ps(c + r * ldc, _mm512_mul_ps(acc[r][0], vscale));
		_mm512_storeu_ps(c + r * ldc + 16, _mm512_mul_ps(acc[r][1], vscale));
	}
}

TARGET_AVX512 static void
probs_row_avx512(float *s, float *dp, int64_t n, int64_t w, float scale,
				 float lse, float d)
{
	__m512		vscale = _mm512_set1_ps(scale),
				vlse = _mm512_set1_ps(lse),
				vd = _mm512_set1_ps(d);

	for (int64_t j = 0; j < w; j += 16)
	{
		__mmask16	m = mask16(n - j);	/* visible lanes; the others get 0 */
		__m512		p = exp_avx512(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vscale, vlse));
		__m512		ds = _mm512_mul_ps(_mm512_mul_ps(vscale, p),
									   _mm512_sub_ps(_mm512_loadu_ps(dp + j), vd));

		_mm512_storeu_ps(s + j, _mm512_maskz_mov_ps(m, p));
		_mm512_storeu_ps(dp + j, _mm512_maskz_mov_ps(m, ds));
	}
}

/* AVX2 has 16 ymm registers: the 8 x 32 tile goes as four 4 x 16 quarters. */
TARGET_AVX2 static void
tile_avx2(const float *a, int64_t ars, int64_t ats, const float *b, int64_t ldb,
		  int64_t n, float *c, int64_t ldc, float scale, int accumulate)
{
	__m256		vscale = _mm256_set1_ps(accumulate ? 1.0f : scale);

	for (int r0 = 0; r0 < TILE_ROWS; r0 += 4)
		for (int c0 = 0; c0 < TILE_COLS; c0 += 16)
		{
			__m256		acc[4][2];

#pragma GCC unroll 4
			for (int r = 0; r < 4; r++)
			{
				float	   *cr = c + (r0 + r) * ldc + c0;

				acc[r][0] = accumulate ? _mm256_loadu_ps(cr) : _mm256_setzero_ps();
				acc[r][1] = accumulate ? _mm256_loadu_ps(cr + 8) : _mm256_setzero_ps();
			}
			for (int64_t t = 0; t < n; t++)
			{
				const float *at = a + t * ats + r0 * ars;
				__m256		b0 = _mm256_loadu_ps(b + t * ldb + c0);
				__m256		b1 = _mm256_loadu_ps(b + t * ldb + c0 + 8);

#pragma GCC unroll 4
				for (int r = 0; r < 4; r++)
				{
					__m256		ar = _mm256_broadcast_ss(at + r * ars);

					acc[r][0] = _mm256_fmadd_ps(ar, b0, acc[r][0]);
					acc[r][1] = _mm256_fmadd_ps(ar, b1, acc[r][1]);
				}
			}
#pragma GCC unroll 4
			for (int r = 0; r < 4; r++)
			{
				float	   *cr = c + (r0 + r) * ldc + c0;

				_mm256_storeu_ps(cr, _mm256_mul_ps(acc[r][0], vscale));
				_mm256_storeu_ps(cr + 8, _mm256_mul_ps(acc[r][1], vscale));
			}
		}
}

TARGET_AVX2 static void
probs_row_avx2(float *s, float *dp, int64_t n, int64_t w, float scale,
			   float lse, float d)
{
	__m256		vscale = _mm256_set1_ps(scale),
				vlse = _mm256_set1_ps(lse),
				vd = _mm256_set1_ps(d);

	for (int64_t j = 0; j < w; j += 8)
	{
		__m256		m = _mm256_castsi256_ps(mask8(n - j));
		__m256		p = exp_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(s + j), vscale, vlse));
		__m256		ds = _mm256_mul_ps(_mm256_mul_ps(vscale, p),
									   _mm256_sub_ps(_mm256_loadu_ps(dp + j), vd));

		_mm256_storeu_ps(s + j, _mm256_and_ps(m, p));
		_mm256_storeu_ps(dp + j, _mm256_and_ps(m, ds));
	}
}

const attention_kernels attention_avx2_kernels = {
	scores_row_avx2, weighted_sum_avx2, tile_avx2, probs_row_avx2
};
const attention_kernels attention_avx512_kernels = {
	scores_row_avx512, weighted_sum_avx512, tile_avx512, probs_row_avx512
};

#endif							/* LLM_X86 */

#if LLM_NEON

/* ---- NEON: the AVX2 loops with 4-float vectors ------------------------------- */

static void
scores_row_neon(const float *q, const float *k, int64_t ldk, int64_t nk,
				int64_t hd, float scale, float *scores)
{
	for (int64_t j = 0; j < nk; j++)
	{
		const float *kj = k + j * ldk;
		float32x4_t acc = vdupq_n_f32(0.0f);
		float		dot;
		int64_t		d;

		if (j + PREFETCH_ROWS < nk)
			prefetch_row(kj + PREFETCH_ROWS * ldk, hd);
		for (d = 0; d + 4 <= hd; d += 4)
			acc = vfmaq_f32(acc, vld1q_f32(q + d), vld1q_f32(kj + d));
		dot = vaddvq_f32(acc);
		for (; d < hd; d++)
			dot += q[d] * kj[d];
		scores[j] = dot * scale;
	}
}

static void
weighted_sum_neon(const float *p, const float *v, int64_t ldv, int64_t nk,
				  int64_t hd, float *out)
{
	int64_t		d = 0;

	for (; d + 16 <= hd; d += 16)
	{
		float32x4_t a[4];

		for (int q = 0; q < 4; q++)
			a[q] = vdupq_n_f32(0.0f);
		for (int64_t j = 0; j < nk; j++)
		{
			const float *vj = v + j * ldv + d;

			if (j + PREFETCH_ROWS < nk)
				prefetch_row(vj + PREFETCH_ROWS * ldv, 16);
#pragma GCC unroll 4
			for (int q = 0; q < 4; q++)
				a[q] = vfmaq_n_f32(a[q], vld1q_f32(vj + 4 * q), p[j]);
		}
		for (int q = 0; q < 4; q++)
			vst1q_f32(out + d + 4 * q, a[q]);
	}
	for (; d + 4 <= hd; d += 4)
	{
		float32x4_t acc = vdupq_n_f32(0.0f);

		for (int64_t j = 0; j < nk; j++)
			acc = vfmaq_n_f32(acc, vld1q_f32(v + j * ldv + d), p[j]);
		vst1q_f32(out + d, acc);
	}
	for (; d < hd; d++)
	{
		float		acc = 0.0f;

		for (int64_t j = 0; j < nk; j++)
			acc += p[j] * v[j * ldv + d];
		out[d] = acc;
	}
}

/*
 * The 8 x 32 tile as four 4 x 16 quarters: 16 accumulators, 4 of B.  The
 * accumulators are named variables, c<row><vector>: an array of them gcc
 * would keep on the stack, storing it at every step.
 */
static void
tile_neon(const float *a, int64_t ars, int64_t ats, const float *b, int64_t ldb,
		  int64_t n, float *c, int64_t ldc, float scale, int accumulate)
{
	float32x4_t vscale = vdupq_n_f32(accumulate ? 1.0f : scale);

	for (int r0 = 0; r0 < TILE_ROWS; r0 += 4)
		for (int c0 = 0; c0 < TILE_COLS; c0 += 16)
		{
			float	   *cq = c + r0 * ldc + c0;	/* the quarter */

#define INIT(r, q) \
			float32x4_t c##r##q = accumulate ? vld1q_f32(cq + (r) * ldc + 4 * (q)) : vdupq_n_f32(0.0f);
#define INIT_ROW(r) INIT(r, 0) INIT(r, 1) INIT(r, 2) INIT(r, 3)
			INIT_ROW(0) INIT_ROW(1) INIT_ROW(2) INIT_ROW(3)
			for (int64_t t = 0; t < n; t++)
			{
				const float *at = a + t * ats + r0 * ars;
				const float *bt = b + t * ldb + c0;
				float32x4_t b0 = vld1q_f32(bt),
							b1 = vld1q_f32(bt + 4),
							b2 = vld1q_f32(bt + 8),
							b3 = vld1q_f32(bt + 12);

#define FMA_ROW(r) \
				{ \
					float		ar = at[(r) * ars]; \
					c##r##0 = vfmaq_n_f32(c##r##0, b0, ar); \
					c##r##1 = vfmaq_n_f32(c##r##1, b1, ar); \
					c##r##2 = vfmaq_n_f32(c##r##2, b2, ar); \
					c##r##3 = vfmaq_n_f32(c##r##3, b3, ar); \
				}
				FMA_ROW(0) FMA_ROW(1) FMA_ROW(2) FMA_ROW(3)
			}
#define STORE(r, q) vst1q_f32(cq + (r) * ldc + 4 * (q), vmulq_f32(c##r##q, vscale));
#define STORE_ROW(r) STORE(r, 0) STORE(r, 1) STORE(r, 2) STORE(r, 3)
			STORE_ROW(0) STORE_ROW(1) STORE_ROW(2) STORE_ROW(3)
#undef INIT
#undef INIT_ROW
#undef FMA_ROW
#undef STORE
#undef STORE_ROW
		}
}

/* w is a multiple of 4 (of TILE_COLS, as for the AVX2 version's 8) */
static void
probs_row_neon(float *s, float *dp, int64_t n, int64_t w, float scale,
			   float lse, float d)
{
	const int32_t lanes[4] = {0, 1, 2, 3};
	int32x4_t	lane = vld1q_s32(lanes);
	float32x4_t vscale = vdupq_n_f32(scale),
				vlse = vdupq_n_f32(lse),
				vd = vdupq_n_f32(d);

	for (int64_t j = 0; j < w; j += 4)
	{
		/* lanes j + i < n are visible */
		uint32x4_t	m = vcltq_s32(lane, vdupq_n_s32((int32_t) MAX(-1, MIN(4, n - j))));
		float32x4_t p = exp_neon(vnegq_f32(vfmsq_f32(vlse, vld1q_f32(s + j), vscale)));
		float32x4_t ds = vmulq_f32(vmulq_f32(vscale, p), vsubq_f32(vld1q_f32(dp + j), vd));

		vst1q_f32(s + j, vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(p))));
		vst1q_f32(dp + j, vreinterpretq_f32_u32(vandq_u32(m, vreinterpretq_u32_f32(ds))));
	}
}

const attention_kernels attention_neon_kernels = {
	scores_row_neon, weighted_sum_neon, tile_neon, probs_row_neon
};

#endif							/* LLM_NEON */
