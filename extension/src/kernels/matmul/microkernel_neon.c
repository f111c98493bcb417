/*
 * microkernel_neon.c -- the NEON (aarch64 Advanced SIMD) plug-in of the
 * GEMM driver (gemm.c): MR = 8, NR = 12 (three 4-float vectors per row of
 * C) micro-kernels, one per row count, and the packing helpers (vector
 * copies, 4x4 in-register transposes).
 *
 * aarch64 has 32 vector registers: the 8 x 12 block of C takes 24, one row
 * of the B panel 3, the A values the rest.  Each k step is 24 FMAs for 3
 * vector and 8 scalar loads; vfmaq_n_f32 multiplies by one A value without
 * broadcasting it first (FMLA by element).  This is the shape of the
 * classic ARMv8 kernels (OpenBLAS, BLIS).
 *
 * NEON has no masked loads or stores: partial columns of C (nr < 12) and
 * partial packing rows go through a small buffer.
 */
#include "matmul_internal.h"

#if LLM_NEON

#define MRN 8
#define NRN 12

/* 4 floats of src from j on: those below n, zeros after */
static inline float32x4_t
load_part(const float *src, int j, int n)
{
	float		tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};

	if (j + 4 <= n)
		return vld1q_f32(src + j);
	for (int q = 0; j + q < n; q++)
		tmp[q] = src[j + q];
	return vld1q_f32(tmp);
}

static inline __attribute__((always_inline)) void
kneon_body(const int mr, int64_t kc, const float *ap, const float *bp,
		   float *c, int64_t ldc, int nr, int accumulate, const float *bias,
		   prefetcher *pf, int64_t pf_lines)
{
	float32x4_t acc[MRN][3];
	int64_t		k;
	int			i,
				j;

#pragma GCC unroll 8
	for (i = 0; i < mr; i++)
		for (j = 0; j < 3; j++)
			acc[i][j] = vdupq_n_f32(0.0f);

	for (k = 0; k < kc; k++)
	{
		float32x4_t b0 = vld1q_f32(bp);
		float32x4_t b1 = vld1q_f32(bp + 4);
		float32x4_t b2 = vld1q_f32(bp + 8);

		if ((k & 1) && pf_lines > 0)
		{
			prefetch_one(pf);
			pf_lines--;
		}

#pragma GCC unroll 8
		for (i = 0; i < mr; i++)
		{
			float		a = ap[i];

			acc[i][0] = vfmaq_n_f32(acc[i][0], b0, a);
			acc[i][1] = vfmaq_n_f32(acc[i][1], b1, a);
			acc[i][2] = vfmaq_n_f32(acc[i][2], b2, a);
		}
		ap += MRN;
		bp += NRN;
	}

	while (pf_lines-- > 0)
		prefetch_one(pf);

#pragma GCC unroll 8
	for (i = 0; i < mr; i++)
	{
		float	   *ci = c + i * ldc;

		if (nr == NRN)
		{
			for (j = 0; j < 3; j++)
			{
				float32x4_t v = acc[i][j];

				if (accumulate)
					v = vaddq_f32(vld1q_f32(ci + 4 * j), v);
				if (bias)
					v = vaddq_f32(v, vld1q_f32(bias + 4 * j));
				vst1q_f32(ci + 4 * j, v);
			}
		}
		else
		{
			/* a partial row: the same sums, stored through a buffer */
			float		row[NRN];

			for (j = 0; j < 3; j++)
			{
				float32x4_t v = acc[i][j];

				if (accumulate)
					v = vaddq_f32(load_part(ci, 4 * j, nr), v);
				if (bias)
					v = vaddq_f32(v, load_part(bias, 4 * j, nr));
				vst1q_f32(row + 4 * j, v);
			}
			for (j = 0; j < nr; j++)
				ci[j] = row[j];
		}
	}
}

#define KNEON(MR) \
static void \
kneon_##MR(int64_t kc, const float *ap, const float *bp, float *c, \
		   int64_t ldc, int nr, int accumulate, const float *bias, \
		   prefetcher *pf, int64_t pf_lines) \
{ \
	kneon_body(MR, kc, ap, bp, c, ldc, nr, accumulate, bias, pf, pf_lines); \
}
KNEON(1) KNEON(2) KNEON(3) KNEON(4) KNEON(5) KNEON(6) KNEON(7) KNEON(8)

/* same contract as copy_avx2 (width: a multiple of 4) */
static void
copy_neon(const float *src, int64_t ss, float *dst, int64_t ds,
		  int64_t rows, int n, int width)
{
	int64_t		r;
	int			j;

	for (r = 0; r < rows; r++)
		for (j = 0; j < width; j += 4)
			vst1q_f32(dst + r * ds + j, load_part(src + r * ss, j, n));
}

/* 4x4 in-register transposes, same contract as transpose_avx2 */
static void
transpose_neon(const float *src, int64_t ss, float *dst, int64_t ds,
			   int64_t kc, int n, int width)
{
	int			j0,
				q;
	int64_t		k0;

	for (j0 = 0; j0 < width; j0 += 4)
	{
		int			rows = MAX(0, MIN(4, n - j0));

		for (k0 = 0; k0 < kc; k0 += 4)
		{
			const float *s = src + j0 * ss + k0;
			float	   *d = dst + k0 * ds + j0;
			int			cols = (int) MIN(4, kc - k0);
			float32x4_t r[4],
						t[4];

			for (q = 0; q < 4; q++)
				r[q] = q < rows ? load_part(s + q * ss, 0, cols) : vdupq_n_f32(0.0f);
			/* [a0 b0 a2 b2], [a1 b1 a3 b3], [c0 d0 c2 d2], [c1 d1 c3 d3] */
			t[0] = vtrn1q_f32(r[0], r[1]);
			t[1] = vtrn2q_f32(r[0], r[1]);
			t[2] = vtrn1q_f32(r[2], r[3]);
			t[3] = vtrn2q_f32(r[2], r[3]);
			/* column q of the 4x4 block: [a_q b_q c_q d_q] */
#define PAIRS(f, x, y) \
	vreinterpretq_f32_f64(f(vreinterpretq_f64_f32(x), vreinterpretq_f64_f32(y)))
			r[0] = PAIRS(vtrn1q_f64, t[0], t[2]);
			r[1] = PAIRS(vtrn1q_f64, t[1], t[3]);
			r[2] = PAIRS(vtrn2q_f64, t[0], t[2]);
			r[3] = PAIRS(vtrn2q_f64, t[1], t[3]);
#undef PAIRS
			for (q = 0; q < cols; q++)
				vst1q_f32(d + q * ds, r[q]);
		}
	}
}

const gemm_kernels gemm_neon = {
	MRN, NRN,
	{NULL, kneon_1, kneon_2, kneon_3, kneon_4, kneon_5, kneon_6, kneon_7, kneon_8},
	copy_neon, transpose_neon
};

#endif							/* LLM_NEON */
