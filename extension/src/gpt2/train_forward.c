/*
 * train_forward.c -- GPT-2's forward over a batch that keeps its
 * activations, and the fused backward over every parameter (see
 * train_forward.h).  The math is forward.c's, over B*T rows:
 *
 *   x0 = wte[token] + wpe[position]
 *   per block: mid = x + c_proj(attention(c_attn(ln_1(x))))
 *              out = mid + c_proj(gelu(c_fc(ln_2(mid))))
 *   logits = ln_f(x_L) @ wte^T,  loss = mean cross-entropy
 *
 * and the backward walks it in reverse, the gradient of the residual
 * stream (dres) collecting each branch's contribution in place.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"

#include "pg_llm.h"
#include "kernels/kernels.h"
#include "gpt2/train_forward.h"

Gpt2Batch *
gpt2_batch_new(const Gpt2Model *w, int64 B, int64 T)
{
	const Gpt2Config *cfg = &w->cfg;
	int64		C = cfg->n_embd,
				F = cfg->n_inner,
				V = cfg->vocab_size,
				N = B * T;
	MemoryContext mcxt = AllocSetContextCreate(CurrentMemoryContext, "pg_llm gpt2 batch",
											   ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(mcxt);
	Gpt2Batch  *b = palloc0(sizeof(Gpt2Batch));
	const char *what = "training activations";

	if (B < 1 || T < 1 || T > cfg->n_positions)
		elog(ERROR, "gpt2_batch_new: bad batch " INT64_FORMAT " x " INT64_FORMAT, B, T);
	b->mcxt = mcxt;
	b->w = w;
	b->B = B;
	b->T = T;
	b->N = N;
	b->tokens = palloc(sizeof(int32) * N);
	b->targets = palloc(sizeof(int32) * N);
	b->encoded = llm_alloc_floats(N, C, what);
	b->layers = palloc0(sizeof(Gpt2LayerActs) * cfg->n_layer);
	for (int l = 0; l < cfg->n_layer; l++)
	{
		Gpt2LayerActs *a = &b->layers[l];

		a->ln1 = llm_alloc_floats(N, C, what);
		a->ln1_mean = llm_alloc_floats(N, 1, what);
		a->ln1_rstd = llm_alloc_floats(N, 1, what);
		a->qkv = llm_alloc_floats(N, 3 * C, what);
		a->atty = llm_alloc_floats(N, C, what);
		a->att_lse = llm_alloc_floats(N, cfg->n_head, what);
		a->res_mid = llm_alloc_floats(N, C, what);
		a->ln2 = llm_alloc_floats(N, C, what);
		a->ln2_mean = llm_alloc_floats(N, 1, what);
		a->ln2_rstd = llm_alloc_floats(N, 1, what);
		a->fc = llm_alloc_floats(N, F, what);
		a->fc_gelu = llm_alloc_floats(N, F, what);
		a->res_out = llm_alloc_floats(N, C, what);
	}
	b->lnf = llm_alloc_floats(N, C, what);
	b->lnf_mean = llm_alloc_floats(N, 1, what);
	b->lnf_rstd = llm_alloc_floats(N, 1, what);
	b->logits = llm_alloc_floats(N, V, what);
	b->lse = llm_alloc_floats(N, 1, what);

	what = "training gradients";
	b->dlogits = llm_alloc_floats(N, V, what);
	b->dres = llm_alloc_floats(N, C, what);
	b->dln = llm_alloc_floats(N, C, what);
	b->datty = llm_alloc_floats(N, C, what);
	b->dqkv = llm_alloc_floats(N, 3 * C, what);
	b->dfc_gelu = llm_alloc_floats(N, F, what);
	b->dfc = llm_alloc_floats(N, F, what);
	MemoryContextSwitchTo(old);
	return b;
}

void
gpt2_batch_free(Gpt2Batch *b)
{
	MemoryContextDelete(b->mcxt);
}

static void
zero(float *x, int64 n)
{
	memset(x, 0, sizeof(float) * n);
}

/* ---- forward -------------------------------------------------------------- */

static void
forward_block(Gpt2Batch *b, const Gpt2Layer *L, Gpt2LayerActs *a, const float *x)
{
	const Gpt2Config *cfg = &b->w->cfg;
	int64		C = cfg->n_embd,
				F = cfg->n_inner,
				N = b->N,
				T = b->T;

	llm_check_status(llm_layernorm(x, L->ln1_w, L->ln1_b, a->ln1, N, C, cfg->layer_norm_eps,
								   a->ln1_mean, a->ln1_rstd));
	llm_check_status(llm_matmul(a->ln1, L->attn_w, L->attn_b, a->qkv, N, C, 3 * C, 0, 0));
	for (int64 s = 0; s < b->B; s++)
	{
		const float *qkv = a->qkv + s * T * 3 * C;

		llm_check_status(llm_attention(qkv, 3 * C, qkv + C, 3 * C, qkv + 2 * C, 3 * C,
									   a->atty + s * T * C, T, T, C, cfg->n_head, 1,
									   a->att_lse + s * cfg->n_head * T));
	}
	llm_check_status(llm_matmul(a->atty, L->attn_proj_w, L->attn_proj_b, a->res_mid,
								N, C, C, 0, 0));
	llm_add(a->res_mid, x, a->res_mid, N * C, N * C);

	llm_check_status(llm_layernorm(a->res_mid, L->ln2_w, L->ln2_b, a->ln2, N, C,
								   cfg->layer_norm_eps, a->ln2_mean, a->ln2_rstd));
	llm_check_status(llm_matmul(a->ln2, L->fc_w, L->fc_b, a->fc, N, C, F, 0, 0));
	llm_check_status(llm_gelu(a->fc, a->fc_gelu, N * F));
	llm_check_status(llm_matmul(a->fc_gelu, L->mlp_proj_w, L->mlp_proj_b, a->res_out,
								N, F, C, 0, 0));
	llm_add(a->res_out, a->res_mid, a->res_out, N * C, N * C);
}

/* The residual stream entering block l (or ln_f, l = n_layer). */
static const float *
block_input(const Gpt2Batch *b, int l)
{
	return l == 0 ? b->encoded : b->layers[l - 1].res_out;
}

double
gpt2_batch_forward(Gpt2Batch *b, const int32 *tokens, const int32 *targets)
{
	const Gpt2Model *w = b->w;
	const Gpt2Config *cfg = &w->cfg;
	int64		C = cfg->n_embd,
				N = b->N,
				T = b->T;
	double		loss;
	int64		counted;

	memcpy(b->tokens, tokens, sizeof(int32) * N);
	memcpy(b->targets, targets, sizeof(int32) * N);

	llm_embedding(w->wte, b->tokens, b->encoded, N, C);
	for (int64 s = 0; s < b->B; s++)
		llm_add(b->encoded + s * T * C, w->wpe, b->encoded + s * T * C, T * C, T * C);
	for (int l = 0; l < cfg->n_layer; l++)
	{
		CHECK_FOR_INTERRUPTS();
		forward_block(b, &w->layers[l], &b->layers[l], block_input(b, l));
	}
	llm_check_status(llm_layernorm(block_input(b, cfg->n_layer), w->lnf_w, w->lnf_b, b->lnf,
								   N, C, cfg->layer_norm_eps, b->lnf_mean, b->lnf_rstd));
	llm_check_status(llm_matmul(b->lnf, w->wte, NULL, b->logits, N, C, cfg->vocab_size, 0, 1));
	llm_check_status(llm_cross_entropy(b->logits, b->targets, N, cfg->vocab_size,
									   &loss, &counted, b->lse));
	if (counted == 0)
		elog(ERROR, "gpt2_batch_forward: every target is -100");
	b->counted = counted;
	return loss;
}

/* ---- backward ------------------------------------------------------------- */

/*
 * On entry b->dres is the gradient of block l's output; on return, of its
 * input.  Parameter gradients are added into G.
 */
static void
backward_block(Gpt2Batch *b, int l, const Gpt2Layer *G)
{
	const Gpt2Config *cfg = &b->w->cfg;
	const Gpt2Layer *L = &b->w->layers[l];
	const Gpt2LayerActs *a = &b->layers[l];
	const float *x = block_input(b, l);
	int64		C = cfg->n_embd,
				F = cfg->n_inner,
				N = b->N,
				T = b->T;

	/* out = mid + fc_gelu @ W + b: dres flows on to mid unchanged */
	zero(b->dfc_gelu, N * F);
	llm_check_status(llm_matmul_backward(b->dres, a->fc_gelu, L->mlp_proj_w, b->dfc_gelu,
										 (float *) G->mlp_proj_w, (float *) G->mlp_proj_b,
										 N, F, C, 0, 0));
	zero(b->dfc, N * F);
	llm_check_status(llm_gelu_backward(a->fc, b->dfc_gelu, b->dfc, N * F));
	zero(b->dln, N * C);
	llm_check_status(llm_matmul_backward(b->dfc, a->ln2, L->fc_w, b->dln,
										 (float *) G->fc_w, (float *) G->fc_b, N, C, F, 0, 0));
	llm_check_status(llm_layernorm_backward(a->res_mid, L->ln2_w, a->ln2_mean, a->ln2_rstd,
											b->dln, b->dres, (float *) G->ln2_w,
											(float *) G->ln2_b, N, C));

	/* mid = x + atty @ W + b */
	zero(b->datty, N * C);
	llm_check_status(llm_matmul_backward(b->dres, a->atty, L->attn_proj_w, b->datty,
										 (float *) G->attn_proj_w, (float *) G->attn_proj_b,
										 N, C, C, 0, 0));
	zero(b->dqkv, N * 3 * C);
	for (int64 s = 0; s < b->B; s++)
	{
		const float *qkv = a->qkv + s * T * 3 * C;
		float	   *dqkv = b->dqkv + s * T * 3 * C;

		llm_check_status(llm_attention_backward(qkv, 3 * C, qkv + C, 3 * C, qkv + 2 * C, 3 * C,
												a->atty + s * T * C,
												a->att_lse + s * cfg->n_head * T,
												b->datty + s * T * C,
												dqkv, 3 * C, dqkv + C, 3 * C, dqkv + 2 * C, 3 * C,
												T, T, C, cfg->n_head, 1));
	}
	zero(b->dln, N * C);
	llm_check_status(llm_matmul_backward(b->dqkv, a->ln1, L->attn_w, b->dln,
										 (float *) G->attn_w, (float *) G->attn_b,
										 N, C, 3 * C, 0, 0));
	llm_check_status(llm_layernorm_backward(x, L->ln1_w, a->ln1_mean, a->ln1_rstd,
											b->dln, b->dres, (float *) G->ln1_w,
											(float *) G->ln1_b, N, C));
}

void
gpt2_batch_backward(Gpt2Batch *b, const Gpt2Model *grads)
{
	const Gpt2Model *w = b->w;
	const Gpt2Config *cfg = &w->cfg;
	int64		C = cfg->n_embd,
				V = cfg->vocab_size,
				N = b->N,
				T = b->T;

	/* loss = mean over the counted rows: d(loss)/d(row loss) = 1 / counted */
	zero(b->dlogits, N * V);
	llm_check_status(llm_cross_entropy_backward(b->logits, b->targets, b->lse, N, V,
												(float) (1.0 / (double) b->counted),
												b->dlogits));
	/* logits = lnf @ wte^T (tied lm_head) */
	zero(b->dln, N * C);
	llm_check_status(llm_matmul_backward(b->dlogits, b->lnf, w->wte, b->dln,
										 (float *) grads->wte, NULL, N, C, V, 0, 1));
	zero(b->dres, N * C);
	llm_check_status(llm_layernorm_backward(block_input(b, cfg->n_layer), w->lnf_w,
											b->lnf_mean, b->lnf_rstd, b->dln, b->dres,
											(float *) grads->lnf_w, (float *) grads->lnf_b,
											N, C));
	for (int l = cfg->n_layer - 1; l >= 0; l--)
	{
		CHECK_FOR_INTERRUPTS();
		backward_block(b, l, &grads->layers[l]);
	}
	/* x0 = wte[token] + wpe[position] */
	llm_embedding_backward(b->tokens, b->dres, (float *) grads->wte, N, C);
	for (int64 s = 0; s < b->B; s++)
		llm_add_backward(b->dres + s * T * C, NULL, (float *) grads->wpe, T * C, T * C);
}
