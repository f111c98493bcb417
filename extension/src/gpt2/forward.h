/*
 * forward.h -- GPT-2's forward pass (forward.c), HuggingFace's
 * GPT2LMHeadModel in eval mode, over the cached weights of model_cache.h:
 *
 *   Gpt2State *st = gpt2_state_new(m, max_rows, n_ctx); (KV cache, scratch)
 *   gpt2_forward(st, tokens, T);       (T new tokens after st->n_past old ones)
 *   gpt2_logits(st, row, nrows, out);  (lm_head on rows of that forward)
 *   gpt2_state_free(st);
 *
 * text/generate.c samples from it token by token; text/beam_search.c keeps
 * one state per beam.
 */
#ifndef PG_LLM_GPT2_FORWARD_H
#define PG_LLM_GPT2_FORWARD_H

#include "postgres.h"

#include "nodes/pg_list.h"
#include "utils/array.h"

#include "gpt2/model_cache.h"

/* Timers of the forward pass, reported at DEBUG1 (SET client_min_messages). */
typedef enum Gpt2Timer
{
	TIMER_EMBED,
	TIMER_LAYERNORM,
	TIMER_QKV,
	TIMER_ATTENTION,
	TIMER_ATTN_PROJ,
	TIMER_MLP_FC,
	TIMER_GELU,
	TIMER_MLP_PROJ,
	TIMER_RESIDUAL,
	TIMER_LM_HEAD,
	TIMER_COUNT
} Gpt2Timer;

/*
 * The state of one inference call: the KV cache and scratch activations.
 * Everything lives in `mcxt`, a child of the caller's memory context, and
 * goes away with gpt2_state_free() (or with the caller's context on error).
 */
/* The weights' tape leaves, by name, that the sequences of a batch share. */
typedef struct Gpt2Leaves
{
	List	   *names;			/* of char * */
	List	   *ids;			/* of int */
} Gpt2Leaves;

typedef struct Gpt2State
{
	MemoryContext mcxt;
	const Gpt2Model *model;
	int64		max_rows;		/* most tokens one gpt2_forward may take */
	int64		n_ctx;			/* positions the KV cache holds */
	int64		n_past;			/* positions already in the KV cache */
	int64		last_rows;		/* rows of the latest forward (in `hidden`) */
	float	  **k_cache;		/* [n_layer] of [n_ctx, C]; NULL when one
								 * forward covers all n_ctx positions */
	float	  **v_cache;		/* [n_layer] of [n_ctx, C] (or NULL) */
	float	   *x;				/* [max_rows, C]   residual stream */
	float	   *hidden;			/* [max_rows, C]   LayerNorm output; after the
								 * forward, ln_f(x) for the lm_head */
	float	   *qkv;			/* [max_rows, 3C]  fused q, k, v */
	float	   *att;			/* [max_rows, C]   attention output */
	float	   *proj;			/* [max_rows, C]   output of a c_proj */
	float	   *fc;				/* [max_rows, F]   MLP hidden layer */
	double		seconds[TIMER_COUNT];
	/* the autograd tape (llm_loss, llm_logits, gpt2_record_batch), else all 0 */
	bool		record;
	int32		x_id;			/* tape ids of what x, hidden and wte hold */
	int32		hidden_id;
	int32		wte_id;
	Gpt2Leaves *leaves;		/* weights' leaves shared with other states, or NULL */
} Gpt2State;

/* The values of a 1-D int[] of token ids (error 22023 for 2-D, 22004 for NULLs). */
extern int32 *gpt2_token_array(const char *who, const char *what, ArrayType *arr, int *n);

extern Gpt2State *gpt2_state_new(const Gpt2Model *m, int64 max_rows, int64 n_ctx);
extern void gpt2_state_free(Gpt2State *st);

/*
 * Run T tokens (at positions n_past .. n_past+T-1) through the transformer,
 * appending their keys and values to the KV cache.  Afterwards
 * st->hidden[0 .. T-1] holds ln_f of their last hidden states.
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

/*
 * Empty the autograd tape and record on it the forward of a training batch
 * (tokens, targets [B, T], checked) and its loss, the weights shared leaves.
 */
extern void gpt2_record_batch(const Gpt2Model *m, const int32 *tokens, const int32 *targets,
							  int64 B, int64 T);

#endif							/* PG_LLM_GPT2_FORWARD_H */
