/*
 * matmul.c -- C[M,N] = op(A) @ op(B) (+ bias), the hot loop of pg_llm.
 *
 * Three ways in, picked from the SHAPE only (never from the thread count,
 * so results are bit-identical at any pool size):
 *
 *   1. GEMV (M == 1, or N == 1 by transposing the problem).  Decoding one
 *      token is memory-bound: every weight is read once and used once.  We
 *      stream B exactly once, split over output columns (plain B, each task
 *      owns a strip of columns) or over rows of B (transB, each task owns a
 *      range of output elements, each one a contiguous dot product).
 *
 *   2. GEMM (M > 1), the classic GotoBLAS/BLIS design:
 *
 *        for each output tile [m0,m1) x [n0,n1)         <- parallel tasks
 *          for each block of KC values of k              <- sequential
 *            pack B[k-block, n0:n1] into NR-wide panels  (stays in L2)
 *            for each MR-row panel of A (packed once, up front, for all tasks)
 *              for each NR-wide panel of B
 *                micro-kernel: C[MR,NR] (+)= Apanel[MR,kc] @ Bpanel[kc,NR]
 *
 *      The micro-kernel keeps the whole MR x NR block of C in registers
 *      (AVX-512: 14 x 32 = 28 zmm accumulators; AVX2: 6 x 16 = 12 ymm) and
 *      for each k does one row of B (NR floats, 2 vector loads) times MR
 *      broadcast values of A: 2*MR FMAs for 2 + MR loads.  Packing turns
 *      both operands into contiguous streams whatever their storage, which
 *      is why transA / transB cost nothing extra inside the loop: the
 *      transposes are absorbed by the packing routines.
 *
 *      Edges: packed panels are zero padded to MR rows / NR columns; the
 *      kernel is specialised for every row count 1..MR (so no wasted FMAs
 *      on short row panels) and stores partial column panels with masks.
 *
 *   3. Scalar reference (non-x86, or llm_set_isa(LLM_ISA_SCALAR)): plain
 *      loops, one task per block of output rows.
 *
 * Summation order.  Every element of C is the float32 FMA chain over one
 * k-block, the k-blocks added into C in increasing k, then bias.  Blocks
 * and tiles are functions of (M, K, N) only, so the order never depends on
 * how many threads ran the tasks.
 *
 * Memory.  Packing buffers are per thread (__thread pointers, grown on
 * demand and kept for the life of the thread, so repeated calls do not
 * page-fault new memory).  The packed copy of A (M x K floats) lives in the
 * calling thread's buffer while it is <= PACK_A_KEEP bytes; bigger ones
 * are malloc'd and freed per call.  When an allocation fails nothing
 * crashes: GEMM falls back to packing one micro-panel at a time into a
 * stack buffer (slower, same arithmetic, same bits).
 *
 * llm_matmul must not be called from inside an llm_parallel_for task (the
 * pool is not reentrant).
 */
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LLM_X86 1
#else
#define LLM_X86 0
#endif

/* ---- blocking parameters ------------------------------------------------ */

#define KC_MAX 256				/* k-block: MR x KC of A sits in L1 */
#define MR_MAX 14				/* largest MR of any ISA */
#define NR_MAX 32				/* largest NR of any ISA */
#define PACK_A_KEEP (32u << 20) /* keep packed-A scratch up to 32 MB */

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static int64_t
ceil_div(int64_t a, int64_t b)
{
	return (a + b - 1) / b;
}

static int64_t
round_up(int64_t a, int64_t b)
{
	return ceil_div(a, b) * b;
}

/* ---- per-thread scratch ------------------------------------------------- */

typedef struct
{
	void	   *raw;			/* what malloc returned */
	float	   *buf;			/* 64-byte aligned */
	size_t		cap;			/* floats */
} scratch;

static __thread scratch tls_pack_b;	/* B block, inside tasks */
static __thread scratch tls_pack_a;	/* whole packed A, calling thread */

/* Return an aligned buffer of >= n floats, or NULL if malloc fails. */
static float *
scratch_get(scratch *s, size_t n)
{
	if (n > s->cap)
	{
		void	   *raw;

		free(s->raw);
		s->raw = NULL;
		s->buf = NULL;
		s->cap = 0;
		raw = malloc(n * sizeof(float) + 64);
		if (raw == NULL)
			return NULL;
		s->raw = raw;
		s->buf = (float *) (((uintptr_t) raw + 63) & ~(uintptr_t) 63);
		s->cap = n;
	}
	return s->buf;
}

/* ---- the problem, as seen by every task --------------------------------- */

typedef struct gemm_isa gemm_isa;

typedef struct
{
	const float *A,
			   *B,
			   *bias;
	float	   *C;
	int64_t		M,
				K,
				N;
	int			transA,
				transB;
	const gemm_isa *isa;

	/* GEMM blocking, chosen from the shape */
	int64_t		kc;				/* k-block size (last block may be shorter) */
	int64_t		mc,
				nc;				/* output tile of one task */
	int64_t		n_ntiles;		/* tiles along N */
	const float *apack;			/* A packed for all tiles, or NULL */

	/* GEMV */
	int64_t		gw;				/* output elements per task */
} mm_ctx;

/* op(A)(m, k) and op(B)(k, n), for the reference and edge code */
static inline float
get_a(const mm_ctx *c, int64_t m, int64_t k)
{
	return c->transA ? c->A[k * c->M + m] : c->A[m * c->K + k];
}

static inline float
get_b(const mm_ctx *c, int64_t k, int64_t n)
{
	return c->transB ? c->B[n * c->K + k] : c->B[k * c->N + n];
}

/* ======================================================================== */
/* 1. Scalar reference                                                      */
/* ======================================================================== */

/*
 * Rows [r0, r1) of C: c[i,j] = sum_k a[i,k] * b[k,j] in increasing k, then
 * + bias[j].  Loops are ordered so the inner one walks contiguous memory.
 */
static void
scalar_rows(void *arg, int64_t r0, int64_t r1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		N = c->N,
				K = c->K;
	int64_t		i,
				j,
				k;

	for (i = r0; i < r1; i++)
	{
		float	   *ci = c->C + i * N;

		if (c->transB)
		{
			/* B stored [N,K]: each c[i,j] is a dot product of two rows */
			for (j = 0; j < N; j++)
			{
				const float *bj = c->B + j * K;
				float		s = 0.0f;

				for (k = 0; k < K; k++)
					s += get_a(c, i, k) * bj[k];
				ci[j] = s;
			}
		}
		else
		{
			/* B stored [K,N]: c[i,:] += a[i,k] * b[k,:] */
			for (j = 0; j < N; j++)
				ci[j] = 0.0f;
			for (k = 0; k < K; k++)
			{
				float		a = get_a(c, i, k);
				const float *bk = c->B + k * N;

				for (j = 0; j < N; j++)
					ci[j] += a * bk[j];
			}
		}
		if (c->bias)
			for (j = 0; j < N; j++)
				ci[j] += c->bias[j];
	}
}

static int
matmul_scalar(mm_ctx *c)
{
	/* about 256K multiply-adds per task */
	int64_t		grain = MAX(1, (1 << 18) / MAX(1, c->K * c->N));

	return llm_parallel_for(c->M, grain, scalar_rows, c);
}

/* ======================================================================== */
/* 2. Packing                                                               */
/* ======================================================================== */

/*
 * An ISA plugs into the generic GEMM driver with its register block
 * (MR x NR), one micro-kernel per row count 1..MR, and its packing helpers.
 *
 * kernel(kc, ap, bp, c, ldc, nr, accumulate, bias):
 *   acc[i,j] = sum_{k<kc} ap[k*MR + i] * bp[k*NR + j]   (FMA chain in k)
 *   c[i,j] = (accumulate ? c[i,j] + acc : acc) (+ bias[j] when bias)
 *   for i < mr (the kernel's own row count) and j < nr.
 */
typedef void (*micro_kernel) (int64_t kc, const float *ap, const float *bp,
							  float *c, int64_t ldc, int nr, int accumulate,
							  const float *bias);

/*
 * Transpose a block: dst[k * dstride + j] = src[j * sstride + k] for
 * j < rows, k < cols.  The ISA version does full 16x16 or 8x8 tiles in
 * registers; this one is the portable fallback and handles the edges.
 */
typedef void (*transpose_fn) (const float *src, int64_t sstride, float *dst,
							  int64_t dstride, int64_t rows, int64_t cols);

struct gemm_isa
{
	int			mr,
				nr;
	micro_kernel kern[MR_MAX + 1];	/* kern[m] computes m rows */
	transpose_fn transpose;
};

static void
transpose_scalar(const float *src, int64_t sstride, float *dst,
				 int64_t dstride, int64_t rows, int64_t cols)
{
	int64_t		j,
				k,
				kk;

	/* 8-wide k chunks keep both sides within a few cache lines */
	for (kk = 0; kk < cols; kk += 8)
	{
		int64_t		ke = MIN(cols, kk + 8);

		for (j = 0; j < rows; j++)
			for (k = kk; k < ke; k++)
				dst[k * dstride + j] = src[j * sstride + k];
	}
}

/*
 * Pack an MR-row panel of op(A): rows [m0, m0+mr), k in [k0, k0+kc) into
 * dst[k*MR + i], rows mr..MR-1 zero.
 */
static void
pack_a_panel(const mm_ctx *c, float *dst, int64_t m0, int mr, int64_t k0,
			 int64_t kc)
{
	int			MR = c->isa->mr;
	int64_t		k;
	int			i;

	if (c->transA)
	{
		/* stored [K,M]: for each k the MR values are contiguous */
		for (k = 0; k < kc; k++)
		{
			const float *src = c->A + (k0 + k) * c->M + m0;
			float	   *d = dst + k * MR;

			memcpy(d, src, (size_t) mr * sizeof(float));
			for (i = mr; i < MR; i++)
				d[i] = 0.0f;
		}
	}
	else
	{
		/* stored [M,K]: a transpose of an mr x kc block */
		c->isa->transpose(c->A + m0 * c->K + k0, c->K, dst, MR, mr, kc);
		if (mr < MR)
			for (k = 0; k < kc; k++)
				for (i = mr; i < MR; i++)
					dst[k * MR + i] = 0.0f;
	}
}

/*
 * Pack op(B)[k0:k0+kc, n0:n0+nc] as ceil(nc/NR) panels of kc x NR floats,
 * dst[p*kc*NR + k*NR + j] = op(B)(k0+k, n0+p*NR+j), columns past nc zero.
 */
static void
pack_b_block(const mm_ctx *c, float *dst, int64_t k0, int64_t kc,
			 int64_t n0, int64_t nc)
{
	int			NR = c->isa->nr;
	int64_t		p,
				k;

	for (p = 0; p * NR < nc; p++)
	{
		float	   *d = dst + p * kc * NR;
		int64_t		nn = n0 + p * NR;
		int			nr = (int) MIN(NR, nc - p * NR);

		if (c->transB)
		{
			/* stored [N,K]: rows of B become columns of the panel */
			c->isa->transpose(c->B + nn * c->K + k0, c->K, d, NR, nr, kc);
			if (nr < NR)
				for (k = 0; k < kc; k++)
					memset(d + k * NR + nr, 0, (size_t) (NR - nr) * sizeof(float));
		}
		else
		{
			/* stored [K,N]: each panel row is a contiguous copy */
			const float *src = c->B + k0 * c->N + nn;

			for (k = 0; k < kc; k++)
			{
				memcpy(d + k * NR, src + k * c->N, (size_t) nr * sizeof(float));
				if (nr < NR)
					memset(d + k * NR + nr, 0, (size_t) (NR - nr) * sizeof(float));
			}
		}
	}
}

/* ======================================================================== */
/* 3. Micro-kernels and fast transposes (x86 only)                          */
/* ======================================================================== */

#if LLM_X86

/* ---- AVX-512: MR = 14, NR = 32 (two zmm per row of C) ------------------- */

#define MR512 14
#define NR512 32

/*
 * The body is always_inline and instantiated with a constant `mr`, so the
 * row loops unroll completely and acc[][] lives in 2*mr zmm registers.
 * _mm512_set1_ps(ap[i]) folds into the FMA as an embedded broadcast
 * (vfmadd231ps zmm, zmm, [mem]{1to16}), so a k step is 2 loads of B and
 * 2*mr FMAs each reading one float of A straight from L1.
 */
static inline __attribute__((always_inline, target("avx512f"))) void
k512_body(const int mr, int64_t kc, const float *ap, const float *bp,
		  float *c, int64_t ldc, int nr, int accumulate, const float *bias)
{
	__m512		acc0[MR512],
				acc1[MR512];
	__mmask16	m0,
				m1;
	int64_t		k;
	int			i;

#pragma GCC unroll 14
	for (i = 0; i < mr; i++)
	{
		acc0[i] = _mm512_setzero_ps();
		acc1[i] = _mm512_setzero_ps();
	}

	for (k = 0; k < kc; k++)
	{
		__m512		b0 = _mm512_load_ps(bp);
		__m512		b1 = _mm512_load_ps(bp + 16);

#pragma GCC unroll 14
		for (i = 0; i < mr; i++)
		{
			__m512		a = _mm512_set1_ps(ap[i]);

			acc0[i] = _mm512_fmadd_ps(a, b0, acc0[i]);
			acc1[i] = _mm512_fmadd_ps(a, b1, acc1[i]);
		}
		ap += MR512;
		bp += NR512;
	}

	/* store, masking columns past nr */
	m0 = nr >= 16 ? (__mmask16) 0xFFFF : (__mmask16) ((1u << nr) - 1);
	m1 = nr >= 32 ? (__mmask16) 0xFFFF :
		nr <= 16 ? (__mmask16) 0 : (__mmask16) ((1u << (nr - 16)) - 1);
#pragma GCC unroll 14
	for (i = 0; i < mr; i++)
	{
		float	   *ci = c + i * ldc;
		__m512		v0 = acc0[i],
					v1 = acc1[i];

		if (accumulate)
		{
			v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ci), v0);
			v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ci + 16), v1);
		}
		if (bias)
		{
			v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, bias));
			v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, bias + 16));
		}
		_mm512_mask_storeu_ps(ci, m0, v0);
		_mm512_mask_storeu_ps(ci + 16, m1, v1);
	}
}

#define K512(MR) \
static __attribute__((target("avx512f"))) void \
k512_##MR(int64_t kc, const float *ap, const float *bp, float *c, \
		  int64_t ldc, int nr, int accumulate, const float *bias) \
{ \
	k512_body(MR, kc, ap, bp, c, ldc, nr, accumulate, bias); \
}
K512(1) K512(2) K512(3) K512(4) K512(5) K512(6) K512(7)
K512(8) K512(9) K512(10) K512(11) K512(12) K512(13) K512(14)

/*
 * 16x16 in-register transpose (the usual 4 rounds of shuffles), used to
 * pack transB panels and row-major A.  dst[k*ds + j] = src[j*ss + k].
 */
static __attribute__((target("avx512f"))) void
transpose_avx512(const float *src, int64_t ss, float *dst, int64_t ds,
				 int64_t rows, int64_t cols)
{
	int64_t		j0 = 0,
				k0;

	for (; j0 + 16 <= rows; j0 += 16)
	{
		for (k0 = 0; k0 + 16 <= cols; k0 += 16)
		{
			const float *s = src + j0 * ss + k0;
			float	   *d = dst + k0 * ds + j0;
			__m512		r[16],
						t[16];
			int			q;

			for (q = 0; q < 16; q++)
				r[q] = _mm512_loadu_ps(s + q * ss);
			/* interleave 32-bit pairs, then 64-bit pairs ... */
			for (q = 0; q < 16; q += 2)
			{
				t[q] = _mm512_unpacklo_ps(r[q], r[q + 1]);
				t[q + 1] = _mm512_unpackhi_ps(r[q], r[q + 1]);
			}
			for (q = 0; q < 16; q += 4)
			{
				r[q] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[q]), _mm512_castps_pd(t[q + 2])));
				r[q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[q]), _mm512_castps_pd(t[q + 2])));
				r[q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[q + 1]), _mm512_castps_pd(t[q + 3])));
				r[q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[q + 1]), _mm512_castps_pd(t[q + 3])));
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
				_mm512_storeu_ps(d + q * ds, _mm512_shuffle_f32x4(t[q], t[q + 8], 0x88));
				_mm512_storeu_ps(d + (q + 8) * ds, _mm512_shuffle_f32x4(t[q], t[q + 8], 0xdd));
			}
		}
		if (k0 < cols)
			transpose_scalar(src + j0 * ss + k0, ss, dst + k0 * ds + j0, ds,
							 16, cols - k0);
	}
	if (j0 < rows)
		transpose_scalar(src + j0 * ss, ss, dst + j0, ds, rows - j0, cols);
}

static const gemm_isa isa_avx512 = {
	MR512, NR512,
	{NULL, k512_1, k512_2, k512_3, k512_4, k512_5, k512_6, k512_7,
	k512_8, k512_9, k512_10, k512_11, k512_12, k512_13, k512_14},
	transpose_avx512
};

/* ---- AVX2 + FMA: MR = 6, NR = 16 (two ymm per row of C) ----------------- */

#define MR256 6
#define NR256 16

static inline __attribute__((always_inline, target("avx2,fma"))) void
k256_body(const int mr, int64_t kc, const float *ap, const float *bp,
		  float *c, int64_t ldc, int nr, int accumulate, const float *bias)
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
		__m256		b0 = _mm256_load_ps(bp);
		__m256		b1 = _mm256_load_ps(bp + 8);

#pragma GCC unroll 6
		for (i = 0; i < mr; i++)
		{
			__m256		a = _mm256_broadcast_ss(ap + i);

			acc0[i] = _mm256_fmadd_ps(a, b0, acc0[i]);
			acc1[i] = _mm256_fmadd_ps(a, b1, acc1[i]);
		}
		ap += MR256;
		bp += NR256;
	}

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
static __attribute__((target("avx2,fma"))) void \
k256_##MR(int64_t kc, const float *ap, const float *bp, float *c, \
		  int64_t ldc, int nr, int accumulate, const float *bias) \
{ \
	k256_body(MR, kc, ap, bp, c, ldc, nr, accumulate, bias); \
}
K256(1) K256(2) K256(3) K256(4) K256(5) K256(6)

/* 8x8 in-register transpose; dst[k*ds + j] = src[j*ss + k] */
static __attribute__((target("avx2,fma"))) void
transpose_avx2(const float *src, int64_t ss, float *dst, int64_t ds,
			   int64_t rows, int64_t cols)
{
	int64_t		j0 = 0,
				k0;

	for (; j0 + 8 <= rows; j0 += 8)
	{
		for (k0 = 0; k0 + 8 <= cols; k0 += 8)
		{
			const float *s = src + j0 * ss + k0;
			float	   *d = dst + k0 * ds + j0;
			__m256		r[8],
						t[8];
			int			q;

			for (q = 0; q < 8; q++)
				r[q] = _mm256_loadu_ps(s + q * ss);
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
				_mm256_storeu_ps(d + q * ds, _mm256_permute2f128_ps(r[q], r[q + 4], 0x20));
				_mm256_storeu_ps(d + (q + 4) * ds, _mm256_permute2f128_ps(r[q], r[q + 4], 0x31));
			}
		}
		if (k0 < cols)
			transpose_scalar(src + j0 * ss + k0, ss, dst + k0 * ds + j0, ds,
							 8, cols - k0);
	}
	if (j0 < rows)
		transpose_scalar(src + j0 * ss, ss, dst + j0, ds, rows - j0, cols);
}

static const gemm_isa isa_avx2 = {
	MR256, NR256,
	{NULL, k256_1, k256_2, k256_3, k256_4, k256_5, k256_6},
	transpose_avx2
};

#endif							/* LLM_X86 */

/* ======================================================================== */
/* 4. The GEMM driver (ISA independent)                                     */
/* ======================================================================== */

/* k-blocks: K cut into ceil(K/KC_MAX) nearly equal blocks */
static int64_t
choose_kc(int64_t K)
{
	int64_t		nblocks = ceil_div(K, KC_MAX);

	return ceil_div(K, nblocks);
}

/* Offset of the packed A panel for (k-block starting at k0, row m0). */
static const float *
apack_panel(const mm_ctx *c, int64_t k0, int64_t kc, int64_t m0)
{
	int64_t		MR = c->isa->mr;
	int64_t		mpad = round_up(c->M, MR);

	/* all earlier k-blocks hold k0 columns of every row panel */
	return c->apack + k0 * mpad + (m0 / MR) * kc * MR;
}

/* Task: pack A row panels [p0, p1) for every k-block. */
static void
pack_a_task(void *arg, int64_t p0, int64_t p1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		MR = c->isa->mr;
	int64_t		k0,
				p;

	for (k0 = 0; k0 < c->K; k0 += c->kc)
	{
		int64_t		kc = MIN(c->kc, c->K - k0);

		for (p = p0; p < p1; p++)
		{
			int64_t		m0 = p * MR;

			pack_a_panel(c, (float *) apack_panel(c, k0, kc, m0), m0,
						 (int) MIN(MR, c->M - m0), k0, kc);
		}
	}
}

/*
 * Fallback when no B block buffer could be allocated: pack one kc x NR
 * micro-panel at a time into the stack.  Same kernels, same order: same
 * bits, only slower.
 */
static void
gemm_tile_small_buffers(const mm_ctx *c, int64_t m0, int64_t m1,
						int64_t n0, int64_t n1)
{
	const gemm_isa *isa = c->isa;
	float		bbuf[KC_MAX * NR_MAX] __attribute__((aligned(64)));
	float		abuf[KC_MAX * MR_MAX] __attribute__((aligned(64)));
	int64_t		k0,
				m,
				n;

	for (k0 = 0; k0 < c->K; k0 += c->kc)
	{
		int64_t		kc = MIN(c->kc, c->K - k0);
		int			last = k0 + kc >= c->K;

		for (n = n0; n < n1; n += isa->nr)
		{
			int			nr = (int) MIN(isa->nr, n1 - n);

			pack_b_block(c, bbuf, k0, kc, n, nr);
			for (m = m0; m < m1; m += isa->mr)
			{
				int			mr = (int) MIN(isa->mr, m1 - m);
				const float *ap;

				if (c->apack)
					ap = apack_panel(c, k0, kc, m);
				else
				{
					pack_a_panel(c, abuf, m, mr, k0, kc);
					ap = abuf;
				}
				isa->kern[mr] (kc, ap, bbuf, c->C + m * c->N + n, c->N, nr,
							   k0 > 0, last && c->bias ? c->bias + n : NULL);
			}
		}
	}
}

/*
 * One output tile C[m0:m1, n0:n1] over all of K.  For each k-block the
 * B block (kc x tile width, <= 1 MB) is packed into this thread's buffer
 * and stays in L2; then each MR-row panel of A (L1) sweeps across the
 * NR-wide panels of B.
 */
static void
gemm_tile(const mm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1)
{
	const gemm_isa *isa = c->isa;
	int64_t		npanels = ceil_div(n1 - n0, isa->nr);
	float		abuf[KC_MAX * MR_MAX] __attribute__((aligned(64)));
	float	   *bpack;
	int64_t		k0,
				m,
				p;

	bpack = scratch_get(&tls_pack_b, (size_t) (c->kc * npanels * isa->nr));
	if (bpack == NULL)
	{
		gemm_tile_small_buffers(c, m0, m1, n0, n1);
		return;
	}

	for (k0 = 0; k0 < c->K; k0 += c->kc)
	{
		int64_t		kc = MIN(c->kc, c->K - k0);
		int			last = k0 + kc >= c->K;

		pack_b_block(c, bpack, k0, kc, n0, n1 - n0);
		for (m = m0; m < m1; m += isa->mr)
		{
			int			mr = (int) MIN(isa->mr, m1 - m);
			const float *ap;
			micro_kernel kern = isa->kern[mr];

			if (c->apack)
				ap = apack_panel(c, k0, kc, m);
			else
			{
				pack_a_panel(c, abuf, m, mr, k0, kc);
				ap = abuf;
			}
			for (p = 0; p < npanels; p++)
			{
				int64_t		n = n0 + p * isa->nr;

				kern(kc, ap, bpack + p * kc * isa->nr,
					 c->C + m * c->N + n, c->N, (int) MIN(isa->nr, n1 - n),
					 k0 > 0, last && c->bias ? c->bias + n : NULL);
			}
		}
	}
}

static void
gemm_task(void *arg, int64_t t0, int64_t t1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		t;

	for (t = t0; t < t1; t++)
	{
		int64_t		m0 = (t / c->n_ntiles) * c->mc;
		int64_t		n0 = (t % c->n_ntiles) * c->nc;

		gemm_tile(c, m0, MIN(c->M, m0 + c->mc), n0, MIN(c->N, n0 + c->nc));
	}
}

/*
 * Output tiles.  A task should be big enough that packing and scheduling
 * are noise (>= ~4 MFLOP) yet there should be enough of them (~16+) for
 * the pool to balance; both are decided from the shape alone.
 *   - width nc: a multiple of NR, at most 1024 columns (kc x nc B block
 *     <= 1 MB, half of L2), aiming at ~16 tiles along N;
 *   - height mc: all rows when M is small, else a multiple of MR so that
 *     the A rows of a tile (mc x kc) stay in L2 too.
 */
static void
choose_tiles(mm_ctx *c)
{
	int64_t		MR = c->isa->mr,
				NR = c->isa->nr;
	int64_t		mc,
				nc,
				n_mtiles;

	mc = c->M <= 4 * 64 ? c->M : round_up(192, MR);
	n_mtiles = ceil_div(c->M, mc);

	/* ~16 tiles in all, each >= ~4 MFLOP and >= 2 panels wide */
	nc = round_up(ceil_div(c->N, MAX(1, 16 / n_mtiles)), NR);
	nc = MAX(nc, round_up(ceil_div((int64_t) 1 << 21, MAX(1, MIN(mc, c->M) * c->K)), NR));
	nc = MAX(nc, 2 * NR);
	nc = MIN(nc, 1024);
	nc = MIN(nc, round_up(c->N, NR));

	c->mc = mc;
	c->nc = nc;
	c->n_ntiles = ceil_div(c->N, nc);
}

static int
matmul_gemm(mm_ctx *c)
{
	int64_t		MR = c->isa->mr;
	int64_t		mpanels = ceil_div(c->M, MR);
	size_t		apack_n = (size_t) (mpanels * MR * c->K);
	void	   *apack_owned = NULL;
	float	   *apack;
	int			rc;

	c->kc = choose_kc(c->K);
	choose_tiles(c);

	/*
	 * Pack all of A once (every tile along N reuses it).  Kept in the
	 * calling thread's scratch when small enough, else malloc'd for this
	 * call; if that fails too, tiles pack their A panels themselves.
	 */
	if (apack_n * sizeof(float) <= PACK_A_KEEP)
		apack = scratch_get(&tls_pack_a, apack_n);
	else
	{
		apack_owned = malloc(apack_n * sizeof(float) + 64);
		apack = apack_owned ?
			(float *) (((uintptr_t) apack_owned + 63) & ~(uintptr_t) 63) : NULL;
	}
	c->apack = apack;
	if (apack)
	{
		/* ~64K floats per task */
		rc = llm_parallel_for(mpanels, MAX(1, (1 << 16) / (MR * c->K)),
							  pack_a_task, c);
		if (rc != LLM_OK)
		{
			free(apack_owned);
			return rc;
		}
	}

	rc = llm_parallel_for(ceil_div(c->M, c->mc) * c->n_ntiles, 1, gemm_task, c);
	free(apack_owned);
	return rc;
}

/* ======================================================================== */
/* 5. GEMV: M == 1                                                          */
/* ======================================================================== */

/*
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
 * slab per thread.  That gives each thread the longest sequential streams,
 * and the same slab on every call (OpenBLAS does the same), which is what
 * lets a weight matrix of a few MB partly stay in the threads' L2 caches.
 */
#define GEMV_CHUNK 2048			/* columns of y kept in L1 (8 KB) */

static void
gemv_scalar_task(void *arg, int64_t n0, int64_t n1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		n,
				k;

	for (n = n0; n < n1; n++)
	{
		float		s = 0.0f;

		for (k = 0; k < c->K; k++)
			s += c->A[k] * get_b(c, k, n);
		c->C[n] = c->bias ? s + c->bias[n] : s;
	}
}

#if LLM_X86

/* y[s0:s1] = a @ B[:, s0:s1] for plain B, y in L1 (s1 - s0 <= GEMV_CHUNK) */
static __attribute__((target("avx512f"))) void
gemv512_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	const float *a = c->A;
	int64_t		K = c->K,
				N = c->N;
	float	   *y = c->C;
	int64_t		nfull = s0 + ((s1 - s0) & ~(int64_t) 15);
	__mmask16	tail = (__mmask16) ((1u << ((s1 - s0) & 15)) - 1);
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
			__m512		acc = k ? _mm512_loadu_ps(y + n) : _mm512_setzero_ps();

#pragma GCC unroll 8
			for (r = 0; r < 8; r++)
				acc = _mm512_fmadd_ps(ak[r], _mm512_loadu_ps(b + r * N + n), acc);
			_mm512_storeu_ps(y + n, acc);
		}
		if (tail)
		{
			__m512		acc = k ? _mm512_maskz_loadu_ps(tail, y + n) : _mm512_setzero_ps();

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
			__m512		acc = k ? _mm512_loadu_ps(y + n) : _mm512_setzero_ps();

			_mm512_storeu_ps(y + n, _mm512_fmadd_ps(ak, _mm512_loadu_ps(b + n), acc));
		}
		if (tail)
		{
			__m512		acc = k ? _mm512_maskz_loadu_ps(tail, y + n) : _mm512_setzero_ps();

			_mm512_mask_storeu_ps(y + n, tail,
								  _mm512_fmadd_ps(ak, _mm512_maskz_loadu_ps(tail, b + n), acc));
		}
	}
}

/* y[n0:n1] = B[n0:n1, :] @ a for transB */
static __attribute__((target("avx512f"))) void
gemv512_transb(const mm_ctx *c, int64_t n0, int64_t n1)
{
	const float *a = c->A;
	int64_t		K = c->K;
	int64_t		kfull = K & ~(int64_t) 15;
	__mmask16	tail = (__mmask16) ((1u << (K - kfull)) - 1);
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

			c->C[n + r] = c->bias ? s + c->bias[n + r] : s;
		}
	}
}

static __attribute__((target("avx512f"))) void
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

static __attribute__((target("avx2,fma"))) float
hsum256(__m256 v)
{
	__m128		s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static __attribute__((target("avx2,fma"))) void
gemv256_plain_chunk(const mm_ctx *c, int64_t s0, int64_t s1)
{
	const float *a = c->A;
	int64_t		K = c->K,
				N = c->N;
	float	   *y = c->C;
	int64_t		nfull = s0 + ((s1 - s0) & ~(int64_t) 7);
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
			__m256		acc = k ? _mm256_loadu_ps(y + n) : _mm256_setzero_ps();

#pragma GCC unroll 8
			for (r = 0; r < 8; r++)
				acc = _mm256_fmadd_ps(ak[r], _mm256_loadu_ps(b + r * N + n), acc);
			_mm256_storeu_ps(y + n, acc);
		}
		/* ragged columns: the same chain in scalar FMAs */
		for (; n < s1; n++)
		{
			float		acc = k ? y[n] : 0.0f;

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
			__m256		acc = k ? _mm256_loadu_ps(y + n) : _mm256_setzero_ps();

			_mm256_storeu_ps(y + n, _mm256_fmadd_ps(ak, _mm256_loadu_ps(b + n), acc));
		}
		for (; n < s1; n++)
			y[n] = __builtin_fmaf(a[k], b[n], k ? y[n] : 0.0f);
	}
}

static __attribute__((target("avx2,fma"))) void
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
			float		s = hsum256(acc[r]);

			for (k = kfull; k < K; k++)
				s = __builtin_fmaf(a[k], b[r][k], s);
			c->C[n + r] = c->bias ? s + c->bias[n + r] : s;
		}
	}
}

static __attribute__((target("avx2,fma"))) void
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

static int
matmul_gemv(mm_ctx *c, llm_isa isa)
{
	llm_task_fn fn = gemv_scalar_task;
	int64_t		grain;

	/*
	 * One slab per thread (see above: the split cannot change the bits),
	 * but no slab under ~32K multiply-adds, rounded to whole vectors.
	 */
	grain = ceil_div(c->N, llm_pool_threads());
	grain = MAX(grain, ceil_div((int64_t) 1 << 15, c->K));
	grain = round_up(grain, 16);
#if LLM_X86
	if (isa == LLM_ISA_AVX512)
		fn = gemv512_task;
	else if (isa == LLM_ISA_AVX2)
		fn = gemv256_task;
#else
	(void) isa;
#endif
	return llm_parallel_for(c->N, grain, fn, c);
}

/* ======================================================================== */
/* 6. Entry point                                                           */
/* ======================================================================== */

int
llm_matmul(const float *A, const float *B, const float *bias, float *C,
		   int64_t M, int64_t K, int64_t N, int transA, int transB)
{
	llm_isa		isa = llm_cpu_isa();
	mm_ctx		c;

	memset(&c, 0, sizeof(c));
	c.A = A;
	c.B = B;
	c.bias = bias;
	c.C = C;
	c.M = M;
	c.K = K;
	c.N = N;
	c.transA = transA != 0;
	c.transB = transB != 0;

	if (isa == LLM_ISA_SCALAR || !LLM_X86)
		return matmul_scalar(&c);

	if (M == 1)
	{
		/* a [1,K] row is the same memory whether stored [1,K] or [K,1] */
		c.transA = 0;
		return matmul_gemv(&c, isa);
	}
	if (N == 1 && bias == NULL)
	{
		/*
		 * C[M,1] = op(A) @ b is C^T[1,M] = b^T @ op(A)^T: a GEMV whose
		 * matrix is A, "transposed" exactly when A is stored [M,K].
		 */
		c.A = B;
		c.B = A;
		c.N = M;
		c.M = 1;
		c.transA = 0;
		c.transB = !transA;
		return matmul_gemv(&c, isa);
	}

#if LLM_X86
	c.isa = isa == LLM_ISA_AVX512 ? &isa_avx512 : &isa_avx2;
#endif
	return matmul_gemm(&c);
}
