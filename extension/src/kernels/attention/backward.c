/*
 * backward.c -- the backward of llm_attention (forward.c),
 * flash-attention style: nothing of size Tq x Tk is kept from the forward,
 * the probabilities are recomputed from its logsumexp.  Per head, with
 * S = Q K^T (raw dot products), scale = 1/sqrt(hd):
 *
 *   P  = exp(S * scale - lse)         (0 where masked)
 *   dV += P^T dY
 *   dP = dY V^T
 *   D  = rowsum(dY o Y)               (= rowsum(P o dP), one per query)
 *   dS = P o (dP - D) * scale
 *   dQ += dS K,   dK += dS^T Q
 *
 * One task per head (tasks never share an output element: a head owns its
 * hd columns of dq, dk and dv), five block products per (key block, query
 * block) pair, as FlashAttention-2's backward.  Keys are the outer loop: a
 * block of BK keys keeps its dK and dV sums in the task's scratch while
 * the query blocks that see it go by, and every query's dQ sum grows one
 * key block at a time.  All sums run in a fixed order, and each gradient
 * is summed in scratch first and then added to the caller's buffer, so
 * the bits do not depend on the number of threads.
 *
 * Inside a block every product is made of one register tile
 * (inner_kernels.c), C[8][32] (+)= A B, whose A is read with any row and
 * column stride (so that P^T and dS^T need no transposed copy) and whose
 * B is 32 contiguous floats a row:
 *
 *   S  [q, k]  = Q  [q, d]  Kt [d, k]     A = Q rows,   B = packed K^T
 *   dP [q, k]  = dY [q, d]  Vt [d, k]     A = dY rows,  B = packed V^T
 *   dV [k, d] += P^T[k, q]  dY [q, d]     A = P by columns
 *   dK [k, d] += dS^T[k, q] Q  [q, d]     A = dS by columns
 *   dQ [q, d] += dS [q, k]  K  [k, d]     A = dS rows
 *
 * Each head's q, k, v and dy are first copied out of their strided rows
 * into contiguous, zero-padded blocks (as the forward packs K and V), so
 * the tiles never read past a row and GPT-2's fused [T, 3C] qkv and its
 * gradient are used in place.  Scratch is O((Tq + Tk) * hd) per task.
 */
#include "attention_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BQ 64					/* queries per block */
#define BK 64					/* keys per block */
#define LDS (BK + 16)			/* row stride of the S and dP blocks (not 2^n) */

/* ---- one head ------------------------------------------------------------- */

typedef struct
{
	const float *q,
			   *k,
			   *v,
			   *y,
			   *lse,
			   *dy;
	int64_t		ldq,
				ldk,
				ldv;
	float	   *dq,
			   *dk,
			   *dv;
	int64_t		ldq_grad,
				ldk_grad,
				ldv_grad;
	int64_t		Tq,
				Tk,
				C,
				hd,
				tq8,			/* Tq rounded up to TILE_ROWS */
				tk32,			/* Tk rounded up to TILE_COLS */
				hd32;			/* hd rounded up to TILE_COLS */
	int			causal;
	float		scale;
	const attention_kernels *kern;
	int			out_of_memory;
} attention_backward_ctx;

/* How many keys query row i sees: keys 0 .. visible-1 (as the forward). */
static int64_t
visible_keys(const attention_backward_ctx *c, int64_t i)
{
	return c->causal ? causal_keys(i, c->Tq, c->Tk) : c->Tk;
}

/* The first query row that sees key j (0 without a mask; may be >= Tq). */
static int64_t
first_query(const attention_backward_ctx *c, int64_t j)
{
	return c->causal ? MAX(0, j - (c->Tk - c->Tq)) : 0;
}

/* The task's scratch, carved from one allocation. */
typedef struct
{
	float	   *q,				/* [tq8][hd32]  this head's queries, zero padded */
			   *dy,				/* [tq8][hd32] */
			   *dq,				/* [tq8][hd32]  the dQ sums */
			   *d,				/* [tq8]        D */
			   *k,				/* [tk32][hd32] */
			   *kt,				/* [tk32/32][hd][32]  K^T in blocks of 32 keys */
			   *vt,				/* [tk32/32][hd][32]  V^T likewise */
			   *s,				/* [BQ][LDS]    S, then P */
			   *dp,				/* [BQ][LDS]    dP, then dS */
			   *dk,				/* [BK][hd32]   the dK sums of a key block */
			   *dv;				/* [BK][hd32] */
} head_scratch;

static float *
scratch_alloc(const attention_backward_ctx *c, head_scratch *w, void **base)
{
	size_t		q_size = (size_t) (c->tq8 * c->hd32),
				k_size = (size_t) (c->tk32 * c->hd32),
				kt_size = (size_t) (c->tk32 * c->hd),
				blk_size = (size_t) (BQ * LDS),
				acc_size = (size_t) (BK * c->hd32),
				d_size = (size_t) round_up(c->tq8, 16);
	float	   *p = malloc_aligned(3 * q_size + d_size + k_size + 2 * kt_size +
								   2 * blk_size + 2 * acc_size, base);

	if (p == NULL)
		return NULL;
	w->q = p;
	w->dy = w->q + q_size;
	w->dq = w->dy + q_size;
	w->d = w->dq + q_size;
	w->k = w->d + d_size;
	w->kt = w->k + k_size;
	w->vt = w->kt + kt_size;
	w->s = w->vt + kt_size;
	w->dp = w->s + blk_size;
	w->dk = w->dp + blk_size;
	w->dv = w->dk + acc_size;
	return p;
}

/*
 * The rows of q, k, v, their gradients, y and dy lie 3C or C floats apart:
 * each on another page, where the hardware prefetchers stop.  The row
 * loops below ask for the row ROW_PREFETCH ahead of the one they use.
 */
#define ROW_PREFETCH 4

static inline void
prefetch_row(const float *row, int64_t n, int for_write)
{
	for (int64_t i = 0; i < n; i += 16)	/* one cache line is 16 floats */
	{
		if (for_write)
			__builtin_prefetch(row + i, 1);
		else
			__builtin_prefetch(row + i, 0);
	}
}

/* a . b over n floats, in 16 independent sums the compiler vectorises */
static float
dot(const float *restrict a, const float *restrict b, int64_t n)
{
	float		sum[16] = {0},
				total = 0.0f;
	int64_t		d = 0;

	for (; d + 16 <= n; d += 16)
		for (int j = 0; j < 16; j++)
			sum[j] += a[d + j] * b[d + j];
	for (; d < n; d++)
		sum[0] += a[d] * b[d];
	for (int j = 0; j < 16; j++)
		total += sum[j];
	return total;
}

/* rows [0, rows) of src (stride ld, hd floats each) into dst [rows_p][hd32] */
static void
pack_rows(const float *src, int64_t ld, int64_t rows, int64_t rows_p,
		  int64_t hd, int64_t hd32, float *dst)
{
	memset(dst, 0, (size_t) (rows_p * hd32) * sizeof(float));
	for (int64_t r = 0; r < rows; r++)
	{
		if (r + ROW_PREFETCH < rows)
			prefetch_row(src + (r + ROW_PREFETCH) * ld, hd, 0);
		memcpy(dst + r * hd32, src + r * ld, (size_t) hd * sizeof(float));
	}
}

/* rows of src as blocks of 32 transposed: dst[j/32][d][j%32] = src[j][d] */
static void
pack_transposed(const float *src, int64_t ld, int64_t rows, int64_t rows32,
				int64_t hd, float *dst)
{
	for (int64_t j = 0; j < rows32; j++)
	{
		float	   *dj = dst + (j / TILE_COLS) * hd * TILE_COLS + j % TILE_COLS;

		if (j + ROW_PREFETCH < rows)
			prefetch_row(src + (j + ROW_PREFETCH) * ld, hd, 0);

		for (int64_t d = 0; d < hd; d++)
			dj[d * TILE_COLS] = j < rows ? src[j * ld + d] : 0.0f;
	}
}

/* Copy the head's inputs out of their strided rows; D = rowsum(dY o Y). */
static void
pack_head(const attention_backward_ctx *c, int64_t head, head_scratch *w)
{
	const int64_t hd = c->hd,
				col = head * hd;

	pack_rows(c->q + col, c->ldq, c->Tq, c->tq8, hd, c->hd32, w->q);
	pack_rows(c->dy + col, c->C, c->Tq, c->tq8, hd, c->hd32, w->dy);
	pack_rows(c->k + col, c->ldk, c->Tk, c->tk32, hd, c->hd32, w->k);
	pack_transposed(c->k + col, c->ldk, c->Tk, c->tk32, hd, w->kt);
	pack_transposed(c->v + col, c->ldv, c->Tk, c->tk32, hd, w->vt);
	memset(w->dq, 0, (size_t) (c->tq8 * c->hd32) * sizeof(float));
	for (int64_t i = 0; i < c->Tq; i++)
	{
		if (i + ROW_PREFETCH < c->Tq)
			prefetch_row(c->y + (i + ROW_PREFETCH) * c->C + col, hd, 0);
		w->d[i] = dot(w->dy + i * c->hd32, c->y + i * c->C + col, hd);
	}
}

/*
 * One (key block, query block) pair: keys kb0 .. kb0+nk-1, queries
 * qb0 .. qb0+nq-1.  Adds into the dK/dV sums of the key block and the dQ
 * sums of the queries.
 */
static void
block_pair(const attention_backward_ctx *c, int64_t head, head_scratch *w,
		   int64_t kb0, int64_t nk, int64_t qb0, int64_t nq)
{
	const attention_kernels *kern = c->kern;
	const int64_t hd = c->hd,
				hd32 = c->hd32,
				nk32 = round_up(nk, TILE_COLS),
				nq8 = round_up(nq, TILE_ROWS);
	const float *lse = c->lse + head * c->Tq;

	/* S = Q K^T and dP = dY V^T, tiles no query of which sees a key skipped */
	for (int64_t r0 = 0; r0 < nq8; r0 += TILE_ROWS)
	{
		int64_t		seen = visible_keys(c, MIN(qb0 + r0 + TILE_ROWS, c->Tq) - 1) - kb0;

		for (int64_t c0 = 0; c0 < nk32 && c0 < seen; c0 += TILE_COLS)
		{
			const float *kt = w->kt + (kb0 + c0) * hd,
					   *vt = w->vt + (kb0 + c0) * hd;

			kern->tile(w->q + (qb0 + r0) * hd32, hd32, 1, kt, TILE_COLS, hd,
					   w->s + r0 * LDS + c0, LDS, 1.0f, 0);
			kern->tile(w->dy + (qb0 + r0) * hd32, hd32, 1, vt, TILE_COLS, hd,
					   w->dp + r0 * LDS + c0, LDS, 1.0f, 0);
		}
	}

	/* P and dS, row by row; zeros where masked and in the padding */
	for (int64_t r = 0; r < nq8; r++)
	{
		int64_t		i = qb0 + r;
		int64_t		n = r < nq ? MIN(nk, MAX(0, visible_keys(c, i) - kb0)) : 0;

		kern->probs_row(w->s + r * LDS, w->dp + r * LDS, n, nk32, c->scale,
						n > 0 ? lse[i] : 0.0f, n > 0 ? w->d[i] : 0.0f);
	}

	/* dV += P^T dY, dK += dS^T Q: 8 keys a tile, over the queries seeing them */
	for (int64_t kr0 = 0; kr0 < nk; kr0 += TILE_ROWS)
	{
		int64_t		t0 = MIN(nq8, MAX(0, first_query(c, kb0 + kr0) - qb0));

		if (t0 >= nq)
			continue;
		for (int64_t c0 = 0; c0 < hd32; c0 += TILE_COLS)
		{
			kern->tile(w->s + t0 * LDS + kr0, 1, LDS, w->dy + (qb0 + t0) * hd32 + c0, hd32,
					   nq8 - t0, w->dv + kr0 * hd32 + c0, hd32, 1.0f, 1);
			kern->tile(w->dp + t0 * LDS + kr0, 1, LDS, w->q + (qb0 + t0) * hd32 + c0, hd32,
					   nq8 - t0, w->dk + kr0 * hd32 + c0, hd32, 1.0f, 1);
		}
	}

	/* dQ += dS K: 8 queries a tile, over the keys they see */
	for (int64_t r0 = 0; r0 < nq8; r0 += TILE_ROWS)
	{
		int64_t		seen = MIN(nk, visible_keys(c, MIN(qb0 + r0 + TILE_ROWS, c->Tq) - 1) - kb0);

		if (seen <= 0)
			continue;
		for (int64_t c0 = 0; c0 < hd32; c0 += TILE_COLS)
			kern->tile(w->dp + r0 * LDS, LDS, 1, w->k + kb0 * hd32 + c0, hd32, seen,
					   w->dq + (qb0 + r0) * hd32 + c0, hd32, 1.0f, 1);
	}
}

/* dst[r * ld + d] += src[r * hd32 + d] for r < rows, d < hd */
static void
add_rows(float *dst, int64_t ld, const float *src, int64_t hd32, int64_t rows, int64_t hd)
{
	for (int64_t r = 0; r < rows; r++)
	{
		if (r + ROW_PREFETCH < rows)
			prefetch_row(dst + (r + ROW_PREFETCH) * ld, hd, 1);
		add_row(dst + r * ld, src + r * hd32, hd);
	}
}

static void
attention_backward_head(attention_backward_ctx *c, int64_t head)
{
	const int64_t hd = c->hd,
				hd32 = c->hd32,
				col = head * hd;
	head_scratch w;
	void	   *base;

	if (scratch_alloc(c, &w, &base) == NULL)
	{
		__atomic_store_n(&c->out_of_memory, 1, __ATOMIC_RELAXED);
		return;
	}
	pack_head(c, head, &w);

	for (int64_t kb0 = 0; kb0 < c->Tk; kb0 += BK)
	{
		int64_t		nk = MIN(BK, c->Tk - kb0);
		int64_t		q0 = first_query(c, kb0);

		if (q0 >= c->Tq)
			break;				/* no query sees these keys, nor any later */
		memset(w.dk, 0, (size_t) (BK * hd32) * sizeof(float));
		memset(w.dv, 0, (size_t) (BK * hd32) * sizeof(float));
		/* query blocks from the tile holding the first query that sees kb0 */
		for (int64_t qb0 = q0 - q0 % TILE_ROWS; qb0 < c->Tq; qb0 += BQ)
			block_pair(c, head, &w, kb0, nk, qb0, MIN(BQ, c->Tq - qb0));
		if (c->dk)
			add_rows(c->dk + kb0 * c->ldk_grad + col, c->ldk_grad, w.dk, hd32, nk, hd);
		if (c->dv)
			add_rows(c->dv + kb0 * c->ldv_grad + col, c->ldv_grad, w.dv, hd32, nk, hd);
	}
	if (c->dq)
		add_rows(c->dq + col, c->ldq_grad, w.dq, hd32, c->Tq, hd);
	free(base);
}

static void
attention_backward_task(void *arg, int64_t begin, int64_t end)
{
	for (int64_t head = begin; head < end; head++)
		attention_backward_head(arg, head);
}

int
llm_attention_backward(const float *q, int64_t ldq,
					   const float *k, int64_t ldk,
					   const float *v, int64_t ldv,
					   const float *y, const float *lse, const float *dy,
					   float *dq, int64_t ldq_grad,
					   float *dk, int64_t ldk_grad,
					   float *dv, int64_t ldv_grad,
					   int64_t Tq, int64_t Tk, int64_t C, int64_t n_head, int causal)
{
	attention_backward_ctx c = {
		.q = q, .k = k, .v = v, .y = y, .lse = lse, .dy = dy,
		.ldq = ldq, .ldk = ldk, .ldv = ldv,
		.dq = dq, .dk = dk, .dv = dv,
		.ldq_grad = ldq_grad, .ldk_grad = ldk_grad, .ldv_grad = ldv_grad,
		.Tq = Tq, .Tk = Tk, .C = C, .causal = causal,
		.kern = llm_kernels->attention,
	};
	int			status;

	if (Tq <= 0 || Tk <= 0 || n_head <= 0 || C <= 0 || (!dq && !dk && !dv))
		return LLM_OK;
	c.hd = C / n_head;
	c.tq8 = round_up(Tq, TILE_ROWS);
	c.tk32 = round_up(Tk, TILE_COLS);
	c.hd32 = round_up(c.hd, TILE_COLS);
	c.scale = (float) (1.0 / sqrt((double) c.hd));

	status = llm_parallel_for(n_head, 1, attention_backward_task, &c);
	if (status != LLM_OK)
		return status;
	return c.out_of_memory ? LLM_NOMEM : LLM_OK;
}
