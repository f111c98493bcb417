/*
 * model.h -- what a GPT-2 is (model.c): its configuration, its parameters
 * with HuggingFace's names and shapes, and their layout in one float arena.
 *
 *   params = gpt2_param_layout(name, &cfg, &n, &n_floats);  // the list
 *   gpt2_model_bind(&m, arena);       // m.wte, m.layers[l].fc_w ... into arena
 *
 * The one list serves SQL (llm_param_shapes, the llm_param trigger), the
 * weight cache (model_cache.c) and the training state's four arenas
 * (train/state.c: data, grad, m, v, bound to the same names).
 */
#ifndef PG_LLM_GPT2_MODEL_H
#define PG_LLM_GPT2_MODEL_H

#include "postgres.h"

#include "kernels/bf16.h"

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

/* One transformer block's tensors in an arena (HF names in comments). */
typedef struct Gpt2Layer
{
	float	   *ln1_w,
			   *ln1_b;			/* h.L.ln_1.weight / .bias           [C] */
	float	   *attn_w,
			   *attn_b;			/* h.L.attn.c_attn.weight / .bias    [C, 3C] / [3C] */
	float	   *attn_proj_w,
			   *attn_proj_b;	/* h.L.attn.c_proj.weight / .bias    [C, C] / [C] */
	float	   *ln2_w,
			   *ln2_b;			/* h.L.ln_2.weight / .bias           [C] */
	float	   *fc_w,
			   *fc_b;			/* h.L.mlp.c_fc.weight / .bias       [C, F] / [F] */
	float	   *mlp_proj_w,
			   *mlp_proj_b;		/* h.L.mlp.c_proj.weight / .bias     [F, C] / [C] */
	/* the matrices as bf16, in a bf16 model (then the four above are NULL) */
	llm_bf16   *attn_w16,
			   *attn_proj_w16,
			   *fc_w16,
			   *mlp_proj_w16;
} Gpt2Layer;

/*
 * A model's tensors in one arena: its weights (the cache's, or a training
 * state's), or their gradients (a training state's grad arena, which the
 * backward adds into).  The weight cache hands out `const Gpt2Model *`:
 * nothing may write the cached weights.
 *
 * A bf16 model (pg_llm.inference_dtype = 'bf16', inference only) holds
 * every 2-D tensor as bfloat16 -- rounded from llm_param's floats to
 * nearest even -- in the *16 pointers, whose float twins are NULL; the 1-D
 * ones (biases, LayerNorm) stay float.
 */
typedef struct Gpt2Model
{
	char	   *name;
	Oid			config_relid;	/* the cache's key: OID of llm_model_config, */
	int64		version;		/* and llm_model_config.version when loaded */
	Gpt2Config	cfg;
	int64		n_floats;		/* size of the arena in floats */
	float	   *wte;			/* [V, C]; also the tied lm_head */
	float	   *wpe;			/* [n_positions, C] */
	llm_bf16   *wte16,
			   *wpe16;			/* the same as bf16, in a bf16 model */
	float	   *lnf_w,
			   *lnf_b;			/* ln_f.weight / .bias [C] */
	Gpt2Layer  *layers;			/* [n_layer] */
} Gpt2Model;

/* One named tensor of a GPT-2 model and its place in a float arena. */
typedef struct Gpt2ParamInfo
{
	const char *name;			/* HF name, e.g. "h.0.attn.c_attn.weight" */
	int			ndim;			/* 1 or 2 */
	int64		dims[2];		/* dims[1] is 0 when ndim is 1 */
	int64		numel;
	int64		offset;			/* in floats from the arena's start; a multiple of 16 */
	int64		offset_bf16;	/* in bytes from a bf16 arena's start (2-D tensors
								 * as bf16, 1-D as floats); a multiple of 64 */
} Gpt2ParamInfo;

/*
 * The parameters of `model` shaped by `cfg`, in llm_param_shapes() order
 * (palloc'd), and the size of an arena that holds them all.  ERROR 22003
 * naming the parameter when a shape is too big for a tensor.
 */
extern Gpt2ParamInfo *gpt2_param_layout(const char *model, const Gpt2Config *cfg,
										int *n_params, int64 *n_floats);

/*
 * Point every tensor of `m` (m->name and m->cfg set; m->layers is
 * allocated here) into `arena`, laid out as gpt2_param_layout() says; sets
 * m->n_floats.
 */
extern void gpt2_model_bind(Gpt2Model *m, float *arena);

/* The size in bytes of a bf16 arena of the parameters gpt2_param_layout() listed. */
extern int64 gpt2_bf16_arena_bytes(const Gpt2ParamInfo *params, int n_params);

/* gpt2_model_bind for a bf16 arena (see Gpt2Model), laid out by offset_bf16. */
extern void gpt2_model_bind_bf16(Gpt2Model *m, char *arena);

#endif							/* PG_LLM_GPT2_MODEL_H */
