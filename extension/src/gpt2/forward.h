/*
 * forward.h -- GPT-2's forward pass (forward.c), HuggingFace's
 * GPT2LMHeadModel in eval mode, over B sequences of T tokens as N = B*T
 * rows.  It exists once; what it keeps depends on the caller:
 *
 * Generation: a KV cache, every layer sharing a few scratch buffers.
 *
 *   Gpt2State *st = gpt2_state_new(m, max_rows, n_ctx);
 *   gpt2_forward(st, tokens, T);       (T new tokens after st->n_past old ones)
 *   gpt2_logits(st, row, nrows, out);  (lm_head on rows of that forward)
 *   gpt2_state_free(st);
 *
 * Training (and recording on the tape): an activation store, every layer
 * its own buffers, which backward.h's gpt2_batch_backward and the tape
 * builder (gpt2/tape.h) read.
 *
 *   Gpt2Batch *b = gpt2_batch_new(m, B, T);
 *   b->bf16 = rounded;                  (bf16 mixed precision; NULL: fp32)
 *   loss = gpt2_batch_forward(b, tokens, targets, grads);   (tokens, targets [B, T])
 *   gpt2_batch_free(b);
 *
 * Every kernel called is bit-identical at any thread count, and so is all
 * of the above.
 */
#ifndef PG_LLM_GPT2_FORWARD_H
#define PG_LLM_GPT2_FORWARD_H

#include "postgres.h"

#include "utils/array.h"

#include "gpt2/model_cache.h"

/* What one transformer block computes, [N] rows each. */
typedef struct Gpt2LayerActs
{
	float	   *ln1;			/* [N, C] LayerNorm_1 of the block's input */
	float	   *ln1_mean,
			   *ln1_rstd;		/* [N] (store only) */
	float	   *qkv;			/* [N, 3C] c_attn: q, k, v side by side */
	float	   *atty;			/* [N, C] attention output, before c_proj */
	float	   *att_lse;		/* [B, n_head, T] (store only) */
	float	   *res_mid;		/* [N, C] input + c_proj(attention) */
	float	   *ln2;			/* [N, C] */
	float	   *ln2_mean,
			   *ln2_rstd;		/* [N] (store only) */
	float	   *fc;				/* [N, F] c_fc, before GELU */
	float	   *fc_gelu;		/* [N, F] */
	float	   *res_out;		/* [N, C] the block's output: res_mid + MLP */
} Gpt2LayerActs;

/*
 * The activations of a forward over up to N rows.  A store gives every
 * layer its own buffers; scratch points every layer at the same few and
 * leaves NULL what only the backward reads.
 */
typedef struct Gpt2Activations
{
	float	   *encoded;		/* [N, C] wte[token] + wpe[position] */
	Gpt2LayerActs *layers;		/* [n_layer] */
	float	   *lnf;			/* [N, C] ln_f of the last block's output */
	float	   *lnf_mean,
			   *lnf_rstd;		/* [N] (store only) */
} Gpt2Activations;

/* Keys and values of every position so far, per layer [n_ctx, C]. */
typedef struct Gpt2KVCache
{
	float	  **k;
	float	  **v;
} Gpt2KVCache;

extern Gpt2Activations *gpt2_activations_store(const Gpt2Model *m, int64 N);
extern Gpt2Activations *gpt2_activations_scratch(const Gpt2Model *m, int64 N);

/* The residual stream entering block `layer` (layer n_layer: entering ln_f). */
extern const float *gpt2_block_input(const Gpt2Activations *acts, int layer);

/*
 * tokens [B, T] at positions pos0 .. pos0+T-1 through the network up to
 * ln_f, into acts.  With kv (B = 1), their keys and values are appended to
 * it and attention reads every cached position; without, pos0 is 0 and
 * each sequence attends within itself.
 */
extern void gpt2_transformer(const Gpt2Model *m, const Gpt2Activations *acts,
							 const int32 *tokens, int64 B, int64 T, int64 pos0,
							 const Gpt2KVCache *kv);

/* bf16 mixed precision: x[0 .. n-1] rounded to bf16 in place; fp32 (!bf16): nothing. */
extern void gpt2_round_if_bf16(bool bf16, float *x, int64 n);

/* out[nrows, V] = lnf[nrows, C] @ wte^T: the tied lm_head. */
extern void gpt2_lm_head(const Gpt2Model *m, const float *lnf, int64 nrows, float *out);

/* ---- generation: the KV-cached state ------------------------------------ */

/*
 * The state of one inference call: the KV cache and scratch activations.
 * Everything lives in `mcxt`, a child of the caller's memory context, and
 * goes away with gpt2_state_free() (or with the caller's context on error).
 */
typedef struct Gpt2State
{
	MemoryContext mcxt;
	const Gpt2Model *model;
	int64		max_rows;		/* most tokens one gpt2_forward may take */
	int64		n_ctx;			/* positions the KV cache holds */
	int64		n_past;			/* positions already in the KV cache */
	int64		last_rows;		/* rows of the latest forward (in acts->lnf) */
	Gpt2KVCache *kv;			/* NULL when one forward covers all n_ctx
								 * positions: attention reads k, v in place */
	Gpt2Activations *acts;		/* scratch for max_rows rows */
	double		forward_seconds;	/* reported at DEBUG1 by gpt2_state_free */
	double		lm_head_seconds;
} Gpt2State;

extern Gpt2State *gpt2_state_new(const Gpt2Model *m, int64 max_rows, int64 n_ctx);
extern void gpt2_state_free(Gpt2State *st);

/*
 * Run T tokens (at positions n_past .. n_past+T-1) through the transformer,
 * appending their keys and values to the KV cache.  Afterwards
 * st->acts->lnf[0 .. T-1] holds ln_f of their last hidden states.
 */
extern void gpt2_forward(Gpt2State *st, const int32 *tokens, int64 T);

/* out[nrows, V] = logits of rows row .. row+nrows-1 of the latest forward. */
extern void gpt2_logits(Gpt2State *st, int64 row, int64 nrows, float *out);

/*
 * Make dst continue where src is: the same positions in the KV cache (beam
 * search forks a sequence this way).  Both from gpt2_state_new with the
 * same sizes and a KV cache; the activations are not copied.
 */
extern void gpt2_state_copy_cache(Gpt2State *dst, const Gpt2State *src);

/* ---- training: the activation store ------------------------------------- */

typedef struct Gpt2Batch
{
	MemoryContext mcxt;			/* owns everything below */
	const Gpt2Model *model;		/* the weights (not owned) */
	int64		B,
				T,
				N;				/* N = B * T rows */
	int32	   *tokens;			/* [N], copies of the last forward's */
	int32	   *targets;		/* [N] */
	int64		counted;		/* targets that are not -100 */
	Gpt2Activations *acts;		/* the store */
	float	   *dlnf;			/* [N, C] d(loss)/d(lnf) from the lm_head (with grads) */

	/*
	 * bf16 mixed precision, torch.autocast('cpu', dtype=torch.bfloat16)'s
	 * meaning for the matmuls (set by the caller; NULL: fp32): the model's
	 * arena rounded to bf16, whose matrices and biases every matmul reads
	 * (the lm_head: its wte), and every matmul's operands and results
	 * rounded to bf16 -- in the forward (X, W, bias, Y) and in the
	 * backward (dY, and the dX, dW, dbias it makes); the products summed
	 * in fp32.  The rest (embedding, LayerNorm, GELU, attention, the
	 * residual stream, the loss) runs in fp32 over those values.
	 * the README's "Mixed precision" says it in full.
	 */
	const Gpt2Model *bf16;
} Gpt2Batch;

/* Buffers for B sequences of T tokens, in a child of CurrentMemoryContext. */
extern Gpt2Batch *gpt2_batch_new(const Gpt2Model *m, int64 B, int64 T);
extern void gpt2_batch_free(Gpt2Batch *b);

/*
 * The forward over tokens [B, T] (ids checked by the caller; targets in the
 * vocabulary or -100, at least one counted): returns the mean cross-entropy
 * over the counted targets, as F.cross_entropy(ignore_index=-100).
 *
 * The lm_head and the loss run fused, chunk by chunk of rows (kernels'
 * llm_linear_cross_entropy): the [N, V] logits never exist at once.  With
 * grads (training), the same chunks give the loss's gradient: wte's is
 * added into grads->wte, ln_f's output's kept in b->dlnf, where
 * gpt2_batch_backward goes on from.  grads NULL (llm_loss): the loss only.
 */
extern double gpt2_batch_forward(Gpt2Batch *b, const int32 *tokens, const int32 *targets,
								 const Gpt2Model *grads);

#endif							/* PG_LLM_GPT2_FORWARD_H */
