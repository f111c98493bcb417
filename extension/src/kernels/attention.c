/*
 * attention.c -- multi-head scaled dot-product attention,
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
 * The inner kernels come as scalar, AVX2 and AVX-512 variants, chosen
 * through attention_kernels (dispatch.h).
 *
 * Task scratch is malloc'ed on the worker.  A worker cannot report an
 * error, so on failure it raises ctx->out_of_memory and llm_attention
 * returns LLM_NOMEM.
 */
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "simd.h"

#define CHUNK_ROWS 64			/* query rows per task */
#define TILE_ROWS 8				/* query rows per register tile */
#define TILE_COLS 32			/* keys (for S) or head columns (for O) per tile */

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


/* ---- row by row --------------------------------------------------------------- */

/*
 * The rows of K and V lie ldk (ldv) floats apart, 9 KB for GPT-2 small's
 * [T, 3C] layout: every row is on another page, where the hardware
 * prefetchers stop, so a decode step would wait on memory row after row.
 * The loops below ask for the row PREFETCH_ROWS ahead of the one they use.
 */
#define PREFETCH_ROWS 8

static inline void
prefetch_row(const float *row, int64_t n)
{
	for (int64_t i = 0; i < n; i += 16)	/* one cache line is 16 floats */
		__builtin_prefetch(row + i);
}

/*
 * scores[j] = scale * (q . k_j) for j < nk, where k_j = k + j*ldk;
 * out = sum_j p[j] * v_j for j < nk, where v_j = v + j*ldv.
 */
static void
scores_row_scalar(const float *q, const float *k, int64_t ldk, int64_t nk,
				  int64_t hd, float scale, float *scores)
{
	for (int64_t j = 0; j < nk; j++)
	{
		const float *kj = k + j * ldk;
		float		dot = 0.0f;

		for (int64_t d = 0; d < hd; d++)
			dot += q[d] * kj[d];
		scores[j] = dot * scale;
	}
}

static void
weighted_sum_scalar(const float *p, const float *v, int64_t ldv, int64_t nk,
					int64_t hd, float *out)
{
	memset(out, 0, (size_t) hd * sizeof(float));
	for (int64_t j = 0; j < nk; j++)
	{
		const float *vj = v + j * ldv;

		for (int64_t d = 0; d < hd; d++)
			out[d] += p[j] * vj[d];
	}
}

#if LLM_X86

TARGET_AVX512 static void
scores_row_avx512(const float *q, const float *k, int64_t ldk, int64_t nk,
				  int64_t hd, float scale, float *scores)
{
	for (int64_t j = 0; j < nk; j++)
	{
		const float *kj = k + j * ldk;
		__m512		acc = _mm512_setzero_ps();

		if (j + PREFETCH_ROWS < nk)
			prefetch_row(kj + PREFETCH_ROWS * ldk, hd);
		for (int64_t d = 0; d < hd; d += 16)
		{
			__mmask16	m = mask16(hd - d);

			acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d),
								  _mm512_maskz_loadu_ps(m, kj + d), acc);
		}
		scores[j] = _mm512_reduce_add_ps(acc) * scale;
	}
}

TARGET_AVX512 static void
weighted_sum_avx512(const float *p, const float *v, int64_t ldv, int64_t nk,
					int64_t hd, float *out)
{
	int64_t		d = 0;

	/* 64 columns at a time: four accumulators stay in registers over j */
	for (; d + 64 <= hd; d += 64)
	{
		__m512		a0 = _mm512_setzero_ps(),
					a1 = _mm512_setzero_ps(),
					a2 = _mm512_setzero_ps(),
					a3 = _mm512_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
		{
			const float *vj = v + j * ldv + d;
			__m512		pj = _mm512_set1_ps(p[j]);

			if (j + PREFETCH_ROWS < nk)
				prefetch_row(vj + PREFETCH_ROWS * ldv, 64);
			a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj), a0);
			a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16), a1);
			a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 32), a2);
			a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 48), a3);
		}
		_mm512_storeu_ps(out + d, a0);
		_mm512_storeu_ps(out + d + 16, a1);
		_mm512_storeu_ps(out + d + 32, a2);
		_mm512_storeu_ps(out + d + 48, a3);
	}
	/* the rest, 16 (or fewer) at a time */
	for (; d < hd; d += 16)
	{
		__mmask16	m = mask16(hd - d);
		__m512		acc = _mm512_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
			acc = _mm512_fmadd_ps(_mm512_set1_ps(p[j]),
								  _mm512_maskz_loadu_ps(m, v + j * ldv + d), acc);
		_mm512_mask_storeu_ps(out + d, m, acc);
	}
}

TARGET_AVX2 static void
scores_row_avx2(const float *q, const float *k, int64_t ldk, int64_t nk,
				int64_t hd, float scale, float *scores)
{
	for (int64_t j = 0; j < nk; j++)
	{
		const float *kj = k + j * ldk;
		__m256		acc = _mm256_setzero_ps();
		float		dot;
		int64_t		d;

		if (j + PREFETCH_ROWS < nk)
			prefetch_row(kj + PREFETCH_ROWS * ldk, hd);
		for (d = 0; d + 8 <= hd; d += 8)
			acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(kj + d), acc);
		dot = hsum_avx2(acc);
		for (; d < hd; d++)
			dot += q[d] * kj[d];
		scores[j] = dot * scale;
	}
}

TARGET_AVX2 static void
weighted_sum_avx2(const float *p, const float *v, int64_t ldv, int64_t nk,
				  int64_t hd, float *out)
{
	int64_t		d = 0;

	for (; d + 32 <= hd; d += 32)
	{
		__m256		a0 = _mm256_setzero_ps(),
					a1 = _mm256_setzero_ps(),
					a2 = _mm256_setzero_ps(),
					a3 = _mm256_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
		{
			const float *vj = v + j * ldv + d;
			__m256		pj = _mm256_set1_ps(p[j]);

			if (j + PREFETCH_ROWS < nk)
				prefetch_row(vj + PREFETCH_ROWS * ldv, 32);
			a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
			a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
			a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
			a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
		}
		_mm256_storeu_ps(out + d, a0);
		_mm256_storeu_ps(out + d + 8, a1);
		_mm256_storeu_ps(out + d + 16, a2);
		_mm256_storeu_ps(out + d + 24, a3);
	}
	for (; d + 8 <= hd; d += 8)
	{
		__m256		acc = _mm256_setzero_ps();

		for (int64_t j = 0; j < nk; j++)
			acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + j * ldv + d), acc);
		_mm256_storeu_ps(out + d, acc);
	}
	for (; d < hd; d++)
	{
		float		acc = 0.0f;

		for (int64_t j = 0; j < nk; j++)
			acc += p[j] * v[j * ldv + d];
		out[d] = acc;
	}
}

#endif							/* LLM_X86 */

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
 *     (k_packed[b][d][c] = k_{32b+c}[d], zero past Tk), so scores_tile
 *     streams through one 8 KB block for hd = 64;
 *   V with rows of hd_p floats (zero past hd), so output_tile can always
 *     read 32 columns, and with the rows adjacent: read in place, rows of
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
 * The two register tiles, each TILE_ROWS x TILE_COLS floats:
 *
 *   scores_tile:  s[r][0..32) = scale * sum_d  q[r][d]  * kt[d][0..32)
 *                 (kt: one hd x 32 block of packed K^T)
 *   output_tile:  o[r][0..32) =         sum_j  p[r][j]  *  v[j][0..32)
 *
 * Both broadcast one float of the left matrix and multiply-add it into a
 * row of vectors from the right one.  With AVX-512 the whole 8 x 32 tile
 * is 16 zmm accumulators; AVX2 has only 16 ymm registers, so it does the
 * tile as four 4 x 16 quarters of 8 accumulators.  The plain C versions
 * have no reduction in their inner loop over 32 contiguous floats, so the
 * compiler vectorises them for the baseline target (SSE2, NEON).
 */
static void
scores_tile_generic(const float *q, int64_t ldq, const float *kt,
					int64_t hd, float scale, float *s, int64_t lds)
{
	float		acc[TILE_ROWS][TILE_COLS];

	memset(acc, 0, sizeof(acc));
	for (int64_t d = 0; d < hd; d++)
		for (int r = 0; r < TILE_ROWS; r++)
		{
			float		qr = q[r * ldq + d];

			for (int col = 0; col < TILE_COLS; col++)
				acc[r][col] += qr * kt[d * TILE_COLS + col];
		}
	for (int r = 0; r < TILE_ROWS; r++)
		for (int col = 0; col < TILE_COLS; col++)
			s[r * lds + col] = acc[r][col] * scale;
}

static void
output_tile_generic(const float *p, int64_t ldp, const float *v, int64_t ldv,
					int64_t nk, float *o, int64_t ldo)
{
	float		acc[TILE_ROWS][TILE_COLS];

	memset(acc, 0, sizeof(acc));
	for (int64_t j = 0; j < nk; j++)
		for (int r = 0; r < TILE_ROWS; r++)
		{
			float		pr = p[r * ldp + j];

			for (int col = 0; col < TILE_COLS; col++)
				acc[r][col] += pr * v[j * ldv + col];
		}
	for (int r = 0; r < TILE_ROWS; r++)
		memcpy(o + r * ldo, acc[r], sizeof(acc[r]));
}

#if LLM_X86

TARGET_AVX512 static void
scores_tile_avx512(const float *q, int64_t ldq, const float *kt,
				   int64_t hd, float scale, float *s, int64_t lds)
{
	__m512		acc[TILE_ROWS][2];

#pragma GCC unroll 8
	for (int r = 0; r < TILE_ROWS; r++)
		acc[r][0] = acc[r][1] = _mm512_setzero_ps();
	for (int64_t d = 0; d < hd; d++)
	{
		__m512		k0 = _mm512_loadu_ps(kt + d * TILE_COLS);
		__m512		k1 = _mm512_loadu_ps(kt + d * TILE_COLS + 16);

#pragma GCC unroll 8
		for (int r = 0; r < TILE_ROWS; r++)
		{
			__m512		qr = _mm512_set1_ps(q[r * ldq + d]);

			acc[r][0] = _mm512_fmadd_ps(qr, k0, acc[r][0]);
			acc[r][1] = _mm512_fmadd_ps(qr, k1, acc[r][1]);
		}
	}
#pragma GCC unroll 8
	for (int r = 0; r < TILE_ROWS; r++)
	{
		_mm512_storeu_ps(s + r * lds, _mm512_mul_ps(acc[r][0], _mm512_set1_ps(scale)));
		_mm512_storeu_ps(s + r * lds + 16, _mm512_mul_ps(acc[r][1], _mm512_set1_ps(scale)));
	}
}

TARGET_AVX512 static void
output_tile_avx512(const float *p, int64_t ldp, const float *v, int64_t ldv,
				   int64_t nk, float *o, int64_t ldo)
{
	__m512		acc[TILE_ROWS][2];

#pragma GCC unroll 8
	for (int r = 0; r < TILE_ROWS; r++)
		acc[r][0] = acc[r][1] = _mm512_setzero_ps();
	for (int64_t j = 0; j < nk; j++)
	{
		__m512		v0 = _mm512_loadu_ps(v + j * ldv);
		__m512		v1 = _mm512_loadu_ps(v + j * ldv + 16);

#pragma GCC unroll 8
		for (int r = 0; r < TILE_ROWS; r++)
		{
			__m512		pr = _mm512_set1_ps(p[r * ldp + j]);

			acc[r][0] = _mm512_fmadd_ps(pr, v0, acc[r][0]);
			acc[r][1] = _mm512_fmadd_ps(pr, v1, acc[r][1]);
		}
	}
#pragma GCC unroll 8
	for (int r = 0; r < TILE_ROWS; r++)
	{
		_mm512_storeu_ps(o + r * ldo, acc[r][0]);
		_mm512_storeu_ps(o + r * ldo + 16, acc[r][1]);
	}
}

#define QUARTER_ROWS (TILE_ROWS / 2)
#define QUARTER_COLS (TILE_COLS / 2)

TARGET_AVX2 static void
scores_tile_avx2(const float *q, int64_t ldq, const float *kt,
				 int64_t hd, float scale, float *s, int64_t lds)
{
	for (int r0 = 0; r0 < TILE_ROWS; r0 += QUARTER_ROWS)
		for (int c0 = 0; c0 < TILE_COLS; c0 += QUARTER_COLS)
		{
			__m256		acc[QUARTER_ROWS][2];

#pragma GCC unroll 4
			for (int r = 0; r < QUARTER_ROWS; r++)
				acc[r][0] = acc[r][1] = _mm256_setzero_ps();
			for (int64_t d = 0; d < hd; d++)
			{
				__m256		k0 = _mm256_loadu_ps(kt + d * TILE_COLS + c0);
				__m256		k1 = _mm256_loadu_ps(kt + d * TILE_COLS + c0 + 8);

#pragma GCC unroll 4
				for (int r = 0; r < QUARTER_ROWS; r++)
				{
					__m256		qr = _mm256_set1_ps(q[(r0 + r) * ldq + d]);

					acc[r][0] = _mm256_fmadd_ps(qr, k0, acc[r][0]);
					acc[r][1] = _mm256_fmadd_ps(qr, k1, acc[r][1]);
				}
			}
#pragma GCC unroll 4
			for (int r = 0; r < QUARTER_ROWS; r++)
			{
				float	   *sr = s + (r0 + r) * lds + c0;

				_mm256_storeu_ps(sr, _mm256_mul_ps(acc[r][0], _mm256_set1_ps(scale)));
				_mm256_storeu_ps(sr + 8, _mm256_mul_ps(acc[r][1], _mm256_set1_ps(scale)));
			}
		}
}

TARGET_AVX2 static void
output_tile_avx2(const float *p, int64_t ldp, const float *v, int64_t ldv,
				 int64_t nk, float *o, int64_t ldo)
{
	for (int r0 = 0; r0 < TILE_ROWS; r0 += QUARTER_ROWS)
		for (int c0 = 0; c0 < TILE_COLS; c0 += QUARTER_COLS)
		{
			__m256		acc[QUARTER_ROWS][2];

#pragma GCC unroll 4
			for (int r = 0; r < QUARTER_ROWS; r++)
				acc[r][0] = acc[r][1] = _mm256_setzero_ps();
			for (int64_t j = 0; j < nk; j++)
			{
				__m256		v0 = _mm256_loadu_ps(v + j * ldv + c0);
				__m256		v1 = _mm256_loadu_ps(v + j * ldv + c0 + 8);

#pragma GCC unroll 4
				for (int r = 0; r < QUARTER_ROWS; r++)
				{
					__m256		pr = _mm256_set1_ps(p[(r0 + r) * ldp + j]);

					acc[r][0] = _mm256_fmadd_ps(pr, v0, acc[r][0]);
					acc[r][1] = _mm256_fmadd_ps(pr, v1, acc[r][1]);
				}
			}
#pragma GCC unroll 4
			for (int r = 0; r < QUARTER_ROWS; r++)
			{
				_mm256_storeu_ps(o + (r0 + r) * ldo + c0, acc[r][0]);
				_mm256_storeu_ps(o + (r0 + r) * ldo + c0 + 8, acc[r][1]);
			}
		}
}

const attention_kernels attention_avx2_kernels = {
	scores_row_avx2, weighted_sum_avx2, scores_tile_avx2, output_tile_avx2
};
const attention_kernels attention_avx512_kernels = {
	scores_row_avx512, weighted_sum_avx512, scores_tile_avx512, output_tile_avx512
};

#endif							/* LLM_X86 */

const attention_kernels attention_scalar_kernels = {
	scores_row_scalar, weighted_sum_scalar, scores_tile_generic, output_tile_generic
};

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
			c->kern->scores_tile(qp + r0 * hd, hd, kt_block, hd, c->scale,
							  s + r0 * lds + j0, lds);
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
		{
			c->kern->output_tile(s + r0 * lds, lds, vp + c0, hd_p, n,
							  o + r0 * hd_p + c0, hd_p);
		}
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
