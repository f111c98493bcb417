/*
 * microkernel_avx512.c -- the AVX-512 plug-in of the GEMM driver (gemm.c):
 * MR = 14, NR = 32 (two zmm per row of C) micro-kernels, one per row count,
 * the same over bf16 panels of B (widened in registers), and the packing
 * helpers (masked copies, 16x16 in-register transposes, bf16 panel rows).
 */
#include "matmul_internal.h"

#if LLM_X86

/*
 * 14 x 32 uses 28 of the 32 zmm registers for C, 2 for the row of B and
 * 1 for the broadcast.  8 x 48 (-DMR512=8 -DNV512=3, a perfect fit for
 * 64-row and 768-column GPT-2 shapes) measured within a couple of percent.
 */
#ifndef MR512
#define MR512 14
#endif
#ifndef NV512
#define NV512 2
#endif
#define NR512 (16 * NV512)
#if MR512 > MR_MAX || NR512 > NR_MAX
#error "MR512/NV512 exceed MR_MAX/NR_MAX"
#endif

/*
 * The body is always_inline and instantiated with a constant `mr`, so the
 * row loops unroll completely and acc[][] lives in NV*mr zmm registers.
 * A k step is NV loads of B, mr broadcasts of A and NV*mr FMAs.
 *
 * With b16 (a constant too) the B panel holds bf16 (bp16), a row of 32 as
 * copy_bf16_avx512 interleaves them: 32-bit lane i holds value i in its
 * low half and value 16 + i in its high half.  One load, a shift left by
 * 16 and an and with 0xFFFF0000 give the two vectors of floats those
 * values stand for, exactly the floats a widened fp32 panel would hold;
 * the FMAs that follow are the same, so are the bits.  The panel is half
 * the bytes: packing writes half, and the kernel reads half from L2.
 */
#if NV512 % 2 == 0
#define K512_BF16 1				/* bf16 panels: pairs of vectors */
#endif

TARGET_AVX512 static inline __attribute__((always_inline)) void
k512_body(const int mr, const int b16, int64_t kc, const float *ap, const float *bp,
		  const llm_bf16 *bp16, float *c, int64_t ldc, int nr, int accumulate,
		  const float *bias, prefetcher *pf, int64_t pf_lines)
{
	__m512		acc[MR512][NV512];
	__mmask16	mask[NV512];
	int64_t		k;
	int			i,
				v;

#pragma GCC unroll 16
	for (i = 0; i < mr; i++)
#pragma GCC unroll 4
		for (v = 0; v < NV512; v++)
			acc[i][v] = _mm512_setzero_ps();

	for (k = 0; k < kc; k++)
	{
		__m512		b[NV512];

		if (b16)
		{
#pragma GCC unroll 4
			for (v = 0; v + 1 < NV512; v += 2)
			{
				__m512i		x = _mm512_load_si512(bp16 + 16 * v);

				b[v] = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
				b[v + 1] = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32((int) 0xFFFF0000u)));
			}
		}
		else
#pragma GCC unroll 4
			for (v = 0; v < NV512; v++)
				b[v] = _mm512_load_ps(bp + 16 * v);
		if ((k & 1) && pf_lines > 0)
		{
			prefetch_one(pf);
			pf_lines--;
		}
#pragma GCC unroll 16
		for (i = 0; i < mr; i++)
		{
			__m512		a = _mm512_set1_ps(ap[i]);

#pragma GCC unroll 4
			for (v = 0; v < NV512; v++)
				acc[i][v] = _mm512_fmadd_ps(a, b[v], acc[i][v]);
		}
		ap += MR512;
		if (b16)
			bp16 += NR512;
		else
			bp += NR512;
	}

	while (pf_lines-- > 0)		/* more than kc/2 lines asked for */
		prefetch_one(pf);

	/* store, masking columns past nr */
#pragma GCC unroll 4
	for (v = 0; v < NV512; v++)
		mask[v] = mask16(nr - 16 * v);
#pragma GCC unroll 16
	for (i = 0; i < mr; i++)
	{
		float	   *ci = c + i * ldc;

#pragma GCC unroll 4
		for (v = 0; v < NV512; v++)
		{
			__m512		r = acc[i][v];

			if (accumulate)
				r = _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], ci + 16 * v), r);
			if (bias)
				r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask[v], bias + 16 * v));
			_mm512_mask_storeu_ps(ci + 16 * v, mask[v], r);
		}
	}
}

#define K512(MR) \
TARGET_AVX512 static void \
k512_##MR(int64_t kc, const float *ap, const float *bp, float *c, \
		  int64_t ldc, int nr, int accumulate, const float *bias, \
		  prefetcher *pf, int64_t pf_lines) \
{ \
	k512_body(MR < MR512 ? MR : MR512, 0, kc, ap, bp, NULL, c, ldc, nr, \
			  accumulate, bias, pf, pf_lines); \
}
K512(1) K512(2) K512(3) K512(4) K512(5) K512(6) K512(7)
K512(8) K512(9) K512(10) K512(11) K512(12) K512(13) K512(14)

#ifdef K512_BF16
#define K512_B16(MR) \
TARGET_AVX512 static void \
k512_b16_##MR(int64_t kc, const float *ap, const llm_bf16 *bp, float *c, \
			  int64_t ldc, int nr, int accumulate, const float *bias, \
			  prefetcher *pf, int64_t pf_lines) \
{ \
	k512_body(MR < MR512 ? MR : MR512, 1, kc, ap, NULL, bp, c, ldc, nr, \
			  accumulate, bias, pf, pf_lines); \
}
K512_B16(1) K512_B16(2) K512_B16(3) K512_B16(4) K512_B16(5) K512_B16(6) K512_B16(7)
K512_B16(8) K512_B16(9) K512_B16(10) K512_B16(11) K512_B16(12) K512_B16(13) K512_B16(14)

/*
 * Rows of a bf16 panel in k512_body's order: in each group of 32 values,
 * 32-bit lane i = value i | value (16 + i) << 16.  AVX-512F alone has no
 * 16-bit shuffles or masks, so: zero-extend each half to 32-bit lanes,
 * shift the second half up, or.  Values past n (the last panel) are
 * copied into a zeroed row first.
 */
TARGET_AVX512 static void
copy_bf16_avx512(const llm_bf16 *src, int64_t ss, llm_bf16 *dst, int64_t ds,
				 int64_t rows, int n)
{
	llm_bf16	edge[NR512] __attribute__((aligned(64)));
	int64_t		r;
	int			j;

	for (r = 0; r < rows; r++)
	{
		const llm_bf16 *s = src + r * ss;

		if (n < NR512)
		{
			for (j = 0; j < NR512; j++)
				edge[j] = j < n ? s[j] : 0;
			s = edge;
		}
		for (j = 0; j < NR512; j += 32)
		{
			__m512i		lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (s + j)));
			__m512i		hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *) (s + j + 16)));

			_mm512_store_si512(dst + r * ds + j, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
		}
	}
}
#endif

TARGET_AVX512 static void
copy_avx512(const float *src, int64_t ss, float *dst, int64_t ds,
			int64_t rows, int n, int width)
{
	int64_t		r;
	int			j;

	for (j = 0; j < width; j += 16)
	{
		__mmask16	ld = mask16(n - j),
					st = mask16(width - j);

		for (r = 0; r < rows; r++)
			_mm512_mask_storeu_ps(dst + r * ds + j, st,
								  _mm512_maskz_loadu_ps(ld, src + r * ss + j));
	}
}

/*
 * 16x16 in-register transpose (the usual 4 rounds of shuffles) of a block
 * of up to 16 source rows x 16 k; missing rows read as zero, so the
 * padding columns of the panel come out zero.
 */
TARGET_AVX512 static void
transpose_avx512(const float *src, int64_t ss, float *dst, int64_t ds,
				 int64_t kc, int n, int width)
{
	int			j0,
				q;
	int64_t		k0;

	for (j0 = 0; j0 < width; j0 += 16)
	{
		int			rows = MAX(0, MIN(16, n - j0));
		__mmask16	st = mask16(width - j0);

		for (k0 = 0; k0 < kc; k0 += 16)
		{
			const float *s = src + j0 * ss + k0;
			float	   *d = dst + k0 * ds + j0;
			__mmask16	ld = mask16(kc - k0);
			int			cols = (int) MIN(16, kc - k0);
			__m512		r[16],
						t[16];

			for (q = 0; q < 16; q++)
				r[q] = q < rows ? _mm512_maskz_loadu_ps(ld, s + q * ss) : _mm512_setzero_ps();
			/* interleave 32-bit pairs, then 64-bit pairs ... */
			for (q = 0; q < 16; q += 2)
			{
				t[q] = _mm512_unpacklo_ps(r[q], r[q + 1]);
				t[q + 1] = _mm512_unpackhi_ps(r[q], r[q + 1]);
			}
			for (q = 0; q < 16; q += 4)
			{
				__m512d		t0 = _mm512_castps_pd(t[q]),
							t1 = _mm512_castps_pd(t[q + 1]),
							t2 = _mm512_castps_pd(t[q + 2]),
							t3 = _mm512_castps_pd(t[q + 3]);

				r[q] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
				r[q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
				r[q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
				r[q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
			}
			/* ... then 128-bit lanes, twice */
			for (q = 0; q < 4; q++)
			{
				t[q] = _mm512_shuffle_f32x4(r[q], r[q + 4], 0x88);
				t[q + 4] = _mm512_shuffle_f32x4(r[q], r[q + 4], 0xdd);
				t[q + 8] = _mm512_shuffle_f32x4(r[q + 8], r[q + 12], 0x88);
				t[q + 12] = _mm512_shuffle_f32x4(r[q + 8], r[q + 12], 0xdd);
			}
			for (q = 0; q < 8; q++)
			{
				r[q] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0x88);
				r[q + 8] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0xdd);
			}
			for (q = 0; q < cols; q++)
				_mm512_mask_storeu_ps(d + q * ds, st, r[q]);
		}
	}
}

const gemm_kernels gemm_avx512 = {
	MR512, NR512,
	{NULL, k512_1, k512_2, k512_3, k512_4, k512_5, k512_6, k512_7,
	k512_8, k512_9, k512_10, k512_11, k512_12, k512_13, k512_14},
	copy_avx512, transpose_avx512,
#ifdef K512_BF16
	{NULL, k512_b16_1, k512_b16_2, k512_b16_3, k512_b16_4, k512_b16_5, k512_b16_6, k512_b16_7,
	k512_b16_8, k512_b16_9, k512_b16_10, k512_b16_11, k512_b16_12, k512_b16_13, k512_b16_14},
	copy_bf16_avx512
#else
	{NULL}, NULL
#endif
};

#endif							/* LLM_X86 */
