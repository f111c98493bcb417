/*
 * microkernel_avx2.c -- the AVX2+FMA plug-in of the GEMM driver (gemm.c):
 * MR = 6, NR = 16 (two ymm per row of C) micro-kernels, one per row count,
 * the same over bf16 panels of B (widened in registers), and the packing
 * helpers (masked copies, 8x8 in-register transposes, bf16 panel rows).
 */
#include "matmul_internal.h"

#if LLM_X86

#define MR256 6
#define NR256 16

/*
 * With b16 (a constant) the B panel holds bf16 (bp16), a row of 16 as
 * copy_bf16_avx2 interleaves them: 32-bit lane i = value i | value 8 + i
 * << 16, widened by a shift and an and, as in microkernel_avx512.c: the
 * same floats, the same FMAs, the same bits as a widened fp32 panel.
 */
TARGET_AVX2 static inline __attribute__((always_inline)) void
k256_body(const int mr, const int b16, int64_t kc, const float *ap, const float *bp,
		  const llm_bf16 *bp16, float *c, int64_t ldc, int nr, int accumulate,
		  const float *bias, prefetcher *pf, int64_t pf_lines)
{
	__m256		acc0[MR256],
				acc1[MR256];
	__m256i		m0,
				m1;
	int64_t		k;
	int			i;

#pragma GCC unroll 6
	for (i = 0; i < mr; i++)
	{
		acc0[i] = _mm256_setzero_ps();
		acc1[i] = _mm256_setzero_ps();
	}

	for (k = 0; k < kc; k++)
	{
		__m256		b0,
					b1;

		if (b16)
		{
			__m256i		x = _mm256_load_si256((const __m256i *) bp16);

			b0 = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
			b1 = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32((int) 0xFFFF0000u)));
		}
		else
		{
			b0 = _mm256_load_ps(bp);
			b1 = _mm256_load_ps(bp + 8);
		}

		if ((k & 1) && pf_lines > 0)
		{
			prefetch_one(pf);
			pf_lines--;
		}

#pragma GCC unroll 6
		for (i = 0; i < mr; i++)
		{
			__m256		a = _mm256_broadcast_ss(ap + i);

			acc0[i] = _mm256_fmadd_ps(a, b0, acc0[i]);
			acc1[i] = _mm256_fmadd_ps(a, b1, acc1[i]);
		}
		ap += MR256;
		if (b16)
			bp16 += NR256;
		else
			bp += NR256;
	}

	while (pf_lines-- > 0)
		prefetch_one(pf);

	/* lane j is stored when j < nr */
	{
		const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);

		m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
		m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
	}
#pragma GCC unroll 6
	for (i = 0; i < mr; i++)
	{
		float	   *ci = c + i * ldc;
		__m256		v0 = acc0[i],
					v1 = acc1[i];

		if (nr == NR256)
		{
			if (accumulate)
			{
				v0 = _mm256_add_ps(_mm256_loadu_ps(ci), v0);
				v1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), v1);
			}
			if (bias)
			{
				v0 = _mm256_add_ps(v0, _mm256_loadu_ps(bias));
				v1 = _mm256_add_ps(v1, _mm256_loadu_ps(bias + 8));
			}
			_mm256_storeu_ps(ci, v0);
			_mm256_storeu_ps(ci + 8, v1);
		}
		else
		{
			if (accumulate)
			{
				v0 = _mm256_add_ps(_mm256_maskload_ps(ci, m0), v0);
				v1 = _mm256_add_ps(_mm256_maskload_ps(ci + 8, m1), v1);
			}
			if (bias)
			{
				v0 = _mm256_add_ps(v0, _mm256_maskload_ps(bias, m0));
				v1 = _mm256_add_ps(v1, _mm256_maskload_ps(bias + 8, m1));
			}
			_mm256_maskstore_ps(ci, m0, v0);
			_mm256_maskstore_ps(ci + 8, m1, v1);
		}
	}
}

#define K256(MR) \
TARGET_AVX2 static void \
k256_##MR(int64_t kc, const float *ap, const float *bp, float *c, \
		  int64_t ldc, int nr, int accumulate, const float *bias, \
		  prefetcher *pf, int64_t pf_lines) \
{ \
	k256_body(MR, 0, kc, ap, bp, NULL, c, ldc, nr, accumulate, bias, pf, pf_lines); \
}
K256(1) K256(2) K256(3) K256(4) K256(5) K256(6)

#define K256_B16(MR) \
TARGET_AVX2 static void \
k256_b16_##MR(int64_t kc, const float *ap, const llm_bf16 *bp, float *c, \
			  int64_t ldc, int nr, int accumulate, const float *bias, \
			  prefetcher *pf, int64_t pf_lines) \
{ \
	k256_body(MR, 1, kc, ap, NULL, bp, c, ldc, nr, accumulate, bias, pf, pf_lines); \
}
K256_B16(1) K256_B16(2) K256_B16(3) K256_B16(4) K256_B16(5) K256_B16(6)

/*
 * Rows of a bf16 panel in k256_body's order: 32-bit lane i = value i |
 * value (8 + i) << 16, i.e. the 16-bit interleave of the two halves
 * (unpacklo/hi).  Values past n (the last panel) are copied into a zeroed
 * row first.
 */
TARGET_AVX2 static void
copy_bf16_avx2(const llm_bf16 *src, int64_t ss, llm_bf16 *dst, int64_t ds,
			   int64_t rows, int n)
{
	llm_bf16	edge[NR256] __attribute__((aligned(32)));
	int64_t		r;
	int			j;

	for (r = 0; r < rows; r++)
	{
		const llm_bf16 *s = src + r * ss;
		__m128i		lo,
					hi;

		if (n < NR256)
		{
			for (j = 0; j < NR256; j++)
				edge[j] = j < n ? s[j] : 0;
			s = edge;
		}
		lo = _mm_loadu_si128((const __m128i *) s);
		hi = _mm_loadu_si128((const __m128i *) (s + 8));
		_mm_store_si128((__m128i *) (dst + r * ds), _mm_unpacklo_epi16(lo, hi));
		_mm_store_si128((__m128i *) (dst + r * ds + 8), _mm_unpackhi_epi16(lo, hi));
	}
}

TARGET_AVX2 static void
copy_avx2(const float *src, int64_t ss, float *dst, int64_t ds,
		  int64_t rows, int n, int width)
{
	int64_t		r;
	int			j;

	for (j = 0; j < width; j += 8)
	{
		__m256i		ld = mask8(n - j),
					st = mask8(width - j);

		/*
		 * Full vectors without masks: masked loads and stores (vmaskmovps)
		 * cost more, on AMD's cores most (packing is ~1/7 of the lab
		 * model's step; unmasked, its share fell by ~1/5 on an EPYC).
		 */
		if (n - j >= 8 && width - j >= 8)
			for (r = 0; r < rows; r++)
				_mm256_storeu_ps(dst + r * ds + j, _mm256_loadu_ps(src + r * ss + j));
		else
			for (r = 0; r < rows; r++)
				_mm256_maskstore_ps(dst + r * ds + j, st,
									_mm256_maskload_ps(src + r * ss + j, ld));
	}
}

/* 8x8 in-register transposes, same contract as transpose_avx512 */
TARGET_AVX2 static void
transpose_avx2(const float *src, int64_t ss, float *dst, int64_t ds,
			   int64_t kc, int n, int width)
{
	int			j0,
				q;
	int64_t		k0;

	for (j0 = 0; j0 < width; j0 += 8)
	{
		int			rows = MAX(0, MIN(8, n - j0));
		__m256i		st = mask8(width - j0);

		for (k0 = 0; k0 < kc; k0 += 8)
		{
			const float *s = src + j0 * ss + k0;
			float	   *d = dst + k0 * ds + j0;
			__m256i		ld = mask8(kc - k0);
			int			cols = (int) MIN(8, kc - k0);
			__m256		r[8],
						t[8];

			if (rows == 8 && cols == 8)	/* full: no masks (see copy_avx2) */
				for (q = 0; q < 8; q++)
					r[q] = _mm256_loadu_ps(s + q * ss);
			else
				for (q = 0; q < 8; q++)
					r[q] = q < rows ? _mm256_maskload_ps(s + q * ss, ld) : _mm256_setzero_ps();
			for (q = 0; q < 8; q += 2)
			{
				t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
				t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
			}
			for (q = 0; q < 8; q += 4)
			{
				r[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
				r[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xEE);
				r[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
				r[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
			}
			for (q = 0; q < 4; q++)
			{
				t[q] = _mm256_permute2f128_ps(r[q], r[q + 4], 0x20);
				t[q + 4] = _mm256_permute2f128_ps(r[q], r[q + 4], 0x31);
			}
			if (width - j0 >= 8)
				for (q = 0; q < cols; q++)
					_mm256_storeu_ps(d + q * ds, t[q]);
			else
				for (q = 0; q < cols; q++)
					_mm256_maskstore_ps(d + q * ds, st, t[q]);
		}
	}
}

const gemm_kernels gemm_avx2 = {
	MR256, NR256,
	{NULL, k256_1, k256_2, k256_3, k256_4, k256_5, k256_6},
	copy_avx2, transpose_avx2,
	{NULL, k256_b16_1, k256_b16_2, k256_b16_3, k256_b16_4, k256_b16_5, k256_b16_6},
	copy_bf16_avx2
};

#endif							/* LLM_X86 */
