/*
 * decode_rows.c -- one decode step of n sequences at once: the forward of
 * forward.c for one token (B = 1, T = 1, with a KV cache) and its lm_head,
 * op for op, once per row -- except the products by the weights, computed
 * for all rows in one pass over each matrix by llm_matmul_rows, which gives
 * every row the bits of llm_matmul alone.  So each row gets exactly what
 * gpt2_forward + gpt2_logits give its sequence alone (tested through
 * generation in tests/test_decode_batching.py).
 *
 * The caller (generate/batch.c) serves other sessions' rows: nothing here
 * raises an error or checks for interrupts.
 */
#include "postgres.h"

#include "kernels/kernels.h"
#include "gpt2/decode_rows.h"

/* Per row: x, ln, mid, atty [C]; qkv [3C]; fc [F]. */
int64
gpt2_decode_scratch_floats(const Gpt2Model *m, int n)
{
	return (int64) n * (7 * (int64) m->cfg.n_embd + m->cfg.n_inner);
}

/* ptrs[i] = base + i * width */
static void
row_pointers(float *base, int64 width, int n, float **ptrs)
{
	for (int i = 0; i < n; i++)
		ptrs[i] = base + i * width;
}

static void
rows_matmul(float *const *in, const float *w, const float *bias, float *const *out,
			int n, int64 K, int64 N, int transB)
{
	int			rc PG_USED_FOR_ASSERTS_ONLY;

	rc = llm_matmul_rows((const float *const *) in, w, bias, out, n, K, N, transB);
	Assert(rc == LLM_OK);
}

void
gpt2_decode_rows(const Gpt2Model *m, const Gpt2DecodeRow *rows, int n, float *scratch)
{
	int64		C = m->cfg.n_embd,
				F = m->cfg.n_inner;
	float		eps = m->cfg.layer_norm_eps;
	float	   *ptrs[7 * GPT2_DECODE_MAX_ROWS];
	float	  **x = ptrs;
	float	  **ln = x + n,
			  **mid = x + 2 * n,
			  **atty = x + 3 * n,
			  **qkv = x + 4 * n,
			  **fc = x + 5 * n,
			  **logits = x + 6 * n;
	int			rc PG_USED_FOR_ASSERTS_ONLY;

	row_pointers(scratch, C, n, x);
	row_pointers(scratch + n * C, C, n, ln);
	row_pointers(scratch + 2 * n * C, C, n, mid);
	row_pointers(scratch + 3 * n * C, C, n, atty);
	row_pointers(scratch + 4 * n * C, 3 * C, n, qkv);
	row_pointers(scratch + 7 * n * C, F, n, fc);
	for (int i = 0; i < n; i++)
	{
		/* x = wte[token] + wpe[pos] */
		logits[i] = rows[i].logits;
		llm_embedding(m->wte, &rows[i].token, x[i], 1, C);
		llm_add(x[i], m->wpe + rows[i].pos * C, x[i], C, C);
	}
	for (int l = 0; l < m->cfg.n_layer; l++)
	{
		const Gpt2Layer *L = &m->layers[l];

		for (int i = 0; i < n; i++)
		{
			rc = llm_layernorm(x[i], L->ln1_w, L->ln1_b, ln[i], 1, C, eps, NULL, NULL);
			Assert(rc == LLM_OK);
		}
		rows_matmul(ln, L->attn_w, L->attn_b, qkv, n, C, 3 * C, 0);
		for (int i = 0; i < n; i++)
		{
			/* k and v into the row's cache, then attention over all of it */
			const Gpt2DecodeRow *r = &rows[i];
			float	   *k = GPT2_KV_K(r->kv, l, r->n_ctx, C),
					   *v = GPT2_KV_V(r->kv, l, r->n_ctx, C);

			memcpy(k + r->pos * C, qkv[i] + C, C * sizeof(float));
			memcpy(v + r->pos * C, qkv[i] + 2 * C, C * sizeof(float));
			rc = llm_attention(qkv[i], 3 * C, k, C, v, C, atty[i], 1, r->pos + 1, C,
							   m->cfg.n_head, 1, NULL);
			Assert(rc == LLM_OK);
		}
		rows_matmul(atty, L->attn_proj_w, L->attn_proj_b, mid, n, C, C, 0);
		for (int i = 0; i < n; i++)
		{
			llm_add(mid[i], x[i], mid[i], C, C);
			rc = llm_layernorm(mid[i], L->ln2_w, L->ln2_b, ln[i], 1, C, eps, NULL, NULL);
			Assert(rc == LLM_OK);
		}
		rows_matmul(ln, L->fc_w, L->fc_b, fc, n, C, F, 0);
		for (int i = 0; i < n; i++)
		{
			rc = llm_gelu(fc[i], fc[i], F);
			Assert(rc == LLM_OK);
		}
		rows_matmul(fc, L->mlp_proj_w, L->mlp_proj_b, x, n, F, C, 0);
		for (int i = 0; i < n; i++)
			llm_add(x[i], mid[i], x[i], C, C);
	}
	for (int i = 0; i < n; i++)
	{
		rc = llm_layernorm(x[i], m->lnf_w, m->lnf_b, ln[i], 1, C, eps, NULL, NULL);
		Assert(rc == LLM_OK);
	}
	/* the tied lm_head: wte is stored [V, C] */
	rows_matmul(ln, m->wte, NULL, logits, n, C, m->cfg.vocab_size, 1);
}
