/*
 * model.h -- GPT-2 inside the backend: the decoded-weight cache and the
 * forward pass.
 *
 *   const Gpt2Model *m = gpt2_model_get("gpt2-small");   (cached weights)
 *   Gpt2State *st = gpt2_state_new(m, max_rows, n_ctx); (KV cache, scratch)
 *   gpt2_forward(st, tokens, T);       (T new tokens after st->n_past old ones)
 *   gpt2_logits(st, row, nrows, out);  (lm_head on rows of that forward)
 *   gpt2_state_free(st);
 *
 * model_cache.c loads and caches the weights; model.c has the math
 * (HuggingFace's GPT2LMHeadModel in eval mode); generate.c samples.
 */
#ifndef PG_LLM_MODEL_H
#define PG_LLM_MODEL_H

#include "postgres.h"

#include "utils/array.h"

/* One row of llm_model_config. */
typedef struct Gpt2Config
{
	int			n_layer;
	int			n_head;
	int			n_embd;			/* C, the width of the residual stream */
	int			n_positions;	/* longest context (rows of wpe) */
	int			vocab_size;		/* V, rows of wte */
	int			n_inner;		/* MLP width (4 * n_embd when NULL in SQL) */
	float		layer_norm_eps;
} Gpt2Config;

/* Pointers into the arena for one transformer block (HF names in comments). */
typedef struct Gpt2Layer
{
	const float *ln1_w,
			   *ln1_b;			/* h.L.ln_1.weight / .bias           [C] */
	const float *attn_w,
			   *attn_b;			/* h.L.attn.c_attn.weight / .bias    [C, 3C] / [3C] */
	const float *attn_proj_w,
			   *attn_proj_b;	/* h.L.attn.c_proj.weight / .bias    [C, C] / [C] */
	const float *ln2_w,
			   *ln2_b;			/* h.L.ln_2.weight / .bias           [C] */
	const float *fc_w,
			   *fc_b;			/* h.L.mlp.c_fc.weight / .bias       [C, F] / [F] */
	const float *mlp_proj_w,
			   *mlp_proj_b;		/* h.L.mlp.c_proj.weight / .bias     [F, C] / [C] */
} Gpt2Layer;

/*
 * A model's weights, decoded once into one float arena and kept in backend
 * memory.  Owned by the cache in model.c: callers must not free it, and must
 * not keep the pointer beyond the current SQL function call (the next call
 * may replace it).
 */
typedef struct Gpt2Model
{
	MemoryContext mcxt;			/* owns this struct, the arena, the names */
	char	   *name;
	Oid			config_relid;	/* OID of llm_model_config (see model.c) */
	int64		version;		/* llm_model_config.version when loaded */
	Gpt2Config	cfg;
	int64		n_floats;		/* size of the arena in floats */
	const float *wte;			/* [V, C]; also the tied lm_head */
	const float *wpe;			/* [n_positions, C] */
	const float *lnf_w,
			   *lnf_b;			/* ln_f.weight / .bias [C] */
	Gpt2Layer  *layers;			/* [n_layer] */
} Gpt2Model;

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
} Gpt2State;

/* The cached weights of `model`, (re)loaded if its version changed. */
extern const Gpt2Model *gpt2_model_get(const char *model);

/* The values of a 1-D int[] of token ids (error 22023 for 2-D, 22004 for NULLs). */
extern int32 *gpt2_token_array(const char *who, const char *what, ArrayType *arr, int *n);

/* Error (22023) unless every id is in [0, vocab_size). */
extern void gpt2_check_tokens(const char *who, const Gpt2Model *m,
							  const int32 *ids, int n);

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

/* Allocate `bytes` (may exceed 1 GB) in the current context, or ERROR 53200. */
extern void *gpt2_alloc(Size bytes, const char *what);

#endif							/* PG_LLM_MODEL_H */
