/*
 * gemv.c -- llm_matmul when one side is a vector: M == 1 (and N == 1,
 * transposed by matmul_simd), AVX-512, AVX2 and NEON versions.
 *
 * Decoding one token is memory-bound: each weight is read once and used
 * for one FMA, so all that matters is streaming B at full bandwidth.
 *
 * Plain B [K,N]: y[n] = sum_k a[k] * B[k,n].  A task owns a contiguous
 * slab of columns.  It walks down B 8 rows at a time, and for each group
 * sweeps across the slab (in chunks of GEMV_CHUNK columns, so y stays in
 * L1) doing y[n] = fma(a[k+7], B[k+7,n], ... fma(a[k], B[k,n], y[n])).
 * 8 long contiguous row segments in flight keep the hardware prefetchers
 * busy; narrow column strips that walk down all K rows (strided) were
 * measured ~20% slower from L3.
 *
 * transB [N,K]: y[n] = dot(a, B[n,:]); rows of B are contiguous, so a task
 * streams its rows front to back, 4 rows at a time sharing each load of a,
 * and reduces each row's vector of partial sums in a fixed order.
 *
 * Task split.  Each output element is computed by the same sequence of
 * operations whichever task it falls in (per column: one FMA chain in k;
 * per row: one dot product), so -- unlike GEMM -- the task boundaries have
 * no effect on the bits and may follow the thread count: one contiguous
 * slab per thread (at most GEMV_SLAB bytes of B).  That gives each thread
 * the longest sequential streams, and the same slab on every call (as
 * OpenBLAS does), which lets a weight matrix of a few MB partly stay in
 * the threads' L2 caches between calls.
 */
#include "matmul_internal.h"

#define GEMV_CHUNK 2048			/* columns of y kept in L1 (8 KB) */
#define GEMV_SLAB (4 << 20)		/* at most this many bytes of B per task */

#if LLM_X86

/* y[s0:s1] = a @ B[:, s0:s1] for plain B, y in L1 (s1 - s0 <= GEMV_CHUNK) */
TARGET_AVX512 static void
gemv512_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	const float *a = c->A;
	int64_t		K = c->K,
				N = c->N;
	float	   *y = c->C;
	int64_t		nfull = s0 + ((s1 - s0) & ~(int64_t) 15);
	__mmask16	tail = mask16((s1 - s0) & 15);
	int			narrow = s1 - s0 <= 512;
	int			keep = c->accumulate;	/* C += ..., else C = ... */
	int64_t		k = 0,
				n;
	int			r;

	/* groups of 8 rows */
	for (; k + 8 <= K; k += 8)
	{
		const float *b = c->B + k * N;
		__m512		ak[8];

		for (r = 0; r < 8; r++)
			ak[r] = _mm512_set1_ps(a[k + r]);
		for (n = s0; n < nfull; n += 16)
		{
			__m512		acc = k || keep ? _mm512_loadu_ps(y + n) : _mm512_setzero_ps();

			if (narrow)
			{
				/* row runs too short for the L2 streamer: prefetch 2 groups ahead */
#pragma GCC unroll 8
				for (r = 0; r < 8; r++)
					_mm_prefetch((const char *) (b + (16 + r) * N + n), _MM_HINT_T1);
			}
#pragma GCC unroll 8
			for (r = 0; r < 8; r++)
				acc = _mm512_fmadd_ps(ak[r], _mm512_loadu_ps(b + r * N + n), acc);
			_mm512_storeu_ps(y + n, acc);
		}
		if (tail)
		{
			__m512		acc = k || keep ? _mm512_maskz_loadu_ps(tail, y + n) : _mm512_setzero_ps();

#pragma GCC unroll 8
			for (r = 0; r < 8; r++)
				acc = _mm512_fmadd_ps(ak[r], _mm512_maskz_loadu_ps(tail, b + r * N + n), acc);
			_mm512_mask_storeu_ps(y + n, tail, acc);
		}
	}
	/* remaining rows one at a time: same chain, same bits */
	for (; k < K; k++)
	{
		const float *b = c->B + k * N;
		__m512		ak = _mm512_set1_ps(a[k]);

		for (n = s0; n < nfull; n += 16)
		{
			__m512		acc = k || keep ? _mm512_loadu_ps(y + n) : _mm512_setzero_ps();

			_mm512_storeu_ps(y + n, _mm512_fmadd_ps(ak, _mm512_loadu_ps(b + n), acc));
		}
		if (tail)
		{
			__m512		acc = k || keep ? _mm512_maskz_loadu_ps(tail, y + n) : _mm512_setzero_ps();

			_mm512_mask_storeu_ps(y + n, tail,
								  _mm512_fmadd_ps(ak, _mm512_maskz_loadu_ps(tail, b + n), acc));
		}
	}
}

/* y[n0:n1] = B[n0:n1, :] @ a for transB */
TARGET_AVX512 static void
gemv512_transb(const mm_ctx *c, int64_t n0, int64_t n1)
{
	const float *a = c->A;
	int64_t		K = c->K;
	int64_t		kfull = K & ~(int64_t) 15;
	__mmask16	tail = mask16(K - kfull);
	int64_t		n,
				k;

	for (n = n0; n < n1; n += 4)
	{
		int			rows = (int) MIN(4, n1 - n);
		const float *b[4];
		__m512		acc[4];
		int			r;

		for (r = 0; r < 4; r++)
		{
			/* a short group repeats its last row and stores only `rows` */
			b[r] = c->B + (n + MIN(r, rows - 1)) * K;
			acc[r] = _mm512_setzero_ps();
		}
		for (k = 0; k < kfull; k += 16)
		{
			__m512		ak = _mm512_loadu_ps(a + k);

#pragma GCC unroll 4
			for (r = 0; r < 4; r++)
				acc[r] = _mm512_fmadd_ps(ak, _mm512_loadu_ps(b[r] + k), acc[r]);
		}
		if (tail)
		{
			__m512		ak = _mm512_maskz_loadu_ps(tail, a + k);

			for (r = 0; r < 4; r++)
				acc[r] = _mm512_fmadd_ps(ak, _mm512_maskz_loadu_ps(tail, b[r] + k), acc[r]);
		}
		for (r = 0; r < rows; r++)
		{
			float		s = _mm512_reduce_add_ps(acc[r]);

			if (c->accumulate)
				s += c->C[n + r];
			c->C[n + r] = c->bias ? s + c->bias[n + r] : s;
		}
	}
}

TARGET_AVX512 void
gemv512_task(void *arg, int64_t n0, int64_t n1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		s,
				n;

	if (c->transB)
	{
		gemv512_transb(c, n0, n1);
		return;
	}
	for (s = n0; s < n1; s += GEMV_CHUNK)
		gemv512_plain_chunk(c, s, MIN(n1, s + GEMV_CHUNK));
	if (c->bias)
		for (n = n0; n < n1; n++)
			c->C[n] += c->bias[n];
}

/* ---- AVX2 versions: the same loops with 8-float vectors ----------------- */

TARGET_AVX2 static void
gemv256_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	const float *a = c->A;
	int64_t		K = c->K,
				N = c->N;
	float	   *y = c->C;
	int64_t		nfull = s0 + ((s1 - s0) & ~(int64_t) 7);
	int			keep = c->accumulate;	/* C += ..., else C = ... */
	int64_t		k = 0,
				n;
	int			r;

	for (; k + 8 <= K; k += 8)
	{
		const float *b = c->B + k * N;
		__m256		ak[8];

		for (r = 0; r < 8; r++)
			ak[r] = _mm256_broadcast_ss(a + k + r);
		for (n = s0; n < nfull; n += 8)
		{
			__m256		acc = k || keep ? _mm256_loadu_ps(y + n) : _mm256_setzero_ps();

#pragma GCC unroll 8
			for (r = 0; r < 8; r++)
				acc = _mm256_fmadd_ps(ak[r], _mm256_loadu_ps(b + r * N + n), acc);
			_mm256_storeu_ps(y + n, acc);
		}
		/* ragged columns: the same chain in scalar FMAs */
		for (; n < s1; n++)
		{
			float		acc = k || keep ? y[n] : 0.0f;

			for (r = 0; r < 8; r++)
				acc = __builtin_fmaf(a[k + r], b[r * N + n], acc);
			y[n] = acc;
		}
	}
	for (; k < K; k++)
	{
		const float *b = c->B + k * N;
		__m256		ak = _mm256_broadcast_ss(a + k);

		for (n = s0; n < nfull; n += 8)
		{
			__m256		acc = k || keep ? _mm256_loadu_ps(y + n) : _mm256_setzero_ps();

			_mm256_storeu_ps(y + n, _mm256_fmadd_ps(ak, _mm256_loadu_ps(b + n), acc));
		}
		for (; n < s1; n++)
			y[n] = __builtin_fmaf(a[k], b[n], k || keep ? y[n] : 0.0f);
	}
}

TARGET_AVX2 static void
gemv256_transb(const mm_ctx *c, int64_t n0, int64_t n1)
{
	const float *a = c->A;
	int64_t		K = c->K;
	int64_t		kfull = K & ~(int64_t) 7;
	int64_t		n,
				k;

	for (n = n0; n < n1; n += 4)
	{
		int			rows = (int) MIN(4, n1 - n);
		const float *b[4];
		__m256		acc[4];
		int			r;

		for (r = 0; r < 4; r++)
		{
			b[r] = c->B + (n + MIN(r, rows - 1)) * K;
			acc[r] = _mm256_setzero_ps();
		}
		for (k = 0; k < kfull; k += 8)
		{
			__m256		ak = _mm256_loadu_ps(a + k);

#pragma GCC unroll 4
			for (r = 0; r < 4; r++)
				acc[r] = _mm256_fmadd_ps(ak, _mm256_loadu_ps(b[r] + k), acc[r]);
		}
		for (r = 0; r < rows; r++)
		{
			float		s = hsum_avx2(acc[r]);

			for (k = kfull; k < K; k++)
				s = __builtin_fmaf(a[k], b[r][k], s);
			if (c->accumulate)
				s += c->C[n + r];
			c->C[n + r] = c->bias ? s + c->bias[n + r] : s;
		}
	}
}

TARGET_AVX2 void
gemv256_task(void *arg, int64_t n0, int64_t n1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		s,
				n;

	if (c->transB)
	{
		gemv256_transb(c, n0, n1);
		return;
	}
	for (s = n0; s < n1; s += GEMV_CHUNK)
		gemv256_plain_chunk(c, s, MIN(n1, s + GEMV_CHUNK));
	if (c->bias)
		for (n = n0; n < n1; n++)
			c->C[n] += c->bias[n];
}

#endif							/* LLM_X86 */

#if LLM_NEON

/* ---- NEON versions: the AVX2 loops with 4-float vectors ----------------- */

static void
gemv_neon_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	const float *a = c->A;
	int64_t		K = c->K,
				N = c->N;
	float	   *y = c->C;
	int64_t		nfull = s0 + ((s1 - s0) & ~(int64_t) 3);
	int			keep = c->accumulate;	/* C += ..., else C = ... */
	int64_t		k = 0,
				n;
	int			r;

	for (; k + 8 <= K; k += 8)
	{
		const float *b = c->B + k * N;

		for (n = s0; n < nfull; n += 4)
		{
			float32x4_t acc = k || keep ? vld1q_f32(y + n) : vdupq_n_f32(0.0f);

#pragma GCC unroll 8
			for (r = 0; r < 8; r++)
				acc = vfmaq_n_f32(acc, vld1q_f32(b + r * N + n), a[k + r]);
			vst1q_f32(y + n, acc);
		}
		/* ragged columns: the same chain in scalar FMAs */
		for (; n < s1; n++)
		{
			float		acc = k || keep ? y[n] : 0.0f;

			for (r = 0; r < 8; r++)
				acc = __builtin_fmaf(a[k + r], b[r * N + n], acc);
			y[n] = acc;
		}
	}
	for (; k < K; k++)
	{
		const float *b = c->B + k * N;

		for (n = s0; n < nfull; n += 4)
		{
			float32x4_t acc = k || keep ? vld1q_f32(y + n) : vdupq_n_f32(0.0f);

			vst1q_f32(y + n, vfmaq_n_f32(acc, vld1q_f32(b + n), a[k]));
		}
		for (; n < s1; n++)
			y[n] = __builtin_fmaf(a[k], b[n], k || keep ? y[n] : 0.0f);
	}
}

/*
 * The transposed GEMV reads B as fp32 (c->B) or as bf16 (c->B16,
 * pg_llm.inference_dtype = 'bf16': gemv_neon_bf16_task comes here).  Its
 * loops take the row loads as functions: 4 weights of a row (or 1) from
 * column k, as the floats they stand for.  The body is always inlined, so
 * each weight type gets the code a copy of its own would have.
 */
typedef float32x4_t (*neon_load4) (const void *row, int64_t k);
typedef float (*neon_load1) (const void *row, int64_t k);

static inline __attribute__((always_inline)) float32x4_t
load4_f32(const void *row, int64_t k)
{
	return vld1q_f32((const float *) row + k);
}

static inline __attribute__((always_inline)) float
load1_f32(const void *row, int64_t k)
{
	return ((const float *) row)[k];
}

static inline __attribute__((always_inline)) float32x4_t
load4_b16(const void *row, int64_t k)
{
	return load4_bf16((const llm_bf16 *) row + k);
}

static inline __attribute__((always_inline)) float
load1_b16(const void *row, int64_t k)
{
	return llm_bf16_to_float(((const llm_bf16 *) row)[k]);
}

/*
 * y[n0:n1] = B[n0:n1, :] @ a for transB, B's rows `size` bytes a weight:
 * 4 rows at a time sharing each load of a, each row's 4 partial sums
 * added in a fixed order (vaddvq), then the ragged end of the row.
 */
static inline __attribute__((always_inline)) void
neon_transb(const mm_ctx *c, int64_t n0, int64_t n1, const void *B, int64_t size,
			neon_load4 load4, neon_load1 load1)
{
	const float *a = c->A;
	int64_t		K = c->K;
	int64_t		kfull = K & ~(int64_t) 3;
	int64_t		n,
				k;

	for (n = n0; n < n1; n += 4)
	{
		int			rows = (int) MIN(4, n1 - n);
		const void *b[4];
		float32x4_t acc[4];
		int			r;

		for (r = 0; r < 4; r++)
		{
			/* past the last row: read row rows-1 again, its sum not stored */
			b[r] = (const char *) B + (n + MIN(r, rows - 1)) * K * size;
			acc[r] = vdupq_n_f32(0.0f);
		}
		for (k = 0; k < kfull; k += 4)
		{
			float32x4_t ak = vld1q_f32(a + k);

#pragma GCC unroll 4
			for (r = 0; r < 4; r++)
				acc[r] = vfmaq_f32(acc[r], ak, load4(b[r], k));
		}
		for (r = 0; r < rows; r++)
		{
			float		s = vaddvq_f32(acc[r]);

			for (k = kfull; k < K; k++)
				s = __builtin_fmaf(a[k], load1(b[r], k), s);
			if (c->accumulate)
				s += c->C[n + r];
			c->C[n + r] = c->bias ? s + c->bias[n + r] : s;
		}
	}
}

static void
gemv_neon_transb(const mm_ctx *c, int64_t n0, int64_t n1)
{
	if (c->B16)
		neon_transb(c, n0, n1, c->B16, sizeof(llm_bf16), load4_b16, load1_b16);
	else
		neon_transb(c, n0, n1, c->B, sizeof(float), load4_f32, load1_f32);
}

void
gemv_neon_task(void *arg, int64_t n0, int64_t n1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		s,
				n;

	if (c->transB)
	{
		gemv_neon_transb(c, n0, n1);
		return;
	}
	for (s = n0; s < n1; s += GEMV_CHUNK)
		gemv_neon_plain_chunk(c, s, MIN(n1, s + GEMV_CHUNK));
	if (c->bias)
		for (n = n0; n < n1; n++)
			c->C[n] += c->bias[n];
}

#endif							/* LLM_NEON */

#if LLM_X86 || LLM_NEON

int
matmul_gemv(mm_ctx *c)
{
	int64_t		grain;

	/*
	 * One slab per thread (see above: the split cannot change the bits),
	 * but no slab over GEMV_SLAB bytes of B, so that a big matrix (the
	 * 150 MB lm_head) is cut into tasks that balance if a thread stalls,
	 * and none under ~32K multiply-adds; whole vectors.
	 */
	grain = ceil_div(c->N, llm_pool_threads());
	grain = MIN(grain, MAX(1, GEMV_SLAB / ((int64_t) sizeof(float) * c->K)));
	grain = MAX(grain, ceil_div((int64_t) 1 << 15, c->K));
	grain = round_up(grain, 16);
	return llm_parallel_for(c->N, grain, c->B16 ? c->kernels->gemv_bf16 : c->kernels->gemv, c);
}

#endif							/* LLM_X86 || LLM_NEON */
