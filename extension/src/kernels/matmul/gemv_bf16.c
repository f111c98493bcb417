/*
 * gemv_bf16.c -- the GEMV of gemv.c (M == 1) over a B stored as bfloat16:
 * decoding one token with bf16 weights (pg_llm.inference_dtype = 'bf16').
 *
 * Decoding is memory-bound (gemv.c): each weight is read once for one FMA.
 * Stored as bf16 a weight is 2 bytes instead of 4, so the same stream of
 * bytes carries twice the weights.  Each bf16 is widened to the float it
 * stands for, exactly: its 16 bits become the high half of a 32-bit lane.
 * The result is fp32 arithmetic over the widened weights, bit-identical at
 * any thread count (tested against float64).  For plain B the arithmetic
 * is gemv.c's, operation for operation: bit for bit the fp32 GEMV over the
 * widened weights (tested).  The AVX2 and AVX-512 transposed GEMVs (the
 * lm_head) pair their lanes in another order, to widen 16 or 32 bf16 per
 * load: the same meaning, not the same bits as gemv.c.
 *
 * Widening costs instructions, and half the bytes per weight means rows
 * half as long: too short for the hardware prefetchers, which need a few
 * misses to lock onto a stream (the 768-column rows of a block are 1.5 KB).
 * So every loop prefetches the rows it will read next (measured at 1
 * thread: the AVX2 block GEMVs' and lm_head's bandwidth 1.3-2x higher).
 *
 * AVX-512 has its own loops, 32 bf16 per 64-byte load (AVX-512F only).
 * AVX512_BF16's vdpbf16ps is not used: it multiplies bf16 by bf16, so the
 * fp32 activations would have to be rounded to bf16 too; it adds each pair
 * of products with its own rounding, not as a chain of FMAs; and it treats
 * denormal inputs as zero and flushes denormal results.  Each of these
 * changes the meaning "fp32 arithmetic over bf16-rounded weights".
 *
 * NEON (aarch64): gemv.c's NEON loops, each group of 4 bf16 widened by a
 * shift left long (load4_bf16); the transposed GEMV is gemv.c's own, which
 * takes its row loads as functions.  ARMv8.6's BFDOT and BFMMLA are not used,
 * for the same reason as vdpbf16ps: they round differently.
 */
#include "matmul_internal.h"

#define GEMV_CHUNK 2048			/* columns of y kept in L1 (8 KB), as gemv.c */

#if LLM_X86

/*
 * y[s0:s1] = a @ B[:, s0:s1] for plain B: gemv256_plain_chunk's loops, per
 * column the same FMA chain down k.  Widening costs more instructions than
 * the FMAs themselves, so 16 columns are widened at once from one 32-byte
 * load: a 32-bit lane holds the bf16 of an even column in its low half and
 * of the next, odd, column in its high half, so a shift left by 16 gives
 * the even columns' floats and a mask of the high half the odd ones'.
 * Their sums are kept in yd, even and odd columns apart (8 + 8 per group
 * of 16), and put back in order at the end.  Columns past the last whole
 * 16 take the 8-wide widening load, then scalar FMAs.
 */
/* Rows k .. k+rows-1 of B (rows <= 8; inlined with rows = 8 for all but the last group). */
TARGET_AVX2 static inline __attribute__((always_inline)) void
plain_rows(const mm_ctx *c, float *yd, int64_t s0, int64_t s1, int64_t k, const int rows)
{
	const float *a = c->A;
	int64_t		N = c->N;
	float	   *y = c->C;
	const llm_bf16 *b = c->B16 + k * N;
	int64_t		n16 = s0 + ((s1 - s0) & ~(int64_t) 15);
	int64_t		n8 = n16 + ((s1 - n16) & ~(int64_t) 7);
	const llm_bf16 *next = b + 8 * N,	/* the next group's rows 0 and 4 */
			   *next4 = b + 12 * N;
	const __m256i high = _mm256_set1_epi32((int) 0xffff0000u);
	int			start = k == 0;	/* the sums start from 0 (bf16 never accumulates) */
	__m256		ak[8];
	int64_t		n;
	int			r;

	for (r = 0; r < rows; r++)
		ak[r] = _mm256_broadcast_ss(a + k + r);
	for (n = s0; n < n16; n += 16)
	{
		float	   *d = yd + (n - s0);
		__m256		even = start ? _mm256_setzero_ps() : _mm256_load_ps(d);
		__m256		odd = start ? _mm256_setzero_ps() : _mm256_load_ps(d + 8);

		/*
		 * The next group's 8 rows, at this column: one line of each row per
		 * 32 columns, rows 0-3 on one step of 16 and rows 4-7 on the next
		 * (past the last row too: a prefetch never faults).
		 */
		const llm_bf16 *p = (((n - s0) & 16) ? next4 : next) + n;

#pragma GCC unroll 4
		for (r = 0; r < 4; r++)
			_mm_prefetch((const char *) (p + r * N), _MM_HINT_T0);
#pragma GCC unroll 8
		for (r = 0; r < rows; r++)
		{
			__m256i		x = _mm256_loadu_si256((const __m256i *) (b + r * N + n));

			even = _mm256_fmadd_ps(ak[r], _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)), even);
			odd = _mm256_fmadd_ps(ak[r], _mm256_castsi256_ps(_mm256_and_si256(x, high)), odd);
		}
		_mm256_store_ps(d, even);
		_mm256_store_ps(d + 8, odd);
	}
	for (; n < n8; n += 8)
	{
		__m256		acc = start ? _mm256_setzero_ps() : _mm256_loadu_ps(y + n);

#pragma GCC unroll 8
		for (r = 0; r < rows; r++)
			acc = _mm256_fmadd_ps(ak[r], load8_bf16(b + r * N + n), acc);
		_mm256_storeu_ps(y + n, acc);
	}
	for (; n < s1; n++)
	{
		float		acc = start ? 0.0f : y[n];

		for (r = 0; r < rows; r++)
			acc = __builtin_fmaf(a[k + r], llm_bf16_to_float(b[r * N + n]), acc);
		y[n] = acc;
	}
}

TARGET_AVX2 static void
gemv256_bf16_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	float	   *y = c->C;
	float		yd[GEMV_CHUNK] __attribute__((aligned(32)));
	int64_t		n16 = s0 + ((s1 - s0) & ~(int64_t) 15);
	int64_t		k,
				n,
				i;

	for (k = 0; k + 8 <= c->K; k += 8)
		plain_rows(c, yd, s0, s1, k, 8);
	if (k < c->K)
		plain_rows(c, yd, s0, s1, k, (int) (c->K - k));
	/* in order: yd[16g + i] is y[s0 + 16g + 2i], yd[16g + 8 + i] y[s0 + 16g + 2i + 1] */
	for (n = s0; n < n16; n += 16)
		for (i = 0; i < 8; i++)
		{
			y[n + 2 * i] = yd[n - s0 + i];
			y[n + 2 * i + 1] = yd[n - s0 + 8 + i];
		}
}

/*
 * y[n0:n1] = B[n0:n1, :] @ a for transB: decode's lm_head (wte tied,
 * 50257 x 768, the largest matrix read per token).  Each row is one dot
 * product, streamed 4 rows at a time sharing the loads of a, as
 * gemv256_transb -- but widened 16 bf16 at a time from one 32-byte load:
 * interleaving with zero words (vpunpcklwd / vpunpckhwd) puts each bf16 in
 * the high half of a 32-bit lane, which is the float it stands for.  The
 * unpacks work within each 128-bit half, so "lo" holds the row's elements
 * k+0..3 and k+8..11, "hi" k+4..7 and k+12..15; a is loaded to match, each
 * half from its own 16-byte load.  Two accumulators per row (lo, hi) give 8
 * independent FMA chains, enough to hide the FMA latency.
 *
 * A row is only 1.5 KB (K = 768): too short a stream for the hardware
 * prefetchers to reach full speed before it ends.  The next group's 4 rows
 * are the 4K bf16 right after this group's, so each step of 16 k's
 * prefetches 64 of them (2 cache lines): the next group is in cache when
 * its turn comes.
 *
 * So a lane sums other products than in the fp32 GEMV's order: the result
 * is fp32 arithmetic over the widened B, but not the fp32 GEMV's bits (it is
 * checked against float64 instead).  Each row's operations do not depend on
 * the task split: bit-identical at any thread count.  The sum of a row: its
 * lo and hi lanes added, the 8-lane sum, then the last K % 8 products in k
 * order (K % 16 >= 8 adds one 8-wide step to lo first).
 */
TARGET_AVX2 static inline __attribute__((always_inline)) __m256
load_halves(const float *lo, const float *hi)
{
	return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi), 1);
}

TARGET_AVX2 static void
gemv256_bf16_transb(const mm_ctx *c, int64_t n0, int64_t n1)
{
	const float *a = c->A;
	int64_t		K = c->K;
	int64_t		k16 = K & ~(int64_t) 15;
	int64_t		k8 = K & ~(int64_t) 7;
	const __m256i zero = _mm256_setzero_si256();
	int64_t		n,
				k;

	for (n = n0; n < n1; n += 4)
	{
		int			rows = (int) MIN(4, n1 - n);
		const llm_bf16 *b[4];
		__m256		lo[4],
					hi[4];
		int			r;

		for (r = 0; r < 4; r++)
		{
			/* a short group repeats its last row and stores only `rows` */
			b[r] = c->B16 + (n + MIN(r, rows - 1)) * K;
			lo[r] = _mm256_setzero_ps();
			hi[r] = _mm256_setzero_ps();
		}
		for (k = 0; k < k16; k += 16)
		{
			const llm_bf16 *next = c->B16 + (n + 4) * K + 4 * k;
			__m256		alo = load_halves(a + k, a + k + 8);
			__m256		ahi = load_halves(a + k + 4, a + k + 12);

			/* past the matrix's end too: a prefetch never faults */
			_mm_prefetch((const char *) next, _MM_HINT_T0);
			_mm_prefetch((const char *) (next + 32), _MM_HINT_T0);
#pragma GCC unroll 4
			for (r = 0; r < 4; r++)
			{
				__m256i		x = _mm256_loadu_si256((const __m256i *) (b[r] + k));

				lo[r] = _mm256_fmadd_ps(alo, _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, x)), lo[r]);
				hi[r] = _mm256_fmadd_ps(ahi, _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, x)), hi[r]);
			}
		}
		if (k < k8)
		{
			__m256		ak = _mm256_loadu_ps(a + k);

			for (r = 0; r < 4; r++)
				lo[r] = _mm256_fmadd_ps(ak, load8_bf16(b[r] + k), lo[r]);
		}
		for (r = 0; r < rows; r++)
		{
			float		s = hsum_avx2(_mm256_add_ps(lo[r], hi[r]));

			for (k = k8; k < K; k++)
				s = __builtin_fmaf(a[k], llm_bf16_to_float(b[r][k]), s);
			if (c->accumulate)
				s += c->C[n + r];
			c->C[n + r] = c->bias ? s + c->bias[n + r] : s;
		}
	}
}

TARGET_AVX2 void
gemv256_bf16_task(void *arg, int64_t n0, int64_t n1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		s,
				n;

	if (c->transB)
	{
		gemv256_bf16_transb(c, n0, n1);
		return;
	}
	for (s = n0; s < n1; s += GEMV_CHUNK)
		gemv256_bf16_plain_chunk(c, s, MIN(n1, s + GEMV_CHUNK));
	if (c->bias)
		for (n = n0; n < n1; n++)
			c->C[n] += c->bias[n];
}

/* ---- AVX-512: the same loops, 512 bits wide ------------------------------ */

/*
 * The AVX-512 loops use AVX-512F instructions only (the table is chosen on
 * avx512f).  Two ways to widen: a zero-extending load of 16 bf16
 * (vpmovzxwd) and a shift (load16_bf16), or, as the plain loop does, one
 * 64-byte load (32 bf16, one cache line) widened twice -- a shift left by
 * 16 gives the floats of its even bf16, a mask of the high halves those of
 * its odd ones: 2 integer operations per 32 weights instead of 2 per 16.
 * Decoding is memory-bound, so on the AMD EPYC this was measured on
 * both loops run at the AVX2 loops' speed (within the noise, 2 threads):
 * the transposed one keeps the simpler widening, which needs no reordering
 * of a (the even/odd split, with a permuted to match, was no faster).
 *
 * Plain B: y[s0:s1] = a @ B[:, s0:s1], gemv512_plain_chunk's arithmetic:
 * per column the same FMA chain down k, from 0, so bit for bit the AVX-512
 * (and AVX2) fp32 GEMV over the widened weights.  32 columns per step, 16
 * even ones and 16 odd ones, kept apart in yd and put back in order at the
 * end by two permutes per 32; then one 16-column step (vpmovzxwd + shift),
 * then scalar FMAs.  Like the AVX2 loop it prefetches the next group of 8
 * rows (one line of each per 32 columns): rows of 1.5 KB are too short for
 * the hardware prefetchers.
 */
/* 16 bf16 at p widened to the 16 floats they stand for (vpmovzxwd + shift) */
TARGET_AVX512 static inline __attribute__((always_inline)) __m512
load16_bf16(const llm_bf16 *p)
{
	__m256i		h = _mm256_loadu_si256((const __m256i *) p);

	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Rows k .. k+rows-1 of B (rows <= 8; inlined with rows = 8 for all but the last group). */
TARGET_AVX512 static inline __attribute__((always_inline)) void
plain_rows512(const mm_ctx *c, float *yd, int64_t s0, int64_t s1, int64_t k, const int rows)
{
	const float *a = c->A;
	int64_t		N = c->N;
	float	   *y = c->C;
	const llm_bf16 *b = c->B16 + k * N;
	int64_t		n32 = s0 + ((s1 - s0) & ~(int64_t) 31);
	int64_t		n16 = n32 + ((s1 - n32) & ~(int64_t) 15);
	const llm_bf16 *next = b + 8 * N;	/* the next group's rows */
	const __m512i high = _mm512_set1_epi32((int) 0xffff0000u);
	int			start = k == 0;	/* the sums start from 0 (bf16 never accumulates) */
	__m512		ak[8];
	int64_t		n;
	int			r;

	for (r = 0; r < rows; r++)
		ak[r] = _mm512_set1_ps(a[k + r]);
	for (n = s0; n < n32; n += 32)
	{
		float	   *d = yd + (n - s0);
		__m512		even = start ? _mm512_setzero_ps() : _mm512_load_ps(d);
		__m512		odd = start ? _mm512_setzero_ps() : _mm512_load_ps(d + 16);

		/* past the last row too: a prefetch never faults */
#pragma GCC unroll 8
		for (r = 0; r < 8; r++)
			_mm_prefetch((const char *) (next + r * N + n), _MM_HINT_T0);
#pragma GCC unroll 8
		for (r = 0; r < rows; r++)
		{
			__m512i		x = _mm512_loadu_si512((const void *) (b + r * N + n));

			even = _mm512_fmadd_ps(ak[r], _mm512_castsi512_ps(_mm512_slli_epi32(x, 16)), even);
			odd = _mm512_fmadd_ps(ak[r], _mm512_castsi512_ps(_mm512_and_si512(x, high)), odd);
		}
		_mm512_store_ps(d, even);
		_mm512_store_ps(d + 16, odd);
	}
	for (; n < n16; n += 16)
	{
		__m512		acc = start ? _mm512_setzero_ps() : _mm512_loadu_ps(y + n);

#pragma GCC unroll 8
		for (r = 0; r < rows; r++)
			acc = _mm512_fmadd_ps(ak[r], load16_bf16(b + r * N + n), acc);
		_mm512_storeu_ps(y + n, acc);
	}
	for (; n < s1; n++)
	{
		float		acc = start ? 0.0f : y[n];

		for (r = 0; r < rows; r++)
			acc = __builtin_fmaf(a[k + r], llm_bf16_to_float(b[r * N + n]), acc);
		y[n] = acc;
	}
}

TARGET_AVX512 static void
gemv512_bf16_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	float	   *y = c->C;
	float		yd[GEMV_CHUNK] __attribute__((aligned(64)));
	int64_t		n32 = s0 + ((s1 - s0) & ~(int64_t) 31);
	/* lanes 0-15 of the result from (even, odd): even[0], odd[0], even[1], ... */
	const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
	const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
	int64_t		k,
				n;

	for (k = 0; k + 8 <= c->K; k += 8)
		plain_rows512(c, yd, s0, s1, k, 8);
	if (k < c->K)
		plain_rows512(c, yd, s0, s1, k, (int) (c->K - k));
	/* in order: yd[32g + i] is y[s0 + 32g + 2i], yd[32g + 16 + i] y[s0 + 32g + 2i + 1] */
	for (n = s0; n < n32; n += 32)
	{
		__m512		even = _mm512_load_ps(yd + (n - s0));
		__m512		odd = _mm512_load_ps(yd + (n - s0) + 16);

		_mm512_storeu_ps(y + n, _mm512_permutex2var_ps(even, first, odd));
		_mm512_storeu_ps(y + n + 16, _mm512_permutex2var_ps(even, second, odd));
	}
}

/*
 * transB: y[n0:n1] = B[n0:n1, :] @ a (the lm_head), 4 rows at a time as
 * gemv512_transb, each row's 32 bf16 at k widened 16 at a time by
 * zero-extending loads (so a is loaded as it is).  Two accumulators per row
 * (k .. k+15 and k+16 .. k+31): 8 independent FMA chains.  The next group's
 * 4 rows (the 4K bf16 right after this group's) are prefetched, 4 lines
 * per step of 32.
 *
 * Its own order, like the AVX2 loop's: fp32 arithmetic over the widened B,
 * checked against float64, bit-identical at any thread count (a row's
 * operations do not depend on the split).  The sum of a row: its two
 * accumulators added, the 16-lane sum (_mm512_reduce_add_ps), then the last
 * K % 16 products in k order (K % 32 >= 16 first adds one 16-wide step to
 * the first accumulator).
 */
TARGET_AVX512 static void
gemv512_bf16_transb(const mm_ctx *c, int64_t n0, int64_t n1)
{
	const float *a = c->A;
	int64_t		K = c->K;
	int64_t		k32 = K & ~(int64_t) 31;
	int64_t		k16 = K & ~(int64_t) 15;
	int64_t		n,
				k;

	for (n = n0; n < n1; n += 4)
	{
		int			rows = (int) MIN(4, n1 - n);
		const llm_bf16 *b[4];
		__m512		lo[4],
					hi[4];
		int			r;

		for (r = 0; r < 4; r++)
		{
			/* a short group repeats its last row and stores only `rows` */
			b[r] = c->B16 + (n + MIN(r, rows - 1)) * K;
			lo[r] = _mm512_setzero_ps();
			hi[r] = _mm512_setzero_ps();
		}
		for (k = 0; k < k32; k += 32)
		{
			const llm_bf16 *next = c->B16 + (n + 4) * K + 4 * k;
			__m512		a0 = _mm512_loadu_ps(a + k),
						a1 = _mm512_loadu_ps(a + k + 16);

			/* past the matrix's end too: a prefetch never faults */
#pragma GCC unroll 4
			for (r = 0; r < 4; r++)
				_mm_prefetch((const char *) (next + 32 * r), _MM_HINT_T0);
#pragma GCC unroll 4
			for (r = 0; r < 4; r++)
			{
				lo[r] = _mm512_fmadd_ps(a0, load16_bf16(b[r] + k), lo[r]);
				hi[r] = _mm512_fmadd_ps(a1, load16_bf16(b[r] + k + 16), hi[r]);
			}
		}
		if (k < k16)
		{
			__m512		ak = _mm512_loadu_ps(a + k);

			for (r = 0; r < 4; r++)
				lo[r] = _mm512_fmadd_ps(ak, load16_bf16(b[r] + k), lo[r]);
		}
		for (r = 0; r < rows; r++)
		{
			float		s = _mm512_reduce_add_ps(_mm512_add_ps(lo[r], hi[r]));

			for (k = k16; k < K; k++)
				s = __builtin_fmaf(a[k], llm_bf16_to_float(b[r][k]), s);
			if (c->accumulate)
				s += c->C[n + r];
			c->C[n + r] = c->bias ? s + c->bias[n + r] : s;
		}
	}
}

TARGET_AVX512 void
gemv512_bf16_task(void *arg, int64_t n0, int64_t n1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		s,
				n;

	if (c->transB)
	{
		gemv512_bf16_transb(c, n0, n1);
		return;
	}
	for (s = n0; s < n1; s += GEMV_CHUNK)
		gemv512_bf16_plain_chunk(c, s, MIN(n1, s + GEMV_CHUNK));
	if (c->bias)
		for (n = n0; n < n1; n++)
			c->C[n] += c->bias[n];
}

#endif							/* LLM_X86 */

#if LLM_NEON

/*
 * y[s0:s1] = a @ B[:, s0:s1] for plain B: gemv_neon_plain_chunk's loops,
 * per column the same FMA chain down k, rows k .. k+rows-1 (rows <= 8;
 * inlined with rows = 8 for all but the last group).
 */
static inline __attribute__((always_inline)) void
neon_plain_rows(const mm_ctx *c, int64_t s0, int64_t s1, int64_t k, const int rows)
{
	const float *a = c->A;
	int64_t		N = c->N;
	float	   *y = c->C;
	const llm_bf16 *b = c->B16 + k * N;
	int64_t		nfull = s0 + ((s1 - s0) & ~(int64_t) 3);
	int			start = k == 0;	/* the sums start from 0 (bf16 never accumulates) */
	int64_t		n;
	int			r;

	for (n = s0; n < nfull; n += 4)
	{
		float32x4_t acc = start ? vdupq_n_f32(0.0f) : vld1q_f32(y + n);

#pragma GCC unroll 8
		for (r = 0; r < rows; r++)
			acc = vfmaq_n_f32(acc, load4_bf16(b + r * N + n), a[k + r]);
		vst1q_f32(y + n, acc);
	}
	for (; n < s1; n++)
	{
		float		acc = start ? 0.0f : y[n];

		for (r = 0; r < rows; r++)
			acc = __builtin_fmaf(a[k + r], llm_bf16_to_float(b[r * N + n]), acc);
		y[n] = acc;
	}
}

static void
gemv_neon_bf16_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	int64_t		k;

	for (k = 0; k + 8 <= c->K; k += 8)
		neon_plain_rows(c, s0, s1, k, 8);
	if (k < c->K)
		neon_plain_rows(c, s0, s1, k, (int) (c->K - k));
}

void
gemv_neon_bf16_task(void *arg, int64_t n0, int64_t n1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		s,
				n;

	if (c->transB)
	{
		gemv_neon_task(arg, n0, n1);	/* gemv.c's transposed GEMV reads B16 too */
		return;
	}
	for (s = n0; s < n1; s += GEMV_CHUNK)
		gemv_neon_bf16_plain_chunk(c, s, MIN(n1, s + GEMV_CHUNK));
	if (c->bias)
		for (n = n0; n < n1; n++)
			c->C[n] += c->bias[n];
}

#endif							/* LLM_NEON */
