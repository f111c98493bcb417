/*
 * microkernel_neon.c -- the NEON (aarch64 Advanced SIMD) plug-in of the
 * GEMM driver (gemm.c): MR = 8, NR = 12 (three 4-float vectors per row of
 * C) micro-kernels, one per row count, and the packing helpers (vector
 * copies, 4x4 in-register transposes).
 *
 * aarch64 has 32 vector registers: the 8 x 12 block of C takes 24, one row
 * of the B panel 3, the 8 A values 2: each k step is 24 FMAs for 5 vector
 * loads, and vfmaq_laneq_f32 multiplies by one lane of an A vector without
 * broadcasting it first (FMLA by element).  This is the shape of the
 * classic ARMv8 kernels (OpenBLAS, BLIS).
 *
 * NEON has no masked loads or stores: the edges (partial columns of C,
 * nr < 12, and of the packing) are loaded and stored lane by lane.
 */
#include "matmul_internal.h"

#if LLM_NEON

#define MRN 8
#define NRN 12

/*
 * The first n floats of a vector, for the edges: load_part reads src[0, n)
 * (zeros after), store_part writes dst[0, n), n clamped to 0..4.  Lane by
 * lane rather than through a buffer: a copy loop could become a call to
 * memcpy, and across a call no vector register keeps its value, which
 * would push the micro-kernel's sums out to the stack.
 */
static inline float32x4_t
load_part(const float *src, int n)
{
	float32x4_t v = vdupq_n_f32(0.0f);

	if (n >= 4)
		return vld1q_f32(src);
	if (n >= 1)
		v = vld1q_lane_f32(src, v, 0);
	if (n >= 2)
		v = vld1q_lane_f32(src + 1, v, 1);
	if (n >= 3)
		v = vld1q_lane_f32(src + 2, v, 2);
	return v;
}

static inline void
store_part(float *dst, float32x4_t v, int n)
{
	if (n >= 4)
		vst1q_f32(dst, v);
	else
	{
		if (n >= 1)
			vst1q_lane_f32(dst, v, 0);
		if (n >= 2)
			vst1q_lane_f32(dst + 1, v, 1);
		if (n >= 3)
			vst1q_lane_f32(dst + 2, v, 2);
	}
}

/* c[0, nr) = (accumulate ? c + v : v) (+ bias), v the 12 sums of one row */
static inline __attribute__((always_inline)) void
store_row(float *c, float32x4_t v0, float32x4_t v1, float32x4_t v2, int nr,
		  int accumulate, const float *bias)
{
	float32x4_t v[3] = {v0, v1, v2};

#pragma GCC unroll 3
	for (int j = 0; j < 3; j++)
	{
		int			n = nr - 4 * j;	/* columns of this vector (may be <= 0) */

		if (accumulate)
			v[j] = vaddq_f32(load_part(c + 4 * j, n), v[j]);
		if (bias)
			v[j] = vaddq_f32(v[j], load_part(bias + 4 * j, n));
		store_part(c + 4 * j, v[j], n);
	}
}

/*
 * The sums of row i are the named variables c<i>0, c<i>1, c<i>2, not an
 * array: gcc keeps an array of 24 vectors partly on the stack, spilling in
 * the inner loop, and named ones in registers.  Rows past mr are never used
 * and the compiler drops them.
 */
static inline __attribute__((always_inline)) void
kneon_body(const int mr, int64_t kc, const float *ap, const float *bp,
		   float *c, int64_t ldc, int nr, int accumulate, const float *bias,
		   prefetcher *pf, int64_t pf_lines)
{
#define ZERO(i) \
	float32x4_t c##i##0 = vdupq_n_f32(0.0f), c##i##1 = c##i##0, c##i##2 = c##i##0;
	ZERO(0) ZERO(1) ZERO(2) ZERO(3) ZERO(4) ZERO(5) ZERO(6) ZERO(7)
#undef ZERO

	for (int64_t k = 0; k < kc; k++)
	{
		float32x4_t b0 = vld1q_f32(bp);
		float32x4_t b1 = vld1q_f32(bp + 4);
		float32x4_t b2 = vld1q_f32(bp + 8);
		float32x4_t a0 = vld1q_f32(ap);
		float32x4_t a1 = vld1q_f32(ap + 4);

		if ((k & 1) && pf_lines > 0)
		{
			prefetch_one(pf);
			pf_lines--;
		}

		/* row i += A[i] * B, A[i] taken from its lane (FMLA by element) */
#define ROW(i, a, lane) \
		if (mr > (i)) \
		{ \
			c##i##0 = vfmaq_laneq_f32(c##i##0, b0, a, lane); \
			c##i##1 = vfmaq_laneq_f32(c##i##1, b1, a, lane); \
			c##i##2 = vfmaq_laneq_f32(c##i##2, b2, a, lane); \
		}
		ROW(0, a0, 0) ROW(1, a0, 1) ROW(2, a0, 2) ROW(3, a0, 3)
		ROW(4, a1, 0) ROW(5, a1, 1) ROW(6, a1, 2) ROW(7, a1, 3)
#undef ROW
		ap += MRN;
		bp += NRN;
	}

	while (pf_lines-- > 0)
		prefetch_one(pf);

#define STORE(i) \
	if (mr > (i)) \
		store_row(c + (i) * ldc, c##i##0, c##i##1, c##i##2, nr, accumulate, bias);
	STORE(0) STORE(1) STORE(2) STORE(3) STORE(4) STORE(5) STORE(6) STORE(7)
#undef STORE
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
			vst1q_f32(dst + r * ds + j, load_part(src + r * ss + j, n - j));
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
				r[q] = q < rows ? load_part(s + q * ss, cols) : vdupq_n_f32(0.0f);
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
	copy_neon, transpose_neon,
	{NULL}, NULL				/* no bf16 panels: B16 is widened while packing */
};

#endif							/* LLM_NEON */
