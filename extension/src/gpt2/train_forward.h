/*
 * train_forward.h -- GPT-2's forward pass over a batch, keeping what the
 * backward needs, and the backward over every parameter (train_forward.c).
 * llm.c's ActivationTensors in spirit:
 *
 *   Gpt2Batch *b = gpt2_batch_new(&st->weights, B, T);
 *   loss = gpt2_batch_forward(b, tokens, targets);   // tokens, targets [B, T]
 *   gpt2_batch_backward(b, &st->grads);              // ACCUMULATES, as the kernels
 *   gpt2_batch_free(b);
 *
 * B sequences of T tokens go through the matmuls as B*T rows at once;
 * attention runs per sequence.  The loss is the mean cross-entropy over
 * the targets that are not -100, as F.cross_entropy(ignore_index=-100).
 * Every kernel called is bit-identical at any thread count, and so are the
 * loss and the gradients.
 */
#ifndef PG_LLM_GPT2_TRAIN_FORWARD_H
#define PG_LLM_GPT2_TRAIN_FORWARD_H

#include "postgres.h"

#include "gpt2/model_cache.h"

/* The activations of one transformer block, [N = B*T] rows each. */
typedef struct Gpt2LayerActs
{
	float	   *ln1;			/* [N, C] LayerNorm_1 of the block's input */
	float	   *ln1_mean,
			   *ln1_rstd;		/* [N] */
	float	   *qkv;			/* [N, 3C] */
	float	   *atty;			/* [N, C] attention output, before c_proj */
	float	   *att_lse;		/* [B, n_head, T] */
	float	   *res_mid;		/* [N, C] input + attention */
	float	   *ln2;			/* [N, C] */
	float	   *ln2_mean,
			   *ln2_rstd;		/* [N] */
	float	   *fc;				/* [N, F] c_fc output, before GELU */
	float	   *fc_gelu;		/* [N, F] */
	float	   *res_out;		/* [N, C] the block's output */
} Gpt2LayerActs;

typedef struct Gpt2Batch
{
	MemoryContext mcxt;			/* owns everything below */
	const Gpt2Model *w;			/* the weights (not owned) */
	int64		B,
				T,
				N;				/* N = B * T rows */

	int32	   *tokens;			/* [N], copies of the last forward's */
	int32	   *targets;		/* [N] */
	int64		counted;		/* targets that are not -100 */

	float	   *encoded;		/* [N, C] wte[token] + wpe[position] */
	Gpt2LayerActs *layers;		/* [n_layer] */
	float	   *lnf;			/* [N, C] */
	float	   *lnf_mean,
			   *lnf_rstd;		/* [N] */
	float	   *logits;			/* [N, V] */
	float	   *lse;			/* [N] logsumexp of each row of logits */

	/* the backward's scratch */
	float	   *dlogits;		/* [N, V] */
	float	   *dres;			/* [N, C] gradient of the residual stream */
	float	   *dln;			/* [N, C] */
	float	   *datty;			/* [N, C] */
	float	   *dqkv;			/* [N, 3C] */
	float	   *dfc_gelu;		/* [N, F] */
	float	   *dfc;			/* [N, F] */
} Gpt2Batch;

/* Buffers for B sequences of T tokens, in a child of CurrentMemoryContext. */
extern Gpt2Batch *gpt2_batch_new(const Gpt2Model *w, int64 B, int64 T);
extern void gpt2_batch_free(Gpt2Batch *b);

/*
 * The forward over tokens [B, T] (ids checked by the caller; targets in the
 * vocabulary or -100, at least one counted): returns the mean loss.
 */
extern double gpt2_batch_forward(Gpt2Batch *b, const int32 *tokens, const int32 *targets);

/*
 * d(loss)/d(every parameter) of the last forward, added into the arena
 * `grads` points into (the tied wte gets the lm_head's and the
 * embedding's).
 */
extern void gpt2_batch_backward(Gpt2Batch *b, const Gpt2Model *grads);

#endif							/* PG_LLM_GPT2_TRAIN_FORWARD_H */
