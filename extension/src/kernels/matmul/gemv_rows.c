/*
 * gemv_rows.c -- llm_matmul_rows: M rows times one weight matrix, one pass
 * over the matrix, each row bit-identical to llm_matmul of that row alone.
 *
 * This is the kernel of decode batching (generate/batch.c): the rows are
 * the next-token steps of M learners, and a learner's tokens must not
 * depend on who else is generating.  So every row is reduced in exactly
 * the order of the single-row GEMV (gemv.c), whatever M and the threads:
 *
 *   plain B [K,N]:  y[n] = fma(a[K-1], B[K-1,n], ... fma(a[0], B[0,n], 0)),
 *                   one chain in increasing k, then + bias[n];
 *   transB [N,K]:   AVX2: an 8-lane chain of fma over k in steps of 8,
 *                   hsum_avx2, the ragged k in scalar fma, then + bias[n];
 *                   AVX-512: a 16-lane chain over k in steps of 16, the
 *                   ragged k in one masked step, _mm512_reduce_add_ps,
 *                   then + bias[n].
 *
 * An FMA rounds once, so a chain gives the same bits in a vector lane or
 * in __builtin_fmaf, and however the loops around it are ordered.  Only
 * the loop order changes, and that is where the speed is: one row's GEMV
 * does one FMA per weight it loads (memory-bound), but with M rows each
 * weight can feed M FMAs, and the product becomes compute-bound -- if the
 * rows' accumulators live in registers.  So both paths work in register
 * tiles, as GEMM's micro-kernel does, without changing any chain:
 *
 *   plain B:  6 rows x 16 columns of y in 12 ymm registers, over a k-block
 *             of 64 (each k: 2 loads of B, 6 broadcasts of a, 12 FMAs);
 *             y is loaded and stored once per k-block, and the block of B
 *             (64 x 64 floats) stays in L1 while every row group passes;
 *   transB:   4 rows of A x 3 rows of B, 12 ymm chains over k (each step
 *             of 8: 3 loads of B, 4 of a, 12 FMAs), finished one by one.
 *
 * Rows are cut into groups of balanced sizes (8 rows: 4 + 4): a tile of
 * one or two rows has too few independent chains to hide the FMA latency.
 * Measured at GPT-2 small's shapes (1 thread, one decode step's products
 * over 12 distinct layers and the lm_head, weights in 4 KB pages, CPU
 * time): 8 rows 92 -> 55 ms, 30 rows 168 -> 115 ms (the old loops loaded
 * and stored y for every 4 values of k).
 *
 * AVX-512 works the same way with 16-float vectors and its 32 registers:
 * plain B in tiles of 8 rows x 32 columns (16 zmm), transB in tiles of 8
 * rows of A x 3 rows of B (24 zmm); a group of 8 learners is one tile high.
 * Measured at the same shapes (one decode step, 1 thread, CPU time, load
 * 4-5, an AMD EPYC with AVX-512): 8 rows 88 -> 48 ms, 30 rows 373 -> 92 ms
 * against the single-row GEMV once per row (AVX2's tiles: 52 and 115 ms).
 *
 * The scalar ISA's matmul already computes each row on its own (reference.c).
 */
#include "matmul_internal.h"

#if LLM_X86

/*
 * Plain B: register tiles of up to ROWS_RT rows x 16 columns (12 ymm
 * accumulators, as the GEMM micro-kernel's 6 x 16), each loaded from y once
 * per k-block of ROWS_KC values of k and stored once after it, so that
 * every load of B feeds ROWS_RT rows' FMAs from registers.  A task walks its
 * columns in strips of ROWS_SW; for each k-block of a strip, the block of B
 * (ROWS_KC x ROWS_SW floats, 16 KB) is read from memory once and stays in
 * L1 while every row group of A passes over it; the first row group
 * prefetches the next block.  (KC 16-64 x SW 64-512 measured alike within
 * the noise of a shared machine; the -D overrides are for such tuning.)
 */
#ifndef ROWS_TASKS
#define ROWS_TASKS 4			/* tasks per thread (see llm_matmul_rows) */
#endif
#define ROWS_RT 6				/* rows of a register tile (plain_tiles' cases) */
#ifndef ROWS_KC
#define ROWS_KC 64				/* k values per block */
#endif
#ifndef ROWS_SW
#define ROWS_SW 64				/* columns per strip (a multiple of 16) */
#endif

/* The problem (A, C unused: the rows are a[m], c[m]) and the rows. */
typedef struct
{
	mm_ctx		mm;
	const float *const *a;
	float	   *const *c;
} rows_ctx;

/*
 * Rows [m0, m0 + R) x columns [n, n + 16), k in [k0, k1): each output
 * element continues its one FMA chain in increasing k, from 0 at k = 0 --
 * the chain of gemv256_plain_chunk.  pf walks the lines of B to prefetch,
 * one a k (NULL: none).  R is a constant where it is inlined (1..ROWS_RT).
 */
TARGET_AVX2 static inline __attribute__((always_inline)) void
plain_tile(const rows_ctx *rc, const int R, int64_t m0, int64_t n, int64_t k0, int64_t k1,
		   const float *pf)
{
	int64_t		N = rc->mm.N;
	const float *b = rc->mm.B + k0 * N + n;
	const float *a[ROWS_RT];
	__m256		acc0[ROWS_RT],
				acc1[ROWS_RT];
	int			r;

#pragma GCC unroll 8
	for (r = 0; r < R; r++)
	{
		float	   *y = rc->c[m0 + r] + n;

		a[r] = rc->a[m0 + r];
		acc0[r] = k0 ? _mm256_loadu_ps(y) : _mm256_setzero_ps();
		acc1[r] = k0 ? _mm256_loadu_ps(y + 8) : _mm256_setzero_ps();
	}
	for (int64_t k = k0; k < k1; k++, b += N)
	{
		__m256		b0 = _mm256_loadu_ps(b),
					b1 = _mm256_loadu_ps(b + 8);

		if (pf)
		{
			_mm_prefetch((const char *) pf, _MM_HINT_T0);
			pf += N;
		}
#pragma GCC unroll 8
	for (r = 0; r < R; r++)
		{
			__m256		ar = _mm256_broadcast_ss(a[r] + k);

			acc0[r] = _mm256_fmadd_ps(ar, b0, acc0[r]);
			acc1[r] = _mm256_fmadd_ps(ar, b1, acc1[r]);
		}
	}
#pragma GCC unroll 8
	for (r = 0; r < R; r++)
	{
		float	   *y = rc->c[m0 + r] + n;

		_mm256_storeu_ps(y, acc0[r]);
		_mm256_storeu_ps(y + 8, acc1[r]);
	}
}

/*
 * The first row of group g when M rows are cut into `groups` groups of
 * balanced sizes (8 rows: 4 + 4, not 6 + 2: a tile of few rows has too
 * few independent FMA chains to keep the FMA units busy).
 */
static inline int64_t
row_group_start(int64_t M, int groups, int g)
{
	return M * g / groups;
}

/* plain_tile with R a constant, so that its loops over rows unroll */
TARGET_AVX2 static void
plain_tiles(const rows_ctx *rc, int R, int64_t m0, int64_t n, int64_t k0, int64_t k1,
			const float *pf)
{
	switch (R)
	{
		case 1: plain_tile(rc, 1, m0, n, k0, k1, pf); break;
		case 2: plain_tile(rc, 2, m0, n, k0, k1, pf); break;
		case 3: plain_tile(rc, 3, m0, n, k0, k1, pf); break;
		case 4: plain_tile(rc, 4, m0, n, k0, k1, pf); break;
		case 5: plain_tile(rc, 5, m0, n, k0, k1, pf); break;
		default: plain_tile(rc, ROWS_RT, m0, n, k0, k1, pf); break;
	}
}

/* Columns [s0, s1) of every row, plain B, k in [k0, k1); pf0: B's next block. */
TARGET_AVX2 static void
rows256_plain_block(const rows_ctx *rc, int64_t s0, int64_t s1, int64_t k0, int64_t k1,
					const float *pf0)
{
	int64_t		M = rc->mm.M,
				N = rc->mm.N;
	int64_t		nfull = s0 + ((s1 - s0) & ~(int64_t) 15);
	int			groups = (int) ceil_div(M, ROWS_RT);

	for (int g = 0; g < groups; g++)
	{
		int64_t		m0 = row_group_start(M, groups, g);
		int			R = (int) (row_group_start(M, groups, g + 1) - m0);

		/* the first row group prefetches the next block, a line per 16 columns */
		for (int64_t n = s0; n < nfull; n += 16)
			plain_tiles(rc, R, m0, n, k0, k1, m0 == 0 ? pf0 + (n - s0) : NULL);
		/* ragged columns: the same chains in scalar FMAs */
		for (int64_t n = nfull; n < s1; n++)
			for (int r = 0; r < R; r++)
			{
				const float *a = rc->a[m0 + r];
				float	   *y = rc->c[m0 + r] + n;
				float		acc = k0 ? *y : 0.0f;

				for (int64_t k = k0; k < k1; k++)
					acc = __builtin_fmaf(a[k], rc->mm.B[k * N + n], acc);
				*y = acc;
			}
	}
}

/*
 * transB: register tiles of up to ROWS_TR rows of A x ROWS_TN rows of B (12
 * ymm accumulators, 3 for B, 1 for A: all 16), each accumulator the 8-lane
 * chain over k of gemv256_transb's dot product, finished as it finishes it:
 * hsum_avx2, the ragged k in scalar FMAs, + bias.  A load of B feeds ROWS_TR
 * rows, a load of A ROWS_TN columns.
 */
#define ROWS_TR 4
#define ROWS_TN 3

/* Rows [m0, m0 + R) x output columns [n, n + nb) (nb <= ROWS_TN); R a constant where inlined. */
TARGET_AVX2 static inline __attribute__((always_inline)) void
transb_tile(const rows_ctx *rc, const int R, int64_t m0, int64_t n, int nb)
{
	int64_t		K = rc->mm.K,
				kfull = K & ~(int64_t) 7;
	const float *b[ROWS_TN],
			   *a[ROWS_TR];
	__m256		acc[ROWS_TR][ROWS_TN];
	int			r,
				j;

	/* a short tile repeats its last row of B and stores only nb */
	for (j = 0; j < ROWS_TN; j++)
		b[j] = rc->mm.B + (n + MIN(j, nb - 1)) * K;
#pragma GCC unroll 8
	for (r = 0; r < R; r++)
	{
		a[r] = rc->a[m0 + r];
		for (j = 0; j < ROWS_TN; j++)
			acc[r][j] = _mm256_setzero_ps();
	}
	for (int64_t k = 0; k < kfull; k += 8)
	{
		__m256		bk[ROWS_TN];

#pragma GCC unroll 4
		for (j = 0; j < ROWS_TN; j++)
			bk[j] = _mm256_loadu_ps(b[j] + k);
#pragma GCC unroll 8
		for (r = 0; r < R; r++)
		{
			__m256		ak = _mm256_loadu_ps(a[r] + k);

#pragma GCC unroll 4
			for (j = 0; j < ROWS_TN; j++)
				acc[r][j] = _mm256_fmadd_ps(ak, bk[j], acc[r][j]);
		}
	}

	/*
	 * Both loops unrolled, j up to the constant ROWS_TN with nb tested
	 * inside: acc[r][j] indexed by a variable j (j < nb) would make GCC keep
	 * the accumulators in memory, spilling them on every step of the k loop.
	 */
#pragma GCC unroll 8
	for (r = 0; r < R; r++)
#pragma GCC unroll 4
		for (j = 0; j < ROWS_TN; j++)
			if (j < nb)
			{
				float		s = hsum_avx2(acc[r][j]);

				for (int64_t k = kfull; k < K; k++)
					s = __builtin_fmaf(a[r][k], b[j][k], s);
				rc->c[m0 + r][n + j] = rc->mm.bias ? s + rc->mm.bias[n + j] : s;
			}
}

/* Output columns [n0, n1) of every row, transB: dot products with rows of B. */
TARGET_AVX2 static void
rows256_transb(const rows_ctx *rc, int64_t n0, int64_t n1)
{
	int64_t		M = rc->mm.M;
	int			groups = (int) ceil_div(M, ROWS_TR);

	/* ROWS_TN rows of B (in L1) against every row group of A */
	for (int64_t n = n0; n < n1; n += ROWS_TN)
	{
		int			nb = (int) MIN(ROWS_TN, n1 - n);

		for (int g = 0; g < groups; g++)
		{
			int64_t		m0 = row_group_start(M, groups, g);

			switch (row_group_start(M, groups, g + 1) - m0)
			{
				case 1: transb_tile(rc, 1, m0, n, nb); break;
				case 2: transb_tile(rc, 2, m0, n, nb); break;
				case 3: transb_tile(rc, 3, m0, n, nb); break;
				default: transb_tile(rc, ROWS_TR, m0, n, nb); break;
			}
		}
	}
}

/*
 * One column task, the same for every ISA: transB goes to the ISA's dot
 * products; plain B walks strips of ROWS_SW columns, each k-block by k-block
 * (so each row's sums run down k in order, as the single-row GEMV's do), and
 * the bias is added last, as llm_matmul adds it.
 */
typedef void (*rows_transb_fn) (const rows_ctx *rc, int64_t n0, int64_t n1);
typedef void (*rows_block_fn) (const rows_ctx *rc, int64_t s0, int64_t s1,
							   int64_t k0, int64_t k1, const float *pf0);

static void
rows_columns(const rows_ctx *rc, int64_t n0, int64_t n1,
			 rows_transb_fn transb, rows_block_fn plain_block)
{
	const mm_ctx *c = &rc->mm;
	int64_t		K = c->K,
				s,
				n,
				m;

	if (c->transB)
	{
		transb(rc, n0, n1);
		return;
	}
	for (s = n0; s < n1; s += ROWS_SW)
	{
		int64_t		s1 = MIN(n1, s + ROWS_SW);

		for (int64_t k0 = 0; k0 < K; k0 += ROWS_KC)
		{
			int64_t		k1 = MIN(K, k0 + ROWS_KC);
			/*
			 * the next block: this strip's next k-block, or the next strip's
			 * first (a prefetch past the end of B is harmless: it never faults)
			 */
			const float *pf = k1 < K ? c->B + k1 * c->N + s : c->B + s1;

			plain_block(rc, s, s1, k0, k1, pf);
		}
	}
	if (c->bias)
		for (m = 0; m < c->M; m++)
			for (n = n0; n < n1; n++)
				rc->c[m][n] += c->bias[n];
}

static void
rows256_task(void *arg, int64_t n0, int64_t n1)
{
	rows_columns((const rows_ctx *) arg, n0, n1, rows256_transb, rows256_plain_block);
}

/* ---- AVX-512: the same design with 16-float vectors and 32 registers ---- */

/*
 * Plain B: tiles of up to ROWS512_RT rows x 32 columns (16 zmm accumulators,
 * 2 for B, 1 for the broadcast of a), over the same k-blocks and strips as
 * AVX2.  Each lane continues the chain of gemv512_plain_chunk (one FMA chain
 * per column in increasing k, from 0 at k = 0), so a tile may be cut
 * anywhere; columns past the strip's end are masked off (never loaded or
 * stored), which is also how the single-row GEMV does its tail.
 */
#define ROWS512_RT 8

/* Rows [m0, m0 + R) x columns [n, n + 32) masked by lo, hi; k in [k0, k1). */
TARGET_AVX512 static inline __attribute__((always_inline)) void
plain_tile512(const rows_ctx *rc, const int R, int64_t m0, int64_t n, __mmask16 lo,
			  __mmask16 hi, int64_t k0, int64_t k1, const float *pf)
{
	int64_t		N = rc->mm.N;
	const float *b = rc->mm.B + k0 * N + n;
	const float *a[ROWS512_RT];
	__m512		acc0[ROWS512_RT],
				acc1[ROWS512_RT];
	int			r;

#pragma GCC unroll 8
	for (r = 0; r < R; r++)
	{
		float	   *y = rc->c[m0 + r] + n;

		a[r] = rc->a[m0 + r];
		acc0[r] = k0 ? _mm512_maskz_loadu_ps(lo, y) : _mm512_setzero_ps();
		acc1[r] = k0 ? _mm512_maskz_loadu_ps(hi, y + 16) : _mm512_setzero_ps();
	}
	for (int64_t k = k0; k < k1; k++, b += N)
	{
		__m512		b0 = _mm512_maskz_loadu_ps(lo, b),
					b1 = _mm512_maskz_loadu_ps(hi, b + 16);

		if (pf)
		{
			/* the next block's two lines of these 32 columns */
			_mm_prefetch((const char *) pf, _MM_HINT_T0);
			_mm_prefetch((const char *) (pf + 16), _MM_HINT_T0);
			pf += N;
		}
#pragma GCC unroll 8
		for (r = 0; r < R; r++)
		{
			__m512		ar = _mm512_set1_ps(a[r][k]);

			acc0[r] = _mm512_fmadd_ps(ar, b0, acc0[r]);
			acc1[r] = _mm512_fmadd_ps(ar, b1, acc1[r]);
		}
	}
#pragma GCC unroll 8
	for (r = 0; r < R; r++)
	{
		float	   *y = rc->c[m0 + r] + n;

		_mm512_mask_storeu_ps(y, lo, acc0[r]);
		_mm512_mask_storeu_ps(y + 16, hi, acc1[r]);
	}
}

/* plain_tile512 with R a constant, so that its loops over rows unroll */
TARGET_AVX512 static void
plain_tiles512(const rows_ctx *rc, int R, int64_t m0, int64_t n, __mmask16 lo, __mmask16 hi,
			   int64_t k0, int64_t k1, const float *pf)
{
	switch (R)
	{
		case 1: plain_tile512(rc, 1, m0, n, lo, hi, k0, k1, pf); break;
		case 2: plain_tile512(rc, 2, m0, n, lo, hi, k0, k1, pf); break;
		case 3: plain_tile512(rc, 3, m0, n, lo, hi, k0, k1, pf); break;
		case 4: plain_tile512(rc, 4, m0, n, lo, hi, k0, k1, pf); break;
		case 5: plain_tile512(rc, 5, m0, n, lo, hi, k0, k1, pf); break;
		case 6: plain_tile512(rc, 6, m0, n, lo, hi, k0, k1, pf); break;
		case 7: plain_tile512(rc, 7, m0, n, lo, hi, k0, k1, pf); break;
		default: plain_tile512(rc, ROWS512_RT, m0, n, lo, hi, k0, k1, pf); break;
	}
}

/* Columns [s0, s1) of every row, plain B, k in [k0, k1); pf0: B's next block. */
TARGET_AVX512 static void
rows512_plain_block(const rows_ctx *rc, int64_t s0, int64_t s1, int64_t k0, int64_t k1,
					const float *pf0)
{
	int64_t		M = rc->mm.M;
	int			groups = (int) ceil_div(M, ROWS512_RT);

	for (int g = 0; g < groups; g++)
	{
		int64_t		m0 = row_group_start(M, groups, g);
		int			R = (int) (row_group_start(M, groups, g + 1) - m0);

		/* the first row group prefetches the next block */
		for (int64_t n = s0; n < s1; n += 32)
			plain_tiles512(rc, R, m0, n, mask16(s1 - n), mask16(s1 - n - 16), k0, k1,
						   m0 == 0 ? pf0 + (n - s0) : NULL);
	}
}

/*
 * transB: tiles of up to ROWS512_TR rows of A x ROWS512_TN rows of B (24 zmm
 * accumulators, 3 for B, 1 for A), each accumulator the 16-lane chain over
 * k of gemv512_transb's dot product, its ragged k in one masked step (lanes
 * past K add fma(0, 0, .)), finished as it finishes it:
 * _mm512_reduce_add_ps, + bias.
 */
#define ROWS512_TR 8
#define ROWS512_TN 3

/* Rows [m0, m0 + R) x output columns [n, n + nb) (nb <= ROWS512_TN); R a constant where inlined. */
TARGET_AVX512 static inline __attribute__((always_inline)) void
transb_tile512(const rows_ctx *rc, const int R, int64_t m0, int64_t n, int nb)
{
	int64_t		K = rc->mm.K,
				kfull = K & ~(int64_t) 15,
				k;
	__mmask16	tail = mask16(K - kfull);
	const float *b[ROWS512_TN],
			   *a[ROWS512_TR];
	__m512		acc[ROWS512_TR][ROWS512_TN];
	int			r,
				j;

	/* a short tile repeats its last row of B and stores only nb */
	for (j = 0; j < ROWS512_TN; j++)
		b[j] = rc->mm.B + (n + MIN(j, nb - 1)) * K;
#pragma GCC unroll 8
	for (r = 0; r < R; r++)
	{
		a[r] = rc->a[m0 + r];
		for (j = 0; j < ROWS512_TN; j++)
			acc[r][j] = _mm512_setzero_ps();
	}
	for (k = 0; k < kfull; k += 16)
	{
		__m512		bk[ROWS512_TN];

		for (j = 0; j < ROWS512_TN; j++)
			bk[j] = _mm512_loadu_ps(b[j] + k);
#pragma GCC unroll 8
		for (r = 0; r < R; r++)
		{
			__m512		ak = _mm512_loadu_ps(a[r] + k);

#pragma GCC unroll 4
			for (j = 0; j < ROWS512_TN; j++)
				acc[r][j] = _mm512_fmadd_ps(ak, bk[j], acc[r][j]);
		}
	}
	if (tail)
	{
		__m512		bk[ROWS512_TN];

		for (j = 0; j < ROWS512_TN; j++)
			bk[j] = _mm512_maskz_loadu_ps(tail, b[j] + k);
#pragma GCC unroll 8
		for (r = 0; r < R; r++)
		{
			__m512		ak = _mm512_maskz_loadu_ps(tail, a[r] + k);

#pragma GCC unroll 4
			for (j = 0; j < ROWS512_TN; j++)
				acc[r][j] = _mm512_fmadd_ps(ak, bk[j], acc[r][j]);
		}
	}
#pragma GCC unroll 8
	for (r = 0; r < R; r++)
#pragma GCC unroll 4
		for (j = 0; j < ROWS512_TN; j++)
			if (j < nb)
			{
				float		s = _mm512_reduce_add_ps(acc[r][j]);

				rc->c[m0 + r][n + j] = rc->mm.bias ? s + rc->mm.bias[n + j] : s;
			}
}

/* Output columns [n0, n1) of every row, transB: dot products with rows of B. */
TARGET_AVX512 static void
rows512_transb(const rows_ctx *rc, int64_t n0, int64_t n1)
{
	int64_t		M = rc->mm.M;
	int			groups = (int) ceil_div(M, ROWS512_TR);

	/* ROWS512_TN rows of B (in L1) against every row group of A */
	for (int64_t n = n0; n < n1; n += ROWS512_TN)
	{
		int			nb = (int) MIN(ROWS512_TN, n1 - n);

		for (int g = 0; g < groups; g++)
		{
			int64_t		m0 = row_group_start(M, groups, g);

			switch (row_group_start(M, groups, g + 1) - m0)
			{
				case 1: transb_tile512(rc, 1, m0, n, nb); break;
				case 2: transb_tile512(rc, 2, m0, n, nb); break;
				case 3: transb_tile512(rc, 3, m0, n, nb); break;
				case 4: transb_tile512(rc, 4, m0, n, nb); break;
				case 5: transb_tile512(rc, 5, m0, n, nb); break;
				case 6: transb_tile512(rc, 6, m0, n, nb); break;
				case 7: transb_tile512(rc, 7, m0, n, nb); break;
				default: transb_tile512(rc, ROWS512_TR, m0, n, nb); break;
			}
		}
	}
}

static void
rows512_task(void *arg, int64_t n0, int64_t n1)
{
	rows_columns((const rows_ctx *) arg, n0, n1, rows512_transb, rows512_plain_block);
}

#endif							/* LLM_X86 */

int
llm_matmul_rows(const float *const *A, const float *B, const float *bias, float *const *C,
				int64_t M, int64_t K, int64_t N, int transB)
{
#if LLM_X86
	const matmul_kernels *kernels = llm_kernels->matmul;

	if (M > 1 && kernels->gemv != NULL)
	{
		rows_ctx	rc = {
			.mm = {.B = B, .bias = bias, .M = M, .K = K, .N = N, .transB = transB != 0,
			.kernels = kernels},
			.a = A, .c = C,
		};

		/*
		 * Tasks over columns (no effect on the bits), ROWS_TASKS per thread:
		 * unlike one row's GEMV, many rows are compute-bound, and a thread the
		 * OS holds up (a busy machine) then delays the step by a fraction of
		 * its share instead of all of it, the other threads taking the rest.
		 */
		int64_t		grain = ceil_div(N, ROWS_TASKS * llm_pool_threads());

		grain = MIN(grain, MAX(1, (4 << 20) / ((int64_t) sizeof(float) * K)));
		grain = MAX(grain, ceil_div((int64_t) 1 << 15, K * M));
		grain = round_up(grain, 16);
		return llm_parallel_for(N, grain, rc.mm.kernels->gemv == gemv256_task ? rows256_task
								: rows512_task, &rc);
	}
#endif
	/* one row, or the scalar reference (which computes each row on its own): llm_matmul */
	for (int64_t m = 0; m < M; m++)
	{
		int			status = llm_matmul(A[m], B, bias, C[m], 1, K, N, 0, transB);

		if (status != LLM_OK)
			return status;
	}
	return LLM_OK;
}
