/*
 * matmul.c -- C[M,N] = op(A) @ op(B) (+ bias), the hot loop of pg_llm.
 *
 * Three paths, chosen from the shape:
 *
 *   1. GEMV (M == 1, or N == 1 by transposing the problem).  Decoding one
 *      token is memory-bound: each weight is read once and used for one
 *      FMA, so the only goal is to stream B at full bandwidth (section 5).
 *
 *   2. GEMM (M > 1), the classic GotoBLAS/BLIS design (sections 2-4):
 *
 *        pack all of A (and, when several row tiles share it, all of B)
 *        for each output tile [m0,m1) x [n0,n1)          <- parallel tasks
 *          for each block of kc values of k               <- in order
 *            pack B[k-block, n0:n1] into NR-wide panels (unless prepacked)
 *            for each MR-row panel of A
 *              for each NR-wide panel of B
 *                micro-kernel: C[MR,NR] (+)= Apanel[MR,kc] @ Bpanel[kc,NR]
 *
 *      The micro-kernel keeps an MR x NR block of C in registers (AVX-512:
 *      14 x 32 = 28 zmm accumulators; AVX2: 6 x 16 = 12 ymm).  Each k step
 *      loads one row of the B panel (NR floats) and broadcasts MR values
 *      of the A panel: 2*MR FMAs for MR+2 loads, all from L1.  Packing
 *      copies both operands into exactly the order the micro-kernel reads
 *      them, whatever their storage -- which is why transA/transB cost
 *      nothing in the inner loop: the transposes happen while packing.
 *      The A panel (MR x kc, 14-21 KB) stays in L1, the packed B block
 *      (kc x tile width, <= 768 KB) in L2.  While the kernels run, the
 *      source of the next B block is prefetched into L2, so packing does
 *      not wait on memory.
 *
 *      Edges: panels are zero padded to MR rows / NR columns; there is one
 *      kernel per row count 1..MR (no FMAs wasted on short row panels) and
 *      partial column panels are stored with masks.
 *
 *   3. Scalar reference (section 1): plain loops, used on non-x86 builds
 *      and when llm_set_isa(LLM_ISA_SCALAR) forces it.
 *
 * Determinism.  Every element of C is: for each k-block in increasing k,
 * an FMA chain over the block, added into C; then + bias.  k-blocks and
 * tiles are functions of (M, K, N) only, and tasks are whole tiles, so the
 * bits never depend on the number of threads.  (GEMV goes one step
 * further, see section 5: its split cannot affect the bits at all.)
 *
 * Memory.  Packing buffers are per thread (__thread pointers to malloc'd
 * memory, grown on demand and kept for the life of the thread, so repeated
 * calls do not page-fault new memory).  Whole-matrix packed copies live in
 * the calling thread's buffers up to PACK_KEEP bytes each; bigger ones are
 * malloc'd and freed per call.  When an allocation fails nothing crashes:
 * GEMM falls back to packing one micro-panel at a time into a stack buffer
 * (slower; same arithmetic, same bits -- tested).
 *
 * llm_matmul must not be called from inside an llm_parallel_for task (the
 * pool is not reentrant).
 */
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

#include "simd.h"

/* ---- blocking parameters (tuned on Sapphire Rapids: 48 KB L1d, 2 MB L2;
 *      each can be overridden with -D for experiments) --------------------- */

#ifndef KC_STREAM
#define KC_STREAM 256			/* k-block when tiles pack B as they go */
#endif
#ifndef KC_PREPACKED
#define KC_PREPACKED 384		/* k-block when B is packed up front */
#endif
#define KC_MAX MAX(KC_STREAM, KC_PREPACKED)
#ifndef NC_MAX
#define NC_MAX 512				/* widest output tile: KC x NC of B in L2 */
#endif
#ifndef MC_SMALL
#define MC_SMALL 256			/* up to this many rows: one tile height */
#endif
#ifndef MC_TILE
#define MC_TILE 192				/* else tiles this high (rounded to MR) */
#endif
#ifndef TILES_TARGET
#define TILES_TARGET 16			/* aim for about this many output tiles */
#endif
#define MR_MAX 14				/* largest MR of any ISA */
#define NR_MAX 48				/* largest NR of any ISA */
#define PACK_KEEP (32u << 20)	/* keep whole-matrix pack buffers <= 32 MB */

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

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
	int64_t		tile_grain;		/* tiles per task */
	const float *apack;			/* A packed for all tiles, or NULL */
	const float *bpack;			/* B packed for all tiles, or NULL */
	int64_t		mpanels,
				npanels;		/* MR-row panels of A, NR-column panels of B */
	int64_t		a_group,
				b_group;		/* panels per packing unit */
	int64_t		a_units,
				b_units;		/* packing units per k-block */
} mm_ctx;

/* op(A)(m, k), for the reference code */
static inline float
get_a(const mm_ctx *c, int64_t m, int64_t k)
{
	return c->transA ? c->A[k * c->M + m] : c->A[m * c->K + k];
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

#if LLM_X86

/*
 * Sections 2-5 are the fast paths.  The GEMM driver and the packing code
 * are plain C, but the micro-kernels they drive exist only for x86 (AVX2,
 * AVX-512), so the whole lot is compiled for x86 only; other targets use
 * the scalar reference.
 */

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
static __thread scratch tls_pack_bg;	/* whole packed B, calling thread */

/* Return an aligned buffer of >= n floats, or NULL if malloc fails. */
static float *
scratch_get(scratch *s, size_t n)
{
#ifdef LLM_MATMUL_TEST_NO_MEMORY
	return NULL;				/* tests: take the allocation-failure paths */
#endif
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

/* ======================================================================== */
/* 2. Packing and prefetching                                               */
/* ======================================================================== */

/*
 * Packing B reads it from L3 or DRAM, and a copy loop alone cannot keep
 * enough cache misses in flight: unhidden, it took 30-40% of the time of
 * the M = 64 shapes.  So while the micro-kernels work on one B block, we
 * prefetch (into L2) the source of the block that will be packed next,
 * one line every other k step inside the micro-kernels (a burst of
 * prefetches between calls would stall on the line fill buffers).
 */
typedef struct
{
	const float *base;			/* first float of the source region */
	int64_t		stride;			/* floats between its rows */
	int64_t		rows;
	int64_t		row_lines;		/* 64-byte lines per row */
	int64_t		row,
				line;			/* cursor */
} prefetcher;

/* Source of op(B)[k0:k0+kc, n0:n1], as rows of memory. */
static void
prefetch_block(prefetcher *pf, const mm_ctx *c, int64_t k0, int64_t kc,
			   int64_t n0, int64_t n1)
{
	int64_t		len;

	if (c->transB)
	{
		pf->base = c->B + n0 * c->K + k0;
		pf->stride = c->K;
		pf->rows = n1 - n0;
		len = kc;
	}
	else
	{
		pf->base = c->B + k0 * c->N + n0;
		pf->stride = c->N;
		pf->rows = kc;
		len = n1 - n0;
	}
	pf->row_lines = ceil_div(len, 16) + 1;	/* +1: rows need not be aligned */
	pf->row = pf->line = 0;
}

static void
prefetch_none(prefetcher *pf)
{
	pf->rows = pf->row = 0;
	pf->row_lines = 1;
}

/* Prefetch the next line of the region into L2, if any is left. */
static inline __attribute__((always_inline)) void
prefetch_one(prefetcher *pf)
{
	if (pf->row < pf->rows)
	{
		__builtin_prefetch(pf->base + pf->row * pf->stride + pf->line * 16, 0, 2);
		if (++pf->line == pf->row_lines)
		{
			pf->line = 0;
			pf->row++;
		}
	}
}

/*
 * An ISA plugs into the generic GEMM driver with its register block
 * (MR x NR), one micro-kernel per row count 1..MR, and its packing helpers.
 *
 * kernel(kc, ap, bp, c, ldc, nr, accumulate, bias, pf, pf_lines):
 *   acc[i,j] = sum_{k<kc} ap[k*MR + i] * bp[k*NR + j]   (FMA chain in k)
 *   c[i,j] = (accumulate ? c[i,j] + acc : acc) (+ bias[j] when bias)
 *   for i < mr (the kernel's own row count) and j < nr;
 *   meanwhile prefetch up to pf_lines lines of pf, one per 2 k steps.
 */
typedef void (*micro_kernel) (int64_t kc, const float *ap, const float *bp,
							  float *c, int64_t ldc, int nr, int accumulate,
							  const float *bias, prefetcher *pf,
							  int64_t pf_lines);

/*
 * Packing helpers, both writing `width` floats per destination row
 * (width = MR or NR, the zero padding included):
 *
 *   copy:      dst[r*ds + j] = src[r*ss + j]  for j < n, 0 for n <= j < width,
 *              r < rows                          (plain B, transA A)
 *   transpose: dst[k*ds + j] = src[j*ss + k]  for j < n, 0 for n <= j < width,
 *              k < kc                            (transB B, plain A)
 *
 * Each ISA implements them with masked vector loads/stores (edges cost
 * nothing extra) and 16x16 (AVX-512) or 8x8 (AVX2) in-register transposes.
 */
typedef void (*copy_fn) (const float *src, int64_t ss, float *dst, int64_t ds,
						 int64_t rows, int n, int width);
typedef void (*transpose_fn) (const float *src, int64_t ss, float *dst,
							  int64_t ds, int64_t kc, int n, int width);

struct gemm_isa
{
	int			mr,
				nr;
	micro_kernel kern[MR_MAX + 1];	/* kern[m] computes m rows */
	copy_fn		copy;
	transpose_fn transpose;
};

/*
 * Pack x in [0, nx) (x is m for A, n for B) of one k-block into
 * ceil(nx/W) panels of kc x W floats: dst[p*kc*W + k*W + j] = src(k, p*W+j).
 *   kmajor: src(k, x) = src[k*ld + x] (plain B, transA A).  Memory rows run
 *     along x, so we copy 8 k-rows at a time across all panels: 8 forward
 *     streams, which the hardware prefetchers follow (panel by panel, each
 *     row would be a strided 128-byte read -- 10x slower from L3).
 *   else: src(k, x) = src[x*ld + k] (transB B, plain A).  Each panel is a
 *     transpose of W rows of memory, read front to back.
 */
static void
pack_panels(const gemm_isa *isa, const float *src, int64_t ld, int kmajor,
			float *dst, int64_t kc, int64_t nx, int W)
{
	int64_t		p,
				kk;

	if (kmajor)
	{
		for (kk = 0; kk < kc; kk += 8)
			for (p = 0; p * W < nx; p++)
				isa->copy(src + kk * ld + p * W, ld, dst + p * kc * W + kk * W, W,
						  MIN(8, kc - kk), (int) MIN(W, nx - p * W), W);
	}
	else
	{
		for (p = 0; p * W < nx; p++)
			isa->transpose(src + p * W * ld, ld, dst + p * kc * W, W, kc,
						   (int) MIN(W, nx - p * W), W);
	}
}

/* op(A)[m0:m0+mc, k0:k0+kc] as ceil(mc/MR) panels of kc x MR */
static void
pack_a_block(const mm_ctx *c, float *dst, int64_t m0, int64_t mc, int64_t k0,
			 int64_t kc)
{
	if (c->transA)				/* stored [K,M] */
		pack_panels(c->isa, c->A + k0 * c->M + m0, c->M, 1, dst, kc, mc, c->isa->mr);
	else						/* stored [M,K] */
		pack_panels(c->isa, c->A + m0 * c->K + k0, c->K, 0, dst, kc, mc, c->isa->mr);
}

/* op(B)[k0:k0+kc, n0:n0+nc] as ceil(nc/NR) panels of kc x NR */
static void
pack_b_block(const mm_ctx *c, float *dst, int64_t k0, int64_t kc,
			 int64_t n0, int64_t nc)
{
	if (c->transB)				/* stored [N,K] */
		pack_panels(c->isa, c->B + n0 * c->K + k0, c->K, 0, dst, kc, nc, c->isa->nr);
	else						/* stored [K,N] */
		pack_panels(c->isa, c->B + k0 * c->N + n0, c->N, 1, dst, kc, nc, c->isa->nr);
}

/* ======================================================================== */
/* 3. Micro-kernels and fast packing helpers                                */
/* ======================================================================== */

/* ---- AVX-512: MR = 14, NR = 32 (two zmm per row of C) ------------------- */

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
 */
static inline __attribute__((always_inline, target("avx512f"))) void
k512_body(const int mr, int64_t kc, const float *ap, const float *bp,
		  float *c, int64_t ldc, int nr, int accumulate, const float *bias,
		  prefetcher *pf, int64_t pf_lines)
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
static __attribute__((target("avx512f"))) void \
k512_##MR(int64_t kc, const float *ap, const float *bp, float *c, \
		  int64_t ldc, int nr, int accumulate, const float *bias, \
		  prefetcher *pf, int64_t pf_lines) \
{ \
	k512_body(MR < MR512 ? MR : MR512, kc, ap, bp, c, ldc, nr, accumulate, \
			  bias, pf, pf_lines); \
}
K512(1) K512(2) K512(3) K512(4) K512(5) K512(6) K512(7)
K512(8) K512(9) K512(10) K512(11) K512(12) K512(13) K512(14)

static __attribute__((target("avx512f"))) void
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
static __attribute__((target("avx512f"))) void
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

static const gemm_isa isa_avx512 = {
	MR512, NR512,
	{NULL, k512_1, k512_2, k512_3, k512_4, k512_5, k512_6, k512_7,
	k512_8, k512_9, k512_10, k512_11, k512_12, k512_13, k512_14},
	copy_avx512, transpose_avx512
};

/* ---- AVX2 + FMA: MR = 6, NR = 16 (two ymm per row of C) ----------------- */

#define MR256 6
#define NR256 16

static inline __attribute__((always_inline, target("avx2,fma"))) void
k256_body(const int mr, int64_t kc, const float *ap, const float *bp,
		  float *c, int64_t ldc, int nr, int accumulate, const float *bias,
		  prefetcher *pf, int64_t pf_lines)
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
static __attribute__((target("avx2,fma"))) void \
k256_##MR(int64_t kc, const float *ap, const float *bp, float *c, \
		  int64_t ldc, int nr, int accumulate, const float *bias, \
		  prefetcher *pf, int64_t pf_lines) \
{ \
	k256_body(MR, kc, ap, bp, c, ldc, nr, accumulate, bias, pf, pf_lines); \
}
K256(1) K256(2) K256(3) K256(4) K256(5) K256(6)

static inline __attribute__((always_inline, target("avx2,fma"))) __m256i
mask8(int64_t n)
{
	const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);

	return _mm256_cmpgt_epi32(_mm256_set1_epi32((int) MAX(-1, MIN(8, n))), lane);
}

static __attribute__((target("avx2,fma"))) void
copy_avx2(const float *src, int64_t ss, float *dst, int64_t ds,
		  int64_t rows, int n, int width)
{
	int64_t		r;
	int			j;

	for (j = 0; j < width; j += 8)
	{
		__m256i		ld = mask8(n - j),
					st = mask8(width - j);

		for (r = 0; r < rows; r++)
			_mm256_maskstore_ps(dst + r * ds + j, st,
								_mm256_maskload_ps(src + r * ss + j, ld));
	}
}

/* 8x8 in-register transposes, same contract as transpose_avx512 */
static __attribute__((target("avx2,fma"))) void
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
			for (q = 0; q < cols; q++)
				_mm256_maskstore_ps(d + q * ds, st, t[q]);
		}
	}
}

static const gemm_isa isa_avx2 = {
	MR256, NR256,
	{NULL, k256_1, k256_2, k256_3, k256_4, k256_5, k256_6},
	copy_avx2, transpose_avx2
};

/* ======================================================================== */
/* 4. The GEMM driver                                                       */
/* ======================================================================== */

/* k-blocks: K cut into ceil(K/kc_max) nearly equal blocks */
static int64_t
choose_kc(int64_t K, int64_t kc_max)
{
	int64_t		nblocks = ceil_div(K, kc_max);

	return ceil_div(K, nblocks);
}

/*
 * Whole-matrix packed layouts: k-block after k-block; inside the block
 * starting at k0 (kc deep), panel after panel, each kc x MR (or kc x NR).
 */
static const float *
apack_panel(const mm_ctx *c, int64_t k0, int64_t kc, int64_t m0)
{
	int64_t		MR = c->isa->mr;

	return c->apack + k0 * c->mpanels * MR + (m0 / MR) * kc * MR;
}

static const float *
bpack_panel(const mm_ctx *c, int64_t k0, int64_t kc, int64_t n0)
{
	int64_t		NR = c->isa->nr;

	return c->bpack + k0 * c->npanels * NR + (n0 / NR) * kc * NR;
}

/*
 * Task: pack units [u0, u1) of the whole-matrix copies.  A unit is one
 * k-block of a group of ~64K floats' worth of panels; per k-block the
 * units of A come first, then (when B is packed too) those of B.
 */
static void
pack_task(void *arg, int64_t u0, int64_t u1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		MR = c->isa->mr,
				NR = c->isa->nr;
	int64_t		per_kblock = c->a_units + c->b_units;
	int64_t		u;

	for (u = u0; u < u1; u++)
	{
		int64_t		k0 = (u / per_kblock) * c->kc;
		int64_t		kc = MIN(c->kc, c->K - k0);
		int64_t		g = u % per_kblock;

		if (g < c->a_units)
		{
			int64_t		m0 = g * c->a_group * MR;

			pack_a_block(c, (float *) apack_panel(c, k0, kc, m0), m0,
						 MIN(c->a_group * MR, c->M - m0), k0, kc);
		}
		else
		{
			int64_t		n0 = (g - c->a_units) * c->b_group * NR;

			pack_b_block(c, (float *) bpack_panel(c, k0, kc, n0), k0, kc,
						 n0, MIN(c->b_group * NR, c->N - n0));
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
	prefetcher	pf;
	int64_t		k0,
				m,
				n;

	prefetch_none(&pf);

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
					pack_a_block(c, abuf, m, mr, k0, kc);
					ap = abuf;
				}
				isa->kern[mr] (kc, ap, bbuf, c->C + m * c->N + n, c->N, nr,
							   k0 > 0, last && c->bias ? c->bias + n : NULL,
							   &pf, 0);
			}
		}
	}
}

/*
 * One output tile C[m0:m1, n0:n1] over all of K.  For each k-block the
 * B block (kc x tile width, <= 768 KB) is packed into this thread's buffer
 * (or found in the prepacked B) and stays in L2; then each MR-row panel of
 * A (14 KB, stays in L1) sweeps across the NR-wide panels of B.
 * [nn0, nn1) is the column range of the tile this task does next (nn1 ==
 * 0: none), whose first B block is prefetched during the last k-block.
 */
static void
gemm_tile(const mm_ctx *c, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
		  int64_t nn0, int64_t nn1)
{
	const gemm_isa *isa = c->isa;
	int64_t		npanels = ceil_div(n1 - n0, isa->nr);
	int64_t		ncalls = ceil_div(m1 - m0, isa->mr) * npanels;
	float		abuf[KC_MAX * MR_MAX] __attribute__((aligned(64)));
	float	   *bpack;
	prefetcher	pf;
	int64_t		k0,
				m,
				p;

	if (c->bpack)
		bpack = NULL;			/* panels come from c->bpack */
	else if ((bpack = scratch_get(&tls_pack_b,
								  (size_t) (c->kc * npanels * isa->nr))) == NULL)
	{
		gemm_tile_small_buffers(c, m0, m1, n0, n1);
		return;
	}

	for (k0 = 0; k0 < c->K; k0 += c->kc)
	{
		int64_t		kc = MIN(c->kc, c->K - k0);
		int			last = k0 + kc >= c->K;
		const float *bblock;
		int64_t		per_call;

		if (c->bpack)
			bblock = bpack_panel(c, k0, kc, n0);
		else
		{
			pack_b_block(c, bpack, k0, kc, n0, n1 - n0);
			bblock = bpack;
		}

		/* what to pull into L2 while the kernels run (see prefetcher) */
		if (c->bpack)			/* already packed, read in order: no need */
			prefetch_none(&pf);
		else if (!last)
			prefetch_block(&pf, c, k0 + kc, MIN(c->kc, c->K - k0 - kc), n0, n1);
		else if (nn1 > 0)
			prefetch_block(&pf, c, 0, MIN(c->kc, c->K), nn0, nn1);
		else
			prefetch_none(&pf);
		per_call = ceil_div(pf.rows * pf.row_lines, ncalls);

		for (m = m0; m < m1; m += isa->mr)
		{
			int			mr = (int) MIN(isa->mr, m1 - m);
			const float *ap;
			micro_kernel kern = isa->kern[mr];

			if (c->apack)
				ap = apack_panel(c, k0, kc, m);
			else
			{
				pack_a_block(c, abuf, m, mr, k0, kc);
				ap = abuf;
			}
			for (p = 0; p < npanels; p++)
			{
				int64_t		n = n0 + p * isa->nr;

				kern(kc, ap, bblock + p * kc * isa->nr,
					 c->C + m * c->N + n, c->N, (int) MIN(isa->nr, n1 - n),
					 k0 > 0, last && c->bias ? c->bias + n : NULL,
					 &pf, per_call);
			}
		}
	}
}

/* Task: tiles [t0, t1), numbered row-major over the (m, n) tile grid. */
static void
gemm_task(void *arg, int64_t t0, int64_t t1)
{
	const mm_ctx *c = (const mm_ctx *) arg;
	int64_t		t;

	for (t = t0; t < t1; t++)
	{
		int64_t		m0 = (t / c->n_ntiles) * c->mc;
		int64_t		n0 = (t % c->n_ntiles) * c->nc;
		int64_t		nn0 = 0,
					nn1 = 0;

		if (t + 1 < t1)
		{
			nn0 = ((t + 1) % c->n_ntiles) * c->nc;
			nn1 = MIN(c->N, nn0 + c->nc);
		}
		gemm_tile(c, m0, MIN(c->M, m0 + c->mc), n0, MIN(c->N, n0 + c->nc),
				  nn0, nn1);
	}
}

/*
 * Output tiles and tasks, decided from the shape alone.
 *   - tile width nc: a multiple of NR, at most NC_MAX columns (so the
 *     packed kc x nc block and the prefetched next one share L2), aiming
 *     at ~16 tiles in all, each >= ~4 MFLOP and >= 2 panels wide;
 *   - tile height mc: all rows when M is small, else a multiple of MR;
 *   - a task is a run of consecutive tiles, sized for ~16-32 tasks, so
 *     that it knows which B block to prefetch next.
 */
static void
choose_tiles(mm_ctx *c)
{
	int64_t		MR = c->isa->mr,
				NR = c->isa->nr;
	int64_t		mc,
				nc,
				n_mtiles,
				ntiles;

	mc = c->M <= MC_SMALL ? c->M : round_up(MC_TILE, MR);
	n_mtiles = ceil_div(c->M, mc);

	nc = round_up(ceil_div(c->N, MAX(1, TILES_TARGET / n_mtiles)), NR);
	nc = MAX(nc, round_up(ceil_div((int64_t) 1 << 21, MIN(mc, c->M) * c->K), NR));
	nc = MAX(nc, 2 * NR);
	nc = MIN(nc, NC_MAX);
	nc = MIN(nc, round_up(c->N, NR));

	c->mc = mc;
	c->nc = nc;
	c->n_ntiles = ceil_div(c->N, nc);
	ntiles = n_mtiles * c->n_ntiles;
	c->tile_grain = MAX(1, ntiles / 24);
}

/*
 * A buffer for a whole packed matrix: the calling thread's scratch when it
 * is at most PACK_KEEP bytes (kept for the next call), else malloc'd for
 * this call only (*owned, to be freed).  NULL when allocation fails.
 */
static float *
whole_matrix_buffer(scratch *s, size_t n, void **owned)
{
	*owned = NULL;
	if (n * sizeof(float) <= PACK_KEEP)
		return scratch_get(s, n);
#ifdef LLM_MATMUL_TEST_NO_MEMORY
	return NULL;
#endif
	*owned = malloc(n * sizeof(float) + 64);
	return *owned ? (float *) (((uintptr_t) *owned + 63) & ~(uintptr_t) 63) : NULL;
}

static int
matmul_gemm(mm_ctx *c)
{
	int64_t		MR = c->isa->mr,
				NR = c->isa->nr;
	void	   *a_owned = NULL;
	int64_t		npack;
	int			rc = LLM_OK;

	choose_tiles(c);
	/* from the shape alone (the bits depend on it), not from malloc's luck */
	c->kc = choose_kc(c->K, c->M > c->mc ? KC_PREPACKED : KC_STREAM);
	c->mpanels = ceil_div(c->M, MR);
	c->npanels = ceil_div(c->N, NR);

	/*
	 * Pack all of A once: every tile along N reuses it.  B is packed once
	 * too when several row tiles share it (M > mc) and it is not huge (a
	 * 150 MB lm_head would be a transient allocation as big as the weight,
	 * and re-streaming it per row tile is cheap next to 2*mc flops per
	 * element); otherwise each tile packs its own B blocks as it goes,
	 * from memory into L2.  If an allocation fails, tiles pack what is
	 * missing themselves.
	 */
	c->apack = whole_matrix_buffer(&tls_pack_a, (size_t) (c->mpanels * MR * c->K),
								   &a_owned);
	c->bpack = NULL;
	if (c->apack && c->M > c->mc &&
		(size_t) (c->npanels * NR * c->K) * sizeof(float) <= PACK_KEEP)
		c->bpack = scratch_get(&tls_pack_bg, (size_t) (c->npanels * NR * c->K));
	c->a_group = MAX(1, (1 << 16) / (c->kc * MR));
	c->b_group = MAX(1, (1 << 16) / (c->kc * NR));
	c->a_units = c->apack ? ceil_div(c->mpanels, c->a_group) : 0;
	c->b_units = c->bpack ? ceil_div(c->npanels, c->b_group) : 0;
	npack = ceil_div(c->K, c->kc) * (c->a_units + c->b_units);
	if (npack > 0)
		rc = llm_parallel_for(npack, 1, pack_task, c);

	if (rc == LLM_OK)
		rc = llm_parallel_for(ceil_div(c->M, c->mc) * c->n_ntiles,
							  c->tile_grain, gemm_task, c);
	free(a_owned);
	return rc;
}

/* ======================================================================== */
/* 5. GEMV: M == 1 (and N == 1, transposed)                                */
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
 * slab per thread (at most GEMV_SLAB bytes of B).  That gives each thread
 * the longest sequential streams, and the same slab on every call (as
 * OpenBLAS does), which lets a weight matrix of a few MB partly stay in
 * the threads' L2 caches between calls.
 */
#define GEMV_CHUNK 2048			/* columns of y kept in L1 (8 KB) */
#define GEMV_SLAB (4 << 20)		/* at most this many bytes of B per task */

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
	int			narrow = s1 - s0 <= 512;
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

static int
matmul_gemv(mm_ctx *c, llm_isa isa)
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
	return llm_parallel_for(c->N, grain,
							isa == LLM_ISA_AVX512 ? gemv512_task : gemv256_task, c);
}

/* The fast paths: GEMV when one side is a vector, GEMM otherwise. */
static int
matmul_simd(mm_ctx *c, llm_isa isa)
{
	if (c->M == 1)
	{
		/* a [1,K] row is the same memory whether stored [1,K] or [K,1] */
		c->transA = 0;
		return matmul_gemv(c, isa);
	}
	if (c->N == 1)
	{
		/*
		 * C[M,1] = op(A) @ b is C^T[1,M] = b^T @ op(A)^T: a GEMV whose
		 * matrix is A, "transposed" exactly when A is stored [M,K].  The
		 * bias (one value) is added afterwards, as everywhere: chain + bias.
		 */
		const float *bias = c->bias;
		const float *A = c->A;
		int64_t		i;
		int			rc;

		c->A = c->B;
		c->B = A;
		c->N = c->M;
		c->M = 1;
		c->transB = !c->transA;
		c->transA = 0;
		c->bias = NULL;
		rc = matmul_gemv(c, isa);
		if (rc == LLM_OK && bias)
			for (i = 0; i < c->N; i++)
				c->C[i] += bias[0];
		return rc;
	}
	c->isa = isa == LLM_ISA_AVX512 ? &isa_avx512 : &isa_avx2;
	return matmul_gemm(c);
}

#endif							/* LLM_X86 */

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

#if LLM_X86
	if (isa != LLM_ISA_SCALAR)
		return matmul_simd(&c, isa);
#else
	(void) isa;
#endif
	return matmul_scalar(&c);
}
