/*
 * gemm.c -- the GEMM driver of llm_matmul (M > 1): per-thread scratch,
 * packing, prefetching the next B block, output tiles and tasks.
 *
 * The driver and the packing code are plain C; they call the micro-kernels
 * and packing helpers of the ISA in use through its gemm_kernels plug-in
 * (microkernel_avx512.c, microkernel_avx2.c).  The micro-kernels exist
 * only for x86, so this file is compiled for x86 only; other targets use
 * the scalar reference.  See matmul.c for the design.
 */
#include "matmul_internal.h"

#include <stdlib.h>

#if LLM_X86

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
#define PACK_KEEP (32u << 20)	/* keep whole-matrix pack buffers <= 32 MB */

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
		free(s->raw);
		s->buf = malloc_aligned(n, &s->raw);
		s->cap = s->buf ? n : 0;
	}
	return s->buf;
}

/* ---- packing and prefetching -------------------------------------------- */

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
pack_panels(const gemm_kernels *isa, const float *src, int64_t ld, int kmajor,
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

/* ---- the driver ---------------------------------------------------------- */

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
	const gemm_kernels *isa = c->isa;
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
							   k0 > 0 || c->accumulate, last && c->bias ? c->bias + n : NULL,
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
	const gemm_kernels *isa = c->isa;
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
					 k0 > 0 || c->accumulate, last && c->bias ? c->bias + n : NULL,
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
	return malloc_aligned(n, owned);
}

int
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

#endif							/* LLM_X86 */
