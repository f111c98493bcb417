/*
 * model_cache.h -- a GPT-2 model's weights, decoded once into backend memory
 * (model_cache.c) and reloaded when llm_model_config.version says they changed.
 *
 *   const Gpt2Model *m = gpt2_model_get("gpt2-small");
 *
 * The parameter list (HF names and shapes) is llm_param_shapes() in
 * sql/30_model.sql; the cache reads it from there.
 */
#ifndef PG_LLM_GPT2_MODEL_CACHE_H
#define PG_LLM_GPT2_MODEL_CACHE_H

#include "postgres.h"

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
 * memory.  Owned by the cache in model_cache.c: callers must not free it, and must
 * not keep the pointer beyond the current SQL function call (the next call
 * may replace it).
 */
typedef struct Gpt2Model
{
	MemoryContext mcxt;			/* owns this struct, the arena, the names */
	char	   *name;
	Oid			config_relid;	/* OID of llm_model_config (see model_cache.c) */
	int64		version;		/* llm_model_config.version when loaded */
	Gpt2Config	cfg;
	int64		n_floats;		/* size of the arena in floats */
	const float *wte;			/* [V, C]; also the tied lm_head */
	const float *wpe;			/* [n_positions, C] */
	const float *lnf_w,
			   *lnf_b;			/* ln_f.weight / .bias [C] */
	Gpt2Layer  *layers;			/* [n_layer] */
} Gpt2Model;

/* ---- the parameter list and its arena layout --------------------------- */

/*
 * One named tensor of a GPT-2 model and its place in a float arena.  The
 * one list of them (build_slots in model_cache.c) is what llm_param_shapes()
 * returns, what the weight cache decodes, and what the training state
 * (train/state.h) lays its four arenas out by.
 */
typedef struct Gpt2ParamInfo
{
	const char *name;			/* HF name, e.g. "h.0.attn.c_attn.weight" */
	int			ndim;			/* 1 or 2 */
	int64		dims[2];		/* dims[1] is 0 when ndim is 1 */
	int64		numel;
	int64		offset;			/* in floats from the arena's start; a multiple of 16 */
} Gpt2ParamInfo;

/*
 * The parameters of `model`, shaped by `cfg`, in llm_param_shapes() order
 * (palloc'd), and the size of an arena that holds them all.
 */
extern Gpt2ParamInfo *gpt2_param_layout(const char *model, const Gpt2Config *cfg,
										int *n_params, int64 *n_floats);

/*
 * Point every weight pointer of `m` (m->name and m->cfg set; m->layers is
 * allocated here) into `arena`, laid out as gpt2_param_layout() says; sets
 * m->n_floats.  The forward pass then runs on any arena: the cache's, or a
 * training state's.
 */
extern void gpt2_model_bind(Gpt2Model *m, const float *arena);

/*
 * The llm_model_config row of `model` (SPI must be connected); false when
 * there is none.  *relid is the table's OID, part of the cache key.
 */
extern bool gpt2_config_read(const char *model, Oid *relid, int64 *version,
							 Gpt2Config *cfg);

/* ERROR unless the config is sane and its parameters fit in memory. */
extern void gpt2_config_check(const char *model, const Gpt2Config *cfg);

/*
 * Copy one llm_param value (a `tensor` Datum, possibly toasted) into dst,
 * after checking its shape against `p`; big out-of-line values are read in
 * slices, never detoasted whole.  `column` ("data", "grad", "m", "v") names
 * the value in error messages.
 */
extern void gpt2_param_read(const char *model, const Gpt2ParamInfo *p, const char *column,
							Datum raw, float *dst);

/* ---- the cache ---------------------------------------------------------- */

/* The cached weights of `model`, (re)loaded if its version changed. */
extern const Gpt2Model *gpt2_model_get(const char *model);

/*
 * The cached model if it is `model` at `version`, else NULL; no catalog
 * access.  A caller that keeps a model across calls (a streaming SRF) finds
 * it again through this: the pointer it had may have been freed.
 */
extern const Gpt2Model *gpt2_model_cached(const char *model, int64 version);

/* Error (22023) unless every id is in [0, vocab_size). */
extern void gpt2_check_tokens(const char *who, const Gpt2Model *m,
							  const int32 *ids, int n);

#endif							/* PG_LLM_GPT2_MODEL_CACHE_H */
