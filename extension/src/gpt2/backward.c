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
 *
 * bf16 mixed precision (b->bf16, forward.h): each matmul's backward reads
 * its dY rounded to bf16 (a rounded copy of d.res where the residual
 * stream carries it on in fp32) and the forward's rounded X and W, and
 * rounds the dX, dW and dbias it makes, as torch.autocast's backward of a
 * bf16 Linear does.  They are rounded where they are written, so the
 * parameter gradients must start at zero (llm_train_state_gradients zeroes
 * them): the tied wte gets the rounded lm_head gradient plus the fp32
 * embedding gradient.
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
	float	   *res_bf16;		/* [N, C] bf16: res rounded, a branch's dY */
} Gradients;

static void
zero(float *x, int64 n)
{
	memset(x, 0, sizeof(float) * n);
}

/*
 * llm_matmul_backward of Y[M, N] = X[M, K] @ W[K, N] + bias (W [N, K] when
 * transB): dX, dW, dbias added into; in bf16 each rounded afterwards (they
 * were zero before: see the file's header).
 */
static void
matmul_backward(bool bf16, const float *dY, const float *X, const float *W,
				float *dX, float *dW, float *dbias, int64 M, int64 K, int64 N, int transB)
{
	llm_check_status(llm_matmul_backward(dY, X, W, dX, dW, dbias, M, K, N, 0, transB));
	gpt2_round_if_bf16(bf16, dX, M * K);
	gpt2_round_if_bf16(bf16, dW, K * N);
	if (dbias != NULL)
		gpt2_round_if_bf16(bf16, dbias, N);
}

/* The residual stream's gradient as a branch's dY: d->res, rounded in bf16. */
static const float *
branch_dy(bool bf16, Gradients *d, int64 n)
{
	if (!bf16)
		return d->res;
	llm_round_bf16_array(d->res, d->res_bf16, n);
	return d->res_bf16;
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
	bool		bf16 = b->bf16 != NULL;
	const Gpt2Layer *W = bf16 ? &b->bf16->layers[l] : L;	/* the matmuls' weights */
	const Gpt2LayerActs *a = &b->acts->layers[l];
	const float *x = gpt2_block_input(b->acts, l);
	int64		C = cfg->n_embd,
				F = cfg->n_inner,
				N = b->N,
				T = b->T;

	/* out = mid + fc_gelu @ W + b: d->res flows on to mid unchanged */
	zero(d->fc_gelu, N * F);
	matmul_backward(bf16, branch_dy(bf16, d, N * C), a->fc_gelu, W->mlp_proj_w, d->fc_gelu,
					G->mlp_proj_w, G->mlp_proj_b, N, F, C, 0);
	zero(d->fc, N * F);
	llm_check_status(llm_gelu_backward(a->fc, d->fc_gelu, d->fc, N * F));
	gpt2_round_if_bf16(bf16, d->fc, N * F);
	zero(d->ln, N * C);
	matmul_backward(bf16, d->fc, a->ln2, W->fc_w, d->ln, G->fc_w, G->fc_b, N, C, F, 0);
	llm_check_status(llm_layernorm_backward(a->res_mid, L->ln2_w, a->ln2_mean, a->ln2_rstd,
											d->ln, d->res, G->ln2_w, G->ln2_b, N, C));

	/* mid = x + atty @ W + b */
	zero(d->atty, N * C);
	matmul_backward(bf16, branch_dy(bf16, d, N * C), a->atty, W->attn_proj_w, d->atty,
					G->attn_proj_w, G->attn_proj_b, N, C, C, 0);
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
	gpt2_round_if_bf16(bf16, d->qkv, N * 3 * C);
	zero(d->ln, N * C);
	matmul_backward(bf16, d->qkv, a->ln1, W->attn_w, d->ln, G->attn_w, G->attn_b, N, C, 3 * C, 0);
	llm_check_status(llm_layernorm_backward(x, L->ln1_w, a->ln1_mean, a->ln1_rstd,
											d->ln, d->res, G->ln1_w, G->ln1_b, N, C));
}

void
gpt2_batch_backward(const Gpt2Batch *b, const Gpt2Model *grads)
{
	const Gpt2Model *w = b->model;
	const Gpt2Config *cfg = &w->cfg;
	bool		bf16 = b->bf16 != NULL;
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
		.res_bf16 = bf16 ? llm_alloc_floats(N, C, what) : NULL,
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
