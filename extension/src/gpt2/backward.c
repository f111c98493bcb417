/*
 * backward.c -- the backward of forward.c's GPT-2 over a batch, every
 * parameter's gradient at once.  It walks the forward in reverse:
 *
 *   loss = mean cross-entropy of logits = ln_f(x_L) @ wte^T   (its gradient:
 *          already there, from the forward's fused lm_head, b->dlnf)
 *   per block, last first:  out = mid + c_proj(gelu(c_fc(ln_2(mid))))
 *                           mid = x + c_proj(attention(c_attn(ln_1(x))))
 *   x_0 = wte[token] + wpe[position]
 *
 * the gradient of the residual stream (d.res) collecting each branch's
 * contribution in place.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"

#include "support/support.h"
#include "kernels/kernels.h"
#include "gpt2/backward.h"

/* Gradients of the activations, [N] rows each; reused by every block. */
typedef struct Gradients
{
	float	   *res;			/* [N, C] of the residual stream */
	float	   *ln;				/* [N, C] of a LayerNorm output */
	float	   *atty;			/* [N, C] */
	float	   *qkv;			/* [N, 3C] */
	float	   *fc_gelu;		/* [N, F] */
	float	   *fc;				/* [N, F] */
} Gradients;

static void
zero(float *x, int64 n)
{
	memset(x, 0, sizeof(float) * n);
}

/*
 * On entry d->res is the gradient of block l's output; on return, of its
 * input.  Parameter gradients are added into G.
 */
static void
backward_block(const Gpt2Batch *b, int l, Gradients *d, Gpt2Layer *G)
{
	const Gpt2Config *cfg = &b->model->cfg;
	const Gpt2Layer *L = &b->model->layers[l];
	const Gpt2LayerActs *a = &b->acts->layers[l];
	const float *x = gpt2_block_input(b->acts, l);
	int64		C = cfg->n_embd,
				F = cfg->n_inner,
				N = b->N,
				T = b->T;

	/* out = mid + fc_gelu @ W + b: d->res flows on to mid unchanged */
	zero(d->fc_gelu, N * F);
	llm_check_status(llm_matmul_backward(d->res, a->fc_gelu, L->mlp_proj_w, d->fc_gelu,
										 G->mlp_proj_w, G->mlp_proj_b, N, F, C, 0, 0));
	zero(d->fc, N * F);
	llm_check_status(llm_gelu_backward(a->fc, d->fc_gelu, d->fc, N * F));
	zero(d->ln, N * C);
	llm_check_status(llm_matmul_backward(d->fc, a->ln2, L->fc_w, d->ln,
										 G->fc_w, G->fc_b, N, C, F, 0, 0));
	llm_check_status(llm_layernorm_backward(a->res_mid, L->ln2_w, a->ln2_mean, a->ln2_rstd,
											d->ln, d->res, G->ln2_w, G->ln2_b, N, C));

	/* mid = x + atty @ W + b */
	zero(d->atty, N * C);
	llm_check_status(llm_matmul_backward(d->res, a->atty, L->attn_proj_w, d->atty,
										 G->attn_proj_w, G->attn_proj_b, N, C, C, 0, 0));
	zero(d->qkv, N * 3 * C);
	for (int64 s = 0; s < b->B; s++)
	{
		const float *qkv = a->qkv + s * T * 3 * C;
		float	   *dqkv = d->qkv + s * T * 3 * C;

		llm_check_status(llm_attention_backward(qkv, 3 * C, qkv + C, 3 * C, qkv + 2 * C, 3 * C,
												a->atty + s * T * C,
												a->att_lse + s * cfg->n_head * T,
												d->atty + s * T * C,
												dqkv, 3 * C, dqkv + C, 3 * C, dqkv + 2 * C, 3 * C,
												T, T, C, cfg->n_head, 1));
	}
	zero(d->ln, N * C);
	llm_check_status(llm_matmul_backward(d->qkv, a->ln1, L->attn_w, d->ln,
										 G->attn_w, G->attn_b, N, C, 3 * C, 0, 0));
	llm_check_status(llm_layernorm_backward(x, L->ln1_w, a->ln1_mean, a->ln1_rstd,
											d->ln, d->res, G->ln1_w, G->ln1_b, N, C));
}

void
gpt2_batch_backward(const Gpt2Batch *b, const Gpt2Model *grads)
{
	const Gpt2Model *w = b->model;
	const Gpt2Config *cfg = &w->cfg;
	int64		C = cfg->n_embd,
				F = cfg->n_inner,
				N = b->N,
				T = b->T;
	MemoryContext old = MemoryContextSwitchTo(b->mcxt);
	const char *what = "training gradients";
	Gradients	d = {
		.res = llm_alloc_floats(N, C, what),
		.ln = llm_alloc_floats(N, C, what),
		.atty = llm_alloc_floats(N, C, what),
		.qkv = llm_alloc_floats(N, 3 * C, what),
		.fc_gelu = llm_alloc_floats(N, F, what),
		.fc = llm_alloc_floats(N, F, what),
	};

	MemoryContextSwitchTo(old);

	/* lnf = ln_f(x_L); d(loss)/d(lnf) is the fused lm_head's (forward.c) */
	zero(d.res, N * C);
	llm_check_status(llm_layernorm_backward(gpt2_block_input(b->acts, cfg->n_layer), w->lnf_w,
											b->acts->lnf_mean, b->acts->lnf_rstd, b->dlnf, d.res,
											grads->lnf_w, grads->lnf_b, N, C));
	for (int l = cfg->n_layer - 1; l >= 0; l--)
	{
		CHECK_FOR_INTERRUPTS();
		backward_block(b, l, &d, &grads->layers[l]);
	}
	/* x0 = wte[token] + wpe[position] */
	llm_embedding_backward(b->tokens, d.res, grads->wte, N, C);
	for (int64 s = 0; s < b->B; s++)
		llm_add_backward(d.res + s * T * C, NULL, grads->wpe, T * C, T * C);
}
