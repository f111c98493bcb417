/*
 * forward.c -- multi-head scaled dot-product attention (llm_attention),
 * y = softmax(q k^T / sqrt(hd)) v for each head.
 *
 * Work is cut into tasks of (head, chunk of CHUNK_ROWS query rows); a task
 * computes the scores S = scale * Q K^T of its rows against every key they
 * may see, takes the softmax of each row and multiplies by V.  S holds at
 * most CHUNK_ROWS x Tk floats, so a task's scratch is O(CHUNK_ROWS * Tk)
 * whatever the sequence length.  Each output element belongs to one task
 * and is computed in a fixed order, so results do not depend on the thread
 * count.
 *
 * Two ways to do a chunk:
 *   - tiled (prefill; chunks of at least TILE_ROWS queries): first, K and
 *     V of every head are packed once into contiguous buffers, K
 *     transposed, so that S = Q K^T and O = P V are both "broadcast one
 *     value, multiply-add a vector of neighbours" loops over register
 *     tiles, the shape SIMD likes (a small matrix multiply).  The packed
 *     copies take 2 * Tk * C floats, as much as K and V themselves, and are
 *     allocated by the calling thread.
 *   - row by row (decode, and the few rows left over by the chunking): for
 *     each query, one dot product per key read straight from the strided
 *     k rows, then a weighted sum of the v rows.  Nothing is packed, which
 *     is what a single new token wants.
 * Both compute scores = (q . k) * scale, then the same row softmax
 * (softmax.c's row kernel, whose max and sum give the row's logsumexp
 * when the caller wants it for a backward), then sum_j p_j v_j.
 *
 * The inner kernels (inner_kernels.c) come as scalar, AVX2 and AVX-512
 * variants, chosen through attention_kernels (dispatch.h).
 *
 * Task scratch is malloc'ed on the worker.  A worker cannot report an
 * error, so on failure it raises ctx->out_of_memory and llm_attention
 * returns LLM_NOMEM.
 */
#include "attention_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_ROWS 64			/* query rows per task */

typedef struct
{
	const float *q,
			   *k,
			   *v;
	int64_t		ldq,
				ldk,
				ldv;
	float	   *y;
	int64_t		Tq,
				Tk,
				C,
				n_head,
				hd,
				nchunks;
	int			causal;
	float		scale;
	float	   *lse;			/* [n_head, Tq], or NULL */
	const attention_kernels *kern;
	const softmax_kernels *softmax;
	int			out_of_memory;

	/* tiled path only: K and V packed per head (see pack_head) */
	int			tiled;
	int64_t		tk_p,			/* Tk rounded up to TILE_COLS */
				hd_p;			/* hd rounded up to TILE_COLS */
	float	   *k_packed,		/* [n_head][tk_p / 32][hd][32] */
			   *v_packed;		/* [n_head][Tk][hd_p] */
} attention_ctx;

/* How many keys query row i sees: keys 0 .. visible-1. */
static int64_t
visible_keys(const attention_ctx *c, int64_t i)
{
	return c->causal ? causal_keys(i, c->Tq, c->Tk) : c->Tk;
}



/* Softmax of scores[0, n) in place; lse of (head, query i) when wanted. */
static void
softmax_scores(const attention_ctx *c, float *scores, int64_t n,
			   int64_t head, int64_t i)
{
	softmax_stats st = {-INFINITY, 0.0};	/* no key: the log of an empty sum */

	if (n > 0)
		st = c->softmax->row(scores, scores, n);
	if (c->lse)
		c->lse[head * c->Tq + i] = (float) (st.max + log(st.sum));
}


/* Rows i0 .. i0+rows-1 of one head, one query at a time. */
static void
attend_rows(attention_ctx *c, int64_t head, int64_t i0, int64_t rows)
{
	const float *k = c->k + head * c->hd;
	const float *v = c->v + head * c->hd;
	void	   *base;
	float	   *scores = malloc_aligned((size_t) c->Tk, &base);

	if (scores == NULL)
	{
		__atomic_store_n(&c->out_of_memory, 1, __ATOMIC_RELAXED);
		return;
	}
	for (int64_t i = i0; i < i0 + rows; i++)
	{
		const float *q = c->q + i * c->ldq + head * c->hd;
		float	   *out = c->y + i * c->C + head * c->hd;
		int64_t		nk = visible_keys(c, i);

		if (nk == 0)
		{
			/* no key to attend to (only when Tq > Tk): output zeros */
			memset(out, 0, (size_t) c->hd * sizeof(float));
			softmax_scores(c, scores, 0, head, i);
			continue;
		}
		c->kern->scores_row(q, k, c->ldk, nk, c->hd, c->scale, scores);
		softmax_scores(c, scores, nk, head, i);
		c->kern->weighted_sum(scores, v, c->ldv, nk, c->hd, out);
	}
	free(base);
}


/* ---- tiled ------------------------------------------------------------------------ */

/*
 * Pack K and V of one head for the tiled path:
 *   K^T in blocks of 32 keys, each block a contiguous hd x 32 matrix
 *     (k_packed[b][d][c] = k_{32b+c}[d], zero past Tk), so a scores
 *     tile streams through one 8 KB block for hd = 64;
 *   V with rows of hd_p floats (zero past hd), so an output tile can
 *     always read 32 columns, and with the rows adjacent: read in place, rows of
 *     a [T, 3C] array lie 9 KB apart, a page each, and the TLB misses made
 *     O = P V three times slower.
 */
static void
pack_head(void *arg, int64_t begin, int64_t end)
{
	const attention_ctx *c = arg;
	const int64_t hd = c->hd;

	for (int64_t head = begin; head < end; head++)
	{
		float	   *kt = c->k_packed + head * c->tk_p * hd;
		float	   *vp = c->v_packed + head * c->Tk * c->hd_p;

		for (int64_t j = 0; j < c->tk_p; j++)
		{
			float	   *ktj = kt + (j / TILE_COLS) * hd * TILE_COLS + j % TILE_COLS;

			for (int64_t d = 0; d < hd; d++)
				ktj[d * TILE_COLS] = j < c->Tk ? c->k[j * c->ldk + head * hd + d] : 0.0f;
		}
		for (int64_t j = 0; j < c->Tk; j++)
		{
			memcpy(vp + j * c->hd_p, c->v + j * c->ldv + head * hd, (size_t) hd * sizeof(float));
			memset(vp + j * c->hd_p + hd, 0, (size_t) (c->hd_p - hd) * sizeof(float));
		}
	}
}

/*
 * Rows i0 .. i0+rows-1 of one head, tiled.  Scratch (floats):
 *   qp [rows_p][hd]    the chunk's queries, zero rows up to rows_p
 *   s  [rows_p][lds]   scores, then probabilities (zero where masked)
 *   o  [rows_p][hd_p]  the output rows before they are copied to y
 * The row stride of s is nk_p plus one cache line: with a stride of exactly
 * 4 KB (nk_p = 1024) the 8 rows a tile reads would fall in the same L1
 * cache set and evict each other.
 */
static void
attend_tiled(attention_ctx *c, int64_t head, int64_t i0, int64_t rows)
{
	const int64_t hd = c->hd;
	const int64_t hd_p = c->hd_p;
	const int64_t rows_p = round_up(rows, TILE_ROWS);
	const int64_t nk = visible_keys(c, i0 + rows - 1);	/* most any row sees */
	const int64_t nk_p = round_up(nk, TILE_COLS);
	const int64_t lds = nk_p + 16;
	const float *kt = c->k_packed + head * c->tk_p * hd;
	const float *vp = c->v_packed + head * c->Tk * hd_p;
	size_t		qp_size = (size_t) round_up(rows_p * hd, 16),
				s_size = (size_t) (rows_p * lds),
				o_size = (size_t) (rows_p * hd_p);
	void	   *base;
	float	   *qp = malloc_aligned(qp_size + s_size + o_size, &base);
	float	   *s,
			   *o;

	if (qp == NULL)
	{
		__atomic_store_n(&c->out_of_memory, 1, __ATOMIC_RELAXED);
		return;
	}
	s = qp + qp_size;
	o = s + s_size;

	for (int64_t r = 0; r < rows_p; r++)
	{
		if (r < rows)
			memcpy(qp + r * hd, c->q + (i0 + r) * c->ldq + head * hd, (size_t) hd * sizeof(float));
		else
			memset(qp + r * hd, 0, (size_t) hd * sizeof(float));
	}

	/*
	 * S = scale * Q K^T.  Key blocks outermost: one block of K^T (hd x 32
	 * floats) then serves every row tile from L1.  A row tile only needs
	 * the keys its last row sees; columns past a row's own limit are
	 * computed but masked by the softmax below.
	 */
	for (int64_t j0 = 0; j0 < nk; j0 += TILE_COLS)
	{
		const float *kt_block = kt + j0 * hd;

		for (int64_t r0 = 0; r0 < rows_p; r0 += TILE_ROWS)
		{
			int64_t		last = i0 + (r0 + TILE_ROWS < rows ? r0 + TILE_ROWS : rows) - 1;

			if (j0 >= visible_keys(c, last))
				continue;
			c->kern->tile(qp + r0 * hd, hd, 1, kt_block, TILE_COLS, hd,
						  s + r0 * lds + j0, lds, c->scale, 0);
		}
	}

	/* P = softmax over each row's visible keys, exact zeros elsewhere */
	for (int64_t r = 0; r < rows_p; r++)
	{
		float	   *sr = s + r * lds;
		int64_t		n = r < rows ? visible_keys(c, i0 + r) : 0;

		if (r < rows)
			softmax_scores(c, sr, n, head, i0 + r);
		memset(sr + n, 0, (size_t) (nk_p - n) * sizeof(float));
	}

	/* O = P V, over the keys each row tile sees */
	for (int64_t r0 = 0; r0 < rows_p; r0 += TILE_ROWS)
	{
		int64_t		last = i0 + (r0 + TILE_ROWS < rows ? r0 + TILE_ROWS : rows) - 1;
		int64_t		n = visible_keys(c, last);

		for (int64_t c0 = 0; c0 < hd_p; c0 += TILE_COLS)
			c->kern->tile(s + r0 * lds, lds, 1, vp + c0, hd_p, n,
						  o + r0 * hd_p + c0, hd_p, 1.0f, 0);
	}

	for (int64_t r = 0; r < rows; r++)
		memcpy(c->y + (i0 + r) * c->C + head * hd, o + r * hd_p, (size_t) hd * sizeof(float));
	free(base);
}


/* ---- tasks ---------------------------------------------------------------------- */

/*
 * Task t -> (chunk, head).  With a causal mask the late chunks see the most
 * keys; handing them out first keeps the threads busy to the end.
 */
static void
attention_task(void *arg, int64_t begin, int64_t end)
{
	attention_ctx *c = arg;

	for (int64_t t = begin; t < end; t++)
	{
		int64_t		chunk = c->nchunks - 1 - t / c->n_head;
		int64_t		head = t % c->n_head;
		int64_t		i0 = chunk * CHUNK_ROWS;
		int64_t		rows = c->Tq - i0 < CHUNK_ROWS ? c->Tq - i0 : CHUNK_ROWS;

		/* (a chunk whose first row sees no key, when Tq > Tk, goes by rows) */
		if (c->tiled && rows >= TILE_ROWS && visible_keys(c, i0) > 0)
			attend_tiled(c, head, i0, rows);
		else
			attend_rows(c, head, i0, rows);
	}
}

int
llm_attention(const float *q, int64_t ldq,
			  const float *k, int64_t ldk,
			  const float *v, int64_t ldv,
			  float *y, int64_t Tq, int64_t Tk, int64_t C,
			  int64_t n_head, int causal, float *lse)
{
	attention_ctx c = {
		.q = q, .k = k, .v = v, .ldq = ldq, .ldk = ldk, .ldv = ldv, .y = y,
		.Tq = Tq, .Tk = Tk, .C = C, .n_head = n_head, .causal = causal, .lse = lse,
		.kern = llm_kernels->attention, .softmax = llm_kernels->softmax,
		.tiled = Tq >= TILE_ROWS && Tk > 0,
	};
	void	   *packed_base = NULL;
	int			status = LLM_OK;

	if (Tq <= 0 || n_head <= 0 || C <= 0)
		return LLM_OK;
	c.hd = C / n_head;
	c.nchunks = ceil_div(Tq, CHUNK_ROWS);
	c.scale = (float) (1.0 / sqrt((double) c.hd));

	if (c.tiled)
	{
		size_t		k_size,
					v_size;

		c.tk_p = round_up(Tk, TILE_COLS);
		c.hd_p = round_up(c.hd, TILE_COLS);
		k_size = (size_t) (n_head * c.tk_p * c.hd);
		v_size = (size_t) (n_head * Tk * c.hd_p);
		c.k_packed = malloc_aligned(k_size + v_size, &packed_base);
		if (c.k_packed == NULL)
			return LLM_NOMEM;
		c.v_packed = c.k_packed + k_size;
		status = llm_parallel_for(n_head, 1, pack_head, &c);
	}
	if (status == LLM_OK)
		status = llm_parallel_for(c.nchunks * n_head, 1, attention_task, &c);
	free(packed_base);
	if (status != LLM_OK)
		return status;
	return c.out_of_memory ? LLM_NOMEM : LLM_OK;
}
