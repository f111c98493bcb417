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
 *   transB [N,K]:   an 8-lane (AVX2) chain of fma over k in steps of 8,
 *                   hsum_avx2, the ragged k in scalar fma, then + bias[n].
 *
 * An FMA rounds once, so a chain gives the same bits in a vector lane or
 * in __builtin_fmaf, and however the loops around it are ordered.  Only
 * the loop order changes: here B is loaded once per group of k rows (plain)
 * or kept in L1 (transB) while every row of A uses it.
 *
 * The scalar ISA's matmul already computes each row on its own (reference.c);
 * AVX-512 runs its single-row GEMV once per row -- the same bits, but not
 * one pass over B (a multi-row AVX-512 kernel is left to a machine that can
 * test it).
 */
#include "matmul_internal.h"

#if LLM_X86

#define ROWS_Y_FLOATS 8192		/* y of all rows kept in L1: 32 KB */

/* The problem (A, C unused: the rows are a[m], c[m]) and the rows. */
typedef struct
{
	mm_ctx		mm;
	const float *const *a;
	float	   *const *c;
} rows_ctx;

/* Columns [s0, s1) of every row, plain B. */
TARGET_AVX2 static void
rows256_plain_chunk(const rows_ctx *rc, int64_t s0, int64_t s1)
{
	const mm_ctx *c = &rc->mm;
	int64_t		K = c->K,
				N = c->N,
				M = c->M;
	int64_t		k = 0,
				n,
				m;
	int			r;

	/* groups of 4 rows of B, 16 columns (8 registers of B) at a time */
	for (; k + 4 <= K; k += 4)
	{
		const float *b = c->B + k * N;

		for (n = s0; n + 16 <= s1; n += 16)
		{
			__m256		b0[4],
						b1[4];

			for (r = 0; r < 4; r++)
			{
				b0[r] = _mm256_loadu_ps(b + r * N + n);
				b1[r] = _mm256_loadu_ps(b + r * N + n + 8);
			}
			for (m = 0; m < M; m++)
			{
				const float *a = rc->a[m] + k;
				float	   *y = rc->c[m] + n;
				__m256		acc0 = k ? _mm256_loadu_ps(y) : _mm256_setzero_ps();
				__m256		acc1 = k ? _mm256_loadu_ps(y + 8) : _mm256_setzero_ps();

#pragma GCC unroll 4
				for (r = 0; r < 4; r++)
				{
					__m256		ar = _mm256_broadcast_ss(a + r);

					acc0 = _mm256_fmadd_ps(ar, b0[r], acc0);
					acc1 = _mm256_fmadd_ps(ar, b1[r], acc1);
				}
				_mm256_storeu_ps(y, acc0);
				_mm256_storeu_ps(y + 8, acc1);
			}
		}
		/* ragged columns: the same chains in scalar FMAs */
		for (; n < s1; n++)
			for (m = 0; m < M; m++)
			{
				const float *a = rc->a[m] + k;
				float	   *y = rc->c[m] + n;
				float		acc = k ? *y : 0.0f;

				for (r = 0; r < 4; r++)
					acc = __builtin_fmaf(a[r], b[r * N + n], acc);
				*y = acc;
			}
	}
	/* remaining rows of B one at a time */
	for (; k < K; k++)
	{
		const float *b = c->B + k * N;

		for (m = 0; m < M; m++)
		{
			float		a = rc->a[m][k];
			float	   *y = rc->c[m];

			for (n = s0; n < s1; n++)
				y[n] = __builtin_fmaf(a, b[n], k ? y[n] : 0.0f);
		}
	}
}

/*
 * The dots of row a of A with 4 rows b of B, as gemv256_transb computes them:
 * an 8-lane chain over k, hsum_avx2, the ragged k in scalar FMAs, + bias.
 */
TARGET_AVX2 static inline void
dots_finish(const rows_ctx *rc, __m256 *acc, const float *a, const float *const *b,
			float *y, int64_t n, int rows)
{
	int64_t		K = rc->mm.K,
				kfull = K & ~(int64_t) 7;

	for (int r = 0; r < rows; r++)
	{
		float		s = hsum_avx2(acc[r]);

		for (int64_t k = kfull; k < K; k++)
			s = __builtin_fmaf(a[k], b[r][k], s);
		y[n + r] = rc->mm.bias ? s + rc->mm.bias[n + r] : s;
	}
}

/* Output columns [n0, n1) of every row, transB: dot products with rows of B. */
TARGET_AVX2 static void
rows256_transb(const rows_ctx *rc, int64_t n0, int64_t n1)
{
	const mm_ctx *c = &rc->mm;
	int64_t		K = c->K;
	int64_t		kfull = K & ~(int64_t) 7;
	int64_t		n,
				k,
				m;

	/* 4 rows of B (kept in L1) against the rows of A, two at a time */
	for (n = n0; n < n1; n += 4)
	{
		int			rows = (int) MIN(4, n1 - n);
		const float *b[4];
		int			r;

		for (r = 0; r < 4; r++)
			b[r] = c->B + (n + MIN(r, rows - 1)) * K;
		for (m = 0; m < c->M; m += 2)
		{
			/* an odd last row is computed twice, stored once */
			const float *a0 = rc->a[m],
					   *a1 = rc->a[MIN(m + 1, c->M - 1)];
			__m256		acc0[4],
						acc1[4];

			for (r = 0; r < 4; r++)
				acc0[r] = acc1[r] = _mm256_setzero_ps();
			for (k = 0; k < kfull; k += 8)
			{
				__m256		x0 = _mm256_loadu_ps(a0 + k),
							x1 = _mm256_loadu_ps(a1 + k);

#pragma GCC unroll 4
				for (r = 0; r < 4; r++)
				{
					__m256		br = _mm256_loadu_ps(b[r] + k);

					acc0[r] = _mm256_fmadd_ps(x0, br, acc0[r]);
					acc1[r] = _mm256_fmadd_ps(x1, br, acc1[r]);
				}
			}
			dots_finish(rc, acc0, a0, b, rc->c[m], n, rows);
			if (m + 1 < c->M)
				dots_finish(rc, acc1, a1, b, rc->c[m + 1], n, rows);
		}
	}
}

TARGET_AVX2 static void
rows256_task(void *arg, int64_t n0, int64_t n1)
{
	const rows_ctx *rc = (const rows_ctx *) arg;
	const mm_ctx *c = &rc->mm;
	int64_t		chunk = MAX(16, (ROWS_Y_FLOATS / c->M) & ~(int64_t) 15);
	int64_t		s,
				n,
				m;

	if (c->transB)
	{
		rows256_transb(rc, n0, n1);
		return;
	}
	for (s = n0; s < n1; s += chunk)
		rows256_plain_chunk(rc, s, MIN(n1, s + chunk));
	if (c->bias)
		for (m = 0; m < c->M; m++)
			for (n = n0; n < n1; n++)
				rc->c[m][n] += c->bias[n];
}

/* AVX-512: the single-row GEMV once per row (same bits, M passes over B). */
static void
rows512_task(void *arg, int64_t n0, int64_t n1)
{
	const rows_ctx *rc = (const rows_ctx *) arg;

	for (int64_t m = 0; m < rc->mm.M; m++)
	{
		mm_ctx		row = rc->mm;

		row.A = rc->a[m];
		row.C = rc->c[m];
		row.M = 1;
		gemv512_task(&row, n0, n1);
	}
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

		/* tasks over columns, as matmul_gemv splits them (no effect on the bits) */
		int64_t		grain = ceil_div(N, llm_pool_threads());

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
