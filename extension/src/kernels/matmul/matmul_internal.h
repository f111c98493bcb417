/*
 * matmul_internal.h -- what the files of matmul/ share: the problem as
 * every task sees it (mm_ctx), the per-ISA GEMM plug-in (gemm_kernels: the
 * register block, micro-kernels and packing helpers), the prefetcher the
 * micro-kernels drive, and the entry points of each file.
 *
 *   matmul.c               llm_matmul, the per-ISA tables; the shape decides
 *                          GEMV or GEMM
 *   reference.c            the scalar reference
 *   gemm.c                 packing, prefetching and the GEMM driver
 *   microkernel_avx512.c   AVX-512 micro-kernels and packing helpers
 *   microkernel_avx2.c     AVX2 micro-kernels and packing helpers
 *   microkernel_neon.c     NEON (aarch64) micro-kernels and packing helpers
 *   gemv.c                 GEMV for M == 1 and N == 1
 *   gemv_bf16.c            GEMV for M == 1 over bf16 weights
 *   gemv_rows.c            llm_matmul_rows: M rows, each as GEMV computes it alone
 *
 * The design (GotoBLAS/BLIS GEMM, bandwidth-bound GEMV, determinism,
 * memory) is described at the top of matmul.c.
 */
#ifndef PG_LLM_MATMUL_INTERNAL_H
#define PG_LLM_MATMUL_INTERNAL_H

#include "../kernels.h"
#include "../dispatch.h"
#include "../simd.h"
#include "../bf16.h"

#define MR_MAX 14				/* largest MR of any ISA */
#define NR_MAX 48				/* largest NR of any ISA */

/* ---- the problem, as seen by every task --------------------------------- */

typedef struct gemm_kernels gemm_kernels;

typedef struct
{
	const float *A,
			   *B,
			   *bias;
	const llm_bf16 *B16;		/* B stored as bf16 instead (B is NULL) */
	float	   *C;
	int64_t		M,
				K,
				N;
	int			transA,
				transB;
	int			accumulate;		/* C += op(A) op(B) instead of C = */
	const matmul_kernels *kernels;	/* this call's ISA */
	const gemm_kernels *isa;	/* its GEMM plug-in (fast paths) */

	/* GEMM blocking, chosen from the shape */
	int64_t		kc;				/* k-block size (last block may be shorter) */
	int64_t		mc,
				nc;				/* output tile of one task */
	int64_t		n_ntiles;		/* tiles along N */
	int64_t		tile_grain;		/* tiles per task */
	const float *apack;			/* A packed for all tiles, or NULL */
	const float *bpack;			/* B packed for all tiles, or NULL */
	int			b16_panels;		/* B16's panels stay bf16 (kern_bf16), see gemm.c */
	int			b_size;			/* bytes of a packed B value: 4, or 2 when b16_panels */
	int64_t		mpanels,
				npanels;		/* MR-row panels of A, NR-column panels of B */
	int64_t		a_group,
				b_group;		/* panels per packing unit */
	int64_t		a_units,
				b_units;		/* packing units per k-block */
} mm_ctx;

/*
 * The matmul family's table (dispatch.h): `run` computes the whole
 * product; the fast paths find their GEMM plug-in and GEMV tasks here
 * (gemv_bf16: the same GEMV reading B16).
 */
struct matmul_kernels
{
	int			(*run) (mm_ctx *c);
	const gemm_kernels *gemm;
	llm_task_fn gemv;
	llm_task_fn gemv_bf16;
};

/* ---- prefetching the next blocks (gemm.c sets it up) --------------------- */

/*
 * Packing reads B (and A, when it is not packed up front) from L3 or DRAM,
 * and a copy loop alone cannot keep enough cache misses in flight:
 * unhidden, it took 30-40% of the time of the M = 64 shapes.  So while the
 * micro-kernels work on one block, we prefetch (into L2) the sources of
 * the blocks that will be packed next, one line every other k step inside
 * the micro-kernels (a burst of prefetches between calls would stall on
 * the line fill buffers).
 */
typedef struct
{
	const char *base;			/* first byte of the source region */
	int64_t		stride;			/* bytes between its rows (floats or bf16) */
	int64_t		rows;			/* 0: nothing */
	int64_t		row_lines;		/* 64-byte lines per row */
} pf_region;

typedef struct
{
	pf_region	cur;			/* the region being prefetched */
	pf_region	then;			/* the one after it (rows 0: none) */
	int64_t		row,
				line;			/* cursor in cur */
} prefetcher;

/* Prefetch the next line of the regions into L2, if any is left. */
static inline __attribute__((always_inline)) void
prefetch_one(prefetcher *pf)
{
	if (pf->row >= pf->cur.rows)
	{
		if (pf->then.rows == 0)
			return;
		pf->cur = pf->then;
		pf->then.rows = 0;
		pf->row = pf->line = 0;
	}
	__builtin_prefetch(pf->cur.base + pf->row * pf->cur.stride + pf->line * 64, 0, 2);
	if (++pf->line == pf->cur.row_lines)
	{
		pf->line = 0;
		pf->row++;
	}
}

#if LLM_X86
/*
 * 8 bf16 at p, widened to the 8 floats they stand for: each 16-bit value
 * becomes the high half of a 32-bit lane (zero extension, shift by 16).
 */
TARGET_AVX2 static inline __attribute__((always_inline)) __m256
load8_bf16(const llm_bf16 *p)
{
	__m128i		h = _mm_loadu_si128((const __m128i *) p);

	return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif
#if LLM_NEON
/* 4 bf16 at p, widened to the 4 floats they stand for (shift left long by 16) */
static inline __attribute__((always_inline)) float32x4_t
load4_bf16(const llm_bf16 *p)
{
	return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}
#endif

/* ---- the GEMM plug-in of an ISA ----------------------------------------- */

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
 * The same for a panel of B kept as bf16 (bp: kc rows of NR bf16, in the
 * ISA's order inside a row, see copy_bf16): each value is widened to its
 * float in registers, then the very FMA chain of `kernel` runs, so C has
 * the bits of `kernel` over the widened panel.
 */
typedef void (*micro_kernel_bf16) (int64_t kc, const float *ap, const llm_bf16 *bp,
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

/*
 *   copy_bf16: row r of dst (NR bf16, ds apart) holds src[r*ss + j] for
 *              j < n and 0 for n <= j < NR, r < rows, in the order the
 *              ISA's kern_bf16 reads them (an interleave that lets it
 *              widen a vector of pairs with one shift and one and).
 */
typedef void (*copy_bf16_fn) (const llm_bf16 *src, int64_t ss, llm_bf16 *dst,
							  int64_t ds, int64_t rows, int n);

struct gemm_kernels
{
	int			mr,
				nr;
	micro_kernel kern[MR_MAX + 1];	/* kern[m] computes m rows */
	copy_fn		copy;
	transpose_fn transpose;
	/* bf16 panels of a plain (not transposed) B16; NULL: widen while packing */
	micro_kernel_bf16 kern_bf16[MR_MAX + 1];
	copy_bf16_fn copy_bf16;
};

/* ---- entry points of the files ------------------------------------------ */

/* reference.c */
int			matmul_scalar(mm_ctx *c);

#if LLM_X86 || LLM_NEON
/* matmul.c: GEMV or GEMM, as the shape says */
int			matmul_simd(mm_ctx *c);

/* gemm.c */
int			matmul_gemm(mm_ctx *c);

/* gemv.c */
int			matmul_gemv(mm_ctx *c);
#endif

#if LLM_X86
/* gemv.c */
void		gemv512_task(void *arg, int64_t n0, int64_t n1);
void		gemv256_task(void *arg, int64_t n0, int64_t n1);

/* gemv_bf16.c */
void		gemv512_bf16_task(void *arg, int64_t n0, int64_t n1);
void		gemv256_bf16_task(void *arg, int64_t n0, int64_t n1);

/* microkernel_avx512.c, microkernel_avx2.c */
extern const gemm_kernels gemm_avx512;
extern const gemm_kernels gemm_avx2;
#endif

#if LLM_NEON
/* gemv.c, gemv_bf16.c, microkernel_neon.c */
void		gemv_neon_task(void *arg, int64_t n0, int64_t n1);
void		gemv_neon_bf16_task(void *arg, int64_t n0, int64_t n1);
extern const gemm_kernels gemm_neon;
#endif

#endif							/* PG_LLM_MATMUL_INTERNAL_H */
