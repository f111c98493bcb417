/*
 * gemm.c -- the GEMM driver of llm_matmul (M > 1): per-thread scratch,
 * packing, prefetching the next B block, output tiles and tasks.
 *
 * The driver and the packing code are plain C; they call the micro-kernels
 * and packing helpers of the ISA in use through its gemm_kernels plug-in
 * (microkernel_avx512.c, microkernel_avx2.c, microkernel_neon.c).  The
 * micro-kernels exist for x86-64 and aarch64, so this file is compiled for
 * those only; other targets use the scalar reference.  See matmul.c for
 * the design.
 */
#include "matmul_internal.h"

#include <stdlib.h>

#if LLM_X86 || LLM_NEON

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
#ifndef LARGE_K
#define LARGE_K 4096			/* from this K on, few wide tiles (choose_tiles) */
#endif
#define LARGE_K_TILES 4
#define PACK_KEEP (32u << 20)	/* whole-matrix pack buffers: at most 32 MB */
#ifndef PACK_AHEAD
#define PACK_AHEAD 16			/* bf16 panels: source rows prefetched ahead */
#endif

/* ---- per-thread scratch ------------------------------------------------- */

typedef struct
{
	void	   *raw;			/* what malloc returned */
	float	   *buf;			/* 64-byte aligned */
	size_t		cap;			/* floats */
} scratch;

static __thread scratch tls_pack_b;	/* B block, inside tasks */
static __thread scratch tls_pack_ab;	/* A block, inside tasks (no whole A) */
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

/* rows of len elements of `size` bytes (float or bf16), stride elements apart, from base */
static pf_region
region(const void *base, size_t size, int64_t stride, int64_t rows, int64_t len)
{
	/* +1: rows need not be aligned */
	return (pf_region) {(const char *) base, stride * (int64_t) size, rows,
		ceil_div(len * (int64_t) size, 64) + 1};
}

static const pf_region no_region = {NULL, 0, 0, 1};

/* The source of op(B)[k0:k0+kc, n0:n1]. */
static pf_region
b_region(const mm_ctx *c, int64_t k0, int64_t kc, int64_t n0, int64_t n1)
{
	/* a bf16 B: the same rows, half the bytes */
	if (c->B16 && c->transB)
		return region(c->B16 + n0 * c->K + k0, sizeof(llm_bf16), c->K, n1 - n0, kc);
	if (c->B16)
		return region(c->B16 + k0 * c->N + n0, sizeof(llm_bf16), c->N, kc, n1 - n0);
	if (c->transB)
		return region(c->B + n0 * c->K + k0, sizeof(float), c->K, n1 - n0, kc);
	return region(c->B + k0 * c->N + n0, sizeof(float), c->N, kc, n1 - n0);
}

/* The source of op(A)[m0:m1, k0:k0+kc]. */
static pf_region
a_region(const mm_ctx *c, int64_t k0, int64_t kc, int64_t m0, int64_t m1)
{
	if (c->transA)
		return region(c->A + k0 * c->M + m0, sizeof(float), c->M, kc, m1 - m0);
	return region(c->A + m0 * c->K + k0, sizeof(float), c->K, m1 - m0, kc);
}

/* Prefetch a, then b (either may be no_region). */
static void
prefetch_regions(prefetcher *pf, pf_region a, pf_region b)
{
	pf->cur = a.rows > 0 ? a : b;
	pf->then = a.rows > 0 ? b : no_region;
	pf->row = pf->line = 0;
}

static int64_t
region_lines(pf_region r)
{
	return r.rows * r.row_lines;
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

#if LLM_X86
#define TARGET_WIDEN TARGET_AVX2	/* every x86 ISA with a GEMM runs AVX2 */
#else
#define TARGET_WIDEN
#endif

/* d[0:n] = the floats of s[0:n] */
TARGET_WIDEN static inline __attribute__((always_inline)) void
widen_bf16(const llm_bf16 *s, float *d, int64_t n)
{
	int64_t		j = 0;

#if LLM_X86
	for (; j + 8 <= n; j += 8)
		_mm256_storeu_ps(d + j, load8_bf16(s + j));
#else
	for (; j + 4 <= n; j += 4)
		vst1q_f32(d + j, load4_bf16(s + j));
#endif
	for (; j < n; j++)
		d[j] = llm_bf16_to_float(s[j]);
}

/*
 * pack_panels for a bf16 source (B16) without bf16 panels (a transposed
 * B16, or an ISA without kern_bf16): the same panels, each value widened
 * to the float it stands for.  So the micro-kernels, unchanged, compute
 * fp32 arithmetic over the widened B -- the same bits as llm_matmul over
 * those floats.
 *   kmajor: each k-row is widened across all panels, front to back.
 *   else: each panel's rows are widened WIDEN_K values at a time into a
 *     stack buffer, which the ISA's transpose helper then packs.
 */
#define WIDEN_K 64

TARGET_WIDEN static void
pack_panels_bf16(const gemm_kernels *isa, const llm_bf16 *src, int64_t ld, int kmajor,
				 float *dst, int64_t kc, int64_t nx, int W)
{
	float		tmp[NR_MAX * WIDEN_K] __attribute__((aligned(64)));
	int64_t		p,
				k;
	int			j;

	for (p = 0; p * W < nx; p++)
	{
		int			n = (int) MIN(W, nx - p * W);
		float	   *d = dst + p * kc * W;

		if (kmajor)				/* src(k, x) = src[k*ld + x] */
			for (k = 0; k < kc; k++)
			{
				widen_bf16(src + k * ld + p * W, d + k * W, n);
				for (j = n; j < W; j++)
					d[k * W + j] = 0.0f;
			}
		else					/* src(k, x) = src[x*ld + k] */
			for (k = 0; k < kc; k += WIDEN_K)
			{
				int64_t		kn = MIN(WIDEN_K, kc - k);

				for (j = 0; j < n; j++)
					widen_bf16(src + (p * W + j) * ld + k, tmp + j * WIDEN_K, kn);
				isa->transpose(tmp, WIDEN_K, d + k * W, W, kn, n, W);
			}
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

/*
 * pack_panels for a plain B16 kept as bf16 (b16_panels): each panel row
 * is NR bf16 in the order of the ISA's kern_bf16 (copy_bf16), which widens
 * them in registers.  8 k-rows at a time across all panels, as pack_panels.
 * The first block of a task's first tile was not prefetched (see
 * gemm_tile; at T = 64 most tasks are one tile), and its rows are short
 * (nc bf16: a few lines), too short for the hardware prefetchers: so the
 * rows PACK_AHEAD k ahead are prefetched while these are copied (GPT-2
 * small's 48 block GEMMs at T = 64 on an EPYC, one thread: fp32 time /
 * bf16 time 1.15-1.16 without, 1.17-1.23 with; the lines of a block the
 * kernels prefetched are in L2 already, and cost a few cycles).
 */
static void
pack_panels_b16(const gemm_kernels *isa, const llm_bf16 *src, int64_t ld,
				llm_bf16 *dst, int64_t kc, int64_t nx)
{
	int			W = isa->nr;
	int64_t		row_lines = ceil_div(nx * (int64_t) sizeof(llm_bf16), 64) + 1;
	int64_t		p,
				kk;

	for (kk = 0; kk < kc; kk += 8)
	{
		for (int64_t k = kk + PACK_AHEAD; k < MIN(kc, kk + PACK_AHEAD + 8); k++)
			for (int64_t l = 0; l < row_lines; l++)
				__builtin_prefetch((const char *) (src + k * ld) + l * 64, 0, 3);
		for (p = 0; p * W < nx; p++)
			isa->copy_bf16(src + kk * ld + p * W, ld, dst + p * kc * W + kk * W, W,
						   MIN(8, kc - kk), (int) MIN(W, nx - p * W));
	}
}

/*
 * op(B)[k0:k0+kc, n0:n0+nc] as ceil(nc/NR) panels of kc x NR, floats or
 * (b16_panels) bf16
 */
static void
pack_b_block(const mm_ctx *c, void *dst, int64_t k0, int64_t kc,
			 int64_t n0, int64_t nc)
{
	if (c->b16_panels)
		pack_panels_b16(c->isa, c->B16 + k0 * c->N + n0, c->N, dst, kc, nc);
	else if (c->B16 && c->transB)
		pack_panels_bf16(c->isa, c->B16 + n0 * c->K + k0, c->K, 0, dst, kc, nc, c->isa->nr);
	else if (c->B16)
		pack_panels_bf16(c->isa, c->B16 + k0 * c->N + n0, c->N, 1, dst, kc, nc, c->isa->nr);
	else if (c->transB)			/* stored [N,K] */
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

static const char *
bpack_panel(const mm_ctx *c, int64_t k0, int64_t kc, int64_t n0)
{
	int64_t		NR = c->isa->nr;

	return (const char *) c->bpack + (k0 * c->npanels * NR + (n0 / NR) * kc * NR) * c->b_size;
}

/*
 * The micro-kernel for mr rows on the B panel bp (floats, or bf16 when
 * b16_panels); the arguments are those of micro_kernel.
 */
static inline void
run_kernel(const mm_ctx *c, int mr, int64_t kc, const float *ap, const char *bp,
		   float *cp, int nr, int accumulate, const float *bias, prefetcher *pf,
		   int64_t pf_lines)
{
	if (c->b16_panels)
		c->isa->kern_bf16[mr] (kc, ap, (const llm_bf16 *) bp, cp, c->N, nr, accumulate,
							   bias, pf, pf_lines);
	else
		c->isa->kern[mr] (kc, ap, (const float *) bp, cp, c->N, nr, accumulate, bias,
						  pf, pf_lines);
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

			pack_b_block(c, (void *) bpack_panel(c, k0, kc, n0), k0, kc,
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

	prefetch_regions(&pf, no_region, no_region);

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
				run_kernel(c, mr, kc, ap, (const char *) bbuf, c->C + m * c->N + n, nr,
						   k0 > 0 || c->accumulate, last && c->bias ? c->bias + n : NULL,
						   &pf, 0);
			}
		}
	}
}

/* An output tile, C[m0:m1, n0:n1]. */
typedef struct
{
	int64_t		m0,
				m1,
				n0,
				n1;
} tile_range;

/*
 * One output tile over all of K.  For each k-block the B block (kc x tile
 * width, <= 768 KB) is packed into this thread's buffer (or found in the
 * prepacked B) and stays in L2, and so is the A block (tile height x kc)
 * when A is not packed up front; then each MR-row panel of A (14 KB, stays
 * in L1) sweeps across the NR-wide panels of B.  Meanwhile the sources of
 * the next blocks this task packs (the next k-block's, or the first of
 * `next`, the task's next tile, when not NULL) are prefetched into L2.
 */
static void
gemm_tile(const mm_ctx *c, tile_range t, const tile_range *next)
{
	const gemm_kernels *isa = c->isa;
	int64_t		MR = isa->mr;
	int64_t		npanels = ceil_div(t.n1 - t.n0, isa->nr);
	int64_t		ncalls = ceil_div(t.m1 - t.m0, MR) * npanels;
	float	   *bpack = NULL,
			   *apack = NULL;
	prefetcher	pf;
	int64_t		k0,
				m,
				p;

	if ((!c->bpack && (bpack = scratch_get(&tls_pack_b,
										   (size_t) (c->kc * npanels * isa->nr))) == NULL) ||
		(!c->apack && (apack = scratch_get(&tls_pack_ab,
										   (size_t) (c->kc * round_up(t.m1 - t.m0, MR)))) == NULL))
	{
		gemm_tile_small_buffers(c, t.m0, t.m1, t.n0, t.n1);
		return;
	}

	for (k0 = 0; k0 < c->K; k0 += c->kc)
	{
		int64_t		kc = MIN(c->kc, c->K - k0);
		int			last = k0 + kc >= c->K;
		const char *bblock;
		pf_region	pa = no_region,
					pb = no_region;
		int64_t		per_call;

		if (c->bpack)
			bblock = bpack_panel(c, k0, kc, t.n0);
		else
		{
			pack_b_block(c, bpack, k0, kc, t.n0, t.n1 - t.n0);
			bblock = (const char *) bpack;
		}
		if (apack)
			pack_a_block(c, apack, t.m0, t.m1 - t.m0, k0, kc);

		/* what to pull into L2 while the kernels run (see prefetcher) */
		if (!last || next)
		{
			tile_range	nt = last ? *next : t;
			int64_t		nk0 = last ? 0 : k0 + kc;
			int64_t		nkc = MIN(c->kc, c->K - nk0);

			if (apack)
				pa = a_region(c, nk0, nkc, nt.m0, nt.m1);
			if (bpack)
				pb = b_region(c, nk0, nkc, nt.n0, nt.n1);
		}
		prefetch_regions(&pf, pa, pb);
		per_call = ceil_div(region_lines(pa) + region_lines(pb), ncalls);

		for (m = t.m0; m < t.m1; m += MR)
		{
			int			mr = (int) MIN(MR, t.m1 - m);
			const float *ap = apack ? apack + (m - t.m0) * kc : apack_panel(c, k0, kc, m);

			for (p = 0; p < npanels; p++)
			{
				int64_t		n = t.n0 + p * isa->nr;

				run_kernel(c, mr, kc, ap, bblock + p * kc * isa->nr * c->b_size,
						   c->C + m * c->N + n, (int) MIN(isa->nr, t.n1 - n),
						   k0 > 0 || c->accumulate, last && c->bias ? c->bias + n : NULL,
						   &pf, per_call);
			}
		}
	}
}

/* Tile t, numbered row-major over the (m, n) tile grid. */
static tile_range
tile_of(const mm_ctx *c, int64_t t)
{
	int64_t		m0 = (t / c->n_ntiles) * c->mc;
	int64_t		n0 = (t % c->n_ntiles) * c->nc;

	return (tile_range) {m0, MIN(c->M, m0 + c->mc), n0, MIN(c->N, n0 + c->nc)};
}

/* Task: tiles [t0, t1). */
static void
gemm_task(void *arg, int64_t t0, int64_t t1)
{
	const mm_ctx *c = (const mm_ctx *) arg;

	for (int64_t t = t0; t < t1; t++)
	{
		tile_range	next = tile_of(c, t + 1);

		gemm_tile(c, tile_of(c, t), t + 1 < t1 ? &next : NULL);
	}
}

/*
 * Output tiles and tasks, decided from the shape alone.
 *   - tile width nc: a multiple of NR, at most NC_MAX columns (so the
 *     packed kc x nc block and the prefetched next one share L2), aiming
 *     at ~16 tiles in all, each >= ~4 MFLOP and >= 2 panels wide;
 *   - tile height mc: all rows when M is small, else a multiple of MR;
 *   - a task is a run of consecutive tiles, sized for ~16-32 tasks, so
 *     that it knows which blocks to prefetch next.
 * Large K (the tied lm_head's dx = dlogits @ wte, K = vocab) is tiled by
 * large_k_tiles afterwards; the k-block size is still the one this rule
 * gives (choose_kc in matmul_gemm), so the bits stay what they were.
 * (Tiles never change the bits, only k-blocks do: each element is the
 * same chain whatever tile it falls in.)
 */
static void
choose_tiles(mm_ctx *c)
{
	int64_t		MR = c->isa->mr,
				NR = c->isa->nr;
	int			large_k = c->K >= LARGE_K;
	int64_t		target = large_k ? LARGE_K_TILES : TILES_TARGET;
	int64_t		mc,
				nc,
				n_mtiles,
				ntiles;

	mc = c->M <= MC_SMALL ? c->M : round_up(MC_TILE, MR);
	n_mtiles = ceil_div(c->M, mc);

	nc = round_up(ceil_div(c->N, MAX(1, target / n_mtiles)), NR);
	nc = MAX(nc, round_up(ceil_div((int64_t) 1 << 21, MIN(mc, c->M) * c->K), NR));
	nc = MAX(nc, 2 * NR);
	nc = MIN(nc, NC_MAX / NR * NR);	/* (NEON's NR = 12 does not divide 512) */
	nc = MIN(nc, round_up(c->N, NR));
	c->n_ntiles = ceil_div(c->N, nc);

	/* large K, narrow N (lm_head, N = n_embd): split the rows too */
	if (large_k && n_mtiles * c->n_ntiles < target && c->M > MR)
	{
		mc = round_up(ceil_div(c->M, ceil_div(target, c->n_ntiles)), MR);
		n_mtiles = ceil_div(c->M, mc);
	}

	c->mc = mc;
	c->nc = nc;
	ntiles = n_mtiles * c->n_ntiles;
	c->tile_grain = MAX(1, ntiles / 24);
}

/*
 * Tiles when K is large (K >= LARGE_K: the lm_head's dx, [rows, vocab] @
 * [vocab, n_embd]).  Each tile runs over all of K and packs, block by
 * block, the rows of A and the columns of B it covers: a grid of mt x nt
 * tiles packs (reads from memory) A nt times and B mt times.  The output
 * is small (a few hundred rows and columns), so few tiles: the grid of at
 * least LARGE_K_TILES tiles (and at most NC_MAX columns wide) that packs
 * the fewest floats, nt * M + mt * N per k.  For the lab model's dx
 * (128 x 128) that is 2 x 2 tiles of ~64 x 64, where the rule for other
 * shapes gave 1 x 4 tiles of 128 x 32: each tile read all of A, and each
 * A panel served only 2 B panels.  Only the tiles change, not the
 * k-blocks: the same bits.
 */
static void
large_k_tiles(mm_ctx *c)
{
	int64_t		MR = c->isa->mr,
				NR = c->isa->nr;
	int64_t		max_mt = ceil_div(c->M, MR),
				max_nt = ceil_div(c->N, NR);
	int64_t		best_cost = -1,
				mt,
				nt;

	for (mt = 1; mt <= MIN(max_mt, LARGE_K_TILES); mt++)
	{
		nt = MIN(max_nt, ceil_div(LARGE_K_TILES, mt));
		nt = MAX(nt, ceil_div(c->N, NC_MAX / NR * NR));	/* tiles at most NC_MAX wide */
		if (best_cost < 0 || nt * c->M + mt * c->N < best_cost)
		{
			best_cost = nt * c->M + mt * c->N;
			c->mc = round_up(ceil_div(c->M, mt), MR);
			c->nc = round_up(ceil_div(c->N, nt), NR);
		}
	}
	c->n_ntiles = ceil_div(c->N, c->nc);
	c->tile_grain = 1;
}

/*
 * A buffer for a whole packed matrix of n floats: the calling thread's
 * scratch (kept for the next call), when n floats are at most PACK_KEEP
 * bytes and can be had; else NULL.
 */
static float *
whole_matrix_buffer(scratch *s, size_t n)
{
	return n * sizeof(float) <= PACK_KEEP ? scratch_get(s, n) : NULL;
}

int
matmul_gemm(mm_ctx *c)
{
	int64_t		MR = c->isa->mr,
				NR = c->isa->nr;
	int64_t		npack;
	int			rc = LLM_OK;

	/*
	 * A plain bf16 B is packed as bf16 panels where the ISA has kernels
	 * that widen them in registers (the same bits as widening while
	 * packing: kern_bf16); a transposed one (the tied lm_head) is widened
	 * while packing.
	 */
	c->b16_panels = c->B16 && !c->transB && c->isa->copy_bf16;
	c->b_size = c->b16_panels ? sizeof(llm_bf16) : sizeof(float);
	choose_tiles(c);
	/* from the shape alone (the bits depend on it), not from malloc's luck */
	c->kc = choose_kc(c->K, c->M > c->mc ? KC_PREPACKED : KC_STREAM);
	if (c->K >= LARGE_K)
		large_k_tiles(c);
	c->mpanels = ceil_div(c->M, MR);
	c->npanels = ceil_div(c->N, NR);

	/*
	 * Pack all of A once when several tiles along N reuse it, and all of
	 * B once when several row tiles share it (M > mc).  Neither when it is
	 * huge: a transient allocation of 50-150 MB (the lm_head's weight or
	 * dlogits) would cost its page faults on every call, more than the
	 * tiles packing their own blocks as they go, from memory into L2 (A
	 * once per tile column, B once per tile row, next to 2*mc (2*nc) flops
	 * per element).  Nor when K is large: there each tile packs its blocks
	 * from the source, which then is read once per tile column (row)
	 * instead of read, written whole and read again per tile (the lab
	 * model's dx = dlogits @ wte took 1.6x the CPU time with both packed
	 * up front).  If an allocation fails, tiles pack what is missing
	 * themselves too.
	 */
	c->apack = c->n_ntiles > 1 && c->K < LARGE_K ?
		whole_matrix_buffer(&tls_pack_a, (size_t) (c->mpanels * MR * c->K)) : NULL;
	c->bpack = c->M > c->mc && c->K < LARGE_K ?
		whole_matrix_buffer(&tls_pack_bg,
							(size_t) (c->npanels * NR * c->K * c->b_size / sizeof(float))) : NULL;
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
	return rc;
}

#endif							/* LLM_X86 || LLM_NEON */
