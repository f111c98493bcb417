/*
 * decode_rows.h -- one decode step of several sequences at once
 * (decode_rows.c): each row its own token, position and KV cache, the
 * products by the weights computed for all rows in one pass over them.
 *
 *   Gpt2DecodeRow rows[n] = {{token, pos, kv, n_ctx, logits}, ...};
 *   gpt2_decode_rows(m, rows, n, scratch);    // scratch: gpt2_decode_scratch_floats(m, n)
 *
 * Row i's logits (and the keys and values it appends to its cache) are the
 * bits that gpt2_forward(st, &token, 1) then gpt2_logits(st, 0, 1, logits)
 * give for that sequence alone (forward.h), whatever the other rows.
 */
#ifndef PG_LLM_GPT2_DECODE_ROWS_H
#define PG_LLM_GPT2_DECODE_ROWS_H

#include "postgres.h"

#include "gpt2/model.h"

typedef struct Gpt2DecodeRow
{
	int32		token;
	int64		pos;			/* positions already in its cache: the token's */
	float	   *kv;				/* its cache, [n_layer][2 (k, v)][n_ctx][C] */
	int64		n_ctx;
	float	   *logits;			/* [V], out */
} Gpt2DecodeRow;

#define GPT2_DECODE_MAX_ROWS 64

/* Floats of scratch gpt2_decode_rows needs for n rows of m. */
extern int64 gpt2_decode_scratch_floats(const Gpt2Model *m, int n);

/*
 * The step of every row (n <= GPT2_DECODE_MAX_ROWS).  Raises no error: a kernel that fails (none can
 * here but by running out of memory, which these kernels do not allocate)
 * is a bug, asserted.
 */
extern void gpt2_decode_rows(const Gpt2Model *m, const Gpt2DecodeRow *rows, int n,
							 float *scratch);

/* Row l's keys (v: values) in a cache laid out as Gpt2DecodeRow.kv says. */
#define GPT2_KV_K(kv, l, n_ctx, C) ((kv) + (int64) (2 * (l)) * (n_ctx) * (C))
#define GPT2_KV_V(kv, l, n_ctx, C) ((kv) + (int64) (2 * (l) + 1) * (n_ctx) * (C))

#endif							/* PG_LLM_GPT2_DECODE_ROWS_H */
